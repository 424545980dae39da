//! The plugin loader's refusals: a missing file, a file that is no shared library, a shared
//! library that is no plugin, and a plugin (written in C) that speaks another ABI version.

mod common;

use std::path::PathBuf;

use peregrine_backend::plugin::{abi::ABI_VERSION, Plugin};

#[test]
fn loader_errors_name_the_file_and_the_problem() {
    let e = Plugin::load("/definitely/not/here/libx.so").unwrap_err().to_string();
    assert!(e.contains("not found") && e.contains("/definitely/not/here/libx.so"), "{e}");

    let dir = common::scratch("loader");
    let fake = dir.join(format!("libfake{}", std::env::consts::DLL_SUFFIX));
    std::fs::write(&fake, b"this is not a shared library").unwrap();
    let e = Plugin::load(&fake).unwrap_err().to_string();
    assert!(e.contains("not a loadable shared library"), "{e}");

    // A real shared library that is not a plugin.
    let system = [
        "/lib/x86_64-linux-gnu/libm.so.6",
        "/usr/lib/x86_64-linux-gnu/libm.so.6",
        "/lib64/libm.so.6",
        "/lib/aarch64-linux-gnu/libm.so.6",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
    .expect("a system libm to test 'not a plugin'");
    let e = Plugin::load(&system).unwrap_err().to_string();
    assert!(e.contains("not a Peregrine plugin"), "{e}");

    let bad = dir.join(format!("libbadabi{}", std::env::consts::DLL_SUFFIX));
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bad_abi_plugin.c");
    common::cc(&src, &bad, &["-shared", "-fPIC"]);
    let e = Plugin::load(&bad).unwrap_err().to_string();
    assert!(
        e.contains("ABI version mismatch") && e.contains("999") && e.contains(&format!("version {ABI_VERSION}")),
        "{e}"
    );
    std::fs::remove_dir_all(dir).ok();
}
