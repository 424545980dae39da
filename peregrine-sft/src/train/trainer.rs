//! The fine-tuning loop: augmentation, SGD with momentum and weight decay, cosine learning
//! rate, range calibration, checkpoints.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Result, SftError};
use candle_core::Tensor;
use ndarray::{ArrayD, IxDyn};
use peregrine_data::LabeledImages;
use peregrine_model::format::{load_model, load_tensors, save_model, tensors_to_bytes};
use peregrine_model::ir::{InputSpec, Model};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::model::{
    candle_err, cross_entropy, predictions, ActivationNoise, Activations, Pass, Substitute, TrainModel,
};

/// Settings of one fine-tuning run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FinetuneConfig {
    /// Polynomial degree of the PolyAct-RN replacement (`None`: keep the activations).
    pub degree: Option<usize>,
    /// Bound B of normalised activation inputs.
    pub bound: f64,
    /// Epochs over the training set (0: calibrate and convert only).
    pub epochs: usize,
    /// Images per batch.
    pub batch: usize,
    /// Peak learning rate (cosine decay to zero over the run).
    pub lr: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// L2 weight decay.
    pub weight_decay: f64,
    /// λ of the range penalty λ·Σ mean(|t − clamp(t, −B, B)|) (0 disables it).
    pub range_penalty: f64,
    /// Steps over which λ ramps linearly from 0.
    pub penalty_warmup: usize,
    /// Training batches (unaugmented) that calibrate the ranges before training.
    pub calibration_batches: usize,
    /// Random crop with 4-pixel padding and horizontal flips.
    pub augment: bool,
    /// Seed of shuffling and augmentation.
    pub seed: u64,
    /// Weight α of knowledge distillation from the original model (0 disables it): the loss is
    /// (1 − α)·CE(labels) + α·T²·CE(softmax(teacher/T), student/T).
    #[serde(default)]
    pub distill: f64,
    /// Temperature T of the distillation targets.
    #[serde(default = "default_temperature")]
    pub distill_temperature: f64,
    /// The teacher model file (the original model, its activations kept); required when
    /// `distill` > 0 and stored so that `resume` rebuilds the same teacher.
    #[serde(default)]
    pub teacher: Option<std::path::PathBuf>,
    /// Distillation without labels (images whose labels nobody has, e.g. photos for a model
    /// trained on ImageNet or COCO): the loss is the student's squared output error relative
    /// to the teacher's output energy ([`matching_loss`]), plus `feature_weight` times the
    /// mean of the same for every activation's output; `distill` must then be 1. Works for
    /// any output: logits, detector heads, segmentation maps.
    #[serde(default)]
    pub match_outputs: bool,
    /// Weight of the activation outputs in `match_outputs` (0: the final output only).
    #[serde(default)]
    pub feature_weight: f64,
    /// Largest global L2 norm of a step's gradient (larger ones are scaled down to it; 0: no
    /// clipping). A polynomial network far from its teacher has steep gradients.
    #[serde(default)]
    pub clip_grad_norm: f64,
    /// Quantisation-aware training: the target backend's name and parameters as the caller
    /// understands them (e.g. `tfhe {"bits":5,…}`), recorded so that a resumed run attaches the
    /// same [`Quantiser`]; `None` trains in floating point.
    #[serde(default)]
    pub quantise_for: Option<String>,
    /// Standard deviation of the Gaussian noise added to every activation input in training
    /// steps (noise-aware fine-tuning for a small ring: an encrypted run adds about
    /// 2^(12.9 − log2 Δ) at each rescale at N = 2^15); 0 trains without noise.
    #[serde(default)]
    pub activation_noise: f64,
    /// Weight clustering applied in fine-tuning: every convolution's and fully connected
    /// layer's weights take at most this many values (k-means per tensor) in every forward
    /// pass and in the exported model, the float weights training underneath (a
    /// straight-through estimator). Needs a model without batch norms (an exported one).
    #[serde(default)]
    pub weight_clusters: Option<usize>,
    /// With `match_outputs`: the output is YOLOv8 detector heads with this many classes
    /// (`[k·(64 + classes), H, W]`, heads merged as `--graph-output` builds them), matched by
    /// [`detection_matching_loss`] instead of the squared error.
    #[serde(default)]
    pub yolo_classes: Option<usize>,
    /// Train each polynomial activation's coefficients too (one polynomial per channel of
    /// the same degree, starting from Hermite's; see [`TrainModel::train_coefficients`]),
    /// without weight decay, the leading one kept on its sign and at least
    /// [`super::model::MIN_LEADING_FRACTION`] of its start.
    #[serde(default)]
    pub train_coefficients: bool,
    /// The coefficients' learning rate as a fraction of the weights' (each coefficient
    /// scales a whole channel at every position, so its gradient is large: at 1 the
    /// degree-2 ResNet-20 diverged within 100 steps).
    #[serde(default = "default_coefficient_lr")]
    pub coefficient_lr: f64,
    /// Fraction of training steps (drawn per step from the seed) whose activations are
    /// normalised by their running ranges, as inference normalises them, instead of by the
    /// batch-widened ones: the loss then sees what an input beyond the running range does at
    /// inference, and its gradient pulls such inputs back. A step of this kind whose loss or
    /// gradient is not finite is skipped (and counted) instead of ending the run. 0: never.
    #[serde(default)]
    pub running_range_steps: f64,
}

fn default_coefficient_lr() -> f64 {
    0.02
}

/// Computes what the quantised network makes of a batch: called every step of
/// quantisation-aware training with the current model (batch norms folded, ranges frozen, as
/// exported) and the batch `[B, H, W, C]`; its values replace the float ones forward while
/// gradients flow through the float graph (a straight-through estimator).
pub type Quantiser = Box<dyn FnMut(&Model, &Tensor) -> Result<Substitute>>;

