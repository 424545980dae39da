//! # peregrine-sft
//!
//! Building blocks of single-stage fine-tuning (SFT), which turns a pretrained ReLU/SiLU/GELU
//! CNN into an FHE-friendly one:
//! - [`hermite`]: the truncated Hermite expansion of an activation (probabilists' Hermite
//!   polynomials, standard normal weight), in monomial form;
//! - [`polyact`]: PolyAct-RN, `y = r_c · p(x / r_c)` with a per-channel range scale `r_c`
//!   learnt as a running max of |x| / B (momentum 0.1, eps 1e-3), with its exact gradients;
//! - [`convert`]: the no-training conversion of a model (calibrated scales, fixed
//!   polynomials, max pooling → average pooling), the baseline that training improves on.
//!
//! - `qat` (feature `tfhe`): quantisation-aware training through the TFHE backend's integer
//!   simulation;
//! - [`train`]: the fine-tuning itself, on candle: a trainable graph built from the IR,
//!   SGD with momentum, checkpoints, and the export of the FHE-ready model.

#![warn(missing_docs)]

pub mod convert;
pub mod error;
pub mod hermite;
pub mod polyact;
#[cfg(feature = "tfhe")]
pub mod qat;
pub mod train;

pub use error::{Result, SftError};
