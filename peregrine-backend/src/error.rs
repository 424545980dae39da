//! Typed errors of backend operations and of plugin loading.

use thiserror::Error;

/// Failures of FHE backend operations (level/scale bookkeeping, keys, parameters, bytes).
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
    /// A ciphertext was made under another client's keys.
    #[error("{op}: ciphertext was encrypted under a different key")]
    WrongKey {
        /// Operation name.
        op: &'static str,
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
    /// A value could not be serialised.
    #[error("cannot serialise {what}: {detail}")]
    Serialize {
        /// What was being encoded.
        what: &'static str,
        /// Why it failed.
        detail: String,
    },
    /// Reading or writing keys or ciphertexts failed.
    #[error("{what}: {cause}")]
    Io {
        /// What was being read or written (e.g. `writing evaluation keys`).
        what: String,
        /// The I/O error's message.
        cause: String,
    },
    /// The backend does not offer this operation.
    #[error("the {backend} backend cannot {what}")]
    Unsupported {
        /// Backend name.
        backend: String,
        /// The missing ability (e.g. `save its client state`).
        what: &'static str,
    },
    /// A plugin reported a failure (its message crosses the C ABI as text).
    #[error("{message}")]
    Plugin {
        /// The plugin's backend name.
        plugin: String,
        /// The plugin's message.
        message: String,
    },
    /// A failure reported by an underlying FHE library (e.g. through FFI), as its message.
    #[error("{0}")]
    Library(String),
}

impl BackendError {
    /// An I/O failure while doing `what`.
    pub fn io(what: impl Into<String>, cause: &std::io::Error) -> Self {
        BackendError::Io { what: what.into(), cause: cause.to_string() }
    }
}

/// Failures of loading a plugin library.
#[derive(Debug, Error)]
pub enum PluginError {
    /// The file does not exist.
    #[error("plugin file not found: {0}")]
    NotFound(String),
    /// The file is not a shared library this process can load.
    #[error("{path}: not a loadable shared library ({detail})")]
    NotLoadable {
        /// The file.
        path: String,
        /// The loader's message.
        detail: String,
    },
    /// The library exports no `peregrine_plugin_entry`.
    #[error("{0}: not a Peregrine plugin (no `peregrine_plugin_entry` symbol)")]
    NotAPlugin(String),
    /// The entry point returned no function table.
    #[error("{0}: plugin entry returned no function table")]
    NoTable(String),
    /// The plugin speaks another ABI version.
    #[error("{path}: plugin ABI version mismatch: the plugin implements version {found}, this build of Peregrine needs version {expected}; rebuild the plugin against this peregrine-backend")]
    AbiMismatch {
        /// The file.
        path: String,
        /// The plugin's version.
        found: u32,
        /// This build's version.
        expected: u32,
    },
    /// The function table has another size than this build's.
    #[error(
        "{path}: plugin function table has {found} bytes, expected {expected} (built against a different header?)"
    )]
    TableSize {
        /// The file.
        path: String,
        /// Size the plugin reports.
        found: u32,
        /// Size this build expects.
        expected: usize,
    },
    /// An entry of the function table is null (an incomplete plugin).
    #[error("{path}: plugin function table entry `{entry}` is null; the plugin must implement every entry of the ABI")]
    NullEntry {
        /// The file.
        path: String,
        /// The table field.
        entry: &'static str,
    },
}
