//! The `clear` reference backend packaged as a run-time plugin.
//!
//! Built as a `cdylib` (`libperegrine_clear_plugin.so`), it is loaded with
//! [`peregrine_core::plugin::Plugin::load`] or discovered by `peregrine backends --plugin-dir`.
//! It is also an `rlib`, so Rust code can link the same scheme statically.

#![warn(missing_docs)]

pub use peregrine_core::clear::ClearScheme;

peregrine_core::export_plugin!(peregrine_core::clear::ClearScheme);
