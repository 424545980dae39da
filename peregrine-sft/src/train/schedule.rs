//! A fine-tuning run from start to end: range calibration, the epochs with a checkpoint and an
//! evaluation after each, and the accuracy before training as a baseline.

use std::path::Path;

use peregrine_data::LabeledImages;
use peregrine_model::ir::Model;
use serde::Serialize;

use super::trainer::{evaluate, Finetuner, StepReport};
use crate::error::Result;

/// Another measure of a model's accuracy on labelled images (e.g. what a quantised encrypted
/// run computes, see `qat`).
pub type Evaluator = Box<dyn Fn(&Model, &LabeledImages) -> Result<f64>>;

/// What [`Finetuner::run_schedule`] trains on and where it writes.
pub struct Schedule<'a> {
    /// Training images.
    pub train: &'a LabeledImages,
    /// Test images evaluated after each epoch, if any.
    pub test: Option<&'a LabeledImages>,
    /// A second accuracy reported beside the test accuracy, if any.
    pub simulated: Option<&'a Evaluator>,
    /// The output model file (checkpoints go beside it).
    pub output: &'a Path,
    /// Stop after this many epochs of this call (the checkpoint resumes the rest).
    pub stop_after: Option<usize>,
}

/// Accuracy before the first epoch of a fresh run.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Baseline {
    /// Test accuracy of the calibrated, untrained model.
    pub test_accuracy: Option<f64>,
    /// Its simulated accuracy.
    pub simulated_accuracy: Option<f64>,
}

/// One finished epoch.
#[derive(Clone, Debug, Serialize)]
pub struct EpochSummary {
    /// Epoch number (from 1).
    pub epoch: usize,
    /// Mean training loss.
    pub train_loss: f64,
    /// Training accuracy.
    pub train_accuracy: f64,
    /// Seconds it took.
    pub seconds: f64,
    /// Test accuracy after it.
    pub test_accuracy: Option<f64>,
    /// Simulated test accuracy after it.
    pub simulated_test_accuracy: Option<f64>,
    /// The checkpoint written.
    #[serde(skip)]
    pub checkpoint: std::path::PathBuf,
}

/// What a schedule produced.
pub struct Outcome {
    /// The model after the last epoch run.
    pub model: Model,
    /// The baseline (fresh runs only).
    pub baseline: Baseline,
    /// The epochs run by this call.
    pub epochs: Vec<EpochSummary>,
    /// The test accuracy of `model`, when there are test images.
    pub test_accuracy: Option<f64>,
}

/// What a schedule tells its caller while it runs.
pub trait Progress {
    /// The baseline of a fresh run is known.
    fn baseline(&mut self, _baseline: &Baseline) {}
    /// Epoch `epoch` (from 1) of `total` starts, with `steps` steps.
    fn epoch_start(&mut self, _epoch: usize, _total: usize, _steps: usize) {}
    /// A step finished.
    fn step(&mut self, _step: &StepReport) {}
    /// An epoch finished.
    fn epoch_done(&mut self, _epoch: &EpochSummary, _total: usize) {}
}

impl Finetuner {
    /// Runs the rest of this fine-tuning (or `stop_after` epochs of it): calibrates the ranges
    /// of a fresh run, measures the baseline, then trains epoch by epoch with a checkpoint and
    /// an evaluation after each.
    pub fn run_schedule(&mut self, s: &Schedule, progress: &mut dyn Progress) -> Result<Outcome> {
        let fresh = self.epochs_done() == 0;
        // Keeping its activations, a quantisation-aware run starts from the model's own ranges.
        if fresh && (s.simulated.is_none() || self.config().degree.is_some()) {
            self.calibrate(s.train)?;
        }
        let measure = |model: &Model| -> Result<(Option<f64>, Option<f64>)> {
            let test = s.test.map(|t| evaluate(model, t)).transpose()?;
            let sim = match (s.simulated, s.test) {
                (Some(sim), Some(t)) => Some(sim(model, t)?),
                _ => None,
            };
            Ok((test, sim))
        };
        let mut baseline = Baseline::default();
        if fresh {
            (baseline.test_accuracy, baseline.simulated_accuracy) = measure(&self.export()?)?;
            progress.baseline(&baseline);
        }
        let total = self.config().epochs;
        let stop_at = s.stop_after.map_or(total, |k| (self.epochs_done() + k).min(total));
        let mut epochs = Vec::new();
        while self.epochs_done() < stop_at {
            progress.epoch_start(self.epochs_done() + 1, total, s.train.len().div_ceil(self.config().batch));
            let report = self.train_epoch(s.train, |step| progress.step(&step))?;
            let checkpoint = self.save_checkpoint(s.output)?;
            let (test_accuracy, simulated_test_accuracy) = measure(&self.export()?)?;
            let e = EpochSummary {
                epoch: report.epoch + 1,
                train_loss: report.loss,
                train_accuracy: report.accuracy,
                seconds: report.seconds,
                test_accuracy,
                simulated_test_accuracy,
                checkpoint,
            };
            progress.epoch_done(&e, total);
            epochs.push(e);
        }
        let model = self.export()?;
        let test_accuracy = match (s.test, epochs.last()) {
            (Some(_), Some(e)) => e.test_accuracy,
            (Some(t), None) => Some(baseline.test_accuracy.map_or_else(|| evaluate(&model, t), Ok)?),
            _ => None,
        };
        Ok(Outcome { model, baseline, epochs, test_accuracy })
    }
}
