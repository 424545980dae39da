//! `peregrine compare`: the same model and images on several backends, one table.
//!
//! Each backend runs in its own child process (`peregrine run --json`), so its peak resident
//! memory is its own, one backend's failure cannot take the others down, and libraries with
//! process-wide state (OpenFHE's key maps) start clean. A child's log lines are echoed live,
//! prefixed with its backend, and its full JSON output can be kept with `--save`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

/// Options of `peregrine compare`.
pub struct CompareArgs<'a> {
    /// Model file.
    pub model: &'a Path,
    /// Backend names, in table order.
    pub backends: &'a [String],
    /// `name=JSON` parameter overrides.
    pub params: &'a [String],
    /// CIFAR-10 batch file.
    pub data: &'a Path,
    /// Images per backend.
    pub limit: usize,
    /// Plugin directories passed on to each run.
    pub plugin_dirs: &'a [PathBuf],
    /// Rotation-key budget passed on to each run.
    pub max_rotation_keys: Option<usize>,
    /// Print JSON instead of the table.
    pub json: bool,
    /// Directory for each backend's full `peregrine run --json` output (`BACKEND.json`).
    pub save: Option<&'a Path>,
}

/// Splits `name=JSON` overrides; each backend may appear once.
fn params_for(backends: &[String], overrides: &[String]) -> Result<Vec<String>> {
    let mut out = vec![String::new(); backends.len()];
    let mut seen = Vec::new();
    for o in overrides {
        let Some((name, p)) = o.split_once('=') else {
            bail!("--params '{o}' must be BACKEND=JSON, e.g. clear='{{\"levels\": 60}}'");
        };
        let Some(i) = backends.iter().position(|b| b == name) else {
            bail!("--params names backend '{name}', which is not in --backends {}", backends.join(","));
        };
        if seen.contains(&name) {
            bail!("--params gives backend '{name}' twice");
        }
        seen.push(name);
        serde_json::from_str::<Value>(p).with_context(|| format!("--params for '{name}' is not JSON"))?;
        out[i] = p.to_string();
    }
    Ok(out)
}

/// One backend's row.
struct Row {
    backend: String,
    result: Result<Value, String>,
}

fn run_one(a: &CompareArgs, backend: &str, params: &str) -> Result<Value, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the peregrine executable: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.arg("run").arg("--json").arg("--model").arg(a.model).arg("--backend").arg(backend);
    cmd.arg("--params").arg(params).arg("--data").arg(a.data).arg("--limit").arg(a.limit.to_string());
    for d in a.plugin_dirs {
        cmd.arg("--plugin-dir").arg(d);
    }
    if let Some(k) = a.max_rotation_keys {
        cmd.arg("--max-rotation-keys").arg(k.to_string());
    }
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().map_err(|e| format!("cannot start a run: {e}"))?;
    // Echo the child's log lines as they come (a long encrypted run stays observable) and keep
    // them for the error message; stdout is read concurrently so neither pipe can fill up.
    let child_err = child.stderr.take().expect("piped");
    let echo = !a.json;
    let name = backend.to_string();
    let log = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(child_err).lines().map_while(|l| l.ok()) {
            if echo {
                eprintln!("[{name}] {line}");
            }
            lines.push(line);
        }
        lines
    });
    let mut stdout = Vec::new();
    if let Some(mut out) = child.stdout.take() {
        std::io::Read::read_to_end(&mut out, &mut stdout).map_err(|e| format!("reading the output of `peregrine run`: {e}"))?;
    }
    let status = child.wait().map_err(|e| format!("waiting for `peregrine run`: {e}"))?;
    let lines = log.join().unwrap_or_default();
    if !status.success() {
        let msg = lines.iter().rev().find(|l| l.starts_with("error:")).cloned().unwrap_or_else(|| lines.join("\n"));
        return Err(msg.trim_start_matches("error: ").trim().to_string());
    }
    let v: Value = serde_json::from_slice(&stdout).map_err(|e| format!("unreadable output of `peregrine run`: {e}"))?;
    if let Some(dir) = a.save {
        let path = dir.join(format!("{backend}.json"));
        std::fs::write(&path, serde_json::to_vec_pretty(&v).unwrap_or_default()).map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    Ok(v)
}

