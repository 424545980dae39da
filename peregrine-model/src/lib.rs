//! # peregrine-model
//!
//! Everything about a model that does not involve encryption:
//! - [`ir`]: the graph, its validation and shape inference; [`format`]: the `.safetensors` file;
//! - [`import`]: builders for pretrained networks (CIFAR ResNets) and a small trainable CNN;
//!   [`onnx`]: ONNX models;
//! - [`reference`]: the cleartext reference executor (f32/f64);
//! - [`transform`]: the calibrated least-squares conversion to polynomial activations;
//!   [`ensemble`]: several members of one architecture as one wider model; [`cluster`]:
//!   k-means weight clustering.
//!
//! It depends on no FHE and no training crate.
//!
//! ```
//! use peregrine_model::import::small_cnn;
//! use peregrine_model::reference::{argmax_rows, Reference};
//!
//! let model = small_cnn(&[4, 8], 1)?;
//! let input = ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&[1, 3, 32, 32]));
//! let logits = Reference::<f32>::new(&model).run(&input)?;
//! assert_eq!(argmax_rows(&logits).len(), 1);
//! # Ok::<(), peregrine_model::ModelError>(())
//! ```

#![warn(missing_docs)]

pub mod cluster;
pub mod ensemble;
pub mod error;
pub mod format;
pub mod import;
pub mod ir;
pub mod onnx;
pub mod reference;
#[cfg(feature = "test-support")]
pub mod testkit;
pub mod transform;

pub use error::{ModelError, Result};
pub use format::{load_model, save_model};
pub use ir::Model;
