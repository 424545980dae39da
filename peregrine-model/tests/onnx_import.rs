//! ONNX import checked against an independent runtime: `tools/onnx_cases.py` builds small
//! random graphs (one per operator family, odd sizes) and runs them in onnxruntime; each is
//! imported here and run by the reference executor. Without python3 + onnx + onnxruntime the
//! test reports itself skipped, unless `PEREGRINE_REQUIRE_ONNXRUNTIME` is set (CI sets it and
//! installs them), when it fails.

use std::path::{Path, PathBuf};
use std::process::Command;

use ndarray::{ArrayD, IxDyn};
use peregrine_model::onnx::{import_onnx, import_onnx_bytes, OnnxOptions};
use peregrine_model::reference::Reference;
use peregrine_model::ModelError;

/// Largest |ours − onnxruntime| accepted (the bound; f64 reference against f32 runtime).
const TOLERANCE: f64 = 1e-4;

fn cases_dir() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = std::env::temp_dir().join(format!("peregrine-onnx-cases-{}", std::process::id()));
    let out = Command::new("python3").arg(root.join("tools/onnx_cases.py")).arg(&dir).output();
    let why = match out {
        Ok(o) if o.status.success() => {
            eprintln!("{}", String::from_utf8_lossy(&o.stdout).trim());
            return Some(dir);
        }
        Ok(o) => String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or("").to_string(),
        Err(e) => format!("python3: {e}"),
    };
    if std::env::var_os("PEREGRINE_REQUIRE_ONNXRUNTIME").is_some() {
        panic!("the ONNX cross-check needs python3 with onnx and onnxruntime: {why}");
    }
    eprintln!("SKIPPED: the ONNX cross-check needs `pip install onnx onnxruntime numpy` ({why})");
    None
}

fn read_f32(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

#[test]
fn every_imported_operator_matches_onnxruntime_and_unsupported_ones_are_refused_by_name() {
    let Some(dir) = cases_dir() else { return };
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".json").map(str::to_string))
        .collect();
    names.sort();
    assert!(names.len() >= 10, "expected the generator's cases, found {names:?}");
    let mut checked = 0;
    for name in &names {
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join(format!("{name}.json"))).unwrap()).unwrap();
        let shape: Vec<usize> =
            meta["input_shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        let options = OnnxOptions { input_shape: Some(shape[1..].to_vec()), ..OnnxOptions::default() };
        let path = dir.join(format!("{name}.onnx"));
        let x = read_f32(&dir.join(format!("{name}.input.f32")));
        if let Some(op) = meta["refused"].as_str() {
            let err = import_onnx(&path, &options).expect_err(name).to_string();
            assert!(
                err.contains(op) && err.contains("node '"),
                "{name}: the refusal must name the node and {op}: {err}"
            );
            if let Some(cut) = meta["cut_at"].as_str() {
                // The refusal says how to import the scores before the Softmax, and that works.
                assert!(err.contains(&format!("--graph-output '{cut}'")), "{name}: no hint in {err}");
                let options = OnnxOptions { outputs: vec![cut.to_string()], ..options.clone() };
                let model = import_onnx(&path, &options).unwrap_or_else(|e| panic!("{name} cut at {cut}: {e}"));
                let input = ArrayD::from_shape_vec(IxDyn(&shape), x.iter().map(|&v| v as f64).collect()).unwrap();
                let got = Reference::<f64>::new(&model).run(&input).unwrap();
                let diff = got.iter().zip(&x).map(|(g, v)| (g - (*v as f64).max(0.0)).abs()).fold(0f64, f64::max);
                eprintln!("{name}: refused by name; cut at '{cut}' it imports, max diff {diff:.1e}");
                assert!(diff <= TOLERANCE);
            }
            continue;
        }
        let model = import_onnx(&path, &options).unwrap_or_else(|e| panic!("{name}: {e}"));
        if let Some(kinds) = meta["ir_kinds"].as_object() {
            for (kind, want) in kinds {
                let n = model.graph().nodes.iter().filter(|n| n.op.kind() == kind).count();
                assert_eq!(n as u64, want.as_u64().unwrap(), "{name}: {kind} nodes after import");
            }
        }
        let want = read_f32(&dir.join(format!("{name}.output.f32")));
        let input = ArrayD::from_shape_vec(IxDyn(&shape), x.iter().map(|&v| v as f64).collect()).unwrap();
        let got = Reference::<f64>::new(&model).run(&input).unwrap();
        assert_eq!(got.len(), want.len(), "{name}: output size");
        let diff = got.iter().zip(&want).map(|(g, w)| (g - *w as f64).abs()).fold(0f64, f64::max);
        let scale = want.iter().map(|w| w.abs() as f64).fold(0f64, f64::max);
        eprintln!(
            "{name}: {} nodes, {} outputs, max |ours − onnxruntime| = {diff:.2e} (largest output {scale:.2})",
            model.graph().nodes.len(),
            want.len()
        );
        assert!(diff <= TOLERANCE, "{name}: max abs difference {diff:e} > {TOLERANCE:e}");
        checked += 1;
    }
    assert!(checked >= 13, "only {checked} cases compared");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bytes_that_are_not_onnx_are_refused_without_panicking() {
    let options = OnnxOptions::default();
    for bytes in [&b""[..], b"\x08\x07\x12", b"PK\x03\x04 not a model at all", &[0xff; 64]] {
        match import_onnx_bytes(bytes, &options) {
            Err(ModelError::MalformedModel(_)) | Err(ModelError::Unsupported(_)) | Err(ModelError::Shape(_)) => {}
            other => panic!("{bytes:?}: {other:?}"),
        }
    }
}
