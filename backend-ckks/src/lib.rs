//! # backend-ckks
//!
//! `ckks`: Peregrine's own RNS-CKKS in stable, pure Rust.
//!
//! - **Ring** ([`ring`]): limbs modulo NTT-friendly primes, negacyclic NTTs by `tfhe-ntt`
//!   (AVX-512 IFMA for primes below 2^50, AVX2/AVX-512 otherwise), automorphisms as NTT-domain
//!   permutations, fast base conversion with lazy 128-bit accumulation.
//! - **Scheme** ([`eval`], [`keys`]): canonical-embedding encoding with sparse slots, ternary
//!   secrets (uniform or of a given Hamming weight), Gaussian errors (σ = 3.2) from a CSPRNG
//!   seeded by the OS, secret- and public-key encryption, seeded "a" parts for fresh ciphertexts
//!   and keys.
//! - **Evaluation**: additions, plaintext/scalar/integer products, ct×ct products with
//!   relinearisation, rescaling by the real q_ℓ, level drops, rotations and conjugation with
//!   hybrid key switching (digits chosen for 128-bit security), hoisted `rotate_many`.
//! - **Security** ([`params`]): the chain is built from levels and scale and checked against the
//!   HE-standard 128-bit bound; other parameters need `insecure_test_only`, which warns.
//! - **Formats** ([`serial`]): versioned, checksummed, bound to the parameter digest.
//!
//! ```
//! use backend_ckks::{CkksParams, CkksScheme};
//! use peregrine_backend::{Backend, Client, KeyRequest, Scheme};
//!
//! let params = CkksParams::insecure_for_tests(10, 3, 40);
//! let client = CkksScheme::keygen(&params, &KeyRequest::rotations([1]))?;
//! let server = CkksScheme::server(&client.evaluation_keys()?)?;
//! let ct = client.encrypt_values(&[1.0, 2.0, 3.0])?;
//! let sq = server.rescale(&server.mul(&ct, &ct)?)?;
//! let out = client.decrypt_values(&server.rotate(&sq, 1)?)?;
//! assert!((out[0] - 4.0).abs() < 1e-6 && (out[1] - 9.0).abs() < 1e-6);
//! # Ok::<(), peregrine_backend::BackendError>(())
//! ```
//!
//! The crate is also built as a run-time plugin (`libbackend_ckks.so`, backend name `ckks`).

#![warn(missing_docs)]

pub mod arith;
pub mod backend;
pub mod bootstrap;
pub mod context;
pub mod cost;
pub mod dft;
pub mod encoding;
pub mod eval;
pub mod keys;
pub mod params;
pub mod ring;
pub mod serial;
pub mod simd;

pub use backend::{CkksClient, CkksScheme, CkksServer};
pub use eval::{Ciphertext, Plaintext};
pub use params::CkksParams;

peregrine_backend::export_plugin!(crate::CkksScheme);
