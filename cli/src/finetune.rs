//! `peregrine finetune`: single-stage fine-tuning of a pretrained model into an FHE-friendly one.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use peregrine_data::photos::{photo_crops, CropSettings};
use peregrine_data::{load_cifar10_split, LabeledImages};
use peregrine_model::{load_model, save_model};
use peregrine_sft::qat;
use peregrine_sft::train::{Baseline, EpochSummary, FinetuneConfig, Finetuner, Progress, Schedule, StepReport};
use serde_json::json;

/// Options of `peregrine finetune`.
#[derive(clap::Args)]
pub struct FinetuneArgs {
    /// Pretrained model file (not needed with --resume).
    #[arg(long, required_unless_present = "resume")]
    pub model: Option<PathBuf>,
    /// CIFAR-10 directory (data_batch_1..5 and test_batch, .bin or .bin.gz) or one batch file.
    #[arg(long, required_unless_present = "images")]
    pub data: Option<PathBuf>,
    /// Distil on photos instead (a directory of PNG/JPEG files, or one): no labels are needed,
    /// the original model (`--teacher`, default `--model` itself) is the target — its outputs
    /// (logits, detector heads or maps) and, with `--feature-weight`, every activation's
    /// output. Training images are random crops, quarter turns and mirror images of them. A
    /// final activation (a segmenter's sigmoid) is left to the client, exact; a map through a
    /// sigmoid is matched by the Bernoulli KL divergence, which does not saturate.
    #[arg(long, conflicts_with_all = ["data", "tfhe"])]
    pub images: Option<PathBuf>,
    /// Crops drawn from `--images` per epoch [default: 2000].
    #[arg(long, requires = "images")]
    pub crops: Option<usize>,
    /// Held-out photos (directory or file) on which `--images` runs report top-1 agreement
    /// with the teacher after each epoch, on `--eval-limit` crops of them (at most 256, another
    /// seed than the training crops).
    #[arg(long, requires = "images")]
    pub eval_images: Option<PathBuf>,
    /// Largest global gradient norm per step (0: no clipping; default 1 with `--images`, 0
    /// otherwise).
    #[arg(long)]
    pub clip_grad_norm: Option<f64>,
    /// Weight of the activation outputs in `--images` distillation (0: the output only)
    /// [default: 1].
    #[arg(long, requires = "images")]
    pub feature_weight: Option<f64>,
    /// The model outputs YOLOv8 heads with this many classes (as `predict --yolo-classes`):
    /// `--images` distillation then matches them as the client decodes them — class scores
    /// through the sigmoid, box sides as softmaxes over their bins, weighted by the teacher's
    /// confidence — instead of by squared error.
    #[arg(long, requires = "images")]
    pub yolo_classes: Option<usize>,
    /// Polynomial degree of the activations (2, 4 or 8); `--keep-activations` trains the
    /// original activations instead.
    #[arg(long, default_value_t = 4)]
    pub degree: usize,
    /// Train with the model's own activations (no polynomial replacement).
    #[arg(long)]
    pub keep_activations: bool,
    /// Epochs (0: calibrate the ranges and convert, no training).
    #[arg(long, default_value_t = 1)]
    pub epochs: usize,
    /// Use only the first N training images.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Images per batch.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Peak learning rate (cosine decay to 0).
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f64,
    /// Weight decay.
    #[arg(long, default_value_t = 1e-4)]
    pub weight_decay: f64,
    /// Bound B of normalised activation inputs.
    #[arg(long, default_value_t = 3.0)]
    pub bound: f64,
    /// λ of the range penalty keeping activation inputs in [−B, B] (leveled mode: 1e-3).
    #[arg(long, default_value_t = 0.0)]
    pub range_penalty: f64,
    /// Steps over which the range penalty ramps up.
    #[arg(long, default_value_t = 100)]
    pub penalty_warmup: usize,
    /// Noise-aware training: standard deviation of Gaussian noise added to every activation
    /// input in training steps, the error an encrypted run adds at each rescale (leveled
    /// degree-2 ResNet-20 at N = 2^15, Δ = 2^22: about 0.002; 0.01 leaves a margin)
    #[arg(long, default_value_t = 0.0)]
    pub activation_noise: f64,
    /// Weight clustering applied in fine-tuning: every convolution's and fully connected
    /// layer's weights take at most K values (k-means per layer) forward and in the exported
    /// model, the float weights training underneath. Needs a model without batch norms (one
    /// `finetune` exported); `peregrine cluster` does the same without training.
    #[arg(long, value_name = "K")]
    pub clusters: Option<usize>,
    /// Train every polynomial activation's coefficients too (per channel, same degree,
    /// starting from Hermite's; no weight decay; the leading coefficient keeps its sign and at
    /// least a quarter of its start, so a degree-2 activation still folds into its producer).
    #[arg(long)]
    pub train_coefficients: bool,
    /// The coefficients' learning rate as a fraction of `--lr`.
    #[arg(long, default_value_t = 0.02, requires = "train_coefficients")]
    pub coefficient_lr: f64,
    /// Fraction of training steps (0 to 1) normalised by the running activation ranges, as
    /// inference normalises, instead of by the batch-widened ones: the loss then sees the
    /// inputs an encrypted run would square beyond [−B, B] (a step whose numbers run away is
    /// skipped and counted). Use with `--clip-grad-norm`.
    #[arg(long, default_value_t = 0.0)]
    pub running_range_steps: f64,
    /// Unaugmented training batches that calibrate the ranges first (default 20; 0 for a
    /// model whose activations are already polynomials with their ranges, which a
    /// re-estimate would change: 88.27 % → 77.26 % before any step on the degree-2 ResNet-20).
    #[arg(long)]
    pub calibration_batches: Option<usize>,
    /// Disable random crop and flip.
    #[arg(long)]
    pub no_augment: bool,
    /// Random seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Test images evaluated after each epoch (0: none).
    #[arg(long, default_value_t = 10_000)]
    pub eval_limit: usize,
    /// Weight α of knowledge distillation from the original model (0: labels only).
    #[arg(long, default_value_t = 0.0)]
    pub distill: f64,
    /// Temperature of the distillation targets.
    #[arg(long, default_value_t = 4.0)]
    pub distill_temperature: f64,
    /// Teacher model for --distill (default: --model itself, its activations kept).
    #[arg(long)]
    pub teacher: Option<PathBuf>,
    /// Stop after this many epochs of this invocation (the checkpoint resumes the rest).
    #[arg(long)]
    pub stop_after: Option<usize>,
    /// Quantisation-aware training for the TFHE backend, with its parameters (JSON, as
    /// `run --backend tfhe --params`, `"activation"` included): batch norms are folded first,
    /// every step runs the current model's quantised simulation (recalibrated) and trains
    /// through it with a straight-through estimator, and each epoch reports the simulation's
    /// test accuracy — what an encrypted run with these parameters computes.
    #[arg(long, value_name = "PARAMS")]
    pub tfhe: Option<String>,
    /// Resume from a checkpoint (`<output stem>.ckpt.json`, written after every epoch).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Output model file.
    #[arg(short, long)]
    pub output: PathBuf,
    #[arg(skip)]
    json: bool,
}

