//! Compiling C against the committed plugin header with the system C compiler.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The directory of `peregrine_plugin.h`.
pub const INCLUDE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/include");

/// A fresh scratch directory for this test process.
pub fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("peregrine-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Compiles `src` with `cc -std=c99 -Wall -Werror -I include` and `extra` flags into `out`.
pub fn cc(src: &Path, out: &Path, extra: &[&str]) {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(&cc)
        .args(["-std=c99", "-Wall", "-Werror", "-I", INCLUDE])
        .args(extra)
        .arg(src)
        .arg("-o")
        .arg(out)
        .status()
        .unwrap_or_else(|e| panic!("a C compiler ('{cc}') is needed to check the plugin header: {e}"));
    assert!(status.success(), "{} does not compile against the plugin header", src.display());
}
