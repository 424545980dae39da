//! # peregrine-fuzz
//!
//! Every reader of untrusted bytes in Peregrine as a fuzz target ([`targets`]), the seeds each
//! starts from (real files written by the project's own writers), and a small mutation engine
//! that runs on stable Rust ([`engine`]): the `peregrine-fuzz` binary for long runs by hand, and
//! a short run of every target in this crate's tests (so `cargo test --workspace`, and with it
//! CI, fuzzes every loader for a few seconds). The same targets drive libFuzzer through
//! cargo-fuzz (nightly) in `fuzz/libfuzzer` for coverage-guided runs.
//!
//! Why an engine of our own next to cargo-fuzz: CI machines have a stable toolchain only, and
//! the readers put a checksum in front of most of their structure, which a coverage-blind
//! random-bytes harness never gets past. The targets append the checksum themselves, and the
//! engine mutates real files (bit flips, boundary integers over length fields, cuts, splices)
//! and keeps every input that makes a reader answer differently (a new error) as a new seed.

#![warn(missing_docs)]

pub mod engine;
pub mod targets;

pub use engine::{fuzz, Budget, Finding, Report};
pub use targets::{all, by_name, heap_allowance, Target};

/// Runs the target called `name` on `data` (what the cargo-fuzz targets call); panics on an
/// unknown name.
pub fn run(name: &str, data: &[u8]) -> String {
    static TARGETS: std::sync::OnceLock<Vec<Target>> = std::sync::OnceLock::new();
    let t = TARGETS.get_or_init(all).iter().find(|t| t.name == name).expect("a target of this crate");
    (t.run)(data)
}