/// A new run from the arguments (or the checkpoint of `--resume`).
fn start(a: &FinetuneArgs) -> Result<Finetuner> {
    if let Some(ckpt) = &a.resume {
        let run = Finetuner::resume(ckpt).with_context(|| format!("resuming from {}", ckpt.display()))?;
        if !a.json {
            eprintln!("resuming {} after epoch {} of {}", ckpt.display(), run.epochs_done(), run.config().epochs);
        }
        return Ok(run);
    }
    let Some(path) = &a.model else { bail!("give --model (or --resume)") };
    let model = load_model(path).with_context(|| format!("loading {}", path.display()))?;
    // Quantised networks have no batch statistics, and a few photos per batch give poor ones:
    // both train with batch norms folded.
    let photos = a.images.is_some();
    let model = if a.tfhe.is_some() || photos { peregrine_sft::convert::fold_batch_norms(&model)? } else { model };
    let distill = if photos { 1.0 } else { a.distill };
    let teacher = (distill > 0.0)
        .then(|| {
            let t = a.teacher.clone().unwrap_or_else(|| path.clone());
            std::fs::canonicalize(&t).with_context(|| format!("teacher model {}", t.display()))
        })
        .transpose()?;
    let config = FinetuneConfig {
        degree: (!a.keep_activations).then_some(a.degree),
        bound: a.bound,
        epochs: a.epochs,
        batch: a.batch,
        lr: a.lr,
        momentum: a.momentum,
        weight_decay: a.weight_decay,
        range_penalty: a.range_penalty,
        penalty_warmup: a.penalty_warmup,
        calibration_batches: a.calibration_batches.unwrap_or(if has_ranges(&model) { 0 } else { 20 }),
        augment: !a.no_augment,
        seed: a.seed,
        distill,
        distill_temperature: a.distill_temperature,
        teacher,
        match_outputs: photos,
        feature_weight: if photos { a.feature_weight.unwrap_or(1.0) } else { 0.0 },
        yolo_classes: a.yolo_classes,
        clip_grad_norm: a.clip_grad_norm.unwrap_or(if photos { 1.0 } else { 0.0 }),
        quantise_for: a.tfhe.as_deref().map(qat::target),
        activation_noise: a.activation_noise,
        weight_clusters: a.clusters,
        train_coefficients: a.train_coefficients,
        coefficient_lr: a.coefficient_lr,
        running_range_steps: a.running_range_steps,
    };
    Ok(Finetuner::new(&model, config)?)
}

