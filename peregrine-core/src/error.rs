//! Typed errors for everything in `peregrine-core`.

use thiserror::Error;

/// Result alias used throughout Peregrine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every failure `peregrine-core` can report. Messages name the offending item.
#[derive(Debug, Error)]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{path}: {cause}")]
    Io {
        /// The file involved.
        path: String,
        /// The underlying I/O error (shown in the message, so not chained again).
        cause: std::io::Error,
    },
    /// A model file could not be parsed (truncated, not safetensors, bad metadata, bad JSON…).
    #[error("malformed model file: {0}")]
    MalformedModel(String),
    /// The model was written by an unknown format version.
    #[error("unsupported model format version {found} (this build reads version {supported})")]
    UnsupportedVersion {
        /// Version found in the file.
        found: u32,
        /// Version this build understands.
        supported: u32,
    },
    /// The graph is structurally invalid (dangling reference, cycle, bad attribute…).
    #[error("invalid graph: {0}")]
    InvalidGraph(String),
    /// A tensor is missing, extra, or has the wrong dtype or shape.
    #[error("weight error: {0}")]
    Weight(String),
    /// An input or intermediate tensor has the wrong shape.
    #[error("shape error: {0}")]
    Shape(String),
    /// A data set file is malformed.
    #[error("data error: {0}")]
    Data(String),
    /// A layer or feature is not supported by this component.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A backend operation violated CKKS level/scale rules or lacked a key.
    #[error("backend error: {0}")]
    Backend(#[from] BackendError),
    /// A plugin could not be loaded.
    #[error("plugin error: {0}")]
    Plugin(String),
}

/// Failures of FHE backend operations (level/scale bookkeeping, keys, parameters).
#[derive(Debug, Error, Clone, PartialEq)]
pub enum BackendError {
    /// Two operands are at different levels where equal levels are required.
    #[error("level mismatch: {op} needs equal levels, got {left} and {right}")]
    LevelMismatch {
        /// Operation name.
        op: &'static str,
        /// Level of the left operand.
        left: usize,
        /// Level of the right operand.
        right: usize,
    },
    /// Two operands have different scales where equal scales are required.
    #[error("scale mismatch: {op} needs equal scales, got 2^{left:.4} and 2^{right:.4}")]
    ScaleMismatch {
        /// Operation name.
        op: &'static str,
        /// log2 of the left scale.
        left: f64,
        /// log2 of the right scale.
        right: f64,
    },
    /// No level left for the requested operation.
    #[error("levels exhausted: {op} needs level >= {needed}, ciphertext is at level {have}")]
    LevelsExhausted {
        /// Operation name.
        op: &'static str,
        /// Minimum level needed.
        needed: usize,
        /// Level available.
        have: usize,
    },
    /// A rotation was requested for which no key was generated.
    #[error("missing rotation key for step {0} (request it in the KeyRequest)")]
    MissingRotationKey(i64),
    /// A value times the scale exceeds the modulus: the result would wrap.
    #[error("modulus overflow in {op}: |value| * scale = 2^{log_magnitude:.2} exceeds Q/2 = 2^{log_half_modulus:.2} at level {level}")]
    Overflow {
        /// Operation name.
        op: &'static str,
        /// log2 of the largest |value|·scale.
        log_magnitude: f64,
        /// log2 of half the modulus at that level.
        log_half_modulus: f64,
        /// Level of the ciphertext.
        level: usize,
    },
    /// The scale dropped so low that the message would drown in noise.
    #[error("scale underflow in {op}: scale 2^{log_scale:.2} is below the minimum 2^{min:.0}")]
    ScaleUnderflow {
        /// Operation name.
        op: &'static str,
        /// log2 of the scale.
        log_scale: f64,
        /// log2 of the minimum scale allowed.
        min: f64,
    },
    /// A vector is longer than the slot count.
    #[error("too many values: {len} values for {slots} slots")]
    TooManyValues {
        /// Values given.
        len: usize,
        /// Slots available.
        slots: usize,
    },
    /// The backend cannot bootstrap.
    #[error("this backend cannot bootstrap")]
    BootstrapUnsupported,
    /// Bootstrap keys were not requested when the keys were generated.
    #[error("bootstrapping was not enabled in the key request")]
    BootstrapNotEnabled,
    /// A value is outside the range the operation accepts.
    #[error("out of range in {op}: {detail}")]
    OutOfRange {
        /// Operation name.
        op: &'static str,
        /// What was out of range.
        detail: String,
    },
    /// Parameters are invalid or insecure without the explicit test flag.
    #[error("invalid parameters: {0}")]
    InvalidParameters(String),
    /// Serialised bytes could not be decoded.
    #[error("cannot deserialise {what}: {detail}")]
    Deserialize {
        /// What was being decoded.
        what: &'static str,
        /// Why it failed.
        detail: String,
    },
    /// Any other backend-specific failure (e.g. reported by a plugin or an FFI library).
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Error::Io { path: path.as_ref().display().to_string(), cause: source }
    }
}
