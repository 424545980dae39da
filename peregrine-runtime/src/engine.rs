//! What the runtime asks of a backend, type-erased: every backend — a built-in CKKS [`Scheme`],
//! a plugin, TFHE — is driven through these traits, so the run loop, the session files and
//! `compare` are written once.
//!
//! A [`RuntimeBackend`] compiles a model with its parameters into a [`CompiledModel`]; that
//! makes a [`DynClient`] (secret key: encrypt, decrypt) and a [`DynServer`] (evaluation keys
//! only: infer). Ciphertexts travel between them as [`Encrypted`], opaque to the runtime, or as
//! bytes.
//!
//! [`Scheme`]: peregrine_backend::Scheme

use std::any::Any;
use std::io::Write;
use std::path::Path;

use peregrine_backend::Capabilities;
use peregrine_model::Model;
use serde::{Deserialize, Serialize};

use crate::error::{Result, RuntimeError};

/// Ciphertexts in flight between a client and a server of one backend (opaque to the runtime).
pub struct Encrypted(Box<dyn Any + Send + Sync>);

impl Encrypted {
    /// Wraps a backend's own ciphertext collection.
    pub fn new<T: Any + Send + Sync>(value: T) -> Self {
        Encrypted(Box::new(value))
    }
    /// The backend's ciphertexts back, or an error if they belong to another backend.
    pub fn downcast<T: Any>(self, backend: &str) -> Result<T> {
        self.0.downcast::<T>().map(|b| *b).map_err(|_| RuntimeError::ForeignCiphertexts(backend.into()))
    }
    /// A reference to the backend's ciphertexts, or an error if they belong to another backend.
    pub fn downcast_ref<T: Any>(&self, backend: &str) -> Result<&T> {
        self.0.downcast_ref::<T>().ok_or_else(|| RuntimeError::ForeignCiphertexts(backend.into()))
    }
}

/// Options of [`RuntimeBackend::compile`].
#[derive(Clone, Copy, Debug, Default)]
pub struct CompileOptions<'a> {
    /// Limit the rotation keys (CKKS backends).
    pub max_rotation_keys: Option<usize>,
    /// Activation mode (`exact` or `poly`; the tfhe backend).
    pub activation: Option<&'a str>,
    /// The evaluated data file (the tfhe backend calibrates on the training batch beside it).
    pub data: Option<&'a Path>,
    /// CIFAR-10 batch to calibrate CKKS bootstrap ranges on (else `data_batch_1` beside `data`).
    pub calibration: Option<&'a Path>,
}

/// One line of a plan, JSON for `--json` and text for people.
#[derive(Clone, Debug)]
pub struct PlanReport {
    /// Everything the plan says, as JSON.
    pub json: serde_json::Value,
    /// A one-line summary (printed before a run).
    pub headline: String,
    /// The plan in detail, one line each.
    pub lines: Vec<String>,
}

/// Wall time of one step (or stage) of an inference.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepSeconds {
    /// Step name.
    pub step: String,
    /// Seconds.
    pub seconds: f64,
}

/// What the server reports about one inference.
#[derive(Clone, Debug, Default)]
pub struct InferStats {
    /// Time per step, in execution order.
    pub steps: Vec<StepSeconds>,
    /// Bootstraps performed, for backends that count them per image.
    pub bootstraps: Option<usize>,
}

/// What [`DynServer::infer`] calls after every finished step.
pub type OnStep<'a> = &'a mut dyn FnMut(StepEvent);

/// What [`DynServer::infer`] returns: the encrypted output and the run's statistics.
pub type Inferred = (Encrypted, InferStats);

/// One finished step of an inference, for progress and precision traces.
pub struct StepEvent {
    /// Step name.
    pub name: String,
    /// The model node whose value the step produced (empty if none).
    pub node: String,
    /// Steps finished and in all.
    pub done: usize,
    /// Steps in all.
    pub total: usize,
    /// Wall time of the step, seconds.
    pub seconds: f64,
    /// The step's ciphertexts, when a trace was asked for (see [`DynClient::decrypt_step`]).
    pub values: Option<(usize, Encrypted)>,
}

/// A decrypted output.
#[derive(Clone, Debug, PartialEq)]
pub struct Decrypted {
    /// The logits.
    pub logits: Vec<f64>,
    /// The integers they decode from, for backends that compute on integers (tfhe).
    pub raw: Option<Vec<i64>>,
}

/// Timing of one stage measured on a sample of its elements (see [`CompiledModel::probe`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StageProbe {
    /// The stage (an activation node, or `output`).
    pub node: String,
    /// Elements in the stage.
    pub elements: usize,
    /// Elements measured.
    pub sampled: usize,
    /// Seconds for the sample.
    pub seconds: f64,
    /// Seconds extrapolated to the whole stage.
    pub extrapolated_seconds: f64,
    /// Sampled results that differ from the simulation.
    pub mismatched: usize,
    /// Largest difference from the simulation, in units of the stage's output encoding.
    pub max_units_off: i64,
}

