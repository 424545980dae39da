//! Typed errors of conversion and fine-tuning.

use thiserror::Error;

/// Result alias of this crate.
pub type Result<T, E = SftError> = std::result::Result<T, E>;

/// Every failure of `peregrine-sft`.
#[derive(Debug, Error)]
pub enum SftError {
    /// Loading, validating or running a model failed.
    #[error(transparent)]
    Model(#[from] peregrine_model::ModelError),
    /// Reading images failed.
    #[error(transparent)]
    Data(#[from] peregrine_data::DataError),
    /// A candle operation failed.
    #[error("training kernel: {0}")]
    Candle(#[from] candle_core::Error),
    /// A setting, model or checkpoint that this crate cannot train with.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// Reading or writing a checkpoint failed.
    #[error("{path}: {cause}")]
    Io {
        /// The file involved.
        path: String,
        /// The I/O error.
        cause: std::io::Error,
    },
    /// A checkpoint file is not what it claims to be.
    #[error("{path} is not a fine-tuning checkpoint: {detail}")]
    Checkpoint {
        /// The file.
        path: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The quantised simulation of quantisation-aware training failed.
    #[cfg(feature = "tfhe")]
    #[error("quantisation-aware training: {0}")]
    Quantise(#[from] backend_tfhe::quant::QuantError),
    /// The TFHE parameters of quantisation-aware training are invalid.
    #[cfg(feature = "tfhe")]
    #[error(transparent)]
    TfheParams(#[from] backend_tfhe::params::ParamsError),
}

impl SftError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl AsRef<std::path::Path>, cause: std::io::Error) -> Self {
        SftError::Io { path: path.as_ref().display().to_string(), cause }
    }
}
