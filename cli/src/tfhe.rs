//! `peregrine run --backend tfhe`: the TFHE backend's quantised pipeline from the command line.
//!
//! Calibration images (training data, never the evaluated images) set the quantisation; the
//! client encrypts each image, the server runs one weighted sum and one bootstrap per activation
//! element, the client decrypts. Every image is also run through the quantised cleartext
//! simulation (what the encrypted run must reproduce exactly) and the float reference executor.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use ndarray::{ArrayD, IxDyn};
use peregrine_data::{load_cifar10, load_image, preprocess};
use peregrine_model::format::load_model;
use peregrine_model::ir::InputSpec;
use peregrine_model::reference::Reference;
use backend_tfhe::engine::{decrypt_logits, encrypt_image, probe, run, PreparedPlan};
use backend_tfhe::lwe::{LweClient, LweParams};
use candle_core::Tensor;
use peregrine_sft::train::{candle_err, to_channels_last, Quantiser, Substitute};
use backend_tfhe::quant::{ActivationMode, QuantConfig, QuantPlan, RealPlan, RealValues};
use serde::Deserialize;
use serde_json::json;

use crate::commands::{log_item, progress};
use crate::fhe::{argmax, image_detail, peak_rss_bytes};

/// `--params` of the TFHE backend (JSON; every field optional).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TfheParams {
    /// Bits of the plaintext space, 4 to 8 (the TFHE-rs 128-bit set `MESSAGE_1_CARRY_{bits−1}`).
    pub bits: u32,
    /// Extra accumulator bits below a bootstrap's resolution (sums hold `bits + extra_bits`).
    pub extra_bits: u32,
    /// Bits of bootstrap outputs and encrypted inputs (default 4; at most `bits`).
    pub act_bits: Option<u32>,
    /// `exact` or `poly` (overridden by `--activation`).
    pub activation: Option<String>,
    /// CIFAR-10 batch file of calibration images (default: `data_batch_1` beside `--data`).
    pub calibration: Option<PathBuf>,
    /// Number of calibration images.
    pub calibration_images: usize,
    /// Fraction of the signed range the calibrated maximum of an accumulator may use.
    pub headroom: f64,
    /// Calibration quantile that sets every range (default 1: the maximum); e.g. 0.99 lets
    /// a few outlying calibration values saturate instead of coarsening a whole channel.
    pub clip: f64,
    /// Divides the set's noise bound when choosing accumulator steps (default 1). With
    /// `extra_bits` > 0 a sum within noise of a box boundary reads the neighbouring box; a
    /// margin of m makes that m times rarer at the cost of coarser steps.
    pub noise_margin: f64,
    /// Write the quantised plan (steps, zero points, integer weights, tables) as JSON here.
    pub save_plan: Option<PathBuf>,
    /// Instead of whole images: time every stage on this many elements of the first image
    /// and extrapolate (for networks too large to run in a session).
    pub probe: Option<usize>,
}

impl Default for TfheParams {
    fn default() -> Self {
        TfheParams { bits: 5, extra_bits: 6, act_bits: Some(4), activation: None, calibration: None, calibration_images: 256, headroom: 0.9, clip: 1.0, noise_margin: 1.0, save_plan: None, probe: None }
    }
}

/// The calibration file: given, or the first training batch next to the evaluated file.
fn calibration_file(given: Option<&Path>, data: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p.to_path_buf());
    }
    if let Some(dir) = data.and_then(|d| d.parent()) {
        for name in ["data_batch_1.bin.gz", "data_batch_1.bin"] {
            if dir.join(name).exists() {
                return Ok(dir.join(name));
            }
        }
    }
    bail!("the TFHE backend calibrates its quantisation on training images: give --params '{{\"calibration\": \"<CIFAR-10 batch file>\"}}' (default: data_batch_1 beside --data)")
}

#[derive(serde::Serialize)]
struct Report {
    index: usize,
    label: Option<u8>,
    packed_prediction: Option<usize>,
    reference_prediction: usize,
    quantised_prediction: usize,
    agree: bool,
    agree_quantised: bool,
    identical_to_simulation: bool,
    /// Largest difference between a decrypted output and the simulation's, in output
    /// accumulator units (nonzero only when a sum near a box boundary read its neighbour).
    output_units_from_simulation: i64,
    /// The simulation's gap between its two largest logits (a small gap is a close call that
    /// one neighbouring-box read can flip).
    simulation_margin: f64,
    max_abs_logit_error: f64,
    seconds: f64,
    bootstraps: usize,
    error: Option<String>,
}

