//! The client/server split on disk: `keygen`, `encrypt` (client), `infer` (server), `decrypt`
//! (client), for every backend. Files in one directory, each command reading only its side's:
//!
//! | file | written by | read by | secret |
//! |---|---|---|---|
//! | `session.json` (a [`Target`]: model, backend, parameters) | keygen | all | no |
//! | `client.secret` | keygen | encrypt, decrypt | **yes** |
//! | `evaluation.keys` | keygen | infer | no |
//! | `inputs.json` (data file, image indices, labels) | encrypt | decrypt | client side |
//! | `image-<i>.in.ct` | encrypt | infer | no |
//! | `image-<i>.out.ct` | infer | decrypt | no |
//!
//! `infer` never opens `client.secret`: the server is built from `evaluation.keys` alone.
//! Ciphertext files hold `PGCTS001`, a count, then (length, bytes) per ciphertext.

use std::path::{Path, PathBuf};
use std::time::Instant;

use ndarray::{ArrayD, IxDyn};
use peregrine_backend::integrity::wipe;
use peregrine_data::{load_cifar10, preprocessed_rows};
use peregrine_model::reference::Reference;
use serde::{Deserialize, Serialize};

use crate::error::{Result, RuntimeError};
use crate::run::{argmax, max_abs_diff, SimulationCheck};
use crate::target::{Prepared, Target};

/// The secret client state.
pub const SECRET: &str = "client.secret";
/// The evaluation keys.
pub const KEYS: &str = "evaluation.keys";
/// The target.
pub const SESSION: &str = "session.json";
/// The encrypted images' provenance.
pub const INPUTS: &str = "inputs.json";
const CT_MAGIC: &[u8; 8] = b"PGCTS001";

/// The images `encrypt` wrote (client side).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InputsFile {
    /// The data file.
    pub data: PathBuf,
    /// `(index, label)` per encrypted image.
    pub images: Vec<(usize, u8)>,
}

/// What `keygen` did.
#[derive(Clone, Debug, Serialize)]
pub struct KeygenReport {
    /// Model name.
    pub model: String,
    /// Backend name.
    pub backend: String,
    /// Seconds of key generation.
    pub keygen_seconds: f64,
    /// Size of `evaluation.keys`.
    pub evaluation_key_bytes: u64,
    /// Rotation keys generated (CKKS backends).
    pub rotation_keys: serde_json::Value,
    /// Whether bootstrapping keys were generated.
    pub bootstrap_keys: bool,
    /// The session directory.
    pub dir: PathBuf,
}

/// What `infer` did.
#[derive(Clone, Debug, Serialize)]
pub struct InferReport {
    /// Model name.
    pub model: String,
    /// Backend name.
    pub backend: String,
    /// Images evaluated.
    pub images: usize,
    /// Seconds per image.
    pub seconds_per_image: Vec<f64>,
    /// Their mean.
    pub mean_seconds_per_image: f64,
    /// Seconds in all, key loading included.
    pub total_seconds: f64,
}

/// One decrypted image against the reference.
#[derive(Clone, Debug, Serialize)]
pub struct DecryptedImage {
    /// Index in the data file.
    pub index: usize,
    /// Label.
    pub label: u8,
    /// The encrypted run's prediction.
    pub prediction: usize,
    /// The cleartext reference's prediction.
    pub reference_prediction: usize,
    /// Whether they agree.
    pub agree: bool,
    /// Largest |decrypted − reference| logit.
    pub max_abs_logit_error: f64,
    /// The decrypted logits.
    pub logits: Vec<f64>,
    /// Against the backend's exact simulation, when it has one.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub simulation: Option<SimulationCheck>,
}

/// What `decrypt` found.
#[derive(Clone, Debug, Serialize)]
pub struct DecryptReport {
    /// Model name.
    pub model: String,
    /// Per image.
    pub images: Vec<DecryptedImage>,
    /// Predictions equal to the reference's.
    pub agree: usize,
}

