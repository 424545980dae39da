//! Peregrine's OpenFHE CKKS backend.
//!
//! It implements [`Scheme`], [`Client`] and [`Backend`] on an installed OpenFHE through
//! `openfhe-sys` (FIXEDMANUAL scaling, HYBRID key switching, uniform ternary secret), and is
//! also built as a run-time plugin (`libbackend_openfhe.so`, backend name `openfhe`).
//!
//! - **Security:** by default N = 2^16 and log2(Q·P) is checked against the 128-bit table
//!   ([`params::MAX_LOG_QP_128`]); smaller rings need `insecure_test_only`, which is reported
//!   as "no security" in the capabilities and warned about on stderr.
//! - **Scales:** the caller's scales are tracked exactly in Rust (every ciphertext carries its
//!   scale); OpenFHE's own Δ^deg bookkeeping only translates constants.
//! - **Keys:** only the rotation keys in the [`KeyRequest`] are generated; bootstrapping keys
//!   only when asked. The server is rebuilt from [`Client::evaluation_keys`] alone and holds
//!   no secret key.
//!
//! When OpenFHE was not found at build time every entry point returns
//! [`openfhe_sys::UNAVAILABLE_REASON`] as an error.

#![warn(missing_docs)]

pub mod params;

pub mod framing;

#[cfg(openfhe)]
mod native;
#[cfg(openfhe)]
mod scheme;
#[cfg(openfhe)]
pub use scheme::{OpenFheCiphertext, OpenFheClient, OpenFhePlaintext, OpenFheServer};

#[cfg(not(openfhe))]
mod unavailable;
#[cfg(not(openfhe))]
pub use unavailable::{OpenFheCiphertext, OpenFheClient, OpenFhePlaintext, OpenFheServer};

pub use params::OpenFheParams;

/// Whether this build can run OpenFHE (false: every call reports [`openfhe_sys::UNAVAILABLE_REASON`]).
pub const AVAILABLE: bool = openfhe_sys::AVAILABLE;

/// The OpenFHE scheme: parameters, key generation, server reconstruction.
pub struct OpenFheScheme;

peregrine_backend::export_plugin!(crate::OpenFheScheme);