/// A model compiled and calibrated for the TFHE backend, with what produced it.
struct Calibrated {
    params: TfheParams,
    mode: ActivationMode,
    lwe: LweParams,
    model: peregrine_model::ir::Model,
    real: RealPlan,
    plan: QuantPlan,
    calibration: PathBuf,
    calibration_images: usize,
    seconds: f64,
}

/// Parses `--params`/`--activation` into the settings of quantisation.
fn settings(params: &str, activation: Option<&str>) -> Result<(TfheParams, ActivationMode, LweParams, QuantConfig)> {
    let mut p: TfheParams =
        if params.trim().is_empty() { TfheParams::default() } else { serde_json::from_str(params).context("invalid --params for the tfhe backend")? };
    if let Some(a) = activation {
        p.activation = Some(a.to_string());
    }
    let mode: ActivationMode = p.activation.as_deref().unwrap_or("exact").parse().map_err(anyhow::Error::msg)?;
    if !(p.noise_margin >= 1.0 && p.noise_margin.is_finite()) {
        bail!("noise_margin must be a finite number ≥ 1 (it divides the set's noise bound), got {}", p.noise_margin);
    }
    let lwe = LweParams::with_accumulator(p.bits, p.extra_bits).map_err(|e| anyhow::anyhow!("{e}"))?;
    let noise_bound = lwe.noise_bound / p.noise_margin;
    let config = QuantConfig { bits: p.bits, extra_bits: p.extra_bits, act_bits: p.act_bits.unwrap_or(p.bits), mode, noise_bound, headroom: p.headroom, clip: p.clip };
    Ok((p, mode, lwe, config))
}

/// The calibration images of `p` (preprocessed for `model`, one vector per image) and their file.
fn calibration_images(p: &TfheParams, data: Option<&Path>, input: &InputSpec) -> Result<(Vec<Vec<f64>>, PathBuf)> {
    let calibration = calibration_file(p.calibration.as_deref(), data)?;
    let cal = load_cifar10(&calibration, Some(p.calibration_images.max(1)))?;
    let cal_x = preprocess::<f64>(&cal.pixels, cal.len(), input)?;
    let per = cal_x.len() / cal.len().max(1);
    Ok((cal_x.as_slice().expect("standard").chunks(per).map(|c| c.to_vec()).collect(), calibration))
}

/// Compiles `model` and calibrates its quantisation on `images`.
fn compile(model: &peregrine_model::ir::Model, mode: ActivationMode, config: QuantConfig, images: &[Vec<f64>]) -> Result<(RealPlan, QuantPlan)> {
    let real = RealPlan::compile(model, mode).map_err(|e| anyhow::anyhow!("{e}")).with_context(|| format!("compiling {} for tfhe", model.graph().name))?;
    let plan = QuantPlan::calibrate(&real, images, config).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((real, plan))
}

/// Parses `--params`/`--activation`, loads the model, compiles and calibrates it.
fn calibrate(model_path: &Path, params: &str, activation: Option<&str>, data: Option<&Path>) -> Result<Calibrated> {
    let (p, mode, lwe, config) = settings(params, activation)?;
    let model = load_model(model_path)?;
    let t0 = Instant::now();
    let (cal_images, calibration) = calibration_images(&p, data, &model.graph().input)?;
    let (real, plan) = compile(&model, mode, config, &cal_images)?;
    Ok(Calibrated { params: p, mode, lwe, model, real, plan, calibration, calibration_images: cal_images.len(), seconds: t0.elapsed().as_secs_f64() })
}