/// A session directory.
pub struct Session {
    dir: PathBuf,
    target: Target,
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| RuntimeError::io(path, e))
}

/// Writes `bytes` to `dir/name` through a temporary file, so a reader never sees half a file.
fn write(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let (path, tmp) = (dir.join(name), dir.join(format!(".{name}.tmp")));
    std::fs::write(&tmp, bytes).map_err(|e| RuntimeError::io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| RuntimeError::io(&path, e))
}

/// Writes the client's secret like [`write`], created readable and writable by its owner only.
fn write_secret(dir: &Path, bytes: &[u8]) -> Result<()> {
    let (path, tmp) = (dir.join(SECRET), dir.join(format!(".{SECRET}.tmp")));
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp).map_err(|e| RuntimeError::io(&tmp, e))?;
    std::io::Write::write_all(&mut file, bytes).and_then(|_| file.sync_all()).map_err(|e| RuntimeError::io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| RuntimeError::io(&path, e))
}

/// Reads the client's secret, refusing a file that other users can read or write.
fn read_secret(path: &Path) -> Result<Vec<u8>> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).map_err(|e| RuntimeError::io(path, e))?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(RuntimeError::SecretExposed { path: path.to_path_buf(), mode });
        }
    }
    read(path)
}

/// Several ciphertexts in one file.
pub fn pack(parts: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + parts.iter().map(|p| p.len() + 8).sum::<usize>());
    out.extend_from_slice(CT_MAGIC);
    out.extend_from_slice(&(parts.len() as u64).to_le_bytes());
    for p in parts {
        out.extend_from_slice(&(p.len() as u64).to_le_bytes());
        out.extend_from_slice(p);
    }
    out
}

/// The ciphertexts of a [`pack`]ed file; `path` names it in errors.
pub fn unpack(bytes: &[u8], path: &Path) -> Result<Vec<Vec<u8>>> {
    let bad = || RuntimeError::Corrupt { path: path.to_path_buf(), what: "ciphertext file" };
    let word = |at: usize| -> Result<usize> {
        let b: [u8; 8] = bytes.get(at..at + 8).and_then(|s| s.try_into().ok()).ok_or_else(bad)?;
        usize::try_from(u64::from_le_bytes(b)).map_err(|_| bad())
    };
    if bytes.get(..8) != Some(CT_MAGIC.as_slice()) {
        return Err(bad());
    }
    let n = word(8)?;
    let mut at = 16usize;
    let mut out = Vec::new();
    for _ in 0..n {
        let len = word(at)?;
        at += 8;
        let end = at.checked_add(len).ok_or_else(bad)?;
        out.push(bytes.get(at..end).ok_or_else(bad)?.to_vec());
        at = end;
    }
    if at != bytes.len() {
        return Err(bad());
    }
    Ok(out)
}

/// The target recorded in a session's `session.json` (its bytes; `path` names it in errors).
pub fn parse_session(bytes: &[u8], path: &Path) -> Result<Target> {
    serde_json::from_slice(bytes).map_err(|_| RuntimeError::Corrupt { path: path.to_path_buf(), what: "session file" })
}

/// The images recorded in a session's `inputs.json` (its bytes; `path` names it in errors).
pub fn parse_inputs(bytes: &[u8], path: &Path) -> Result<InputsFile> {
    serde_json::from_slice(bytes).map_err(|_| RuntimeError::Corrupt { path: path.to_path_buf(), what: "inputs file" })
}

