//! # peregrine-backend
//!
//! The interface between Peregrine and an FHE library, and nothing else:
//! - [`Scheme`], [`Client`], [`Backend`]: the CKKS-shaped SIMD API every backend implements
//!   (parameters and key generation; the client's secret-key side; the server's evaluation on
//!   ciphertexts with evaluation keys only), with [`Capabilities`] and [`KeyRequest`];
//! - [`plugin`]: the versioned C ABI, the [`export_plugin!`] macro that exposes any [`Scheme`]
//!   through it, and the loader that presents a plugin library as an ordinary backend.
//!
//! Its dependency tree is small on purpose (serde, thiserror, libloading): a plugin links it to
//! get the trait and nothing else.

#![warn(missing_docs)]

mod api;
pub mod error;
pub mod plugin;

pub use api::*;
pub use error::{BackendError, PluginError};
