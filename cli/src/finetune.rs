//! `peregrine finetune`: single-stage fine-tuning of a pretrained model into an FHE-friendly one.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use peregrine_data::{load_cifar10, LabeledImages};
use peregrine_model::format::{load_model, save_model};
use peregrine_sft::train::{evaluate, FinetuneConfig, Finetuner};

/// Prefix of the recorded target of a TFHE quantisation-aware run (its parameters follow).
const TFHE_TARGET: &str = "tfhe ";

/// Options of `peregrine finetune`.
#[derive(clap::Args)]
pub struct FinetuneArgs {
    /// Pretrained model file (not needed with --resume).
    #[arg(long, required_unless_present = "resume")]
    pub model: Option<PathBuf>,
    /// CIFAR-10 directory (data_batch_1..5 and test_batch, .bin or .bin.gz) or one batch file.
    #[arg(long)]
    pub data: PathBuf,
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
    /// Unaugmented training batches that calibrate the ranges first.
    #[arg(long, default_value_t = 20)]
    pub calibration_batches: usize,
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
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

fn batch_file(dir: &Path, stem: &str) -> Option<PathBuf> {
    [format!("{stem}.bin.gz"), format!("{stem}.bin")].into_iter().map(|f| dir.join(f)).find(|p| p.exists())
}

/// Training and test images from `--data`.
fn load_data(data: &Path, limit: Option<usize>) -> Result<(LabeledImages, Option<LabeledImages>)> {
    if data.is_file() {
        return Ok((load_cifar10(data, limit)?, None));
    }
    if !data.is_dir() {
        bail!("{}: no such file or directory", data.display());
    }
    let mut train: Option<LabeledImages> = None;
    for k in 1..=5 {
        let have = train.as_ref().map_or(0, |t| t.len());
        if limit.is_some_and(|l| have >= l) {
            break;
        }
        let Some(file) = batch_file(data, &format!("data_batch_{k}")) else {
            if k == 1 {
                bail!("{}: no data_batch_1.bin(.gz); expected the CIFAR-10 binary layout", data.display());
            }
            break;
        };
        let part = load_cifar10(&file, limit.map(|l| l - have))?;
        train = Some(match train {
            None => part,
            Some(mut t) => {
                t.pixels.extend_from_slice(&part.pixels);
                t.labels.extend_from_slice(&part.labels);
                t
            }
        });
    }
    let test = batch_file(data, "test_batch").map(|f| load_cifar10(f, None)).transpose()?;
    Ok((train.expect("at least one batch"), test))
}

/// Runs `peregrine finetune`.
pub fn finetune_cmd(a: FinetuneArgs) -> Result<()> {
    let mut run = match &a.resume {
        Some(ckpt) => {
            let run = Finetuner::resume(ckpt).with_context(|| format!("resuming from {}", ckpt.display()))?;
            if !a.json {
                eprintln!("resuming {} after epoch {} of {}", ckpt.display(), run.epochs_done(), run.config().epochs);
            }
            run
        }
        None => {
            let path = a.model.as_ref().expect("clap requires --model without --resume");
            let model = load_model(path).with_context(|| format!("loading {}", path.display()))?;
            let model = match a.tfhe {
                Some(_) => peregrine_sft::convert::fold_batch_norms(&model)?,
                None => model,
            };
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
                calibration_batches: a.calibration_batches,
                augment: !a.no_augment,
                seed: a.seed,
                distill: a.distill,
                distill_temperature: a.distill_temperature,
                teacher: (a.distill > 0.0)
                    .then(|| {
                        let t = a.teacher.clone().unwrap_or_else(|| path.clone());
                        std::fs::canonicalize(&t).with_context(|| format!("teacher model {}", t.display()))
                    })
                    .transpose()?,
                quantise_for: a.tfhe.as_ref().map(|p| format!("{TFHE_TARGET}{p}")),
            };
            Finetuner::new(&model, config)?
        }
    };
    let simulated = match run.config().quantise_for.clone() {
        Some(target) => {
            let Some(params) = target.strip_prefix(TFHE_TARGET) else {
                bail!("this checkpoint trains for '{target}', which this version cannot quantise");
            };
            if !a.data.is_dir() {
                bail!("quantisation-aware training calibrates on data_batch_1: give --data the CIFAR-10 directory");
            }
            let input = run.model.input().clone();
            let (quantiser, evaluator) = crate::tfhe::quantisation_aware(params, &a.data, &input)?;
            run.quantise_with(quantiser)?;
            Some(evaluator)
        }
        None => None,
    };
    let (train, test) = load_data(&a.data, a.limit)?;
    let test = test.map(|t| if a.eval_limit < t.len() { t.slice(0..a.eval_limit) } else { t }).filter(|_| a.eval_limit > 0);
    let started = Instant::now();
    // Keeping its activations, a quantisation-aware run starts from the model's own ranges.
    if run.epochs_done() == 0 && (simulated.is_none() || run.config().degree.is_some()) {
        run.calibrate(&train)?;
    }
    let mut epochs = Vec::new();
    let calibrated = run.export()?;
    let baseline = match (&test, run.epochs_done()) {
        (Some(t), 0) => Some(evaluate(&calibrated, t)?),
        _ => None,
    };
    if let (Some(acc), false) = (baseline, a.json) {
        eprintln!("epoch 0 (calibrated conversion): test accuracy {:.2} % on {} images", acc * 100.0, test.as_ref().map_or(0, |t| t.len()));
    }
    let simulated_accuracy = |model: &peregrine_model::ir::Model| -> Result<Option<f64>> {
        match (&simulated, &test) {
            (Some(sim), Some(t)) => sim(model, t).map(Some),
            _ => Ok(None),
        }
    };
    let baseline_simulated = if run.epochs_done() == 0 { simulated_accuracy(&calibrated)? } else { None };
    if let (Some(acc), false) = (baseline_simulated, a.json) {
        eprintln!("epoch 0: quantised simulation (tfhe) test accuracy {:.2} %", acc * 100.0);
    }
    let total = run.config().epochs;
    let stop_at = a.stop_after.map_or(total, |k| (run.epochs_done() + k).min(total));
    while run.epochs_done() < stop_at {
        let bar = if a.json { ProgressBar::hidden() } else { ProgressBar::new(train.len().div_ceil(run.config().batch) as u64) };
        bar.set_style(
            ProgressStyle::with_template("epoch {prefix} {bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}")
                .expect("valid template"),
        );
        bar.set_prefix(format!("{}/{total}", run.epochs_done() + 1));
        let log_lines = bar.is_hidden() && !a.json;
        let report = run.train_epoch(&train, |s| {
            if log_lines && (s.step % 50 == 0 || s.step == s.steps) {
                // Not a terminal (a log file): one line every 50 steps instead of a bar.
                eprintln!(
                    "epoch {}/{total} step {}/{}: loss {:.4} acc {:.2} % lr {:.2e}",
                    s.epoch + 1,
                    s.step,
                    s.steps,
                    s.loss,
                    s.accuracy * 100.0,
                    s.lr
                );
            }
            bar.set_position(s.step as u64);
            bar.set_message(format!("loss {:.4} acc {:.2} % lr {:.2e}", s.loss, s.accuracy * 100.0, s.lr));
        })?;
        bar.finish_and_clear();
        let ckpt = run.save_checkpoint(&a.output)?;
        let model = run.export()?;
        let acc = test.as_ref().map(|t| evaluate(&model, t)).transpose()?;
        let sim = simulated_accuracy(&model)?;
        if !a.json {
            eprintln!(
                "epoch {}/{total}: train loss {:.4}, train acc {:.2} %, {:.0} s{}{}; checkpoint {}",
                report.epoch + 1,
                report.loss,
                report.accuracy * 100.0,
                report.seconds,
                acc.map(|v| format!(", test acc {:.2} %", v * 100.0)).unwrap_or_default(),
                sim.map(|v| format!(", quantised simulation {:.2} %", v * 100.0)).unwrap_or_default(),
                ckpt.display()
            );
        }
        epochs.push(serde_json::json!({
            "epoch": report.epoch + 1, "train_loss": report.loss, "train_accuracy": report.accuracy,
            "seconds": report.seconds, "test_accuracy": acc, "simulated_test_accuracy": sim,
        }));
    }
    let model = run.export()?;
    if run.epochs_done() < total {
        if !a.json {
            eprintln!("stopped after epoch {} of {total}; continue with --resume", run.epochs_done());
        }
    }
    save_model(&model, &a.output).with_context(|| format!("writing {}", a.output.display()))?;
    let final_acc = match (&test, epochs.last()) {
        (Some(_), Some(e)) => e["test_accuracy"].as_f64(),
        (Some(t), None) => Some(baseline.map_or_else(|| evaluate(&model, t), Ok)?),
        _ => None,
    };
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "output": a.output, "model": model.graph().name, "config": run.config(),
                "train_images": train.len(), "test_images": test.as_ref().map(|t| t.len()),
                "baseline_test_accuracy": baseline, "baseline_simulated_accuracy": baseline_simulated, "epochs": epochs, "test_accuracy": final_acc,
                "seconds": started.elapsed().as_secs_f64(), "epochs_done": run.epochs_done(),
            })
        );
    } else {
        println!(
            "wrote {} ({}){}",
            a.output.display(),
            model.graph().name,
            final_acc.map(|v| format!(": test accuracy {:.2} %", v * 100.0)).unwrap_or_default()
        );
    }
    Ok(())
}
