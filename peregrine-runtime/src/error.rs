//! Typed errors of the runtime.

use std::path::PathBuf;

use thiserror::Error;

/// Result alias of this crate.
pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// Every failure of the runtime; messages say what to do.
#[derive(Debug, Error)]
pub enum RuntimeError {
    /// Loading or running the model in the clear failed.
    #[error(transparent)]
    Model(#[from] peregrine_model::ModelError),
    /// Reading images failed.
    #[error(transparent)]
    Data(#[from] peregrine_data::DataError),
    /// A backend operation failed.
    #[error(transparent)]
    Backend(#[from] peregrine_backend::BackendError),
    /// Compiling, planning or executing packed steps failed.
    #[error(transparent)]
    Ops(#[from] peregrine_ops::OpsError),
    /// The TFHE backend refused its parameters.
    #[cfg(feature = "tfhe")]
    #[error(transparent)]
    TfheParams(#[from] backend_tfhe::params::ParamsError),
    /// The TFHE backend could not compile or quantise the model.
    #[cfg(feature = "tfhe")]
    #[error(transparent)]
    Quant(#[from] backend_tfhe::quant::QuantError),
    /// The TFHE backend's LWE layer failed.
    #[cfg(feature = "tfhe")]
    #[error(transparent)]
    Lwe(#[from] backend_tfhe::lwe::LweError),
    /// The secret key file can be read or written by other users.
    #[error("{path}: the secret key is readable or writable by other users (mode {mode:o}); keep it private: chmod 600 {path}")]
    SecretExposed {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// `--params` is not valid JSON for the backend's parameters.
    #[error("invalid --params for the {backend} backend")]
    Params {
        /// The backend.
        backend: String,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// No built-in backend or plugin of that name.
    #[error("unknown backend '{name}': built in are {}; no plugin of that name in the search path {search_path:?} (set --plugin-dir or PEREGRINE_PLUGIN_PATH)", builtin.iter().map(|b| format!("'{b}'")).collect::<Vec<_>>().join(", "))]
    UnknownBackend {
        /// The name asked for.
        name: String,
        /// Built-in backends.
        builtin: Vec<String>,
        /// Where plugins were searched.
        search_path: Vec<PathBuf>,
    },
    /// Compiling a model for a backend failed.
    #[error("planning {model} for backend '{backend}'")]
    Compile {
        /// The model.
        model: String,
        /// The backend.
        backend: String,
        /// Why.
        #[source]
        source: Box<RuntimeError>,
    },
    /// An activation mode was asked of a backend that has no choice of activations.
    #[error("--activation {0} needs the tfhe backend: CKKS backends evaluate the model's polynomials")]
    ActivationMode(String),
    /// A file could not be read or written.
    #[error("{path}: {cause}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        cause: std::io::Error,
    },
    /// A session directory lacks a file the command needs.
    #[error("{path} is missing: {hint}")]
    Missing {
        /// The missing file.
        path: PathBuf,
        /// Which command writes it.
        hint: &'static str,
    },
    /// A session or ciphertext file is not what it should be.
    #[error("{path} is not a Peregrine {what} (truncated or corrupted)")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What it should be.
        what: &'static str,
    },
    /// Reading ciphertexts from a file failed.
    #[error("reading {path}")]
    InFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<RuntimeError>,
    },
    /// Ciphertexts handed to a client or server of another backend.
    #[error("ciphertexts of another backend were given to '{0}'")]
    ForeignCiphertexts(String),
    /// A comparison asked for wrongly.
    #[error(transparent)]
    Compare(#[from] crate::compare::CompareError),
    /// Calibrated values need a bootstrap range the backend cannot build with these parameters.
    #[error("the bootstrapped tensors reach {range:.2} (calibrated on {calibration}, with the margin), more than any bootstrap these parameters can build; an encrypted run would return garbage. Use a larger ring or modulus, or scale the network's values down")]
    BootstrapRange {
        /// The range needed.
        range: f64,
        /// The calibration images.
        calibration: String,
    },
    /// The ring the user named cannot hold the model's levels at 128-bit security.
    #[error("the model needs {levels} levels (log2(Q·P) = {log_qp:.1} with the shortest chain found), more than the ring the parameters name, N = 2^{named_log}, holds at 128-bit security; the smallest ring that does is N = 2^{needed_log} (leave out log_ring_dimension to let the planner choose it)")]
    RingTooSmall {
        /// log2 of the ring the parameters name.
        named_log: u32,
        /// log2 of the smallest ring that holds the levels.
        needed_log: u32,
        /// Levels the plan needs.
        levels: usize,
        /// log2(Q·P) of the parameters that hold them.
        log_qp: f64,
    },
}

impl RuntimeError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, cause: std::io::Error) -> Self {
        RuntimeError::Io { path: path.into(), cause }
    }
}
