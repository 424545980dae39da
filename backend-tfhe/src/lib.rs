//! Peregrine's TFHE backend, on TFHE-rs (pure Rust).
//!
//! TFHE has no SIMD slots: this backend emulates them. A ciphertext is a vector of LWE
//! ciphertexts, one per slot; rotations are free permutations, additions and plaintext
//! multiplications are integer-weighted LWE sums, and every activation is one programmable
//! bootstrap whose lookup table applies the activation and the rescale into the next layer's
//! quantisation in one step.
//!
//! This crate is built bottom-up. [`lwe`] is the quantised-integer layer: 128-bit TFHE-rs
//! parameter sets, signed encoding, weighted sums with the noise bound enforced, and lookup-table
//! bootstraps.

#![warn(missing_docs)]

pub mod lwe;
