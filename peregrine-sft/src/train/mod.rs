//! Single-stage fine-tuning on candle (CPU).
//!
//! [`TrainModel`] builds a trainable graph from any model that imports (no per-architecture
//! code); [`Finetuner`] runs SFT on it: PolyAct-RN activations with running-max ranges, SGD with
//! momentum 0.9 and weight decay, cosine learning rate, random crop + flip, an optional range
//! penalty for degree-2 leveled models, checkpoints that resume, and the export of the
//! FHE-ready model.

mod kernels;
mod model;
mod schedule;
mod trainer;

pub use kernels::{
    channel_stats, tensor_channel_stats, BatchNormInputGrad, BatchNormParamGrad, BatchNormTrain, Fold, PolyAct,
    PolyActCoeffGrad, PolyActGrad, PolyActTrained, Unfold, Window,
};
pub use model::{
    candle_err, cross_entropy, predictions, to_channels_last, ActivationNoise, Activations, Forward, Pass, RangeState,
    Substitute, TrainModel,
};
pub use schedule::{Baseline, EpochSummary, Evaluator, Outcome, Progress, Schedule};
pub use trainer::{
    detection_matching_loss, distillation_loss, evaluate, make_batch, matching_loss, probability_matching_loss,
    CheckpointInfo, EpochReport, FinetuneConfig, Finetuner, Quantiser, StepReport,
};
