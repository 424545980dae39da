//! The encrypted subcommands: `plan`, `run`, `simulate`, `compare`, and the client/server
//! session (`keygen`, `encrypt`, `infer`, `decrypt`). Printing only; the runtime does the work.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use indicatif::ProgressBar;
use peregrine_data::{load_cifar10, preprocessed_rows};
use peregrine_runtime::compare::{compare as compare_backends, CompareArgs, CompareReport};
use peregrine_runtime::engine::StepEvent;
use peregrine_runtime::run::{run as run_loop, ImageReport, Inputs, Observer, RunReport};
use peregrine_runtime::session::{Session, KEYS, SECRET};
use peregrine_runtime::{Prepared, Target};
use serde_json::json;

use crate::commands::{log_item, progress, size};
use crate::outputs::{self, OutputArgs};

/// The images of `run`: the first `limit` of a CIFAR-10 batch, or one image file.
pub fn inputs(
    model: &peregrine_model::Model,
    data: Option<&Path>,
    image: Option<&Path>,
    limit: usize,
) -> Result<Inputs> {
    let input = &model.graph().input;
    Ok(match (data, image) {
        (Some(d), None) => Inputs::from_batch(d, limit, input)?,
        (None, Some(i)) => Inputs::from_image(i, input)?,
        _ => bail!("give exactly one of --data or --image"),
    })
}

pub fn plan(target: Target, json: bool) -> Result<()> {
    let report = target.prepare(None, None)?.compiled.describe();
    if json {
        println!("{}", report.json);
    } else {
        println!("{}", report.headline);
        report.lines.iter().for_each(|l| println!("{l}"));
    }
    Ok(())
}

/// Progress of a run: a bar over images on a terminal, a line per image in a log.
struct Progress {
    bar: ProgressBar,
    backend: String,
    quiet: bool,
}

impl Observer for Progress {
    fn keys_ready(&mut self, key_bytes: u64, shared: bool) {
        if shared && !self.quiet {
            self.bar.suspend(|| eprintln!(
                "server shares the client's evaluation keys in memory ({} serialised; it holds no secret key); `peregrine keygen/encrypt/infer/decrypt` runs client and server as separate processes",
                size(Some(key_bytes))
            ));
        }
    }
    fn step(&mut self, image: usize, e: &StepEvent) {
        self.bar.set_message(format!("{} {}/{}", e.name, e.done, e.total));
        // In a log (no terminal), one line per step shows where a long encrypted run is.
        if self.bar.is_hidden() && !self.quiet {
            eprintln!(
                "[{}] image {} step {}/{} {} ({:.1} s)",
                self.backend,
                image + 1,
                e.done,
                e.total,
                e.name,
                e.seconds
            );
        }
    }
    fn image_done(&mut self, r: &ImageReport, total: usize) {
        self.bar.inc(1);
        log_item(&self.backend, r.index + 1, total, &r.describe());
    }
}

/// What `run` takes: images, whether to trace, the activation mode.
pub struct RunArgs {
    pub data: Option<PathBuf>,
    pub image: Option<PathBuf>,
    pub limit: usize,
    pub trace: bool,
    pub activation: Option<String>,
    pub output: OutputArgs,
}