impl Session {
    /// Client: compiles `target`, generates keys, and writes `session.json`, `client.secret`
    /// and (streamed: at N = 2^16 they are gigabytes) `evaluation.keys` into `dir`.
    pub fn keygen(dir: &Path, target: &Target) -> Result<KeygenReport> {
        std::fs::create_dir_all(dir).map_err(|e| RuntimeError::io(dir, e))?;
        let Prepared { model, compiled, .. } = target.prepare(None, None)?;
        let t = Instant::now();
        let client = compiled.keygen()?;
        let keygen_seconds = t.elapsed().as_secs_f64();
        let (path, tmp) = (dir.join(KEYS), dir.join(format!(".{KEYS}.tmp")));
        let file = std::fs::File::create(&tmp).map_err(|e| RuntimeError::io(&tmp, e))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
        client.write_evaluation_keys(&mut w)?;
        let file = w.into_inner().map_err(|e| RuntimeError::io(&tmp, e.into_error()))?;
        file.sync_all().map_err(|e| RuntimeError::io(&tmp, e))?;
        let evaluation_key_bytes = file.metadata().map_err(|e| RuntimeError::io(&tmp, e))?.len();
        std::fs::rename(&tmp, &path).map_err(|e| RuntimeError::io(&path, e))?;
        let mut recorded = target.clone();
        recorded.model = std::fs::canonicalize(&target.model).unwrap_or(target.model.clone());
        write(
            dir,
            SESSION,
            &serde_json::to_vec_pretty(&recorded).map_err(|e| RuntimeError::io(dir.join(SESSION), e.into()))?,
        )?;
        let mut secret = client.save_secret()?;
        let written = write_secret(dir, &secret);
        wipe(&mut secret);
        written?;
        let cost = compiled.cost();
        Ok(KeygenReport {
            model: model.graph().name.clone(),
            backend: target.backend.clone(),
            keygen_seconds,
            evaluation_key_bytes,
            rotation_keys: cost["rotation_keys"].clone(),
            bootstrap_keys: cost["bootstraps"].as_u64().is_some_and(|b| b > 0),
            dir: dir.to_path_buf(),
        })
    }