fn default_temperature() -> f64 {
    4.0
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        FinetuneConfig {
            degree: Some(4),
            bound: crate::polyact::DEFAULT_BOUND,
            epochs: 1,
            batch: 64,
            lr: 1e-3,
            momentum: 0.9,
            weight_decay: 1e-4,
            range_penalty: 0.0,
            penalty_warmup: 100,
            calibration_batches: 20,
            augment: true,
            seed: 1,
            distill: 0.0,
            distill_temperature: default_temperature(),
            teacher: None,
            match_outputs: false,
            feature_weight: 0.0,
            clip_grad_norm: 0.0,
            quantise_for: None,
            activation_noise: 0.0,
            weight_clusters: None,
            yolo_classes: None,
            train_coefficients: false,
            coefficient_lr: default_coefficient_lr(),
            running_range_steps: 0.0,
        }
    }
}

impl FinetuneConfig {
    /// The activation treatment this configuration asks for.
    pub fn activations(&self) -> Activations {
        match self.degree {
            Some(degree) => Activations::Hermite { degree, bound: self.bound },
            None => Activations::Keep,
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(SftError::Unsupported(m));
        if self.batch == 0 {
            return bad("the batch size must be at least 1".into());
        }
        if !(self.lr >= 0.0 && self.lr.is_finite()) {
            return bad(format!("the learning rate must be a non-negative number, got {}", self.lr));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return bad(format!("the momentum must be in [0, 1), got {}", self.momentum));
        }
        if !(self.range_penalty >= 0.0 && self.weight_decay >= 0.0) {
            return bad("the range penalty and the weight decay must be non-negative".into());
        }
        if !(0.0..=1.0).contains(&self.distill) {
            return bad(format!("the distillation weight must be in [0, 1], got {}", self.distill));
        }
        if !(self.distill_temperature > 0.0 && self.distill_temperature.is_finite()) {
            return bad(format!("the distillation temperature must be positive, got {}", self.distill_temperature));
        }
        if self.distill > 0.0 && self.teacher.is_none() {
            return bad("distillation needs a teacher model file".into());
        }
        if self.match_outputs && (self.distill != 1.0 || self.teacher.is_none()) {
            return bad(format!(
                "matching the teacher's outputs uses no labels: it needs a teacher model file and a distillation weight of 1 (got {})",
                self.distill
            ));
        }
        if !(self.feature_weight >= 0.0 && self.feature_weight.is_finite()) {
            return bad(format!("the feature weight must be a non-negative number, got {}", self.feature_weight));
        }
        if !(self.clip_grad_norm >= 0.0 && self.clip_grad_norm.is_finite()) {
            return bad(format!(
                "the gradient clipping norm must be a non-negative number, got {}",
                self.clip_grad_norm
            ));
        }
        if !(self.activation_noise >= 0.0 && self.activation_noise.is_finite()) {
            return bad(format!("the activation noise must be a non-negative number, got {}", self.activation_noise));
        }
        if let Some(k) = self.weight_clusters {
            if k < 2 {
                return bad(format!("weight clustering needs at least 2 values per layer, got {k}"));
            }
        }
        if self.yolo_classes.is_some() && !self.match_outputs {
            return bad("detector-head matching (YOLO classes) applies to output matching on photos only".into());
        }
        if self.train_coefficients && self.degree.is_none() {
            return bad("trainable polynomial coefficients need polynomial activations (a degree)".into());
        }
        if !(0.0..=1.0).contains(&self.running_range_steps) {
            return bad(format!(
                "the fraction of steps normalised by the running ranges must be in [0, 1], got {}",
                self.running_range_steps
            ));
        }
        if !(self.coefficient_lr >= 0.0 && self.coefficient_lr.is_finite()) {
            return bad(format!(
                "the coefficients' learning-rate fraction must be a non-negative number, got {}",
                self.coefficient_lr
            ));
        }
        if self.yolo_classes == Some(0) {
            return bad("a detector needs at least one class".into());
        }
        if self.feature_weight > 0.0 && !self.match_outputs {
            return bad("a feature weight applies to output matching only".into());
        }
        if let Some(d) = self.degree {
            if !(1..=16).contains(&d) {
                return bad(format!("polynomial degree must be 1..=16, got {d}"));
            }
        }
        Ok(())
    }
}

/// T²·CE(softmax(teacher/T), log_softmax(student/T)), averaged over the batch: the gradient of
/// the distillation KL divergence (they differ by the teacher's entropy, a constant).
pub fn distillation_loss(student: &Tensor, teacher: &Tensor, temperature: f64) -> Result<Tensor> {
    use candle_core::D;
    let t = temperature;
    let soft = candle_nn::ops::softmax(&(teacher / t).map_err(candle_err)?, D::Minus1).map_err(candle_err)?;
    let logp = candle_nn::ops::log_softmax(&(student / t).map_err(candle_err)?, D::Minus1).map_err(candle_err)?;
    let per = (soft * logp).map_err(candle_err)?.sum(D::Minus1).map_err(candle_err)?;
    (per.mean_all().map_err(candle_err)? * (-t * t)).map_err(candle_err)
}

/// mean((s − t)²) / (mean(t²) + 10⁻⁸), t the teacher's values (not differentiated): the
/// squared error relative to the target's energy, so that maps and logits of any size weigh
/// alike (1 for a student that outputs zeros, 0 for a perfect one).
pub fn matching_loss(student: &Tensor, teacher: &Tensor) -> Result<Tensor> {
    let t = teacher.detach();
    let energy = t.sqr().and_then(|e| e.mean_all()).map_err(candle_err)?.to_scalar::<f32>().map_err(candle_err)? as f64;
    let err = (student - &t).and_then(|d| d.sqr()).and_then(|d| d.mean_all()).map_err(candle_err)?;
    (err / (energy + 1e-8)).map_err(candle_err)
}

/// softplus(x) = ln(1 + eˣ), computed as max(x, 0) + ln(1 + e^(−|x|)) so that it does not
/// overflow: −ln σ(x) = softplus(−x) and −ln(1 − σ(x)) = softplus(x).
fn softplus(x: &Tensor) -> candle_core::Result<Tensor> {
    x.relu()? + x.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?
}

/// The mean Bernoulli KL divergence KL(t ‖ σ(s)) over every output: a student whose map
/// goes through a sigmoid (on the client) matched to the teacher's probabilities `t`. Its
/// gradient is σ(s) − t, which does not vanish where the sigmoid saturates (the squared error
/// on probabilities does: a pixel the student puts far on the wrong side stays there). 0 for a
/// perfect student, about ln 2 for one that answers ½ everywhere to a sure teacher.
pub fn probability_matching_loss(student_logits: &Tensor, teacher: &Tensor) -> Result<Tensor> {
    let inner = || -> candle_core::Result<Tensor> {
        let t = teacher.detach().clamp(0f32, 1f32)?;
        let s = student_logits;
        // −ln σ(s) = softplus(−s), −ln(1 − σ(s)) = softplus(s).
        let cross = ((&t * softplus(&s.neg()?)?)? + (t.affine(-1.0, 1.0)? * softplus(s)?)?)?;
        // The teacher's own entropy, so that a perfect student scores 0 (a constant: no gradient).
        let xlogx = |x: &Tensor| -> candle_core::Result<Tensor> { x * x.clamp(1e-30f32, 1f32)?.log()? };
        let entropy = (xlogx(&t)? + xlogx(&t.affine(-1.0, 1.0)?)?)?;
        (cross + entropy)?.mean_all()
    };
    inner().map_err(candle_err)
}

/// Box bins per side of YOLOv8 heads (its distribution focal loss' `reg_max`).
pub const YOLO_BINS: usize = 16;

/// Distillation of YOLOv8 detector heads, matched as the client decodes them rather than as
/// raw numbers. `student` and `teacher` are `[B, k·C·H·W]` (heads merged channel-major into
/// `shape` = `[k·C, H, W]`, C = 4·16 + `classes`). Two parts, each 0 for a perfect student:
/// - the class scores through the sigmoid: Σ KL(σ(t) ‖ σ(s)) over every cell and class,
///   divided by (Σ σ(t) + B) — the teacher's detections plus one per image, so that a few
///   faces among thousands of background cells are not averaged away while an image with no
///   object still penalises false positives;
/// - the box sides as the decoder reads them, a softmax over 16 bins: KL(softmax(t) ‖
///   softmax(s)) per side, weighted by the teacher's largest class probability at the cell
///   (boxes where the teacher sees nothing are never drawn) and divided by the weights' sum.
///
/// Cells of coarser heads, repeated by the merge's nearest upsampling, count once per copy in
/// both sums (a constant weight per head).
pub fn detection_matching_loss(student: &Tensor, teacher: &Tensor, shape: &[usize], classes: usize) -> Result<Tensor> {
    let per = 4 * YOLO_BINS + classes;
    let (channels, cells) = match shape {
        [c, h, w] if c % per == 0 && *c > 0 => (*c, h * w),
        other => {
            return Err(SftError::Unsupported(format!(
                "YOLO heads with {classes} classes need an output of k·{per} channels [k·{per}, H, W], this model outputs {other:?}"
            )))
        }
    };
    let heads = channels / per;
    let inner = || -> candle_core::Result<Tensor> {
        let b = student.dim(0)?;
        let s = student.reshape((b, heads, per, cells))?;
        let t = teacher.detach().reshape((b, heads, per, cells))?;
        // Class scores: the Bernoulli KL of σ(s) from σ(t), from logits on both sides.
        let sc = s.narrow(2, 4 * YOLO_BINS, classes)?.contiguous()?;
        let tc = t.narrow(2, 4 * YOLO_BINS, classes)?.contiguous()?;
        let p = candle_nn::ops::sigmoid(&tc)?;
        // KL = p·(ln p − ln σ(s)) + (1 − p)·(ln(1 − p) − ln(1 − σ(s)))
        //    = p·(softplus(−s) − softplus(−t)) + (1 − p)·(softplus(s) − softplus(t)).
        let kl = ((&p * (softplus(&sc.neg()?)? - softplus(&tc.neg()?)?)?)?
            + (p.affine(-1.0, 1.0)? * (softplus(&sc)? - softplus(&tc)?)?)?)?;
        let class_loss = (kl.sum_all()? / (p.sum_all()?.to_scalar::<f32>()? as f64 + b as f64))?;
        // Box sides: 4 softmaxes of 16 bins per cell, weighted by the teacher's confidence.
        let sb = s.narrow(2, 0, 4 * YOLO_BINS)?.reshape((b, heads, 4, YOLO_BINS, cells))?;
        let tb = t.narrow(2, 0, 4 * YOLO_BINS)?.reshape((b, heads, 4, YOLO_BINS, cells))?;
        let q = candle_nn::ops::softmax(&tb, 3)?;
        let side_kl = (&q * (candle_nn::ops::log_softmax(&tb, 3)? - candle_nn::ops::log_softmax(&sb, 3)?)?)?.sum(3)?;
        let weight = p.max(2)?; // [B, k, cells]
        let weighted = side_kl.broadcast_mul(&weight.unsqueeze(2)?)?;
        let total_weight = weight.sum_all()?.to_scalar::<f32>()? as f64;
        let box_loss = (weighted.sum_all()? / (4.0 * total_weight + 1e-6))?;
        class_loss + box_loss
    };
    inner().map_err(candle_err)
}

/// Progress of one training step, for progress bars.
#[derive(Clone, Copy, Debug)]
pub struct StepReport {
    /// Epoch (0-based).
    pub epoch: usize,
    /// Step within the epoch (1-based).
    pub step: usize,
    /// Steps per epoch.
    pub steps: usize,
    /// Running mean cross-entropy over the epoch so far.
    pub loss: f64,
    /// Running training accuracy over the epoch so far.
    pub accuracy: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Global L2 norm of this step's gradient (before clipping; not finite for a skipped step).
    pub grad_norm: f64,
    /// Steps skipped so far this epoch (see [`FinetuneConfig::running_range_steps`]).
    pub skipped: usize,
}

/// Summary of one epoch.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct EpochReport {
    /// Epoch (0-based).
    pub epoch: usize,
    /// Mean training cross-entropy.
    pub loss: f64,
    /// Training accuracy (augmented images).
    pub accuracy: f64,
    /// Wall time of the epoch in seconds.
    pub seconds: f64,
    /// Running-range steps skipped because their loss or gradient was not finite.
    #[serde(default)]
    pub skipped: usize,
}

