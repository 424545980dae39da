//! The cleartext subcommands (import, eval, predict, info, convert, backends) and the progress
//! helpers every subcommand shares.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use peregrine_data::{load_cifar10, load_image, preprocess};
use peregrine_model::import::{import_cifar_resnet, small_cnn};
use peregrine_model::reference::Reference;
use peregrine_model::{load_model, save_model, Model};
use peregrine_runtime::eval::accuracy_and_outputs;
use peregrine_runtime::Registry;
use serde_json::json;

use crate::outputs::{self, OutputArgs};
use crate::Precision;

/// A progress bar on stderr (hidden when `quiet`).
pub fn progress(len: u64, quiet: bool, what: &str) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// One plain line per finished item on stderr when stderr is not a terminal (a log file, a
/// pipe), where the progress bar draws nothing: long encrypted runs stay observable.
pub fn log_item(what: &str, done: usize, total: usize, detail: &str) {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        eprintln!("{what}: {done}/{total} {detail}");
    }
}

/// Bytes as MiB below 1 GiB, GiB above.
pub fn size(bytes: Option<u64>) -> String {
    match bytes {
        Some(b) if b < 1 << 30 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        Some(b) => format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
        None => "unknown".into(),
    }
}

pub fn import_resnet(depth: usize, weights: &Path, output: &Path, json: bool) -> Result<()> {
    let model = import_cifar_resnet(depth, weights).with_context(|| format!("importing ResNet-{depth}"))?;
    write_imported(&model, output, json)
}

pub fn import_small_cnn(widths: &[usize], seed: u64, output: &Path, json: bool) -> Result<()> {
    write_imported(&small_cnn(widths, seed)?, output, json)
}

/// The choices of `peregrine import onnx` besides the files.
pub struct OnnxArgs {
    /// `--input-shape`.
    pub input_shape: Option<Vec<usize>>,
    /// `--mean`.
    pub mean: Option<Vec<f32>>,
    /// `--std`.
    pub std: Option<Vec<f32>>,
    /// `--graph-output`.
    pub graph_output: Vec<String>,
    /// `--classes`.
    pub classes: Vec<String>,
    /// `--bgr`.
    pub bgr: bool,
}

pub fn import_onnx(path: &Path, args: OnnxArgs, output: &Path, json: bool) -> Result<()> {
    use peregrine_model::ir::Preprocess;
    use peregrine_model::onnx::{import_onnx, OnnxOptions};
    let OnnxArgs { input_shape, mean, std, graph_output, classes, bgr } = args;
    let preprocess = match (mean, std) {
        (None, None) => None,
        (mean, std) => {
            let n = mean.as_ref().or(std.as_ref()).map_or(0, Vec::len);
            Some(Preprocess { mean: mean.unwrap_or(vec![0.0; n]), std: std.unwrap_or(vec![1.0; n]), resize: true })
        }
    };
    let options = OnnxOptions { input_shape, preprocess, classes, outputs: graph_output };
    let model = import_onnx(path, &options)?;
    let model = if bgr { peregrine_model::transform::reverse_input_channels(&model)? } else { model };
    write_imported(&model, output, json)
}

fn write_imported(model: &Model, output: &Path, json: bool) -> Result<()> {
    save_model(model, output)?;
    let (g, n) = (model.graph(), model.parameter_count());
    if json {
        println!("{}", json!({"model": output, "architecture": g.name, "nodes": g.nodes.len(), "parameters": n}));
    } else {
        println!("wrote {} ({}, {} nodes, {n} parameters)", output.display(), g.name, g.nodes.len());
    }
    Ok(())
}

