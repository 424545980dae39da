//! Peregrine's TFHE backend, on TFHE-rs (pure Rust).
//!
//! TFHE has no SIMD slots: every tensor element is its own LWE ciphertext, so a layout has no
//! rotations to pay for and no padding slots to carry. A network runs as:
//! - [`quant`]: the model is compiled into affine blocks between activations (all linear
//!   layers in a block fused into one integer weighted sum per element) and quantised from a
//!   calibration pass: integer weights, per-channel steps and zero points, and per-channel
//!   lookup tables that apply the activation (exact ReLU/SiLU/GELU or the model's polynomial)
//!   *and* the requantisation to the next block in one programmable bootstrap. Its exact
//!   integer simulation is the reference an encrypted run must match bit for bit;
//! - [`lwe`]: TFHE-rs 128-bit parameter sets, signed encoding, weighted sums whose noise is
//!   bounded in code, lookup-table bootstraps;
//! - [`params`]: the backend's parameters (`--params` JSON) and its calibration policy;
//! - [`engine`]: client encryption and decryption, and the server's run (parallel over the
//!   elements of a layer, one bootstrap per real activation, never one for padding).

#![warn(missing_docs)]

pub mod engine;
pub mod lwe;
pub mod params;
pub mod quant;