/// Runs every backend and prints the table; fails (after printing) if any backend failed.
pub fn compare_cmd(a: CompareArgs) -> Result<()> {
    if a.backends.is_empty() {
        bail!("--backends is empty: give e.g. clear,openfhe");
    }
    if a.limit == 0 {
        bail!("--limit must be at least 1");
    }
    let params = params_for(a.backends, a.params)?;
    if let Some(dir) = a.save {
        std::fs::create_dir_all(dir).with_context(|| format!("creating --save directory {}", dir.display()))?;
    }
    let mut rows = Vec::new();
    for (b, p) in a.backends.iter().zip(&params) {
        if !a.json {
            eprintln!("running {} image(s) on '{b}'…", a.limit);
        }
        rows.push(Row { backend: b.clone(), result: run_one(&a, b, p) });
    }
    // The cleartext reference (f64 executor), from the first run that succeeded.
    let reference = rows.iter().find_map(|r| r.result.as_ref().ok()).map(|v| {
        let imgs = v["images"].as_array().cloned().unwrap_or_default();
        let correct = imgs.iter().filter(|i| !i["label"].is_null() && i["label"] == i["reference_prediction"]).count();
        (correct, imgs.len())
    });
    let failed = rows.iter().filter(|r| r.result.is_err()).count();
    if a.json {
        let list: Vec<Value> = rows
            .iter()
            .map(|r| match &r.result {
                Ok(v) => json!({"backend": r.backend, "summary": summary(v)}),
                Err(e) => json!({"backend": r.backend, "error": e}),
            })
            .collect();
        let reference = reference.map(|(c, n)| json!({"correct": c, "images": n}));
        println!("{}", json!({"model": a.model, "data": a.data, "limit": a.limit, "reference": reference, "backends": list}));
    } else {
        print_table(&rows, reference);
    }
    if failed > 0 {
        bail!("{failed} of {} backends failed (see the table)", rows.len());
    }
    Ok(())
}

/// The figures of one run, flattened for the table and the JSON output.
fn summary(v: &Value) -> Value {
    let s = &v["summary"];
    let n = s["images"].as_u64().unwrap_or(0).max(1) as f64;
    json!({
        "images": s["images"], "accuracy": s["packed_correct"].as_f64().unwrap_or(0.0) / n,
        "agreement": s["agree"].as_f64().unwrap_or(0.0) / n, "failed": s["failed"],
        "seconds_per_image": s["mean_seconds_per_image"], "keygen_seconds": s["keygen_seconds"],
        "peak_rss_bytes": s["peak_rss_bytes"], "evaluation_key_bytes": s["evaluation_key_bytes"],
        "max_abs_logit_error": s["max_abs_logit_error"], "security_bits": v["security_bits"],
        "bootstraps": s["cost"]["bootstraps"], "rotations": s["cost"]["rotations"],
        "agree_quantised": s["agree_quantised"], "identical_to_simulation": s["identical_to_simulation"],
    })
}

/// Bytes as MiB below 1 GiB, GiB above.
fn size(v: &Value) -> String {
    match v.as_f64() {
        Some(b) if b < (1u64 << 30) as f64 => format!("{:.1} MiB", b / (1u64 << 20) as f64),
        Some(b) => format!("{:.2} GiB", b / (1u64 << 30) as f64),
        None => "-".into(),
    }
}

fn print_table(rows: &[Row], reference: Option<(usize, usize)>) {
    println!(
        "{:<10} {:>9} {:>10} {:>11} {:>10} {:>10} {:>12} {:>12} {:>9}",
        "backend", "accuracy", "agreement", "max|Δlogit|", "s/image", "keygen s", "peak memory", "eval keys", "security"
    );
    if let Some((c, n)) = reference {
        println!("{:<10} {:>9} {:>10} {:>11} {:>10} {:>10} {:>12} {:>12} {:>9}", "reference", format!("{c}/{n}"), "-", "-", "-", "-", "-", "-", "none");
    }
    for r in rows {
        match &r.result {
            Ok(v) => {
                let s = &v["summary"];
                let n = s["images"].as_u64().unwrap_or(0);
                let sec = match v["security_bits"].as_u64() {
                    Some(b) => format!("{b}-bit"),
                    None => "none".into(),
                };
                println!(
                    "{:<10} {:>9} {:>10} {:>11.2e} {:>10.3} {:>10.2} {:>12} {:>12} {:>9}",
                    r.backend,
                    format!("{}/{n}", s["packed_correct"]),
                    format!("{}/{n}", s["agree"]),
                    s["max_abs_logit_error"].as_f64().unwrap_or(f64::NAN),
                    s["mean_seconds_per_image"].as_f64().unwrap_or(f64::NAN),
                    s["keygen_seconds"].as_f64().unwrap_or(f64::NAN),
                    size(&s["peak_rss_bytes"]),
                    size(&s["evaluation_key_bytes"]),
                    sec
                );
            }
            Err(e) => println!("{:<10} failed: {e}", r.backend),
        }
    }
    for r in rows {
        if let Ok(v) = &r.result {
            let s = &v["summary"];
            if let (Some(q), Some(n)) = (s["agree_quantised"].as_u64(), s["images"].as_u64()) {
                println!(
                    "{}: top-1 equal to its quantised simulation {q}/{n} (identical outputs {}/{n}), {} bootstraps/image, {} bits",
                    r.backend,
                    s["identical_to_simulation"].as_u64().unwrap_or(0),
                    s["cost"]["bootstraps"],
                    v["bits"]
                );
            }
        }
    }
    println!("accuracy: packed top-1 against the labels; agreement: packed top-1 equal to the cleartext reference's; peak: resident memory of the whole run (client and server in one process)");
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
        assert!(params_for(&b, &["clear={".into()]).unwrap_err().to_string().contains("not JSON"));
        assert!(params_for(&b, &["clear={}".into(), "clear={}".into()]).unwrap_err().to_string().contains("twice"));
    }
}