pub fn run(target: Target, a: RunArgs, json: bool) -> Result<()> {
    if a.data.is_some() == a.image.is_some() {
        bail!("give exactly one of --data or --image");
    }
    if a.output.wanted() && a.image.is_none() {
        bail!("--annotate, --yolo-classes and --mask read the output of one photo: give --image");
    }
    let Prepared { model, compiled, seconds } = target.prepare(a.activation.as_deref(), a.data.as_deref())?;
    if a.output.wanted() {
        // Refuse an output the model cannot give before the (long) encrypted run, not after.
        let size: usize = model.output_shape().iter().product();
        outputs::decode(&model, &vec![0.0; size], &a.output)?;
    }
    let plan = compiled.describe();
    let inputs = inputs(&model, a.data.as_deref(), a.image.as_deref(), a.limit)?;
    if let Some(probe) = inputs.images.first().and_then(|x| compiled.probe(x)) {
        return print_probe(&probe?, &plan.json, json);
    }
    if !json {
        eprintln!("{}", plan.headline);
    }
    let mut observer = Progress {
        bar: progress(inputs.images.len() as u64, json, "encrypted inference"),
        backend: target.backend.clone(),
        quiet: json,
    };
    let report = run_loop(&model, compiled.as_ref(), &inputs, a.trace, seconds, &mut observer)?;
    observer.bar.finish_and_clear();
    let client = match (&a.image, a.output.wanted()) {
        (Some(image), true) => Some(client_output(&model, &report, image, &a.output, &target.backend)?),
        _ => None,
    };
    if json {
        let mut v = serde_json::to_value(&report)?;
        if let Some((decoded, agreement)) = &client {
            v["client_output"] = json!({
                "decrypted": outputs::to_json(&model, decoded, &a.output, 3),
                "agreement": {"what": agreement.what, "agree": agreement.agree, "of": agreement.of, "summary": agreement.summary},
                "annotated": a.output.annotate,
            });
        }
        println!("{v}");
    } else {
        print_run(&report);
        if let Some((decoded, agreement)) = &client {
            println!("decrypted output, decoded on the client side:");
            outputs::print(&model, decoded, &a.output, 3);
            println!("against the cleartext model: {}", agreement.summary);
            if let Some(out) = &a.output.annotate {
                println!("wrote {}", out.display());
            }
        }
    }
    Ok(())
}

/// Decodes the decrypted output of the one photo of a run (detections, mask or classes),
/// compares it with the cleartext model's decoding, and draws it when asked.
fn client_output(
    model: &peregrine_model::Model,
    report: &RunReport,
    image: &Path,
    a: &OutputArgs,
    backend: &str,
) -> Result<(outputs::Decoded, outputs::Agreement)> {
    let first = report.images.first().ok_or_else(|| anyhow::anyhow!("the run has no image"))?;
    let Some(decrypted) = &first.decrypted else {
        bail!(
            "the encrypted run failed ({}); there is no output to decode",
            first.error.as_deref().unwrap_or("no reason given")
        );
    };
    let decrypted: Vec<f32> = decrypted.iter().map(|v| *v as f32).collect();
    let want: Vec<f32> = first.reference.iter().map(|v| *v as f32).collect();
    let decoded = outputs::decode(model, &decrypted, a)?;
    let agreement = outputs::agreement(
        &decoded,
        &outputs::decode(model, &want, a)?,
        0.9,
        outputs::Sides { ours: "decrypted", theirs: "cleartext" },
    );
    if let Some(out) = &a.annotate {
        outputs::annotate(model, image, &decoded, a, out, &format!("decrypted, {backend}"))?;
    }
    Ok((decoded, agreement))
}

fn print_run(r: &RunReport) {
    let sim = r.summary.simulation.as_ref();
    println!(
        "{:>5} {:>5} {:>6} {:>9} {:>6} {:>12} {:>9}{}",
        "image",
        "label",
        "packed",
        "reference",
        "agree",
        "max|Δlogit|",
        "seconds",
        if sim.is_some() {
            format!(" {:>9} {:>10} {:>10} {:>10}", "quantised", "sim. gap", "sim. diff", "bootstraps")
        } else {
            String::new()
        }
    );
    let dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    for i in &r.images {
        let extra = i.simulation.as_ref().map_or(String::new(), |s| {
            format!(
                " {:>9} {:>10.3} {:>10} {:>10}",
                s.quantised_prediction,
                s.simulation_margin,
                s.output_units_from_simulation,
                dash(i.bootstraps.map(|b| b.to_string()))
            )
        });
        println!(
            "{:>5} {:>5} {:>6} {:>9} {:>6} {:>12} {:>9.3}{extra}",
            i.index,
            dash(i.label.map(|l| l.to_string())),
            dash(i.packed_prediction.map(|p| p.to_string())),
            i.reference_prediction,
            if i.agree { "yes" } else { "NO" },
            dash(i.max_abs_logit_error.map(|e| format!("{e:.3e}"))),
            i.seconds
        );
        if let Some(e) = &i.error {
            println!("      failed: {e}");
        }
    }
    if !r.trace.is_empty() {
        println!("precision trace (image 0):");
        for t in &r.trace {
            println!("  {:<28} {:>6.1} bits  (max |error| {:.3e})", t.step, t.precision_bits, t.max_abs_error);
        }
    }
    let s = &r.summary;
    let n = s.images;
    if let Some(q) = sim {
        println!("sim. gap: the simulation's gap between its two largest logits; sim. diff: largest output difference from it, in output units");
        println!("seconds per stage (mean over images):");
        r.step_seconds.iter().for_each(|st| println!("  {:<24} {:>9.2}", st.step, st.seconds));
        println!(
            "identical to the quantised simulation {}/{n} (largest output difference {} units of {:.3e}), top-1 equal to it {}/{n}; simulation top-1 {}/{n}",
            q.identical_to_simulation, q.max_output_units_from_simulation, q.output_step, q.agree_quantised, q.quantised_correct
        );
    }
    println!(
        "agreement {}/{n} ({} failed), packed top-1 {}/{n}, max |Δlogit| {:.3e}, {:.3} s/image (plan {:.2} s, keygen {:.2} s, evaluation keys {}, peak resident {})",
        s.agree, s.failed, s.packed_correct, s.max_abs_logit_error, s.mean_seconds_per_image, s.plan_seconds, s.keygen_seconds,
        size(Some(s.evaluation_key_bytes)), size(s.peak_rss_bytes)
    );
}