pub fn eval(
    model_path: &Path,
    data: &Path,
    limit: Option<usize>,
    batch: usize,
    precision: Precision,
    outputs_csv: Option<&Path>,
    json: bool,
) -> Result<()> {
    let start = std::time::Instant::now();
    let model = load_model(model_path)?;
    let images = load_cifar10(data, limit)?;
    let pb = progress(images.len() as u64, json, "eval");
    let tick = |n: usize| pb.inc(n as u64);
    let ((a, rows), ty) = match precision {
        Precision::F32 => (accuracy_and_outputs::<f32>(&model, &images, batch, tick)?, "f32"),
        Precision::F64 => (accuracy_and_outputs::<f64>(&model, &images, batch, tick)?, "f64"),
    };
    pb.finish_and_clear();
    if let Some(path) = outputs_csv {
        write_outputs_csv(path, &images.labels, &rows)?;
    }
    let (total_s, threads) = (start.elapsed().as_secs_f64(), rayon::current_num_threads());
    let acc = a.correct as f64 / a.images as f64;
    if json {
        println!(
            "{}",
            json!({"model": model_path, "data": data, "images": a.images, "correct": a.correct, "accuracy": acc,
                   "non_finite_outputs": a.non_finite, "precision": ty, "threads": threads, "outputs": outputs_csv,
                   "inference_seconds": a.seconds, "total_seconds": total_s})
        );
        return Ok(());
    }
    let overflow =
        if a.non_finite > 0 { format!("; {} outputs not finite, counted wrong", a.non_finite) } else { String::new() };
    println!(
        "{}: top-1 {}/{} = {acc:.4} ({ty}, {:.2} s inference, {total_s:.2} s total, {threads} threads){overflow}",
        model.graph().name,
        a.correct,
        a.images,
        a.seconds
    );
    if let Some(path) = outputs_csv {
        println!("wrote every image's outputs to {}", path.display());
    }
    Ok(())
}

