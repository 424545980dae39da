//! What to run — a model file, a backend, its parameters, where plugins are, a key budget —
//! and the model compiled for it.

use std::path::{Path, PathBuf};
use std::time::Instant;

use peregrine_model::{load_model, Model};
use serde::{Deserialize, Serialize};

use crate::engine::{CompileOptions, CompiledModel};
use crate::error::{Result, RuntimeError};
use crate::registry::Registry;

/// A model on a backend with parameters (what `plan`, `run` and `keygen` take, and what a
/// session records in `session.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Target {
    /// Model file.
    pub model: PathBuf,
    /// Backend name.
    pub backend: String,
    /// Backend parameters as JSON (empty: the defaults).
    pub params: String,
    /// Plugin directories.
    pub plugin_dirs: Vec<PathBuf>,
    /// Rotation-key budget (CKKS backends).
    pub max_rotation_keys: Option<usize>,
    /// CIFAR-10 batch the CKKS bootstrap range is calibrated on (default: `data_batch_1`
    /// beside the evaluated data, when there is such a file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<PathBuf>,
}

/// A model compiled for a [`Target`].
pub struct Prepared {
    /// The model.
    pub model: Model,
    /// It, compiled for the backend.
    pub compiled: Box<dyn CompiledModel>,
    /// Seconds compiling took.
    pub seconds: f64,
}

impl Target {
    /// Loads the model, resolves the backend and compiles; `activation` and `data` go to the
    /// backend (see [`CompileOptions`]).
    pub fn prepare(&self, activation: Option<&str>, data: Option<&Path>) -> Result<Prepared> {
        let model = load_model(&self.model)?;
        let backend = Registry::new(self.plugin_dirs.clone()).resolve(&self.backend)?;
        let t0 = Instant::now();
        let options = CompileOptions {
            max_rotation_keys: self.max_rotation_keys,
            activation,
            data,
            calibration: self.calibration.as_deref(),
        };
        let compiled = backend.compile(&model, &self.params, &options).map_err(|e| RuntimeError::Compile {
            model: model.graph().name.clone(),
            backend: self.backend.clone(),
            source: Box::new(e),
        })?;
        Ok(Prepared { model, compiled, seconds: t0.elapsed().as_secs_f64() })
    }
}
