//! Helpers shared by the CLI tests: the binary, shared assets, a scratch directory, JSON output.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

/// The `peregrine` binary under test.
pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_peregrine"))
}

/// A file of `../shared`, which the tests need beside the workspace.
pub fn shared(rel: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared").join(rel);
    assert!(p.exists(), "shared asset {} is missing: these tests need ../shared beside the workspace", p.display());
    p
}

/// A path in a per-process scratch directory.
pub fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("peregrine-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

/// Stdout of a successful run.
pub fn ok(out: Output) -> String {
    assert!(out.status.success(), "failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The single JSON object a `--json` run prints.
pub fn json(out: Output) -> serde_json::Value {
    let s = ok(out);
    assert_eq!(s.trim().lines().count(), 1, "--json prints exactly one line: {s}");
    serde_json::from_str(&s).unwrap()
}