/// Quantisation-aware training for this backend: a [`Quantiser`] that recalibrates the
/// current model every step (as `run --backend tfhe --params` would) and returns what its
/// quantised simulation computes for the batch, and an evaluator of the simulation's top-1
/// accuracy on labelled images. `data` is the CIFAR-10 directory (calibration: its
/// `data_batch_1`, unless the parameters name a file).
pub fn quantisation_aware(params: &str, data: &Path, input: &InputSpec) -> Result<(Quantiser, SimulatedAccuracy)> {
    let (p, mode, _, config) = settings(params, None)?;
    let (images, _) = calibration_images(&p, Some(&data.join("test_batch.bin.gz")), input)?;
    let images = std::sync::Arc::new(images);
    let cal = images.clone();
    let quantiser: Quantiser = Box::new(move |model, x| {
        let fail = |e: anyhow::Error| peregrine_sft::SftError::Unsupported(format!("quantisation-aware training: {e:#}"));
        let (_, plan) = compile(model, mode, config, &cal).map_err(fail)?;
        // The batch is channels-last; the plan reads images C×H×W.
        let b = x.dims4().map_err(candle_err)?.0;
        let nchw = x.permute((0, 3, 1, 2)).and_then(|t| t.flatten_all()).and_then(|t| t.to_vec1::<f32>()).map_err(candle_err)?;
        use rayon::prelude::*;
        let per_image: Vec<RealValues> = nchw
            .par_chunks(nchw.len() / b.max(1))
            .map(|img| plan.real_values(&img.iter().map(|&v| v as f64).collect::<Vec<_>>()))
            .collect::<Result<_, _>>()
            .map_err(|e| fail(anyhow::anyhow!("{e}")))?;
        let mut nodes = std::collections::HashMap::new();
        for (k, st) in plan.stages.iter().enumerate() {
            let idx = model.node_index(&st.node).ok_or_else(|| fail(anyhow::anyhow!("the plan's node '{}' is not in the model", st.node)))?;
            let dims: Vec<usize> = std::iter::once(b).chain(model.shape(idx).iter().copied()).collect();
            let data: Vec<f32> = per_image.iter().flat_map(|v| v.stages[k].iter().map(|&v| v as f32)).collect();
            let values = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&dims), data).map_err(|e| fail(e.into()))?;
            nodes.insert(st.node.clone(), to_channels_last(&values, x.device())?);
        }
        let classes = per_image.first().map_or(0, |v| v.logits.len());
        let logits: Vec<f32> = per_image.iter().flat_map(|v| v.logits.iter().map(|&l| l as f32)).collect();
        let logits = Tensor::from_vec(logits, (b, classes), x.device()).map_err(candle_err)?;
        Ok(Substitute { nodes, logits })
    });
    let evaluate: SimulatedAccuracy = Box::new(move |model, test| {
        let (_, plan) = compile(model, mode, config, &images)?;
        let x = preprocess::<f64>(&test.pixels, test.len(), &model.graph().input)?;
        let per = x.len() / test.len().max(1);
        use rayon::prelude::*;
        let correct: usize = x
            .as_slice()
            .expect("standard")
            .par_chunks(per)
            .zip(test.labels.par_iter())
            .map(|(xi, &l)| usize::from(argmax(&plan.decode_output(&plan.simulate(&plan.quantise_input(xi)).outputs)) == l as usize))
            .sum();
        Ok(correct as f64 / test.len().max(1) as f64)
    });
    Ok((quantiser, evaluate))
}

/// Top-1 accuracy of a model's quantised simulation on labelled images.
pub type SimulatedAccuracy = Box<dyn Fn(&peregrine_model::ir::Model, &peregrine_data::LabeledImages) -> Result<f64>>;

