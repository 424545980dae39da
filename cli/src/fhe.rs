//! `convert`, `plan` and `run`: the packed (encrypted) pipeline from the command line.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use ndarray::{ArrayD, IxDyn};
use peregrine_backend::{Backend, Capabilities, Client, Scheme};
use backend_clear::{ClearParams, ClearScheme};
use peregrine_data::{load_cifar10, load_image, preprocess};
use peregrine_model::format::{load_model, save_model};
use peregrine_model::ir::Model;
use peregrine_backend::plugin::{discover, Plugin};
use peregrine_model::reference::Reference;
use peregrine_model::transform::convert;
use peregrine_ops::exec::decrypt_tensor;
use peregrine_ops::{compile, decrypt_output, encrypt_input, execute, plan, with_key_budget, Plan};
use serde_json::json;

use crate::commands::{log_item, plugin_dirs, progress};

/// What to plan for: model, backend, its parameters, plugins, key budget (shared by `plan` and `run`).
#[derive(clap::Args)]
pub struct Target {
    /// Model file (polynomial activations).
    #[arg(long)]
    pub model: PathBuf,
    /// Backend name (`clear` or a plugin's name).
    #[arg(long, default_value = "clear")]
    pub backend: String,
    /// Backend parameters as JSON (e.g. '{"levels": 90}' for clear).
    #[arg(long, default_value = "")]
    pub params: String,
    /// Plugin directory (repeatable).
    #[arg(long = "plugin-dir")]
    pub plugin_dirs: Vec<PathBuf>,
    /// Limit the rotation keys (±2^i keys plus the most used steps; others are composed).
    #[arg(long)]
    pub max_rotation_keys: Option<usize>,
}

impl Target {
    /// Loads the model, resolves the backend and plans; returns the plan time too.
    pub fn load(&self) -> Result<(Model, Chosen, Plan, f64)> {
        let m = load_model(&self.model)?;
        let chosen = Chosen::resolve(&self.backend, &self.params, self.plugin_dirs.clone())?;
        let t0 = Instant::now();
        let p = make_plan(&m, &chosen, self.max_rotation_keys)
            .with_context(|| format!("planning {} for backend '{}'", m.graph().name, self.backend))?;
        Ok((m, chosen, p, t0.elapsed().as_secs_f64()))
    }
}

/// A backend chosen by name: built in, or a plugin from the search path.
pub enum Chosen {
    /// The built-in `clear` backend.
    Clear(ClearParams),
    /// A plugin with its parameters as JSON.
    Plugin(Arc<Plugin>, String),
}

impl Chosen {
    /// Resolves `name` with parameters `params` (JSON, empty for defaults).
    pub fn resolve(name: &str, params: &str, dirs: Vec<PathBuf>) -> Result<Chosen> {
        if name == ClearScheme::NAME {
            let p: ClearParams = if params.trim().is_empty() {
                ClearParams::default()
            } else {
                serde_json::from_str(params).with_context(|| "invalid --params for the clear backend")?
            };
            return Ok(Chosen::Clear(p));
        }
        let dirs = plugin_dirs(dirs);
        for (path, r) in discover(&dirs) {
            if let Ok(p) = r {
                if p.name() == name {
                    let _ = path;
                    return Ok(Chosen::Plugin(p, params.to_string()));
                }
            }
        }
        bail!(
            "unknown backend '{name}': built in is 'clear'; no plugin of that name in the search path {:?} (set --plugin-dir or PEREGRINE_PLUGIN_PATH)",
            dirs
        )
    }

    /// Capabilities for the chosen parameters, without keys.
    pub fn capabilities(&self) -> Result<Capabilities> {
        Ok(match self {
            Chosen::Clear(p) => ClearScheme::capabilities(p)?,
            Chosen::Plugin(pl, params) => pl.capabilities(params)?,
        })
    }
}

/// Builds a plan for `model` on the chosen backend.
pub fn make_plan(model: &Model, chosen: &Chosen, max_keys: Option<usize>) -> Result<Plan> {
    let caps = chosen.capabilities()?;
    let program = compile(model, caps.slots)?;
    let p = plan(program, &caps)?;
    Ok(match max_keys {
        Some(k) => with_key_budget(p, k)?,
        None => p,
    })
}

/// How `convert` builds the polynomials.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum ConvertMethod {
    /// SFT with zero epochs: Hermite expansion, PolyAct-RN running-max ranges, batch norm folded.
    Hermite,
    /// Least-squares fit on [−1, 1], ranges = margin × largest |x|.
    LeastSquares,
}