/// Whether every activation of `model` is a polynomial with stored input scales (its ranges).
fn has_ranges(model: &peregrine_model::Model) -> bool {
    use peregrine_model::ir::{Activation, Op};
    model.graph().nodes.iter().all(|n| match &n.op {
        Op::Activation(Activation::Poly { input_scale, .. }) => input_scale.is_some(),
        Op::Activation(_) => false,
        _ => true,
    })
}

/// Training crops of `--images` and, with `--eval-images`, the held-out photos labelled by the
/// teacher's own top class (so that the reported accuracy is the agreement with it).
fn photo_sets(
    a: &FinetuneArgs,
    run: &Finetuner,
    photos: &std::path::Path,
) -> Result<(LabeledImages, Option<LabeledImages>)> {
    let input = run.model.input().clone();
    let files = peregrine_data::image_files(photos)?;
    let train = photo_crops(&files, &input, a.crops.unwrap_or(2_000).max(1), a.seed, &CropSettings::default())?;
    if !a.json {
        eprintln!("{} crops of {} photos from {}", train.len(), files.len(), photos.display());
    }
    let Some(eval) = &a.eval_images else { return Ok((train, None)) };
    let teacher_path = run.config().teacher.clone().expect("photo distillation has a teacher");
    let teacher = load_model(&teacher_path).with_context(|| format!("loading {}", teacher_path.display()))?;
    let files = peregrine_data::image_files(eval)?;
    let count = a.eval_limit.clamp(1, 256);
    let held = photo_crops(&files, &input, count, a.seed ^ 0x5eed_e7a1, &CropSettings::default())?;
    let x = peregrine_data::preprocess::<f32>(&held.pixels, count, &input)?;
    let y = peregrine_model::reference::Reference::<f32>::new(&teacher).run_parallel(&x, 8)?;
    let n = count;
    let classes = y.len() / n.max(1);
    if classes > 256 {
        bail!("--eval-images reports top-1 agreement, which needs at most 256 outputs; this model has {classes}");
    }
    let labels: Vec<u8> = peregrine_model::reference::argmax_rows(&y).iter().map(|&p| p as u8).collect();
    if !a.json {
        // The share of the commonest label is what always answering it would agree on.
        let mut counts = vec![0usize; classes];
        for &l in &labels {
            counts[l as usize] += 1;
        }
        let top = counts.iter().max().copied().unwrap_or(0) as f64 / count as f64;
        eprintln!(
            "{count} held-out crops of {} photos from {}, labelled by the teacher: {counts:?} per class (the commonest {:.1} %)",
            files.len(),
            eval.display(),
            top * 100.0
        );
        // Agreement means little where the teacher itself hardly prefers one class (natural
        // photos shown to a document-orientation network): say how sure it is.
        let (median, sure) = teacher_confidence(&y.iter().copied().collect::<Vec<f32>>(), classes);
        eprintln!(
            "the teacher's top class has a median probability of {median:.2} (softmax of its outputs); at least 0.9 on {sure} of {count}"
        );
    }
    Ok((train, Some(LabeledImages { labels, ..held })))
}