/// Runs `model` on the TFHE backend.
#[allow(clippy::too_many_arguments)]
pub fn run_cmd(model_path: &Path, params: &str, activation: Option<&str>, data: Option<&Path>, image: Option<&Path>, limit: usize, json_out: bool) -> Result<()> {
    if data.is_some() == image.is_some() {
        bail!("give exactly one of --data or --image");
    }
    let Calibrated { params: p, mode, lwe, model: m, plan, calibration: cal_path, calibration_images: cal_n, seconds: plan_s, .. } =
        calibrate(model_path, params, activation, data)?;
    let input = &m.graph().input;
    if let Some(path) = &p.save_plan {
        std::fs::write(path, serde_json::to_vec(&plan)?).with_context(|| format!("writing {}", path.display()))?;
    }
    if !json_out {
        eprintln!(
            "tfhe: {} ({}), {:?} activations, {} bootstraps/image, calibrated on {} images of {} in {plan_s:.1} s",
            lwe.name,
            bits_summary(&lwe),
            mode,
            plan.bootstraps(),
            cal_n,
            cal_path.display()
        );
        for line in plan.describe() {
            eprintln!("  {line}");
        }
    }

    // Keys.
    let t = Instant::now();
    let client = LweClient::new(lwe);
    let server = client.server();
    let keygen_s = t.elapsed().as_secs_f64();
    let key_bytes = server.key_bytes().map_err(|e| anyhow::anyhow!("{e}"))?;
    let prepared = PreparedPlan::new(&server, &plan).map_err(|e| anyhow::anyhow!("{e}"))?;

    let (pixels, labels, count) = match (data, image) {
        (Some(d), None) => {
            let imgs = load_cifar10(d, Some(limit))?;
            (imgs.pixels.clone(), imgs.labels.iter().map(|l| Some(*l)).collect::<Vec<_>>(), imgs.len())
        }
        (None, Some(i)) => (load_image(i, input)?, vec![None], 1),
        _ => unreachable!("checked above"),
    };
    let x = preprocess::<f64>(&pixels, count, input)?;
    let per = x.len() / count.max(1);
    let reference = Reference::<f64>::new(&m);
    let s = &input.shape;

    if let Some(sample) = p.probe {
        let xi = &x.as_slice().expect("standard")[..per];
        let t = Instant::now();
        let probes = probe(&client, &server, &prepared, xi, sample).map_err(|e| anyhow::anyhow!("{e}"))?;
        let total: f64 = probes.iter().map(|q| q.extrapolated_seconds()).sum();
        if json_out {
            let rows: Vec<_> = probes
                .iter()
                .map(|q| json!({"node": q.node, "elements": q.elements, "sampled": q.sampled, "seconds": q.seconds,
                                "extrapolated_seconds": q.extrapolated_seconds(), "mismatched": q.mismatched,
                                "max_units_off": q.max_units_off}))
                .collect();
            println!("{}", json!({"model": m.graph().name, "backend": "tfhe", "set": lwe.name, "activation": mode, "stages": rows,
                                  "extrapolated_seconds_per_image": total, "bootstraps": plan.bootstraps(), "keygen_seconds": keygen_s,
                                  "evaluation_key_bytes": key_bytes, "probe_seconds": t.elapsed().as_secs_f64()}));
        } else {
            println!("{:<24} {:>9} {:>8} {:>10} {:>14} {:>10} {:>9}", "stage", "elements", "sampled", "seconds", "extrapolated s", "≠ sim.", "max off");
            for q in &probes {
                println!(
                    "{:<24} {:>9} {:>8} {:>10.2} {:>14.1} {:>10} {:>9}",
                    q.node,
                    q.elements,
                    q.sampled,
                    q.seconds,
                    q.extrapolated_seconds(),
                    q.mismatched,
                    q.max_units_off
                );
            }
            println!("≠ sim.: sampled outputs that differ from the quantised simulation; max off: the largest difference, in units of the stage's output encoding");
            println!(
                "extrapolated {total:.0} s ({:.2} h) per image for {} bootstraps; keygen {keygen_s:.1} s, evaluation keys {:.1} MiB",
                total / 3600.0,
                plan.bootstraps(),
                key_bytes as f64 / (1u64 << 20) as f64
            );
        }
        return Ok(());
    }

    let pb = progress((count * (plan.stages.len() + 1)) as u64, json_out, "encrypted inference (tfhe)");
    let mut reports = Vec::new();
    let mut stage_s: Vec<(String, f64)> = Vec::new();
    for i in 0..count {
        let xi = &x.as_slice().expect("standard")[i * per..(i + 1) * per];
        let want: Vec<f64> = reference.run(&ArrayD::from_shape_vec(IxDyn(&[1, s[0], s[1], s[2]]), xi.to_vec())?)?.iter().copied().collect();
        let sim = plan.simulate(&plan.quantise_input(xi));
        let sim_logits = plan.decode_output(&sim.outputs);
        let t = Instant::now();
        let result = encrypt_image(&client, &plan, xi).and_then(|cts| run(&server, &prepared, cts, |_, _| pb.inc(1)));
        let secs = t.elapsed().as_secs_f64();
        let rp = argmax(&want);
        let qp = argmax(&sim_logits);
        let margin = top_two_gap(&sim_logits);
        match result {
            Ok((out, rep)) => {
                let (got, raw) = decrypt_logits(&client, &plan, &out);
                let pp = argmax(&got);
                if stage_s.is_empty() {
                    stage_s = rep.stage_seconds.clone();
                } else {
                    for (a, b) in stage_s.iter_mut().zip(&rep.stage_seconds) {
                        a.1 += b.1;
                    }
                }
                reports.push(Report {
                    index: i,
                    label: labels[i],
                    packed_prediction: Some(pp),
                    reference_prediction: rp,
                    quantised_prediction: qp,
                    agree: pp == rp,
                    agree_quantised: pp == qp,
                    identical_to_simulation: raw == sim.outputs,
                    simulation_margin: margin,
                    output_units_from_simulation: raw.iter().zip(&sim.outputs).map(|(a, b)| (a - b).abs()).max().unwrap_or(0),
                    max_abs_logit_error: got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max),
                    seconds: secs,
                    bootstraps: rep.bootstraps,
                    error: None,
                });
            }
            Err(e) => reports.push(Report {
                index: i,
                label: labels[i],
                packed_prediction: None,
                reference_prediction: rp,
                quantised_prediction: qp,
                agree: false,
                agree_quantised: false,
                identical_to_simulation: false,
                output_units_from_simulation: 0,
                simulation_margin: margin,
                max_abs_logit_error: f64::INFINITY,
                seconds: secs,
                bootstraps: 0,
                error: Some(e.to_string()),
            }),
        }
        if let Some(r) = reports.last() {
            let detail = image_detail(r.packed_prediction, r.reference_prediction, r.label, r.seconds, r.error.as_deref());
            let distance = match (&r.error, r.identical_to_simulation) {
                (Some(_), _) => "no output".to_string(),
                (None, true) => "outputs identical".to_string(),
                (None, false) => format!("outputs {} units off", r.output_units_from_simulation),
            };
            log_item("tfhe", i + 1, count, &format!("{detail}, simulation {} (margin {:.3}), {distance}", r.quantised_prediction, r.simulation_margin));
        }
    }
    pb.finish_and_clear();
    let n = reports.len();
    let agree = reports.iter().filter(|r| r.agree).count();
    let agree_q = reports.iter().filter(|r| r.agree_quantised).count();
    let identical = reports.iter().filter(|r| r.identical_to_simulation).count();
    let failed = reports.iter().filter(|r| r.error.is_some()).count();
    let correct = reports.iter().filter(|r| r.label.is_some_and(|l| Some(l as usize) == r.packed_prediction)).count();
    let q_correct = reports.iter().filter(|r| r.label.is_some_and(|l| l as usize == r.quantised_prediction)).count();
    let ok: Vec<&Report> = reports.iter().filter(|r| r.error.is_none()).collect();
    let max_err = ok.iter().map(|r| r.max_abs_logit_error).fold(0.0, f64::max);
    let max_units = ok.iter().map(|r| r.output_units_from_simulation).max().unwrap_or(0);
    let mean_s = ok.iter().map(|r| r.seconds).sum::<f64>() / ok.len().max(1) as f64;
    let stage_rows: Vec<_> = stage_s.iter().map(|(k, v)| json!({"step": k, "seconds": v / ok.len().max(1) as f64})).collect();
    if json_out {
        println!(
            "{}",
            json!({"model": m.graph().name, "backend": "tfhe", "security_bits": 128, "set": lwe.name, "bits": p.bits, "activation": mode,
                   "images": reports,
                   "summary": {"images": n, "agree": agree, "agree_quantised": agree_q, "identical_to_simulation": identical,
                               "max_output_units_from_simulation": max_units, "output_step": plan.output_step,
                               "failed": failed, "packed_correct": correct, "quantised_correct": q_correct,
                               "max_abs_logit_error": max_err, "mean_seconds_per_image": mean_s, "plan_seconds": plan_s,
                               "keygen_seconds": keygen_s, "evaluation_key_bytes": key_bytes, "peak_rss_bytes": peak_rss_bytes(),
                               "cost": {"bootstraps": plan.bootstraps(), "rotations": 0}},
                   "step_seconds": stage_rows})
        );
        return Ok(());
    }
    println!("{:>5} {:>5} {:>6} {:>9} {:>9} {:>10} {:>10} {:>12} {:>9} {:>10}", "image", "label", "tfhe", "reference", "quantised", "sim. gap", "sim. diff", "max|Δlogit|", "seconds", "bootstraps");
    for r in &reports {
        println!(
            "{:>5} {:>5} {:>6} {:>9} {:>9} {:>10.3} {:>10} {:>12.3e} {:>9.2} {:>10}",
            r.index,
            r.label.map(|l| l.to_string()).unwrap_or_else(|| "-".into()),
            r.packed_prediction.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            r.reference_prediction,
            r.quantised_prediction,
            r.simulation_margin,
            r.output_units_from_simulation,
            r.max_abs_logit_error,
            r.seconds,
            r.bootstraps
        );
        if let Some(e) = &r.error {
            println!("      failed: {e}");
        }
    }
    println!("sim. gap: the simulation's gap between its two largest logits; sim. diff: largest output difference from it, in output units");
    println!("seconds per stage (mean over images):");
    for row in &stage_rows {
        println!("  {:<24} {:>9.2}", row["step"].as_str().unwrap_or(""), row["seconds"].as_f64().unwrap_or(0.0));
    }
    println!(
        "identical to the quantised simulation {identical}/{n} (largest output difference {max_units} units of {:.3e}), top-1 equal to it {agree_q}/{n}, to the float reference {agree}/{n} ({failed} failed); tfhe top-1 {correct}/{n} (simulation {q_correct}/{n}); {mean_s:.1} s/image, {} bootstraps/image; calibration {plan_s:.1} s, keygen {keygen_s:.1} s, evaluation keys {:.1} MiB, peak resident {}",
        plan.output_step,
        plan.bootstraps(),
        key_bytes as f64 / (1u64 << 20) as f64,
        peak_rss_bytes().map(|b| format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)).unwrap_or_else(|| "unknown".into())
    );
    Ok(())
}