    /// Opens the session in `dir` (its `session.json`).
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join(SESSION);
        let target = parse_session(&read(&path)?, &path)?;
        Ok(Session { dir: dir.to_path_buf(), target })
    }

    /// What the session runs.
    pub fn target(&self) -> &Target {
        &self.target
    }

    fn require(&self, name: &str, hint: &'static str) -> Result<PathBuf> {
        let path = self.dir.join(name);
        if !path.is_file() {
            return Err(RuntimeError::Missing { path, hint });
        }
        Ok(path)
    }

    /// Client: encrypts the first `limit` images of the CIFAR-10 batch `data` into
    /// `image-<i>.in.ct`; returns how many.
    pub fn encrypt(&self, data: &Path, limit: usize) -> Result<usize> {
        let Prepared { model, compiled, .. } = self.target.prepare(None, None)?;
        let secret_path = self.require(SECRET, "run `peregrine keygen` first (the secret stays with the client)")?;
        let mut secret = read_secret(&secret_path)?;
        let client = compiled.load_client(&secret);
        wipe(&mut secret);
        let client = client.map_err(|e| in_file(e, &secret_path))?;
        let images = load_cifar10(data, Some(limit))?;
        for (i, x) in preprocessed_rows(&images, &model.graph().input)?.iter().enumerate() {
            write(&self.dir, &format!("image-{i}.in.ct"), &pack(&client.serialize(&client.encrypt(x)?)?))?;
        }
        let inputs = InputsFile {
            data: std::fs::canonicalize(data).unwrap_or(data.to_path_buf()),
            images: images.labels.iter().copied().enumerate().collect(),
        };
        write(
            &self.dir,
            INPUTS,
            &serde_json::to_vec_pretty(&inputs).map_err(|e| RuntimeError::io(self.dir.join(INPUTS), e.into()))?,
        )?;
        Ok(images.len())
    }

    /// Server: evaluates every `image-<i>.in.ct` with `evaluation.keys` only, writing
    /// `image-<i>.out.ct`; `on_image(i, seconds)` after each.
    pub fn infer(&self, mut on_image: impl FnMut(usize, f64)) -> Result<InferReport> {
        let started = Instant::now();
        let Prepared { model, compiled, .. } = self.target.prepare(None, None)?;
        let keys = self.require(KEYS, "run `peregrine keygen` first")?;
        let server = compiled.server_from_file(&keys).map_err(|e| in_file(e, &keys))?;
        let mut times = Vec::new();
        for i in 0.. {
            let path = self.dir.join(format!("image-{i}.in.ct"));
            if !path.exists() {
                break;
            }
            let input = server.deserialize(&unpack(&read(&path)?, &path)?).map_err(|e| in_file(e, &path))?;
            let t = Instant::now();
            let (out, _) = server.infer(input, false, &mut |_| {})?;
            times.push(t.elapsed().as_secs_f64());
            on_image(i, t.elapsed().as_secs_f64());
            write(&self.dir, &format!("image-{i}.out.ct"), &pack(&server.serialize(&out)?))?;
        }
        if times.is_empty() {
            return Err(RuntimeError::Missing {
                path: self.dir.join("image-0.in.ct"),
                hint: "run `peregrine encrypt` first",
            });
        }
        Ok(InferReport {
            model: model.graph().name.clone(),
            backend: self.target.backend.clone(),
            images: times.len(),
            mean_seconds_per_image: times.iter().sum::<f64>() / times.len() as f64,
            seconds_per_image: times,
            total_seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Client: decrypts every `image-<i>.out.ct` and compares with the cleartext reference on
    /// the same images (and with the backend's exact simulation when it has one).
    pub fn decrypt(&self) -> Result<DecryptReport> {
        let Prepared { model, compiled, .. } = self.target.prepare(None, None)?;
        let path = self.require(INPUTS, "run `peregrine encrypt` first")?;
        let inputs = parse_inputs(&read(&path)?, &path)?;
        let secret_path = self.require(SECRET, "decrypting needs the client's secret key")?;
        let mut secret = read_secret(&secret_path)?;
        let client = compiled.load_client(&secret);
        wipe(&mut secret);
        let client = client.map_err(|e| in_file(e, &secret_path))?;
        let n = inputs.images.len();
        let images = load_cifar10(&inputs.data, Some(n))?;
        let x = preprocessed_rows(&images, &model.graph().input)?;
        let reference = Reference::<f64>::new(&model);
        let s = &model.graph().input.shape;
        let mut rows = Vec::with_capacity(n);
        for (i, &(index, label)) in inputs.images.iter().enumerate() {
            let path = self.dir.join(format!("image-{i}.out.ct"));
            let out = client.deserialize(&unpack(&read(&path)?, &path)?).map_err(|e| in_file(e, &path))?;
            let got = client.decrypt(&out)?;
            let xin = ArrayD::from_shape_vec(IxDyn(&[1, s[0], s[1], s[2]]), x[i].clone())
                .map_err(|e| peregrine_model::ModelError::Shape(e.to_string()))?;
            let want: Vec<f64> = reference.run(&xin)?.iter().copied().collect();
            let simulation = compiled.simulate(&x[i]).map(|sim| crate::run::simulation_check(&sim, Some(&got)));
            let prediction = argmax(&got.logits);
            rows.push(DecryptedImage {
                index,
                label,
                prediction,
                reference_prediction: argmax(&want),
                agree: prediction == argmax(&want),
                max_abs_logit_error: max_abs_diff(&got.logits, &want),
                logits: got.logits,
                simulation,
            });
        }
        let agree = rows.iter().filter(|r| r.agree).count();
        Ok(DecryptReport { model: model.graph().name.clone(), images: rows, agree })
    }
}

/// Names the file a ciphertext could not be read from.
fn in_file(e: RuntimeError, path: &Path) -> RuntimeError {
    RuntimeError::InFile { path: path.to_path_buf(), source: Box::new(e) }
}