/// What [`CompiledModel::probe`] measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProbeReport {
    /// Per stage.
    pub stages: Vec<StageProbe>,
    /// Extrapolated seconds per image.
    pub extrapolated_seconds_per_image: f64,
    /// Key generation time.
    pub keygen_seconds: f64,
    /// Serialised evaluation-key size.
    pub evaluation_key_bytes: u64,
    /// Time the probe took.
    pub probe_seconds: f64,
}

/// A backend as the runtime sees it: a name, a description, and a compiler of models.
pub trait RuntimeBackend: Send + Sync {
    /// Name on the command line (`clear`, `tfhe`, a plugin's name).
    fn name(&self) -> &str;
    /// One-line description.
    fn description(&self) -> &str;
    /// Capabilities at the default parameters, for CKKS-shaped backends (None otherwise).
    fn default_capabilities(&self) -> Option<Result<Capabilities>>;
    /// Compiles `model` for this backend with `params` (JSON, empty for the defaults).
    fn compile(&self, model: &Model, params: &str, options: &CompileOptions) -> Result<Box<dyn CompiledModel>>;
}

/// A model compiled for one backend and its parameters: what every command drives.
pub trait CompiledModel: Send + Sync {
    /// The backend's name.
    fn backend(&self) -> &str;
    /// Security level of the parameters in bits (None: not secure).
    fn security_bits(&self) -> Option<u32>;
    /// The plan.
    fn describe(&self) -> PlanReport;
    /// Cost figures of one inference, as JSON (for run summaries).
    fn cost(&self) -> serde_json::Value;
    /// Backend-specific facts for run reports (e.g. the tfhe set and bits).
    fn details(&self) -> serde_json::Map<String, serde_json::Value> {
        serde_json::Map::new()
    }
    /// Generates keys.
    fn keygen(&self) -> Result<Box<dyn DynClient>>;
    /// A client from its saved secret state ([`DynClient::save_secret`]).
    fn load_client(&self, secret: &[u8]) -> Result<Box<dyn DynClient>>;
    /// A server from an evaluation-key file ([`DynClient::write_evaluation_keys`]).
    fn server_from_file(&self, path: &Path) -> Result<Box<dyn DynServer>>;
    /// What an encrypted run must reproduce exactly, for backends with an exact simulation
    /// (tfhe's quantised integers); None otherwise.
    fn simulate(&self, _input: &[f64]) -> Option<Decrypted> {
        None
    }
    /// Real value of one unit of the raw outputs of [`Decrypted::raw`], for integer backends.
    fn output_step(&self) -> Option<f64> {
        None
    }
    /// With parameters that ask for it, times every stage on a sample of the first image's
    /// elements instead of a whole run (tfhe's `probe`); None otherwise.
    fn probe(&self, _input: &[f64]) -> Option<Result<ProbeReport>> {
        None
    }
}

/// The client side of any backend: holds the secret key.
pub trait DynClient: Send + Sync {
    /// The secret state to keep on the client between processes.
    fn save_secret(&self) -> Result<Vec<u8>>;
    /// Streams the evaluation keys (never the secret key) into `out`.
    fn write_evaluation_keys(&self, out: &mut dyn Write) -> Result<()>;
    /// A server in this process and the size in bytes of the evaluation keys it stands for.
    /// `shared` says it shares the client's keys in memory instead of a serialised copy.
    fn local_server(&self) -> Result<LocalServer>;
    /// Encrypts one preprocessed input (C-H-W order).
    fn encrypt(&self, input: &[f64]) -> Result<Encrypted>;
    /// Decrypts an inference's output.
    fn decrypt(&self, output: &Encrypted) -> Result<Decrypted>;
    /// Decrypts an intermediate value carried by a traced [`StepEvent`] (C-H-W order of its
    /// node), when the backend can.
    fn decrypt_step(&self, _event: &StepEvent) -> Option<Result<Vec<f64>>> {
        None
    }
    /// Serialises ciphertexts, one buffer each.
    fn serialize(&self, values: &Encrypted) -> Result<Vec<Vec<u8>>>;
    /// Reads ciphertexts written by the server.
    fn deserialize(&self, parts: &[Vec<u8>]) -> Result<Encrypted>;
}

/// A server built in the client's process (see [`DynClient::local_server`]).
pub struct LocalServer {
    /// The server.
    pub server: Box<dyn DynServer>,
    /// Size of the serialised evaluation keys.
    pub key_bytes: u64,
    /// Whether it shares the client's keys in memory.
    pub shared: bool,
}

/// The server side of any backend: evaluation keys only, no way to decrypt.
pub trait DynServer: Send + Sync {
    /// Runs the model on encrypted input; `on_step` sees every finished step, with its
    /// ciphertexts when `trace` is set.
    fn infer(&self, input: Encrypted, trace: bool, on_step: OnStep) -> Result<Inferred>;
    /// Serialises ciphertexts, one buffer each.
    fn serialize(&self, values: &Encrypted) -> Result<Vec<Vec<u8>>>;
    /// Reads ciphertexts written by the client.
    fn deserialize(&self, parts: &[Vec<u8>]) -> Result<Encrypted>;
}

/// Counts the bytes written to it (the size of streamed evaluation keys).
#[derive(Default)]
pub struct ByteCounter(pub u64);

impl Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