fn print_probe(p: &peregrine_runtime::engine::ProbeReport, plan: &serde_json::Value, json: bool) -> Result<()> {
    if json {
        let mut v = json!(p);
        v["model"] = plan["model"].clone();
        v["backend"] = plan["backend"].clone();
        v["bootstraps"] = plan["bootstraps"].clone();
        println!("{v}");
        return Ok(());
    }
    println!(
        "{:<24} {:>9} {:>8} {:>10} {:>14} {:>10} {:>9}",
        "stage", "elements", "sampled", "seconds", "extrapolated s", "≠ sim.", "max off"
    );
    for q in &p.stages {
        println!(
            "{:<24} {:>9} {:>8} {:>10.2} {:>14.1} {:>10} {:>9}",
            q.node, q.elements, q.sampled, q.seconds, q.extrapolated_seconds, q.mismatched, q.max_units_off
        );
    }
    println!("≠ sim.: sampled outputs that differ from the quantised simulation; max off: the largest difference, in units of the stage's output encoding");
    println!(
        "extrapolated {:.0} s ({:.2} h) per image for {} bootstraps; keygen {:.1} s, evaluation keys {}",
        p.extrapolated_seconds_per_image,
        p.extrapolated_seconds_per_image / 3600.0,
        plan["bootstraps"],
        p.keygen_seconds,
        size(Some(p.evaluation_key_bytes))
    );
    Ok(())
}

pub fn simulate(
    model: &Path,
    params: &str,
    activation: Option<&str>,
    data: &Path,
    limit: usize,
    json: bool,
) -> Result<()> {
    let m = peregrine_model::load_model(model)?;
    let tfhe = peregrine_runtime::tfhe::TfheModel::new(&m, params, activation, Some(data))?;
    if !json {
        tfhe.plan().describe().iter().for_each(|l| eprintln!("  {l}"));
    }
    let imgs = load_cifar10(data, Some(limit))?;
    let r = tfhe.simulate_all(&preprocessed_rows(&imgs, &m.graph().input)?, &imgs.labels);
    if json {
        println!("{}", json!(r));
        return Ok(());
    }
    let pct = |k: usize| 100.0 * k as f64 / r.images.max(1) as f64;
    println!(
        "{} bits, {:?}: quantised top-1 {}/{} ({:.2} %), float (same activations) {}/{} ({:.2} %), agreement {}/{}, wrapped sums {}, {} bootstraps/image",
        r.bits, r.activation, r.quantised_correct, r.images, pct(r.quantised_correct), r.float_correct, r.images, pct(r.float_correct),
        r.agree, r.images, r.wrapped_sums, r.bootstraps_per_image
    );
    Ok(())
}

pub fn compare(args: &CompareArgs, json: bool) -> Result<()> {
    let exe = std::env::current_exe()?;
    let report = compare_backends(&exe, args, &mut |backend, line| {
        if !json {
            eprintln!("[{backend}] {line}");
        }
    })?;
    if json {
        println!("{}", report.to_json(args));
    } else {
        print_table(&report);
    }
    if report.failed() > 0 {
        bail!("{} of {} backends failed (see the table)", report.failed(), report.rows.len());
    }
    Ok(())
}