/// The gap between the two largest values (0 for fewer than two).
fn top_two_gap(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.to_vec();
    s.sort_by(|a, b| b.total_cmp(a));
    if s.len() < 2 { 0.0 } else { s[0] - s[1] }
}

fn bits_summary(p: &LweParams) -> String {
    format!("{} bits, N = {}, noise bound {}, 128-bit security", p.bits, p.polynomial_size(), p.noise_bound)
}

/// `peregrine simulate`: accuracy of the quantised simulation alone (integers in the clear, no
/// encryption), to choose the precision before an encrypted run.
pub fn simulate_cmd(model_path: &Path, params: &str, activation: Option<&str>, data: &Path, limit: usize, json_out: bool) -> Result<()> {
    let Calibrated { params: p, mode, model: m, real, plan, .. } = calibrate(model_path, params, activation, Some(data))?;
    let input = &m.graph().input;
    if let Some(path) = &p.save_plan {
        std::fs::write(path, serde_json::to_vec(&plan)?).with_context(|| format!("writing {}", path.display()))?;
    }
    if !json_out {
        for line in plan.describe() {
            eprintln!("  {line}");
        }
    }
    let imgs = load_cifar10(data, Some(limit))?;
    let x = preprocess::<f64>(&imgs.pixels, imgs.len(), input)?;
    let per = x.len() / imgs.len().max(1);
    use rayon::prelude::*;
    let rows: Vec<(usize, usize, usize, usize)> = x
        .as_slice()
        .expect("standard")
        .par_chunks(per)
        .zip(imgs.labels.par_iter())
        .map(|(xi, &l)| {
            let sim = plan.simulate(&plan.quantise_input(xi));
            let q = argmax(&plan.decode_output(&sim.outputs));
            let f = argmax(&real.eval(xi));
            (usize::from(q == l as usize), usize::from(f == l as usize), usize::from(q == f), sim.wrapped)
        })
        .collect();
    let n = rows.len();
    let (qc, fc, ag, wr) = rows.iter().fold((0, 0, 0, 0), |a, r| (a.0 + r.0, a.1 + r.1, a.2 + r.2, a.3 + r.3));
    if json_out {
        println!("{}", json!({"model": m.graph().name, "bits": p.bits, "activation": mode, "images": n, "quantised_correct": qc,
                              "float_correct": fc, "agree": ag, "wrapped_sums": wr, "bootstraps_per_image": plan.bootstraps()}));
    } else {
        println!(
            "{} bits, {:?}: quantised top-1 {qc}/{n} ({:.2} %), float (same activations) {fc}/{n} ({:.2} %), agreement {ag}/{n}, wrapped sums {wr}, {} bootstraps/image",
            p.bits,
            mode,
            100.0 * qc as f64 / n as f64,
            100.0 * fc as f64 / n as f64,
            plan.bootstraps()
        );
    }
    Ok(())
}
