//! # peregrine-backend
//!
//! The interface between Peregrine and an FHE library, and nothing else:
//! - [`Scheme`], [`Client`], [`Backend`]: the CKKS-shaped SIMD API every backend implements
//!   (parameters and key generation; the client's secret-key side; the server's evaluation on
//!   ciphertexts with evaluation keys only), with [`Capabilities`] and [`KeyRequest`];
//! - [`CtMeta`]: the level and scale of a ciphertext, with the CKKS rules checked once for
//!   every backend ([`meta`]); [`security`]: the HE-standard 128-bit bound on the modulus;
//! - [`plugin`]: the versioned C ABI, the [`export_plugin!`] macro that exposes any [`Scheme`]
//!   through it, and the loader that presents a plugin library as an ordinary backend.
//!
//! - [`integrity`]: the checksum trailer backends put on their key and ciphertext files.
//! - [`conformance`] (feature `conformance`): the checks every backend must pass, one call.
//!
//! Its dependency tree is small on purpose (serde, thiserror, libloading, blake3): a plugin links it to
//! get the trait and nothing else.

#![warn(missing_docs)]

mod api;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod error;
pub mod integrity;
pub mod meta;
pub mod plugin;
pub mod security;

pub use api::*;
pub use error::{BackendError, PluginError};
pub use meta::{bootstrap_allowed, rotation_key, same_level, same_scale, CtMeta, HasMeta};
