//! Finds an installed OpenFHE and compiles the C++ shim against it.
//!
//! Search order: `OPENFHE_ROOT` (with `include/openfhe` and `lib`), an `OpenFHEConfig.cmake`
//! under `CMAKE_PREFIX_PATH` or the usual prefixes, then `/usr/local`. Without one the crate
//! still builds, in "unavailable" mode: it declares no foreign functions and reports why
//! through `openfhe_sys::UNAVAILABLE_REASON`; dependents read `DEP_PEREGRINE_OPENFHE_FOUND`.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

struct Install {
    include: PathBuf,
    libdir: PathBuf,
    origin: String,
}

fn from_root(root: &Path, origin: &str) -> Option<Install> {
    let include = root.join("include/openfhe");
    if !include.join("pke/openfhe.h").is_file() {
        return None;
    }
    let libdir = ["lib", "lib64"].iter().map(|l| root.join(l)).find(|d| d.join("libOPENFHEpke.so").exists())?;
    Some(Install { include, libdir, origin: origin.to_string() })
}

fn cmake_value(text: &str, key: &str) -> Option<String> {
    let needle = format!("set({key} \"");
    text.lines()
        .map(str::trim)
        .find(|l| l.starts_with(&needle))
        .and_then(|l| l[needle.len()..].split('"').next().map(str::to_string))
}

fn from_cmake_config(dir: &Path) -> Option<Install> {
    let file = dir.join("OpenFHEConfig.cmake");
    let text = fs::read_to_string(&file).ok()?;
    let include = PathBuf::from(cmake_value(&text, "OpenFHE_INCLUDE")?);
    let libdir = PathBuf::from(cmake_value(&text, "OpenFHE_LIBDIR")?);
    if include.join("pke/openfhe.h").is_file() && libdir.join("libOPENFHEpke.so").exists() {
        Some(Install { include, libdir, origin: format!("CMake config {}", file.display()) })
    } else {
        None
    }
}

fn find() -> Option<Install> {
    if let Some(root) = env::var_os("OPENFHE_ROOT") {
        let root = PathBuf::from(root);
        return from_root(&root, &format!("OPENFHE_ROOT={}", root.display())).or_else(|| {
            println!(
                "cargo:warning=OPENFHE_ROOT={} has no include/openfhe/pke/openfhe.h with lib/libOPENFHEpke.so",
                root.display()
            );
            None
        });
    }
    let mut prefixes: Vec<PathBuf> = env::var("CMAKE_PREFIX_PATH")
        .unwrap_or_default()
        .split(':')
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .collect();
    prefixes.extend(["/usr/local", "/usr", "/opt/openfhe"].iter().map(PathBuf::from));
    for p in &prefixes {
        for sub in
            ["lib/OpenFHE", "lib64/OpenFHE", "lib/cmake/OpenFHE", "lib/x86_64-linux-gnu/cmake/OpenFHE", "share/OpenFHE"]
        {
            if let Some(i) = from_cmake_config(&p.join(sub)) {
                return Some(i);
            }
        }
    }
    from_root(Path::new("/usr/local"), "/usr/local")
}

fn main() {
    println!("cargo::rustc-check-cfg=cfg(openfhe)");
    println!("cargo:rerun-if-env-changed=OPENFHE_ROOT");
    println!("cargo:rerun-if-env-changed=CMAKE_PREFIX_PATH");
    println!("cargo:rerun-if-changed=cpp/shim.cpp");
    println!("cargo:rerun-if-changed=cpp/shim.h");
    println!("cargo:rerun-if-changed=build.rs");
    let Some(inst) = find() else {
        println!(
            "cargo:warning=OpenFHE was not found (OPENFHE_ROOT, OpenFHEConfig.cmake, /usr/local): openfhe-sys is built in unavailable mode and the OpenFHE backend will report itself unavailable"
        );
        println!("cargo:found=0");
        return;
    };
    let inc = &inst.include;
    cc::Build::new()
        .cpp(true)
        .file("cpp/shim.cpp")
        .include("cpp")
        .include(inc)
        .include(inc.join("core"))
        .include(inc.join("pke"))
        .include(inc.join("binfhe"))
        .include(inc.join("cereal"))
        .flag("-std=c++17")
        .flag("-fopenmp")
        .warnings(false)
        .extra_warnings(false)
        .define("MATHBACKEND", "4")
        .opt_level(2)
        .compile("peregrine_openfhe_shim");
    println!("cargo:rustc-link-search=native={}", inst.libdir.display());
    println!("cargo:rustc-link-lib=dylib=OPENFHEpke");
    println!("cargo:rustc-link-lib=dylib=OPENFHEcore");
    println!("cargo:rustc-link-lib=dylib=gomp");
    println!("cargo:rustc-link-lib=dylib=stdc++");
    println!("cargo:rustc-cfg=openfhe");
    println!("cargo:rustc-env=PEREGRINE_OPENFHE_ORIGIN={}", inst.origin);
    println!("cargo:found=1");
    println!("cargo:libdir={}", inst.libdir.display());
}