fn print_table(report: &CompareReport) {
    let row = |c: [&str; 9]| {
        println!(
            "{:<10} {:>9} {:>10} {:>11} {:>10} {:>10} {:>12} {:>12} {:>9}",
            c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8]
        )
    };
    row([
        "backend",
        "accuracy",
        "agreement",
        "max|Δlogit|",
        "s/image",
        "keygen s",
        "peak memory",
        "eval keys",
        "security",
    ]);
    if let Some((c, n)) = report.reference {
        row(["reference", &format!("{c}/{n}"), "-", "-", "-", "-", "-", "-", "none"]);
    }
    for r in &report.rows {
        let Ok(v) = &r.result else {
            println!(
                "{:<10} failed: {}",
                r.backend,
                r.result.as_ref().err().map(|e| e.to_string()).unwrap_or_default()
            );
            continue;
        };
        let s = &v.summary;
        let security = v.security_bits.map_or("none".into(), |b| format!("{b}-bit"));
        row([
            &r.backend,
            &format!("{}/{}", s.packed_correct, s.images),
            &format!("{}/{}", s.agree, s.images),
            &format!("{:.2e}", s.max_abs_logit_error),
            &format!("{:.3}", s.mean_seconds_per_image),
            &format!("{:.2}", s.keygen_seconds),
            &size(s.peak_rss_bytes),
            &size(Some(s.evaluation_key_bytes)),
            &security,
        ]);
    }
    for r in &report.rows {
        if let Ok(v) = &r.result {
            if let Some(q) = &v.summary.simulation {
                println!(
                    "{}: top-1 equal to its quantised simulation {}/{n} (identical outputs {}/{n}), {} bootstraps/image, {} bits",
                    r.backend, q.agree_quantised, q.identical_to_simulation, v.summary.cost["bootstraps"], v.details.get("bits").unwrap_or(&json!("?")),
                    n = v.summary.images
                );
            }
        }
    }
    println!("accuracy: packed top-1 against the labels; agreement: packed top-1 equal to the cleartext reference's; peak: resident memory of the whole run (client and server in one process)");
}

pub fn keygen(target: Target, dir: &Path, json: bool) -> Result<()> {
    let k = Session::keygen(dir, &target)?;
    if json {
        println!("{}", json!(k));
    } else {
        println!(
            "keys for {} on {} in {:.1} s: {KEYS} (evaluation keys, {}, {} rotations) and {SECRET} (SECRET: keep on the client) in {}",
            k.model, k.backend, k.keygen_seconds, size(Some(k.evaluation_key_bytes)), k.rotation_keys, dir.display()
        );
    }
    Ok(())
}

pub fn encrypt(dir: &Path, data: &Path, limit: usize, json: bool) -> Result<()> {
    let t = std::time::Instant::now();
    let n = Session::open(dir)?.encrypt(data, limit)?;
    let secs = t.elapsed().as_secs_f64();
    if json {
        println!("{}", json!({"images": n, "dir": dir, "seconds": secs}));
    } else {
        println!("encrypted {n} images into {} in {secs:.1} s", dir.display());
    }
    Ok(())
}

pub fn infer(dir: &Path, json: bool) -> Result<()> {
    let session = Session::open(dir)?;
    let r = session.infer(|i, s| {
        if !json {
            eprintln!("image {i}: {s:.2} s");
        }
    })?;
    if json {
        println!("{}", json!(r));
    } else {
        println!(
            "evaluated {} encrypted images ({} on {}): {:.2} s/image",
            r.images, r.model, r.backend, r.mean_seconds_per_image
        );
    }
    Ok(())
}

pub fn decrypt(dir: &Path, json: bool) -> Result<()> {
    let r = Session::open(dir)?.decrypt()?;
    if json {
        println!("{}", json!(r));
        return Ok(());
    }
    for i in &r.images {
        let sim = i.simulation.as_ref().map_or(String::new(), |s| {
            format!(
                ", {}",
                if s.identical_to_simulation {
                    "identical to the simulation".to_string()
                } else {
                    format!("{} units from the simulation", s.output_units_from_simulation)
                }
            )
        });
        println!(
            "image {:>4}: prediction {} (reference {}, label {}), max |Δlogit| {:.3e}{sim}",
            i.index, i.prediction, i.reference_prediction, i.label, i.max_abs_logit_error
        );
    }
    println!("agreement with the cleartext reference: {}/{}", r.agree, r.images.len());
    Ok(())
}