#[allow(clippy::too_many_arguments)]
pub fn convert_cmd(
    model: &Path,
    degree: usize,
    method: ConvertMethod,
    bound: f64,
    calibration: &Path,
    count: usize,
    margin: f64,
    output: &Path,
    json_out: bool,
) -> Result<()> {
    let m = load_model(model)?;
    let data = load_cifar10(calibration, Some(count))?;
    let x = preprocess::<f32>(&data.pixels, data.len(), &m.graph().input)?;
    let out = match method {
        ConvertMethod::Hermite => peregrine_sft::convert::convert(&m, degree, bound, &x, 64)?,
        ConvertMethod::LeastSquares => convert(&m, degree, &x, margin)?,
    };
    save_model(&out, output)?;
    if json_out {
        println!(
            "{}",
            json!({"model": output, "name": out.graph().name, "degree": degree, "method": format!("{method:?}").to_lowercase(),
                   "calibration_images": data.len(), "margin": margin, "bound": bound})
        );
    } else {
        println!(
            "wrote {} ({}): activations → degree-{degree} polynomials ({method:?}) calibrated over {} images, max pooling → average pooling",
            output.display(),
            out.graph().name,
            data.len()
        );
    }
    Ok(())
}

pub fn plan_cmd(target: Target, json_out: bool) -> Result<()> {
    let (m, _, p, _) = target.load()?;
    let backend = target.backend.as_str();
    if json_out {
        println!(
            "{}",
            json!({"model": m.graph().name, "backend": backend, "capabilities": p.capabilities, "cost": p.cost,
                   "rotation_keys": p.rotation_keys, "steps": p.steps})
        );
        return Ok(());
    }
    println!("{} on {} ({})", m.graph().name, backend, p.capabilities.summary());
    println!("{:<28} {:<9} {:>5} {:>4} {:>6} {:>7} {:>4}  packing", "step", "kind", "level", "used", "rots", "ct×pt", "cts");
    for s in &p.steps {
        println!(
            "{:<28} {:<9} {:>5} {:>4} {:>6} {:>7} {:>4}  {}",
            s.name, s.kind, s.level, s.levels_used, s.rotations, s.ct_pt_mults, s.ciphertexts, s.packing
        );
    }
    let c = &p.cost;
    println!(
        "total: {} rotations, {} ct×ct (relinearisations), {} key switches, {} ct×pt, {} rescales, {} bootstrapped ciphertexts",
        c.rotations, c.ct_ct_mults, c.key_switches, c.ct_pt_mults, c.rescales, c.bootstraps
    );
    println!(
        "levels consumed {}, peak {} live ciphertexts, {} rotation keys (≈ {:.2} GiB of evaluation keys at full level)",
        c.levels_consumed,
        c.peak_live_ciphertexts,
        c.rotation_keys,
        c.key_bytes_estimate as f64 / (1u64 << 30) as f64
    );
    Ok(())
}

/// What `run` reports per image.
#[derive(serde::Serialize)]
struct ImageReport {
    index: usize,
    label: Option<u8>,
    packed_prediction: Option<usize>,
    reference_prediction: usize,
    agree: bool,
    max_abs_logit_error: f64,
    seconds: f64,
    /// Set when encrypted evaluation failed for this image (e.g. a value overflowed the modulus).
    error: Option<String>,
}

pub(crate) fn argmax(v: &[f64]) -> usize {
    let mut b = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[b] {
            b = i;
        }
    }
    b
}

#[allow(clippy::too_many_arguments)]
pub fn run_cmd(target: Target, data: Option<&Path>, image: Option<&Path>, limit: usize, trace: bool, json_out: bool) -> Result<()> {
    if data.is_some() == image.is_some() {
        bail!("give exactly one of --data or --image");
    }
    let (m, chosen, p, plan_s) = target.load()?;
    let backend = target.backend.as_str();
    let input = &m.graph().input;
    let (pixels, labels, count) = match (data, image) {
        (Some(d), None) => {
            let imgs = load_cifar10(d, Some(limit))?;
            (imgs.pixels.clone(), imgs.labels.iter().map(|l| Some(*l)).collect::<Vec<_>>(), imgs.len())
        }
        (None, Some(i)) => (load_image(i, input)?, vec![None], 1),
        _ => bail!("give exactly one of --data or --image"),
    };
    let x = preprocess::<f64>(&pixels, count, input)?;
    match chosen {
        Chosen::Clear(params) => {
            let t = Instant::now();
            let client = ClearScheme::keygen(&params, &p.key_request())?;
            let (server, key_bytes) = server_for(&client, |k| ClearScheme::server(k), json_out)?;
            run_images(&m, &p, &client, &server, &x, &labels, trace, json_out, backend, plan_s, t.elapsed().as_secs_f64(), key_bytes)
        }
        Chosen::Plugin(pl, params) => {
            let t = Instant::now();
            let client = pl.keygen(&params, &p.key_request())?;
            let (server, key_bytes) = server_for(&client, |k| pl.server(k), json_out)?;
            run_images(&m, &p, &client, &server, &x, &labels, trace, json_out, backend, plan_s, t.elapsed().as_secs_f64(), key_bytes)
        }
    }
}