/// Turns planar `u8` images into a channels-last batch, with optional random crop (zero
/// padding of 4 pixels, as raw black pixels) and horizontal flip.
pub fn make_batch(
    images: &LabeledImages,
    idx: &[usize],
    input: &InputSpec,
    rng: Option<&mut StdRng>,
) -> Result<Tensor> {
    let [c, h, w] = images.shape;
    if input.shape != [c, h, w] {
        return Err(SftError::Unsupported(format!("images are {c}×{h}×{w}, the model takes {:?}", input.shape)));
    }
    let p = &input.preprocess;
    let scale: Vec<f32> = p.std.iter().map(|s| 1.0 / (255.0 * s)).collect();
    let shift: Vec<f32> = p.mean.iter().zip(&p.std).map(|(m, s)| -m / s).collect();
    let mut out = vec![0.0f32; idx.len() * c * h * w];
    let mut rng = rng;
    for (b, &i) in idx.iter().enumerate() {
        let (dy, dx, flip) = match rng.as_deref_mut() {
            Some(r) => (r.gen_range(0..9) as isize - 4, r.gen_range(0..9) as isize - 4, r.gen_bool(0.5)),
            None => (0, 0, false),
        };
        let img = images.image(i);
        let dst = &mut out[b * c * h * w..(b + 1) * c * h * w];
        for y in 0..h {
            for x in 0..w {
                let sy = y as isize + dy;
                let sx0 = if flip { w - 1 - x } else { x } as isize + dx;
                for ch in 0..c {
                    let v = if sy < 0 || sy >= h as isize || sx0 < 0 || sx0 >= w as isize {
                        0.0
                    } else {
                        img[ch * h * w + sy as usize * w + sx0 as usize] as f32
                    };
                    dst[(y * w + x) * c + ch] = v * scale[ch] + shift[ch];
                }
            }
        }
    }
    Tensor::from_vec(out, (idx.len(), h, w, c), &candle_core::Device::Cpu).map_err(candle_err)
}