/// Writes `eval --outputs`: one row per image — index, label, top-1 prediction (empty when an
/// output is not finite), then the outputs.
fn write_outputs_csv(path: &Path, labels: &[u8], rows: &[Vec<f64>]) -> Result<()> {
    use std::fmt::Write as _;
    let width = rows.first().map_or(0, Vec::len);
    let mut text = String::from("image,label,prediction");
    for j in 0..width {
        write!(text, ",output{j}").expect("writing to a String");
    }
    text.push('\n');
    for (i, (row, label)) in rows.iter().zip(labels).enumerate() {
        let prediction = if row.iter().all(|v| v.is_finite()) {
            row.iter()
                .enumerate()
                .fold((0, f64::NEG_INFINITY), |b, (j, &v)| if v > b.1 { (j, v) } else { b })
                .0
                .to_string()
        } else {
            String::new()
        };
        write!(text, "{i},{label},{prediction}").expect("writing to a String");
        for v in row {
            write!(text, ",{v}").expect("writing to a String");
        }
        text.push('\n');
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// `peregrine predict`.
#[derive(clap::Args)]
pub struct PredictArgs {
    /// Model file.
    #[arg(long)]
    model: PathBuf,
    /// Image file (or, with `--against`, a directory of them: the agreement pooled over all).
    #[arg(long)]
    image: PathBuf,
    /// How many top classes to print.
    #[arg(long, default_value_t = 3)]
    top: usize,
    /// The original model of a converted one (same input and output shapes): run it on the same
    /// image and report the agreement, decoded as for `--model` (top-1, boxes matched at IoU
    /// ≥ 0.9, or mask pixels and mask IoU); for a directory of images, per photo and pooled
    /// (top-1 agreement; boxes found at IoU ≥ 0.5 and ≥ 0.9; mask pixels and pooled mask IoU).
    #[arg(long, value_name = "MODEL")]
    against: Option<PathBuf>,
    #[command(flatten)]
    output: OutputArgs,
}

pub fn predict(a: &PredictArgs, json: bool) -> Result<()> {
    if a.image.is_dir() {
        return predict_directory(a, json);
    }
    let model = load_model(&a.model)?;
    let input = &model.graph().input;
    let x = preprocess::<f32>(&load_image(&a.image, input)?, 1, input)?;
    let logits: Vec<f32> = Reference::<f32>::new(&model).run(&x)?.iter().copied().collect();
    let decoded = outputs::decode(&model, &logits, &a.output)?;
    let agreement = match &a.against {
        Some(path) => Some(against(&model, path, &x, logits.len(), &decoded, &a.output)?),
        None => None,
    };
    if let Some(out) = &a.output.annotate {
        outputs::annotate(&model, &a.image, &decoded, &a.output, out, "")?;
    }
    if json {
        let mut v = outputs::to_json(&model, &decoded, &a.output, a.top);
        v["image"] = json!(a.image);
        v["annotated"] = json!(a.output.annotate);
        if matches!(decoded, outputs::Decoded::Classes(_)) {
            v["logits"] = json!(logits);
        }
        if let Some(g) = &agreement {
            v["against"] =
                json!({"model": a.against, "what": g.what, "agree": g.agree, "of": g.of, "summary": g.summary});
        }
        println!("{v}");
    } else {
        outputs::print(&model, &decoded, &a.output, a.top);
        if let Some(g) = &agreement {
            println!("against {}: {}", a.against.as_ref().expect("compared").display(), g.summary);
        }
        if let Some(out) = &a.output.annotate {
            println!("wrote {}", out.display());
        }
    }
    Ok(())
}

/// `predict --image DIR --against ORIGINAL`: every photo of the directory through both
/// models, the agreement per photo and pooled.
fn predict_directory(a: &PredictArgs, json: bool) -> Result<()> {
    let Some(original_path) = &a.against else {
        bail!("--image {} is a directory: give --against ORIGINAL to pool a converted model's agreement over its photos, or name one image", a.image.display());
    };
    if a.output.annotate.is_some() {
        bail!("--annotate draws one photo: name one image, not the directory {}", a.image.display());
    }
    let files = peregrine_data::image_files(&a.image)?;
    let model = load_model(&a.model)?;
    let original = load_model(original_path)?;
    let (ours, theirs) = (Reference::<f32>::new(&model), Reference::<f32>::new(&original));
    let mut pooled = outputs::Pooled::default();
    let mut rows = Vec::new();
    for file in &files {
        let input = &model.graph().input;
        let x = preprocess::<f32>(
            &load_image(file, input).with_context(|| format!("reading {}", file.display()))?,
            1,
            input,
        )?;
        let logits: Vec<f32> = ours.run(&x)?.iter().copied().collect();
        let decoded = outputs::decode(&model, &logits, &a.output)?;
        let g = against_model(&model, (&original, &theirs), original_path, &x, logits.len(), &decoded, &a.output)?;
        pooled.add(&decoded, &g.1);
        if json {
            rows.push(
                json!({"image": file, "what": g.0.what, "agree": g.0.agree, "of": g.0.of, "summary": g.0.summary}),
            );
        } else {
            println!("{}: {}", file.display(), g.0.summary);
        }
    }
    if json {
        println!(
            "{}",
            json!({"model": a.model, "against": original_path, "images": rows, "pooled": {
                "what": pooled.what, "photos": pooled.images, "top1": pooled.top1,
                "boxes": {"original": pooled.boxes[0], "converted": pooled.boxes[1], "found_iou_0_5": pooled.boxes[2], "found_iou_0_9": pooled.boxes[3]},
                "mask": {"agree": pooled.mask[0], "pixels": pooled.mask[1], "both": pooled.mask[2], "either": pooled.mask[3]},
                "summary": pooled.summary()}})
        );
    } else {
        println!("pooled against {}: {}", original_path.display(), pooled.summary());
    }
    Ok(())
}

/// Runs the original model at `path` on the same preprocessed image `x` and compares its
/// decoding with the converted model's.
fn against(
    model: &peregrine_model::Model,
    path: &Path,
    x: &ndarray::ArrayD<f32>,
    output_len: usize,
    decoded: &outputs::Decoded,
    a: &OutputArgs,
) -> Result<outputs::Agreement> {
    let original = load_model(path)?;
    let executor = Reference::<f32>::new(&original);
    Ok(against_model(model, (&original, &executor), path, x, output_len, decoded, a)?.0)
}

/// [`against`] with the original model loaded (from `path`, named in errors) and its
/// executor built; also returns the original's decoding.
fn against_model(
    model: &peregrine_model::Model,
    (original, executor): (&peregrine_model::Model, &Reference<f32>),
    path: &Path,
    x: &ndarray::ArrayD<f32>,
    output_len: usize,
    decoded: &outputs::Decoded,
    a: &OutputArgs,
) -> Result<(outputs::Agreement, outputs::Decoded)> {
    let (gi, oi) = (&model.graph().input, &original.graph().input);
    if gi.shape != oi.shape || gi.preprocess != oi.preprocess {
        bail!(
            "--against {}: its input ({:?}, {:?}) differs from the model's input ({:?}, {:?}); compare models that read the image alike",
            path.display(),
            oi.shape,
            oi.preprocess,
            gi.shape,
            gi.preprocess
        );
    }
    let y: Vec<f32> = executor.run(x)?.iter().copied().collect();
    if y.len() != output_len {
        bail!(
            "--against {}: it has {} outputs, the model {output_len}; compare a model with its own original",
            path.display(),
            y.len()
        );
    }
    let reference = outputs::decode(original, &y, a)?;
    let g = outputs::agreement(decoded, &reference, 0.9, outputs::Sides { ours: "converted", theirs: "original" });
    Ok((g, reference))
}

pub fn info(model_path: &Path, json: bool) -> Result<()> {
    let model = load_model(model_path)?;
    let g = model.graph();
    if json {
        let nodes: Vec<_> = g
            .nodes
            .iter()
            .zip(model.shapes())
            .map(|(n, s)| json!({"name": n.name, "op": n.op.kind(), "inputs": n.inputs, "shape": s}))
            .collect();
        println!(
            "{}",
            json!({"name": g.name, "version": g.version, "input": g.input, "output": g.output,
                   "classes": g.classes, "client_activation": g.client_activation,
                   "parameters": model.parameter_count(), "nodes": nodes})
        );
        return Ok(());
    }
    println!("{} (format v{}), input {:?}, {} parameters", g.name, g.version, g.input.shape, model.parameter_count());
    for (n, s) in g.nodes.iter().zip(model.shapes()) {
        println!("  {:<24} {:<22} {:?} <- {}", n.name, n.op.kind(), s, n.inputs.join(", "));
    }
    println!("output: {} {:?}", g.output, model.output_shape());
    if let Some(a) = &g.client_activation {
        println!("then, on the client after decryption: {a:?}");
    }
    Ok(())
}

/// How `convert` builds the polynomials.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum ConvertMethod {
    /// SFT with zero epochs: Hermite expansion, PolyAct-RN running-max ranges, batch norm folded.
    Hermite,
    /// Least-squares fit on [−1, 1], ranges = margin × largest |x|.
    LeastSquares,
}

/// Options of `peregrine convert`.
#[derive(clap::Args)]
pub struct ConvertArgs {
    /// Model file.
    #[arg(long)]
    model: PathBuf,
    /// Polynomial degree.
    #[arg(long, default_value_t = 4)]
    degree: usize,
    /// `hermite`: batch norm folded, PolyAct-RN with the Hermite expansion and running-max
    /// ranges (SFT with zero epochs); `least-squares`: fit on [−1, 1] scaled by margin × max|x|.
    #[arg(long, value_enum, default_value_t = ConvertMethod::Hermite)]
    method: ConvertMethod,
    /// Bound B of normalised inputs (hermite).
    #[arg(long, default_value_t = 3.0)]
    bound: f64,
    /// Calibration images: a CIFAR-10 batch file (use training data), a PNG/JPEG image, or a directory of them.
    #[arg(long)]
    calibration: PathBuf,
    /// Images used for calibration.
    #[arg(long, default_value_t = 512)]
    calibration_images: usize,
    /// Range = margin × largest |x| seen.
    #[arg(long, default_value_t = 1.0)]
    margin: f64,
    /// Output model file.
    #[arg(short, long)]
    output: PathBuf,
}

pub fn convert(c: &ConvertArgs, json: bool) -> Result<()> {
    let m = load_model(&c.model)?;
    let (pixels, count) = peregrine_data::calibration_pixels(&c.calibration, &m.graph().input, c.calibration_images)?;
    let x = preprocess::<f32>(&pixels, count, &m.graph().input)?;
    let out = match c.method {
        ConvertMethod::Hermite => peregrine_sft::convert::convert(&m, c.degree, c.bound, &x, 64)?,
        ConvertMethod::LeastSquares => peregrine_model::transform::convert(&m, c.degree, &x, c.margin)?,
    };
    save_model(&out, &c.output)?;
    let (name, n, degree, method, output) = (&out.graph().name, count, c.degree, c.method, &c.output);
    if json {
        let method = format!("{method:?}").to_lowercase();
        println!(
            "{}",
            json!({"model": output, "name": name, "degree": degree, "method": method,
                   "calibration_images": n, "margin": c.margin, "bound": c.bound})
        );
    } else {
        println!(
            "wrote {} ({name}): activations → degree-{degree} polynomials ({method:?}) calibrated over {n} images, max pooling → average pooling",
            output.display()
        );
    }
    Ok(())
}

/// Options of `peregrine ensemble`.
#[derive(clap::Args)]
pub struct EnsembleArgs {
    /// Member model files (two or more, one architecture).
    #[arg(long, num_args = 2.., required = true)]
    models: Vec<PathBuf>,
    /// Weight of each member's outputs, one per member, normalised to sum 1 (default: equal);
    /// e.g. to let a better member count more, or to even out members whose logits differ in
    /// scale. Linear, so free in an encrypted run.
    #[arg(long, num_args = 2.., allow_negative_numbers = true)]
    weights: Option<Vec<f32>>,
    /// Output model file.
    #[arg(short, long)]
    output: PathBuf,
}

pub fn ensemble(a: &EnsembleArgs, json: bool) -> Result<()> {
    let members = a
        .models
        .iter()
        .map(|p| load_model(p).with_context(|| format!("member {}", p.display())))
        .collect::<Result<Vec<_>>>()?;
    let share = match &a.weights {
        None => vec![1.0 / members.len() as f32; members.len()],
        Some(w) => {
            if w.len() != members.len() {
                bail!("--weights gives {} weights for {} members", w.len(), members.len());
            }
            let sum: f32 = w.iter().sum();
            if w.iter().any(|v| !v.is_finite() || *v < 0.0) || sum <= 0.0 {
                bail!("--weights must be non-negative numbers with a positive sum, got {w:?}");
            }
            w.iter().map(|v| v / sum).collect()
        }
    };
    let out = peregrine_model::ensemble::widen_weighted_ensemble(&members, &share)?;
    save_model(&out, &a.output)?;
    let params = out.parameter_count();
    if json {
        println!(
            "{}",
            json!({"model": a.output, "name": out.graph().name, "members": a.models, "weights": share, "parameters": params})
        );
    } else {
        let how = if a.weights.is_some() { format!("weights {share:?}") } else { "the mean".into() };
        println!(
            "wrote {} ({}): {how} of {} members, {} parameters (channels side by side, later layers grouped by member)",
            a.output.display(),
            out.graph().name,
            members.len(),
            params
        );
    }
    Ok(())
}

/// Options of `peregrine cluster`.
#[derive(clap::Args)]
pub struct ClusterArgs {
    /// Model file.
    #[arg(long)]
    model: PathBuf,
    /// Values per layer.
    #[arg(long)]
    clusters: usize,
    /// Output model file.
    #[arg(short, long)]
    output: PathBuf,
}

pub fn cluster(a: &ClusterArgs, json: bool) -> Result<()> {
    let m = load_model(&a.model)?;
    let (out, report) = peregrine_model::cluster::cluster_weights(&m, a.clusters)?;
    save_model(&out, &a.output)?;
    let total: usize = report.iter().map(|r| r.weights).sum();
    let worst = report.iter().map(|r| r.relative_rms_change).fold(0.0, f64::max);
    if json {
        let layers: Vec<_> = report
            .iter()
            .map(|r| {
                json!({"tensor": r.name, "weights": r.weights, "distinct_before": r.distinct_before,
                            "distinct_after": r.distinct_after, "max_change": r.max_change,
                            "relative_rms_change": r.relative_rms_change})
            })
            .collect();
        println!("{}", json!({"model": a.output, "clusters": a.clusters, "layers": layers}));
    } else {
        println!(
            "wrote {}: {} weight tensors ({total} weights) clustered to at most {} values each; largest relative rms change {:.2e}",
            a.output.display(),
            report.len(),
            a.clusters,
            worst
        );
    }
    Ok(())
}

/// Options of `peregrine resize`.
#[derive(clap::Args)]
pub struct ResizeArgs {
    /// Model file (fully convolutional: no layer whose size depends on the input's).
    #[arg(long)]
    model: PathBuf,
    /// New input shape C,H,W (C as before).
    #[arg(long, value_delimiter = ',', required = true)]
    input_shape: Vec<usize>,
    /// Output model file.
    #[arg(short, long)]
    output: PathBuf,
}

/// Gives a model another input size with the same weights (a detector fine-tuned at 320×320
/// run at 512×512): every layer's shape is derived again and checked.
pub fn resize(a: &ResizeArgs, json: bool) -> Result<()> {
    let m = load_model(&a.model)?;
    let before = m.graph().input.shape.clone();
    if a.input_shape.len() != 3 || a.input_shape[0] != before[0] || a.input_shape.contains(&0) {
        bail!(
            "--input-shape {:?}: give C,H,W with the model's {} input channels and non-zero H and W",
            a.input_shape,
            before[0]
        );
    }
    let (mut graph, weights) = m.into_parts();
    graph.input.shape = a.input_shape.clone();
    let out = Model::new(graph, weights).with_context(|| {
        format!("{} cannot take a {:?} input (it was {:?})", a.model.display(), a.input_shape, before)
    })?;
    save_model(&out, &a.output)?;
    let output_shape = out.output_shape().clone();
    if json {
        println!("{}", json!({"model": a.output, "input_shape": a.input_shape, "output_shape": output_shape}));
    } else {
        println!("wrote {}: input {:?} → {:?}, output {:?}", a.output.display(), before, a.input_shape, output_shape);
    }
    Ok(())
}

pub fn backends(dirs: Vec<PathBuf>, json: bool) -> Result<()> {
    let listing = Registry::new(dirs).listing();
    if json {
        println!("{}", json!(listing));
        return Ok(());
    }
    let summary = |c: &Option<Result<peregrine_backend::Capabilities, String>>| match c {
        Some(Ok(c)) => format!("\n           {}", c.summary()),
        Some(Err(e)) => format!("\n           capabilities unavailable: {e}"),
        None => String::new(),
    };
    println!("built-in:");
    for b in &listing.builtin {
        let caps = b.capabilities.as_ref().map(|c| format!("\n           {}", c.summary())).unwrap_or_default();
        println!("  {:<8} {}{caps}", b.name, b.description);
    }
    let path = &listing.search_path;
    println!("plugins (search path: {}):", if path.is_empty() { "empty".into() } else { format!("{path:?}") });
    if listing.plugins.is_empty() {
        println!("  none found");
    }
    for p in &listing.plugins {
        match (&p.backend, &p.error) {
            (Some(b), _) => println!(
                "  {:<8} {}{}\n           {}",
                b.name,
                b.description,
                summary(&b.capabilities),
                p.path.display()
            ),
            (None, e) => println!("  (skipped) {}: {}", p.path.display(), e.as_deref().unwrap_or("not a plugin")),
        }
    }
    Ok(())
}
