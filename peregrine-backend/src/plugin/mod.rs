//! Run-time plugins: a versioned C ABI ([`abi`]), the [`export_plugin!`](crate::export_plugin)
//! macro that exposes any Rust [`Scheme`](crate::Scheme) through it, and a
//! [`loader`] that opens a plugin library and presents it as an ordinary backend.
//!
//! The C declaration of the ABI is committed at `peregrine-backend/include/peregrine_plugin.h`,
//! so a backend can be written in any language that can export C functions.

pub mod abi;
pub mod export;
pub mod loader;
pub mod sink;

pub use abi::{PluginVTable, ABI_VERSION, ENTRY_SYMBOL};
pub use loader::{discover, Plugin, PluginCiphertext, PluginClient, PluginPlaintext, PluginServer};