/// What a checkpoint's JSON file records.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckpointInfo {
    /// Configuration of the run.
    pub config: FinetuneConfig,
    /// Epochs completed.
    pub epochs_done: usize,
    /// Optimiser steps taken.
    pub steps_done: usize,
    /// Model file (exported, loadable by every tool).
    pub model: PathBuf,
    /// Momentum buffers file.
    pub momenta: PathBuf,
    /// Reports of the completed epochs.
    pub history: Vec<EpochReport>,
}

/// A fine-tuning run: the model, the optimiser state and the schedule.
pub struct Finetuner {
    /// The training graph.
    pub model: TrainModel,
    config: FinetuneConfig,
    momenta: BTreeMap<String, Tensor>,
    steps_done: usize,
    epochs_done: usize,
    history: Vec<EpochReport>,
    input: InputSpec,
    name: String,
    /// The frozen original model that distillation imitates.
    teacher: Option<TrainModel>,
    /// Quantisation-aware training's simulator, when attached.
    quantiser: Option<Quantiser>,
}

impl Finetuner {
    /// Starts a run from `model` (activations converted as `config` asks).
    pub fn new(model: &Model, config: FinetuneConfig) -> Result<Self> {
        config.validate()?;
        let input = model.graph().input.clone();
        let name = model.graph().name.clone();
        let output_shape = model.output_shape().clone();
        if let Some(classes) = config.yolo_classes {
            let per = 4 * YOLO_BINS + classes;
            if !matches!(output_shape.as_slice(), [c, _, _] if c % per == 0 && *c > 0) {
                return Err(SftError::Unsupported(format!(
                    "YOLO heads with {classes} classes need an output of k·{per} channels [k·{per}, H, W] (the heads merged by `import onnx --graph-output`), '{name}' outputs {output_shape:?}"
                )));
            }
        }
        if config.weight_clusters.is_some() {
            if let Some(bn) = model.graph().nodes.iter().find(|n| matches!(n.op, peregrine_model::ir::Op::BatchNorm(_)))
            {
                return Err(SftError::Unsupported(format!(
                    "weight clustering trains the weights the exported model multiplies by, but batch norm '{}' would be folded into them afterwards (scaling every cluster per channel): start from a model with its batch norms folded, e.g. one `peregrine finetune` exported",
                    bn.name
                )));
            }
        }
        // Polynomial training leaves a final activation to the client (exact after decryption);
        // the forward pass still applies it, so the loss sees what the client will.
        let peeled;
        let model = match config.activations() {
            Activations::Hermite { .. } => {
                peeled = peregrine_model::transform::client_output_activation(model)?;
                &peeled
            }
            Activations::Keep => model,
        };
        let mut model = TrainModel::new(model, config.activations())?;
        model.weight_clusters = config.weight_clusters;
        if config.train_coefficients {
            model.train_coefficients()?;
        }
        model.track_penalty = config.range_penalty > 0.0;
        model.collect_features = config.match_outputs && config.feature_weight > 0.0;
        // Output matching trains on a few photos per batch: no batch statistics.
        model.freeze_batch_norms = config.match_outputs;
        let teacher = match (&config.teacher, config.distill > 0.0) {
            (Some(path), true) => {
                let t = load_model(path)?;
                if t.graph().input.shape != input.shape {
                    return Err(SftError::Unsupported(format!(
                        "the teacher {} takes inputs {:?}, the model {:?}",
                        path.display(),
                        t.graph().input.shape,
                        input.shape
                    )));
                }
                if config.match_outputs && *t.output_shape() != output_shape {
                    return Err(SftError::Unsupported(format!(
                        "the teacher {} outputs {:?}, the model {:?}: output matching needs the same output",
                        path.display(),
                        t.output_shape(),
                        output_shape
                    )));
                }
                let mut t = TrainModel::new(&t, Activations::Keep)?;
                t.collect_features = config.match_outputs && config.feature_weight > 0.0;
                Some(t)
            }
            _ => None,
        };
        Ok(Finetuner {
            model,
            config,
            momenta: BTreeMap::new(),
            steps_done: 0,
            epochs_done: 0,
            history: Vec::new(),
            input,
            name,
            teacher,
            quantiser: None,
        })
    }