/// The median over rows of the largest softmax probability of `y` (rows of `classes` outputs),
/// and the number of rows where it is at least 0.9.
fn teacher_confidence(y: &[f32], classes: usize) -> (f64, usize) {
    let mut top: Vec<f64> = y
        .chunks(classes.max(1))
        .map(|row| {
            let m = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
            let sum: f64 = row.iter().map(|&v| (v as f64 - m).exp()).sum();
            1.0 / sum
        })
        .collect();
    top.sort_by(f64::total_cmp);
    let median = if top.is_empty() { f64::NAN } else { top[top.len() / 2] };
    (median, top.iter().filter(|&&p| p >= 0.9).count())
}

/// The test figure of `--images` runs.
const AGREEMENT: &str = "top-1 agreement with the teacher";

/// Progress bars on a terminal, a line every 50 steps in a log, nothing with `--json`.
struct Bars {
    bar: ProgressBar,
    quiet: bool,
    test_images: usize,
    /// What the test figure is: "test accuracy", or the agreement with the teacher.
    metric: &'static str,
    /// Whether the training steps' top-1 figure means anything (not for a map or detector
    /// heads distilled on photos: their loss is the figure).
    top1: bool,
}

impl Progress for Bars {
    fn baseline(&mut self, b: &Baseline) {
        if let (Some(acc), false) = (b.test_accuracy, self.quiet) {
            eprintln!(
                "epoch 0 (calibrated conversion): {} {:.2} % on {} images",
                self.metric,
                acc * 100.0,
                self.test_images
            );
        }
        if let (Some(acc), false) = (b.simulated_accuracy, self.quiet) {
            eprintln!("epoch 0: quantised simulation (tfhe) test accuracy {:.2} %", acc * 100.0);
        }
    }
    fn epoch_start(&mut self, epoch: usize, total: usize, steps: usize) {
        self.bar = if self.quiet { ProgressBar::hidden() } else { ProgressBar::new(steps as u64) };
        let style = "epoch {prefix} {bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}";
        self.bar.set_style(ProgressStyle::with_template(style).expect("a valid template"));
        self.bar.set_prefix(format!("{epoch}/{total}"));
    }
    fn step(&mut self, s: &StepReport) {
        let acc = if self.metric == AGREEMENT { "agree" } else { "acc" };
        let mut line = if self.top1 {
            format!("loss {:.4} {acc} {:.2} % lr {:.2e} |g| {:.3}", s.loss, s.accuracy * 100.0, s.lr, s.grad_norm)
        } else {
            format!("loss {:.4} lr {:.2e} |g| {:.3}", s.loss, s.lr, s.grad_norm)
        };
        if s.skipped > 0 {
            line.push_str(&format!(" ({} skipped)", s.skipped));
        }
        if self.bar.is_hidden() && !self.quiet && (s.step % 50 == 0 || s.step == s.steps) {
            // Not a terminal (a log file): one line every 50 steps instead of a bar.
            eprintln!("epoch {} step {}/{}: {line}", s.epoch + 1, s.step, s.steps);
        }
        self.bar.set_position(s.step as u64);
        self.bar.set_message(line);
    }
    fn epoch_done(&mut self, e: &EpochSummary, total: usize) {
        self.bar.finish_and_clear();
        if !self.quiet {
            let pct =
                |label: &str, v: Option<f64>| v.map(|v| format!(", {label} {:.2} %", v * 100.0)).unwrap_or_default();
            let train = if self.top1 {
                let what = if self.metric == AGREEMENT { "agreement" } else { "acc" };
                format!(", train {what} {:.2} %", e.train_accuracy * 100.0)
            } else {
                String::new()
            };
            eprintln!(
                "epoch {}/{total}: train loss {:.4}{train}, {:.0} s{}{}; checkpoint {}",
                e.epoch,
                e.train_loss,
                e.seconds,
                pct(self.metric, e.test_accuracy),
                pct("quantised simulation", e.simulated_test_accuracy),
                e.checkpoint.display()
            );
        }
    }
}

