//! # peregrine-core
//!
//! The foundation of Peregrine, a toolkit for running deep CNNs on encrypted images:
//! - [`ir`]: the model graph and its shape inference; [`format`]: the `.safetensors` model file;
//! - [`import`]: builders for pretrained networks (CIFAR ResNets);
//! - [`reference`]: the cleartext reference executor (f32/f64);
//! - [`data`]: CIFAR-10 and image input, preprocessing;
//! - [`backend`]: the FHE backend interface (client / server / scheme);
//! - [`clear`]: the `clear` reference backend that enforces CKKS rules on f64 slots;
//! - [`plugin`]: the C ABI, the export macro and the run-time loader for backend plugins.
//!
//! It depends on no FHE library.

#![warn(missing_docs)]

pub mod backend;
pub mod clear;
pub mod data;
pub mod error;
pub mod format;
pub mod import;
pub mod ir;
pub mod plugin;
pub mod reference;
pub mod transform;

pub use error::{BackendError, Error, Result};
