//! # peregrine-gip
//!
//! Generalized interleaved packing of feature maps into the slots of SIMD ciphertexts, and the
//! algebra that turns any linear operator between two packed tensors into rotations and
//! plaintext diagonals. Pure index arithmetic: nothing here touches a ciphertext.
//!
//! - [`layout`]: [`Gip`] descriptors (packing factor g = split / mux) and their explicit
//!   element → (ciphertext, slot) maps ([`Layout`]);
//! - [`linear`]: sparse linear maps between tensors ([`LinearMap`]) and their composition;
//! - [`lower`]: every linear layer of a model as a [`LinearMap`], and a model as linear chains
//!   between its activations — the one lowering every backend uses;
//! - [`diag`]: the diagonal decomposition of a linear map between two layouts and its
//!   baby-step giant-step schedule ([`DiagonalPlan`]), which lists every rotation it needs.

#![warn(missing_docs)]

pub mod diag;
pub mod layout;
pub mod linear;
pub mod lower;

pub use diag::{DiagonalPlan, PairPlan, SparseDiagonal};
pub use layout::{Gip, Layout, LayoutError, Position};
pub use linear::LinearMap;
