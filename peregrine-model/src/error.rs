//! Typed errors of model loading, validation, import and reference execution.

use thiserror::Error;

/// Result alias of this crate.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;

/// Every failure of `peregrine-model`. Messages name the offending item.
#[derive(Debug, Error)]
pub enum ModelError {
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
    /// A tensor (or the graph) does not match the digest written with it: the file was
    /// changed or corrupted after it was written.
    #[error("{what} does not match its digest: the model file was changed or corrupted after it was written")]
    DigestMismatch {
        /// `tensor 'name'` or `the graph`.
        what: String,
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
    /// A layer or feature is not supported by this component.
    #[error("unsupported: {0}")]
    Unsupported(String),
}

impl ModelError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        ModelError::Io { path: path.as_ref().display().to_string(), cause: source }
    }
}
