//! `compare`: the same model and images on several backends, one row each.
//!
//! Each backend runs in its own child process (`peregrine run --json`), so its peak resident
//! memory is its own, one backend's failure cannot take the others down, and libraries with
//! process-wide state (OpenFHE's key maps) start clean. A child's log lines are handed to the
//! caller as they come; its [`RunReport`] is read back typed.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Serialize;

use crate::error::{Result, RuntimeError};
use crate::run::RunReport;

/// A comparison asked for wrongly.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    /// No backend given.
    #[error("--backends is empty: give e.g. clear,openfhe")]
    NoBackends,
    /// No image asked for.
    #[error("--limit must be at least 1")]
    NoImages,
    /// A parameter override that is not `BACKEND=JSON`.
    #[error("--params '{0}' must be BACKEND=JSON, e.g. clear='{{\"levels\": 60}}'")]
    NotBackendJson(String),
    /// Parameters for a backend that is not compared.
    #[error("--params names backend '{name}', which is not in --backends {backends}")]
    NotCompared {
        /// The backend named.
        name: String,
        /// The backends compared.
        backends: String,
    },
    /// Two overrides for one backend.
    #[error("--params gives backend '{0}' twice")]
    Twice(String),
}

/// Why one backend's run gave no report.
#[derive(Debug, thiserror::Error)]
pub enum RowError {
    /// The child process could not start or be waited for.
    #[error("cannot run `{exe} run`: {cause}")]
    Spawn {
        /// The executable.
        exe: String,
        /// The I/O error.
        cause: std::io::Error,
    },
    /// The run failed; its error line.
    #[error("{0}")]
    Failed(String),
    /// The run printed something other than a report.
    #[error("unreadable output of `peregrine run`: {0}")]
    Output(#[source] serde_json::Error),
    /// Its report could not be saved.
    #[error("writing {path}: {cause}")]
    Save {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        cause: std::io::Error,
    },
}

/// Options of [`compare`].
pub struct CompareArgs<'a> {
    /// Model file.
    pub model: &'a Path,
    /// Backend names, in row order.
    pub backends: &'a [String],
    /// Parameters per backend (`BACKEND=JSON`, each backend at most once).
    pub params: &'a [String],
    /// CIFAR-10 batch file.
    pub data: &'a Path,
    /// Images per backend.
    pub limit: usize,
    /// Plugin directories passed on to each run.
    pub plugin_dirs: &'a [PathBuf],
    /// Rotation-key budget passed on to each run.
    pub max_rotation_keys: Option<usize>,
    /// Directory for each backend's full report (`BACKEND.json`).
    pub save: Option<&'a Path>,
}

/// The figures of one backend's run, for the comparison.
#[derive(Clone, Debug, Serialize)]
pub struct Figures {
    /// Images run.
    pub images: usize,
    /// Top-1 accuracy against the labels.
    pub accuracy: f64,
    /// Share of predictions equal to the reference's.
    pub agreement: f64,
    /// Images that failed.
    pub failed: usize,
    /// Mean seconds per image.
    pub seconds_per_image: f64,
    /// Seconds of key generation.
    pub keygen_seconds: f64,
    /// Peak resident memory of the run.
    pub peak_rss_bytes: Option<u64>,
    /// Size of the evaluation keys.
    pub evaluation_key_bytes: u64,
    /// Largest logit error.
    pub max_abs_logit_error: f64,
    /// Security level (None: not secure).
    pub security_bits: Option<u32>,
    /// Bootstraps per image.
    pub bootstraps: serde_json::Value,
    /// Rotations per image.
    pub rotations: serde_json::Value,
    /// Predictions equal to the backend's exact simulation (tfhe).
    pub agree_quantised: Option<usize>,
    /// Outputs identical to the backend's exact simulation (tfhe).
    pub identical_to_simulation: Option<usize>,
}

impl Figures {
    /// The figures of a report.
    pub fn of(r: &RunReport) -> Self {
        let s = &r.summary;
        let n = s.images.max(1) as f64;
        Figures {
            images: s.images,
            accuracy: s.packed_correct as f64 / n,
            agreement: s.agree as f64 / n,
            failed: s.failed,
            seconds_per_image: s.mean_seconds_per_image,
            keygen_seconds: s.keygen_seconds,
            peak_rss_bytes: s.peak_rss_bytes,
            evaluation_key_bytes: s.evaluation_key_bytes,
            max_abs_logit_error: s.max_abs_logit_error,
            security_bits: r.security_bits,
            bootstraps: s.cost["bootstraps"].clone(),
            rotations: s.cost["rotations"].clone(),
            agree_quantised: s.simulation.as_ref().map(|q| q.agree_quantised),
            identical_to_simulation: s.simulation.as_ref().map(|q| q.identical_to_simulation),
        }
    }
}

/// One backend's row: its report, or why it failed.
#[derive(Debug)]
pub struct Row {
    /// Backend name.
    pub backend: String,
    /// The run's report or the error it ended with.
    pub result: std::result::Result<RunReport, RowError>,
}

/// Every backend's row, and the cleartext reference's accuracy on the same images.
#[derive(Debug)]
pub struct CompareReport {
    /// Rows in the order asked.
    pub rows: Vec<Row>,
    /// `(correct, images)` of the reference executor, from the first run that succeeded.
    pub reference: Option<(usize, usize)>,
}