/// Counts the bytes written to it.
struct ByteCounter(u64);
impl std::io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The server for a one-process run, and the size of the serialised evaluation keys. When the
/// backend can share the client's keys in memory (OpenFHE at N = 2^16: gigabytes) the keys are
/// only streamed through a byte counter; otherwise they are serialised and read back.
fn server_for<C: Client>(
    client: &C,
    from_bytes: impl FnOnce(&[u8]) -> peregrine_backend::BResult<C::Backend>,
    quiet: bool,
) -> Result<(C::Backend, usize)> {
    if let Some(server) = client.local_server()? {
        let mut count = ByteCounter(0);
        client.write_evaluation_keys(&mut count)?;
        if !quiet {
            eprintln!(
                "server shares the client's evaluation keys in memory ({:.2} GiB serialised; it holds no secret key); `peregrine keygen/encrypt/infer/decrypt` runs client and server as separate processes",
                count.0 as f64 / (1u64 << 30) as f64
            );
        }
        return Ok((server, count.0 as usize));
    }
    let keys = client.evaluation_keys()?;
    Ok((from_bytes(&keys)?, keys.len()))
}

#[allow(clippy::too_many_arguments)]
fn run_images<C: Client>(
    m: &Model,
    p: &Plan,
    client: &C,
    server: &C::Backend,
    x: &ArrayD<f64>,
    labels: &[Option<u8>],
    trace: bool,
    json_out: bool,
    backend: &str,
    plan_s: f64,
    keygen_s: f64,
    key_bytes: usize,
) -> Result<()> {
    let reference = Reference::<f64>::new(m);
    let n = labels.len();
    let per = x.len() / n.max(1);
    let pb = progress(n as u64, json_out, "encrypted inference");
    let mut reports = Vec::new();
    let mut step_times: HashMap<String, f64> = HashMap::new();
    let mut trace_rows = Vec::new();
    for i in 0..n {
        let flat: Vec<f64> = x.as_slice().expect("standard")[i * per..(i + 1) * per].to_vec();
        let xin = ArrayD::from_shape_vec(IxDyn(&[1, input_dim(m, 0), input_dim(m, 1), input_dim(m, 2)]), flat.clone())?;
        let mut ref_nodes: HashMap<String, Vec<f64>> = HashMap::new();
        let want: Vec<f64> = if trace && i == 0 {
            reference
                .run_inspect(&xin, |k, v| {
                    ref_nodes.insert(m.graph().nodes[k].name.clone(), v.iter().copied().collect());
                })?
                .iter()
                .copied()
                .collect()
        } else {
            reference.run(&xin)?.iter().copied().collect()
        };
        let t = Instant::now();
        let mut attempt = || -> Result<(Vec<f64>, Vec<peregrine_ops::StepTiming>)> {
        let cts = encrypt_input(client, p, &flat)?;
        let (out, timings) = execute(p, server, cts, |step, tensor, cts: &[<C::Backend as Backend>::Ciphertext]| {
            if trace && i == 0 {
                let name = p.program.tensors[tensor].name.trim_end_matches("@bootstrap").to_string();
                if let Some(r) = ref_nodes.get(&name) {
                    if let Ok(got) = decrypt_tensor(client, p, tensor, cts) {
                        let err = got.iter().zip(r).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
                        let mag = r.iter().fold(0.0f64, |a, b| a.max(b.abs())).max(1e-30);
                        trace_rows.push(json!({"step": step.name, "max_abs_error": err,
                                               "precision_bits": -(err / mag).max(1e-300).log2()}));
                    }
                }
            }
        })?;
        Ok((decrypt_output(client, p, &out)?, timings))
        };
        let result = attempt();
        let secs = t.elapsed().as_secs_f64();
        let rp = argmax(&want);
        match result {
            Ok((got, timings)) => {
                for tm in timings {
                    *step_times.entry(tm.name).or_default() += tm.seconds;
                }
                let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
                let pp = argmax(&got);
                reports.push(ImageReport { index: i, label: labels[i], packed_prediction: Some(pp), reference_prediction: rp, agree: pp == rp, max_abs_logit_error: err, seconds: secs, error: None });
            }
            Err(e) => {
                let finite = want.iter().all(|v| v.is_finite());
                reports.push(ImageReport {
                    index: i,
                    label: labels[i],
                    packed_prediction: None,
                    reference_prediction: rp,
                    agree: false,
                    max_abs_logit_error: f64::INFINITY,
                    seconds: secs,
                    error: Some(format!("{e:#}{}", if finite { "" } else { " (the reference output is not finite either: the model diverges on this input)" })),
                });
            }
        }
        pb.inc(1);
        if let Some(r) = reports.last() {
            log_item(backend, i + 1, n, &image_detail(r.packed_prediction, r.reference_prediction, r.label, r.seconds, r.error.as_deref()));
        }
    }
    pb.finish_and_clear();
    let agree = reports.iter().filter(|r| r.agree).count();
    let failed = reports.iter().filter(|r| r.error.is_some()).count();
    let correct = reports.iter().filter(|r| r.label.is_some_and(|l| Some(l as usize) == r.packed_prediction)).count();
    let ok: Vec<&ImageReport> = reports.iter().filter(|r| r.error.is_none()).collect();
    let max_err = ok.iter().map(|r| r.max_abs_logit_error).fold(0.0, f64::max);
    let mean_s = ok.iter().map(|r| r.seconds).sum::<f64>() / ok.len().max(1) as f64;
    let mut per_step: Vec<(String, f64)> = step_times.into_iter().map(|(k, v)| (k, v / n.max(1) as f64)).collect();
    per_step.sort_by(|a, b| b.1.total_cmp(&a.1));
    if json_out {
        println!(
            "{}",
            json!({"model": m.graph().name, "backend": backend, "security_bits": p.capabilities.security_bits, "images": reports,
                   "summary": {"images": n, "agree": agree, "failed": failed, "packed_correct": correct, "max_abs_logit_error": max_err,
                               "mean_seconds_per_image": mean_s, "plan_seconds": plan_s, "keygen_seconds": keygen_s,
                               "evaluation_key_bytes": key_bytes, "peak_rss_bytes": peak_rss_bytes(), "cost": p.cost},
                   "trace": trace_rows,
                   "step_seconds": per_step.iter().map(|(k, v)| json!({"step": k, "seconds": v})).collect::<Vec<_>>()})
        );
        return Ok(());
    }
    println!("{:>5} {:>5} {:>6} {:>9} {:>6} {:>12} {:>9}", "image", "label", "packed", "reference", "agree", "max|Δlogit|", "seconds");
    for r in &reports {
        println!(
            "{:>5} {:>5} {:>6} {:>9} {:>6} {:>12.3e} {:>9.3}",
            r.index,
            r.label.map(|l| l.to_string()).unwrap_or_else(|| "-".into()),
            r.packed_prediction.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            r.reference_prediction,
            if r.agree { "yes" } else { "NO" },
            r.max_abs_logit_error,
            r.seconds
        );
        if let Some(e) = &r.error {
            println!("      failed: {e}");
        }
    }
    if trace {
        println!("precision trace (image 0):");
        for row in &trace_rows {
            println!("  {:<28} {:>6.1} bits  (max |error| {:.3e})", row["step"].as_str().unwrap_or(""), row["precision_bits"].as_f64().unwrap_or(0.0), row["max_abs_error"].as_f64().unwrap_or(0.0));
        }
    }
    println!(
        "agreement {agree}/{n} ({failed} failed), packed top-1 {correct}/{n}, max |Δlogit| {max_err:.3e}, {mean_s:.3} s/image (plan {plan_s:.2} s, keygen {keygen_s:.2} s, evaluation keys {} bytes, peak resident {})",
        key_bytes,
        peak_rss_bytes().map(|b| format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)).unwrap_or_else(|| "unknown".into())
    );
    Ok(())
}

/// Peak resident memory of this process so far (Linux `VmHWM`), in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn input_dim(m: &Model, i: usize) -> usize {
    m.graph().input.shape[i]
}

/// The per-image line of [`log_item`]: prediction, reference, label, time or error.
pub(crate) fn image_detail(got: Option<usize>, reference: usize, label: Option<u8>, seconds: f64, error: Option<&str>) -> String {
    let label = label.map(|l| l.to_string()).unwrap_or_else(|| "-".into());
    match (got, error) {
        (Some(p), _) => format!("predicted {p}, reference {reference}, label {label}, {seconds:.1} s"),
        (None, e) => format!("failed after {seconds:.1} s: {}", e.unwrap_or("unknown error")),
    }
}