    /// Resumes the run recorded in the checkpoint JSON at `path`.
    pub fn resume(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| SftError::io(path, e))?;
        let info: CheckpointInfo = serde_json::from_str(&text)
            .map_err(|e| SftError::Checkpoint { path: path.display().to_string(), detail: e.to_string() })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let model = load_model(dir.join(&info.model))?;
        let mut run = Finetuner::new(&model, info.config.clone())?;
        let momenta = load_tensors(dir.join(&info.momenta))?;
        for (name, a) in momenta {
            if !run.model.params().contains_key(&name) {
                return Err(SftError::Checkpoint {
                    path: path.display().to_string(),
                    detail: format!("its momentum '{name}' matches no trainable weight"),
                });
            }
            let t = Tensor::from_vec(a.iter().copied().collect::<Vec<f32>>(), a.shape(), run.model.device())
                .map_err(candle_err)?;
            run.momenta.insert(name, t);
        }
        run.steps_done = info.steps_done;
        run.epochs_done = info.epochs_done;
        run.history = info.history;
        run.name = model.graph().name.clone();
        Ok(run)
    }

    /// Attaches the simulator of quantisation-aware training (see [`Quantiser`]). It needs a
    /// model without batch norms (fold them first: training would normalise by batch
    /// statistics the quantised network does not have); statistics stay frozen.
    pub fn quantise_with(&mut self, quantiser: Quantiser) -> Result<()> {
        if self.config.quantise_for.is_none() {
            return Err(SftError::Unsupported(
                "quantisation-aware training: record the target in the configuration's quantise_for".into(),
            ));
        }
        if self.model.has_batch_norm() {
            return Err(SftError::Unsupported(
                "quantisation-aware training needs batch norms folded into the convolutions (the quantised network has no batch statistics)".into(),
            ));
        }
        self.quantiser = Some(quantiser);
        Ok(())
    }

    /// The configuration.
    pub fn config(&self) -> &FinetuneConfig {
        &self.config
    }

    /// Epochs already completed.
    pub fn epochs_done(&self) -> usize {
        self.epochs_done
    }

    /// Reports of completed epochs.
    pub fn history(&self) -> &[EpochReport] {
        &self.history
    }

    /// Observes the ranges over the first `calibration_batches` batches of `images`, without
    /// augmentation and without changing any weight. With 0 batches nothing is observed when
    /// every activation already has its ranges (a polynomial model fine-tuned further keeps
    /// the function it was exported with); otherwise at least one batch is.
    pub fn calibrate(&mut self, images: &LabeledImages) -> Result<()> {
        let b = self.config.batch;
        if self.config.calibration_batches == 0 && self.model.has_all_ranges() {
            return Ok(());
        }
        let batches = self.config.calibration_batches.max(1).min(images.len().div_ceil(b));
        for k in 0..batches {
            let idx: Vec<usize> = (k * b..((k + 1) * b).min(images.len())).collect();
            let x = make_batch(images, &idx, &self.input, None)?;
            self.model.forward(&x, Pass::Calibrate)?;
        }
        Ok(())
    }

    fn steps_per_epoch(&self, n: usize) -> usize {
        n.div_ceil(self.config.batch)
    }

    fn learning_rate(&self, step: usize, total: usize) -> f64 {
        let t = step as f64 / total.max(1) as f64;
        self.config.lr * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
    }

    /// Trains one epoch over `images` (shuffled with a seed derived from the epoch), calling
    /// `progress` after every step.
    pub fn train_epoch(&mut self, images: &LabeledImages, mut progress: impl FnMut(StepReport)) -> Result<EpochReport> {
        let start = std::time::Instant::now();
        let epoch = self.epochs_done;
        let steps = self.steps_per_epoch(images.len());
        let total = steps * self.config.epochs;
        let mut rng = StdRng::seed_from_u64(self.config.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut order: Vec<usize> = (0..images.len()).collect();
        order.shuffle(&mut rng);
        let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
        let want_penalty = self.config.range_penalty > 0.0;
        let mut skipped = 0usize;
        for (k, idx) in order.chunks(self.config.batch).enumerate() {
            let running = self.config.running_range_steps > 0.0
                && unit_draw(self.config.seed ^ 0x0072_756E_6E69_6E67, self.steps_done as u64)
                    < self.config.running_range_steps;
            self.model.normalise_by_running_range = running;
            let x = make_batch(images, idx, &self.input, self.config.augment.then_some(&mut rng))?;
            // A seed per step: a resumed run draws what an uninterrupted one would have.
            self.model.activation_noise = (self.config.activation_noise > 0.0).then(|| ActivationNoise {
                std: self.config.activation_noise as f32,
                seed: self.config.seed
                    ^ 0x6E6F_6973_6521
                    ^ (self.steps_done as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            });
            let labels: Vec<u8> = idx.iter().map(|&i| images.labels[i]).collect();
            let out = match self.quantiser.as_mut() {
                Some(quantise) => {
                    // `quantise_with` made sure there is no batch norm: nothing to fold.
                    let current = self.model.export_unfolded("")?;
                    let substitute = quantise(&current, &x)?;
                    self.model.forward_substituted(&x, Pass::Frozen, &substitute)?
                }
                None => {
                    if self.config.quantise_for.is_some() {
                        return Err(SftError::Unsupported(
                            "this run is quantisation-aware: attach its quantiser before training".into(),
                        ));
                    }
                    self.model.forward(&x, Pass::Train)?
                }
            };
            let (objective, reported, labels) = if self.config.match_outputs {
                let teacher = self.teacher.as_mut().expect("validated: output matching has a teacher");
                let t = teacher.forward(&x, Pass::Frozen)?;
                let mut loss = match (&out.before_sigmoid, self.config.yolo_classes) {
                    (_, Some(classes)) => {
                        detection_matching_loss(&out.logits, &t.logits, self.model.output_shape(), classes)?
                    }
                    (Some(s), None) => probability_matching_loss(s, &t.logits)?,
                    (None, None) => matching_loss(&out.logits, &t.logits)?,
                };
                if self.config.feature_weight > 0.0 && !out.features.is_empty() {
                    let mut sum: Option<Tensor> = None;
                    for (name, f) in &out.features {
                        let Some(tf) = t.features.get(name) else { continue };
                        let l = matching_loss(f, tf)?;
                        sum = Some(match sum {
                            Some(s) => (s + l).map_err(candle_err)?,
                            None => l,
                        });
                    }
                    if let Some(sum) = sum {
                        let w = self.config.feature_weight / out.features.len() as f64;
                        loss = (loss + (sum * w).map_err(candle_err)?).map_err(candle_err)?;
                    }
                }
                let value = loss.to_scalar::<f32>().map_err(candle_err)? as f64;
                // The teacher's top class stands in for the label: the accuracy reported is
                // the agreement with the teacher.
                let agreed: Vec<u8> = predictions(&t.logits)?.iter().map(|&p| p.min(255) as u8).collect();
                (loss, value, agreed)
            } else {
                let ce = cross_entropy(&out.logits, &labels)?;
                let objective = match self.teacher.as_mut() {
                    Some(teacher) => {
                        let t = teacher.forward(&x, Pass::Frozen)?.logits.detach();
                        let kd = distillation_loss(&out.logits, &t, self.config.distill_temperature)?;
                        let a = self.config.distill;
                        ((&ce * (1.0 - a)).map_err(candle_err)? + (kd * a).map_err(candle_err)?).map_err(candle_err)?
                    }
                    None => ce.clone(),
                };
                (objective, ce.to_scalar::<f32>().map_err(candle_err)? as f64, labels)
            };
            let loss = if want_penalty {
                let ramp = ((self.steps_done + 1) as f64 / self.config.penalty_warmup.max(1) as f64).min(1.0);
                (&objective + (out.range_penalty * (self.config.range_penalty * ramp)).map_err(candle_err)?)
                    .map_err(candle_err)?
            } else {
                objective
            };
            let lr = self.learning_rate(self.steps_done, total);
            let runaway = running && !loss.to_scalar::<f32>().map_err(candle_err)?.is_finite();
            let grad_norm = if runaway { f64::NAN } else { self.step(&loss, lr, running)? };
            self.steps_done += 1;
            if running && !grad_norm.is_finite() {
                // An input the running ranges do not cover ran away: nothing to learn from this
                // batch's numbers (the weights were left as they were).
                skipped += 1;
                progress(StepReport {
                    epoch,
                    step: k + 1,
                    steps,
                    loss: if seen > 0 { loss_sum / seen as f64 } else { f64::NAN },
                    accuracy: if seen > 0 { correct as f64 / seen as f64 } else { 0.0 },
                    lr,
                    grad_norm,
                    skipped,
                });
                continue;
            }
            let ce_value = reported;
            if !ce_value.is_finite() {
                return Err(SftError::Unsupported(format!(
                    "training diverged at epoch {} step {} (loss is {ce_value}); lower --lr or raise --bound",
                    epoch + 1,
                    k + 1
                )));
            }
            let pred = predictions(&out.logits)?;
            correct += pred.iter().zip(&labels).filter(|(p, l)| **p == **l as u32).count();
            seen += labels.len();
            loss_sum += ce_value * labels.len() as f64;
            progress(StepReport {
                epoch,
                step: k + 1,
                steps,
                loss: loss_sum / seen as f64,
                accuracy: correct as f64 / seen as f64,
                lr,
                grad_norm,
                skipped,
            });
        }
        self.epochs_done += 1;
        let report = EpochReport {
            epoch,
            loss: loss_sum / seen as f64,
            accuracy: correct as f64 / seen as f64,
            seconds: start.elapsed().as_secs_f64(),
            skipped,
        };
        self.history.push(report);
        Ok(report)
    }

    /// One SGD step on `loss` at `lr`; returns the gradient's global L2 norm (before
    /// clipping). A gradient that is not finite is an error, or, when `may_skip`, leaves the
    /// weights as they were and returns its norm.
    fn step(&mut self, loss: &Tensor, lr: f64, may_skip: bool) -> Result<f64> {
        let grads = loss.backward().map_err(candle_err)?;
        let (mu, wd) = (self.config.momentum, self.config.weight_decay);
        let mut sq = 0.0f64;
        for var in self.model.params().values() {
            if let Some(g) = grads.get(var) {
                sq += g.sqr().and_then(|g| g.sum_all()).and_then(|s| s.to_scalar::<f32>()).map_err(candle_err)? as f64;
            }
        }
        let norm = sq.sqrt();
        if !norm.is_finite() {
            if may_skip {
                return Ok(norm);
            }
            return Err(SftError::Unsupported(format!(
                "the gradient is not finite (norm {norm}): lower --lr or raise --bound"
            )));
        }
        let clip = (self.config.clip_grad_norm > 0.0 && norm > self.config.clip_grad_norm)
            .then(|| self.config.clip_grad_norm / norm);
        for (name, var) in self.model.params() {
            let Some(g) = grads.get(var) else { continue };
            let scaled;
            let g = match clip {
                Some(f) => {
                    scaled = (g * f).map_err(candle_err)?;
                    &scaled
                }
                None => g,
            };
            let w = var.as_tensor();
            let coefficient = self.model.is_coefficient(name);
            let decay = if coefficient { 0.0 } else { wd };
            let lr = if coefficient { lr * self.config.coefficient_lr } else { lr };
            let g = (g + (w * decay).map_err(candle_err)?).map_err(candle_err)?;
            let m = match self.momenta.get(name) {
                Some(m) => ((m * mu).map_err(candle_err)? + g).map_err(candle_err)?,
                None => g,
            };
            var.set(&(w - (&m * lr).map_err(candle_err)?).map_err(candle_err)?).map_err(candle_err)?;
            // `w * wd` records the weight in `m`'s graph, and each step's momentum would then hold
            // the previous one: detached, the momentum is plain data and memory stays flat.
            self.momenta.insert(name.clone(), m.detach());
        }
        self.model.clamp_coefficients()?;
        Ok(norm)
    }

    /// The FHE-ready model (ranges frozen into per-channel polynomial coefficients).
    pub fn export(&self) -> Result<Model> {
        self.model.apply_clusters(crate::convert::fold_batch_norms(&self.export_unfolded()?)?)
    }

    /// The model with batch norms unfolded (what checkpoints store).
    fn export_unfolded(&self) -> Result<Model> {
        let suffix = match (self.config.degree, self.epochs_done) {
            (Some(d), e) => format!("-sft{d}-e{e}"),
            (None, e) => format!("-e{e}"),
        };
        let base = base_name(&self.name);
        let (mut graph, weights) = self.model.export_unfolded("")?.into_parts();
        graph.name = format!("{base}{suffix}");
        Ok(Model::new(graph, weights)?)
    }

    /// Writes `<stem>.ckpt.json`, `<stem>.ckpt.safetensors` (the model with batch norms
    /// still unfolded, loadable by every tool) and
    /// `<stem>.ckpt.momenta.safetensors` next to `output`; returns the JSON path.
    pub fn save_checkpoint(&self, output: &Path) -> Result<PathBuf> {
        let stem = output.file_stem().and_then(|s| s.to_str()).unwrap_or("model").to_string();
        let dir = output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let model_file = PathBuf::from(format!("{stem}.ckpt.safetensors"));
        let momenta_file = PathBuf::from(format!("{stem}.ckpt.momenta.safetensors"));
        save_model(&self.export_unfolded()?, dir.join(&model_file))?;
        let mut momenta = BTreeMap::new();
        for (name, t) in &self.momenta {
            let data = t.flatten_all().and_then(|t| t.to_vec1::<f32>()).map_err(candle_err)?;
            momenta.insert(name.clone(), ArrayD::from_shape_vec(IxDyn(t.dims()), data).expect("sized"));
        }
        let bytes = tensors_to_bytes(&momenta, None)?;
        let mpath = dir.join(&momenta_file);
        std::fs::write(&mpath, bytes).map_err(|e| SftError::io(&mpath, e))?;
        let info = CheckpointInfo {
            config: self.config.clone(),
            epochs_done: self.epochs_done,
            steps_done: self.steps_done,
            model: model_file,
            momenta: momenta_file,
            history: self.history.clone(),
        };
        let path = dir.join(format!("{stem}.ckpt.json"));
        let json = serde_json::to_string_pretty(&info).expect("serialisable");
        std::fs::write(&path, json).map_err(|e| SftError::io(&path, e))?;
        Ok(path)
    }
}

/// A uniform draw in [0, 1) from `seed` and `index` (SplitMix64): the same for a resumed run.
fn unit_draw(seed: u64, index: u64) -> f64 {
    let mut z = seed.wrapping_add(index.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// `name` without a trailing `-sftD-eN` or `-eN` run suffix (other hyphens are kept).
fn base_name(name: &str) -> &str {
    let digits_after = |s: &str, tag: &str| {
        s.strip_prefix(tag).is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
    };
    let mut base = name;
    if let Some(i) = base.rfind("-e").filter(|&i| digits_after(&base[i..], "-e")) {
        base = &base[..i];
    }
    if let Some(i) = base.rfind("-sft").filter(|&i| digits_after(&base[i..], "-sft")) {
        base = &base[..i];
    }
    base
}

/// Accuracy of `model` in the f32 reference executor over `images`.
pub fn evaluate(model: &Model, images: &LabeledImages) -> Result<f64> {
    use peregrine_model::reference::{argmax_rows, Reference};
    let exec = Reference::<f32>::new(model);
    let mut correct = 0usize;
    for start in (0..images.len()).step_by(500) {
        let part = images.slice(start..(start + 500).min(images.len()));
        let x = peregrine_data::preprocess::<f32>(&part.pixels, part.len(), &model.graph().input)?;
        let y = exec.run_parallel(&x, 100)?;
        correct += argmax_rows(&y).iter().zip(&part.labels).filter(|(p, l)| **p == **l as usize).count();
    }
    Ok(correct as f64 / images.len().max(1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use peregrine_model::ir::*;
    use peregrine_model::testkit::{conv, graph, input_spec, linear, node};

    /// conv 3→4 (3×3) → ReLU → global average pool → linear 4→10.
    fn small_model() -> Model {
        let mut w = Weights::new();
        let ramp = |n: usize, scale: f32| {
            (0..n).map(|i| ((i * 7919) % 13) as f32 / 13.0 * scale - scale / 2.0).collect::<Vec<_>>()
        };
        w.insert("c.w".into(), ArrayD::from_shape_vec(IxDyn(&[4, 3, 3, 3]), ramp(108, 0.5)).unwrap());
        w.insert("fc.w".into(), ArrayD::from_shape_vec(IxDyn(&[10, 4]), ramp(40, 1.0)).unwrap());
        let nodes = vec![
            node("c", conv(3, 4, 3, 1, 1, 1, 1, "c.w", None), &[INPUT]),
            node("r", Op::Activation(Activation::Relu), &["c"]),
            node("gap", Op::GlobalAvgPool, &["r"]),
            node("flat", Op::Flatten, &["gap"]),
            node("fc", linear(4, 10, "fc.w", None), &["flat"]),
        ];
        Model::new(graph("small", input_spec([3, 8, 8]), nodes, "fc"), w).unwrap()
    }

    #[test]
    fn momenta_hold_no_computation_graph_after_a_step() {
        // A momentum that kept its graph would chain every earlier step's tensors: training
        // memory grew by about 0.9 GiB per epoch on the small CNN until the OOM killer stopped it.
        let pixels: Vec<u8> = (0..12 * 3 * 64).map(|i| ((i * 37) % 251) as u8).collect();
        let images = LabeledImages { shape: [3, 8, 8], pixels, labels: (0..12).map(|i| (i % 10) as u8).collect() };
        let config =
            FinetuneConfig { degree: None, epochs: 1, batch: 4, lr: 0.01, augment: false, ..FinetuneConfig::default() };
        let mut run = Finetuner::new(&small_model(), config).unwrap();
        run.train_epoch(&images, |_| {}).unwrap();
        assert_eq!(run.momenta.len(), 2, "both weights have a momentum");
        for (name, m) in &run.momenta {
            assert!(!m.track_op(), "momentum of {name} still records its computation graph");
        }
    }

    fn patterned_images(n: usize) -> LabeledImages {
        let pixels: Vec<u8> = (0..n * 3 * 64).map(|i| ((i * 37) % 251) as u8).collect();
        LabeledImages { shape: [3, 8, 8], pixels, labels: (0..n).map(|i| (i % 10) as u8).collect() }
    }

    fn max_abs_difference(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
    }

    #[test]
    fn running_range_steps_normalise_as_inference_does() {
        // A batch 1.5 times brighter than the calibration ones leaves the running ranges (but
        // stays inside the guard): a running-range training pass must compute what inference
        // computes and leave the ranges as they were; a batch-widened one must not.
        let images = patterned_images(8);
        let config = FinetuneConfig { degree: Some(2), batch: 4, augment: false, ..FinetuneConfig::default() };
        for running in [true, false] {
            let mut run = Finetuner::new(&small_model(), config.clone()).unwrap();
            run.calibrate(&images).unwrap();
            let x = (make_batch(&images, &[0, 1, 2, 3], &run.input, None).unwrap() * 1.5).unwrap();
            run.model.normalise_by_running_range = running;
            let ranges = |run: &Finetuner| run.model.ranges()["r"].range.clone();
            let calibrated = ranges(&run);
            let train = run.model.forward(&x, Pass::Train).unwrap().logits;
            assert_eq!(ranges(&run) == calibrated, running, "ranges updated by the training pass");
            let inference = run.model.forward(&x, Pass::Frozen).unwrap().logits;
            let gap = max_abs_difference(&train, &inference);
            let scale = inference.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            if running {
                assert_eq!(gap, 0.0, "running-range pass differs from inference by {gap}");
            } else {
                assert!(gap > 1e-3 * scale, "the batch-widened pass should differ from inference (gap {gap})");
            }
        }
    }

    #[test]
    fn running_range_steps_are_drawn_at_the_asked_fraction_and_reproducibly() {
        let draws: Vec<f64> = (0..20_000).map(|k| unit_draw(42, k)).collect();
        assert!(draws.iter().all(|d| (0.0..1.0).contains(d)));
        let below = draws.iter().filter(|&&d| d < 0.3).count() as f64 / draws.len() as f64;
        assert!((below - 0.3).abs() < 0.015, "fraction below 0.3 is {below}");
        assert_eq!(unit_draw(42, 17), draws[17], "a resumed run draws the same steps");
        assert_ne!(unit_draw(43, 17), draws[17]);
    }

    #[test]
    fn a_run_with_running_range_steps_trains_and_rejects_bad_fractions() {
        let images = patterned_images(12);
        let config = FinetuneConfig {
            degree: Some(2),
            batch: 4,
            lr: 0.01,
            augment: false,
            running_range_steps: 1.0,
            clip_grad_norm: 5.0,
            ..FinetuneConfig::default()
        };
        let mut run = Finetuner::new(&small_model(), config.clone()).unwrap();
        run.calibrate(&images).unwrap();
        let before = run.export().unwrap();
        let mut norms = Vec::new();
        let report = run.train_epoch(&images, |s| norms.push(s.grad_norm)).unwrap();
        assert_eq!(norms.len(), 3);
        assert_eq!(report.skipped, norms.iter().filter(|n| !n.is_finite()).count());
        assert!(report.skipped < 3, "every step skipped on a well-behaved batch");
        assert_ne!(before.weights()["fc.w"], run.export().unwrap().weights()["fc.w"], "the weights did not move");
        for bad in [-0.1, 1.5, f64::NAN] {
            let err = Finetuner::new(&small_model(), FinetuneConfig { running_range_steps: bad, ..config.clone() })
                .err()
                .expect("an out-of-range fraction is refused");
            assert!(err.to_string().contains("running ranges"), "{err}");
        }
    }

    #[test]
    fn run_suffixes_are_stripped_and_other_hyphens_kept() {
        assert_eq!(base_name("resnet20"), "resnet20");
        assert_eq!(base_name("resnet20-sft4-e2"), "resnet20");
        assert_eq!(base_name("tiny-e3"), "tiny");
        assert_eq!(base_name("mobile-effnet"), "mobile-effnet");
        assert_eq!(base_name("mobile-effnet-sft2-e0"), "mobile-effnet");
    }
}
