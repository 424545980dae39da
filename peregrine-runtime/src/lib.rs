//! # peregrine-runtime
//!
//! Runs models on any backend the same way:
//! - [`registry`]: the backends linked in (`clear`, `tfhe`) and the plugins in the search
//!   path, each a [`RuntimeBackend`];
//! - [`engine`]: what the runtime asks of a backend — compile a model ([`CompiledModel`]),
//!   then a type-erased client ([`DynClient`]) and server ([`DynServer`]); [`ckks`] provides
//!   it for every CKKS-shaped [`Scheme`](peregrine_backend::Scheme) and plugin, `tfhe` for TFHE;
//! - [`run`]: the one encrypted run loop with its comparison against the cleartext reference;
//! - [`session`]: the client/server files of `keygen` / `encrypt` / `infer` / `decrypt`;
//! - [`compare`]: several backends on the same images, each in its own process;
//! - [`eval`]: cleartext accuracy of the reference executor.
//!
//! Load a model, plan it for a backend and run it:
//!
//! ```
//! use peregrine_runtime::{registry::Registry, run::{run, Inputs, Quiet}, CompileOptions};
//!
//! let model = peregrine_model::testkit::tiny_poly_cnn(1);
//! let backend = Registry::new(vec![]).resolve("clear")?;
//! let compiled = backend.compile(&model, r#"{"log_ring_dimension": 11, "levels": 6}"#, &CompileOptions::default())?;
//! println!("{}", compiled.describe().headline);
//! let input = vec![0.25; model.graph().input.shape.iter().product()];
//! let report = run(&model, compiled.as_ref(), &Inputs { images: vec![input], labels: vec![None] }, false, 0.0, &mut Quiet)?;
//! assert_eq!(report.summary.agree, 1);
//! # Ok::<(), peregrine_runtime::RuntimeError>(())
//! ```

#![warn(missing_docs)]

pub mod ckks;
pub mod compare;
pub mod engine;
pub mod error;
pub mod eval;
pub mod memory;
pub mod registry;
pub mod run;
pub mod session;
pub mod target;
#[cfg(feature = "tfhe")]
pub mod tfhe;

pub use engine::{CompileOptions, CompiledModel, DynClient, DynServer, Encrypted, RuntimeBackend};
pub use error::{Result, RuntimeError};
pub use registry::Registry;
pub use target::{Prepared, Target};