/// Runs `peregrine finetune`.
pub fn finetune(a: FinetuneArgs, json: bool) -> Result<()> {
    let a = FinetuneArgs { json, ..a };
    if a.images.is_none() && (a.crops.is_some() || a.eval_images.is_some() || a.feature_weight.is_some()) {
        bail!("--crops, --eval-images and --feature-weight apply to distillation on photos: give --images");
    }
    let mut run = start(&a)?;
    let simulated = match run.config().quantise_for.clone() {
        Some(target) => {
            let data = a.data.as_deref().filter(|d| d.is_dir());
            let Some(data) = data else {
                bail!("quantisation-aware training calibrates on data_batch_1: give --data the CIFAR-10 directory");
            };
            let input = run.model.input().clone();
            let (quantiser, evaluator) = qat::quantisation_aware(&target, data, &input)?;
            run.quantise_with(quantiser)?;
            Some(evaluator)
        }
        None => None,
    };
    let (train, test) = match (&a.images, &a.data) {
        (Some(photos), _) => photo_sets(&a, &run, photos)?,
        (None, Some(data)) => {
            let split = load_cifar10_split(data, a.limit)?;
            let test = split
                .test
                .map(|t| if a.eval_limit < t.len() { t.slice(0..a.eval_limit) } else { t })
                .filter(|_| a.eval_limit > 0);
            (split.train, test)
        }
        (None, None) => bail!("give --data (CIFAR-10) or --images (photos to distil on)"),
    };
    let started = Instant::now();
    let schedule = Schedule {
        train: &train,
        test: test.as_ref(),
        simulated: simulated.as_ref(),
        output: &a.output,
        stop_after: a.stop_after,
    };
    let metric = if a.images.is_some() { AGREEMENT } else { "test acc" };
    let top1 = a.images.is_none() || run.model.output_len() <= 256;
    let mut bars = Bars {
        bar: ProgressBar::hidden(),
        quiet: json,
        test_images: test.as_ref().map_or(0, |t| t.len()),
        metric,
        top1,
    };
    let out = run.run_schedule(&schedule, &mut bars)?;
    let total = run.config().epochs;
    if run.epochs_done() < total && !json {
        eprintln!("stopped after epoch {} of {total}; continue with --resume", run.epochs_done());
    }
    save_model(&out.model, &a.output).with_context(|| format!("writing {}", a.output.display()))?;
    let name = &out.model.graph().name;
    if json {
        println!(
            "{}",
            json!({"output": a.output, "model": name, "config": run.config(), "train_images": train.len(),
                   "test_images": test.as_ref().map(|t| t.len()), "baseline_test_accuracy": out.baseline.test_accuracy,
                   "baseline_simulated_accuracy": out.baseline.simulated_accuracy, "epochs": out.epochs,
                   "test_accuracy": out.test_accuracy, "seconds": started.elapsed().as_secs_f64(), "epochs_done": run.epochs_done()})
        );
    } else {
        let acc = out.test_accuracy.map(|v| format!(": {metric} {:.2} %", v * 100.0)).unwrap_or_default();
        println!("wrote {} ({name}){acc}", a.output.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::teacher_confidence;

    #[test]
    fn teacher_confidence_is_the_softmax_top_probability() {
        // Rows: uniform (0.25), one class far ahead (≈ 1), two tied ahead (≈ 0.5).
        let y = [0.0, 0.0, 0.0, 0.0, 10.0, 0.0, 0.0, 0.0, 5.0, 5.0, -5.0, -5.0];
        let (median, sure) = teacher_confidence(&y, 4);
        assert!((median - 0.5).abs() < 1e-3, "median {median}");
        assert_eq!(sure, 1);
        let (median, sure) = teacher_confidence(&y[..4], 4);
        assert!((median - 0.25).abs() < 1e-12 && sure == 0);
    }
}