impl CompareReport {
    /// Backends that failed.
    pub fn failed(&self) -> usize {
        self.rows.iter().filter(|r| r.result.is_err()).count()
    }
    /// The comparison as JSON: the reference's accuracy and each backend's [`Figures`] or error.
    pub fn to_json(&self, a: &CompareArgs) -> serde_json::Value {
        let rows: Vec<_> = self
            .rows
            .iter()
            .map(|r| match &r.result {
                Ok(v) => serde_json::json!({"backend": r.backend, "summary": Figures::of(v)}),
                Err(e) => serde_json::json!({"backend": r.backend, "error": e.to_string()}),
            })
            .collect();
        let reference = self.reference.map(|(c, n)| serde_json::json!({"correct": c, "images": n}));
        serde_json::json!({"model": a.model, "data": a.data, "limit": a.limit, "reference": reference, "backends": rows})
    }
}

/// Splits `BACKEND=JSON` overrides into one parameter string per backend (empty: defaults).
pub fn params_for(backends: &[String], overrides: &[String]) -> Result<Vec<String>> {
    let mut out = vec![String::new(); backends.len()];
    let mut seen = Vec::new();
    for o in overrides {
        let Some((name, p)) = o.split_once('=') else {
            return Err(CompareError::NotBackendJson(o.clone()).into());
        };
        let Some(i) = backends.iter().position(|b| b == name) else {
            return Err(CompareError::NotCompared { name: name.into(), backends: backends.join(",") }.into());
        };
        if seen.contains(&name) {
            return Err(CompareError::Twice(name.into()).into());
        }
        seen.push(name);
        serde_json::from_str::<serde_json::Value>(p)
            .map_err(|source| RuntimeError::Params { backend: name.into(), source })?;
        out[i] = p.to_string();
    }
    Ok(out)
}

/// Runs every backend through `exe run --json` (the `peregrine` executable) and collects the
/// rows; `on_log(backend, line)` sees each child's log lines as they come.
pub fn compare(exe: &Path, a: &CompareArgs, on_log: &mut dyn FnMut(&str, &str)) -> Result<CompareReport> {
    if a.backends.is_empty() {
        return Err(CompareError::NoBackends.into());
    }
    if a.limit == 0 {
        return Err(CompareError::NoImages.into());
    }
    let params = params_for(a.backends, a.params)?;
    if let Some(dir) = a.save {
        std::fs::create_dir_all(dir).map_err(|e| RuntimeError::io(dir, e))?;
    }
    let rows: Vec<Row> = a
        .backends
        .iter()
        .zip(&params)
        .map(|(b, p)| Row { backend: b.clone(), result: run_one(exe, a, b, p, on_log) })
        .collect();
    let reference = rows.iter().find_map(|r| r.result.as_ref().ok()).map(|v| {
        (
            v.images.iter().filter(|i| i.label.is_some_and(|l| l as usize == i.reference_prediction)).count(),
            v.images.len(),
        )
    });
    Ok(CompareReport { rows, reference })
}

fn run_one(
    exe: &Path,
    a: &CompareArgs,
    backend: &str,
    params: &str,
    on_log: &mut dyn FnMut(&str, &str),
) -> std::result::Result<RunReport, RowError> {
    let spawn = |cause| RowError::Spawn { exe: exe.display().to_string(), cause };
    let mut cmd = Command::new(exe);
    cmd.arg("run").arg("--json").arg("--model").arg(a.model).arg("--backend").arg(backend);
    cmd.arg("--params").arg(params).arg("--data").arg(a.data).arg("--limit").arg(a.limit.to_string());
    for d in a.plugin_dirs {
        cmd.arg("--plugin-dir").arg(d);
    }
    if let Some(k) = a.max_rotation_keys {
        cmd.arg("--max-rotation-keys").arg(k.to_string());
    }
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().map_err(spawn)?;
    // Stdout is read on its own thread while the log lines are handed over here, so neither
    // pipe can fill up.
    let stdout = child.stdout.take().map(|mut out| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            out.read_to_end(&mut buf).map(|_| buf)
        })
    });
    let mut lines = Vec::new();
    if let Some(err) = child.stderr.take() {
        for line in BufReader::new(err).lines().map_while(|l| l.ok()) {
            on_log(backend, &line);
            lines.push(line);
        }
    }
    let stdout = match stdout.map(|t| t.join()) {
        Some(Ok(Ok(b))) => b,
        Some(Ok(Err(e))) => return Err(spawn(e)),
        _ => Vec::new(),
    };
    let status = child.wait().map_err(spawn)?;
    if !status.success() {
        let msg = lines.iter().rev().find(|l| l.starts_with("error:")).cloned().unwrap_or_else(|| lines.join("\n"));
        return Err(RowError::Failed(msg.trim_start_matches("error: ").trim().to_string()));
    }
    let report: RunReport = serde_json::from_slice(&stdout).map_err(RowError::Output)?;
    if let Some(dir) = a.save {
        let path = dir.join(format!("{backend}.json"));
        let bytes = serde_json::to_vec_pretty(&report).map_err(RowError::Output)?;
        std::fs::write(&path, bytes).map_err(|cause| RowError::Save { path, cause })?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_overrides_are_checked() {
        let b = vec!["clear".to_string(), "openfhe".to_string()];
        let p = params_for(&b, &[r#"openfhe={"log_ring_dimension": 12}"#.into()]).unwrap();
        assert_eq!(p, vec!["".to_string(), r#"{"log_ring_dimension": 12}"#.to_string()]);
        assert!(params_for(&b, &["tfhe={}".into()]).unwrap_err().to_string().contains("not in --backends"));
        assert!(params_for(&b, &["clear".into()]).unwrap_err().to_string().contains("BACKEND=JSON"));
        assert!(params_for(&b, &["clear={".into()]).is_err());
        assert!(params_for(&b, &["clear={}".into(), "clear={}".into()]).unwrap_err().to_string().contains("twice"));
    }
}
