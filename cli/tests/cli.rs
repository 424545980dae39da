//! The `peregrine` binary end to end: import, eval, info, predict, backends, and its errors.

mod common;

use std::path::PathBuf;

use common::*;
use peregrine_model::testkit::tiny_onnx;

fn import_resnet20() -> PathBuf {
    let out = tmp("resnet20.safetensors");
    let v = json(
        bin()
            .args(["import", "resnet", "--depth", "20", "--weights"])
            .arg(shared("models/resnet20-cifar10.safetensors"))
            .arg("-o")
            .arg(&out)
            .arg("--json")
            .output()
            .unwrap(),
    );
    assert_eq!(v["parameters"], 271_098);
    out
}

#[test]
fn import_eval_info_predict() {
    let model = import_resnet20();
    let v = json(
        bin()
            .args(["eval", "--model"])
            .arg(&model)
            .arg("--data")
            .arg(shared("data/cifar10/test_batch.bin.gz"))
            .args(["--limit", "40", "--json"])
            .output()
            .unwrap(),
    );
    assert_eq!(v["images"], 40);
    let acc = v["accuracy"].as_f64().unwrap();
    assert!(acc >= 0.8, "ResNet-20 on 40 images: {acc}");

    let info = json(bin().args(["info", "--model"]).arg(&model).arg("--json").output().unwrap());
    assert_eq!(info["name"], "resnet20");
    assert_eq!(info["nodes"].as_array().unwrap().len(), 71);

    // An image of another size is resized to 32×32.
    let png = tmp("frog.png");
    let img = image::RgbImage::from_fn(45, 31, |x, y| image::Rgb([(x * 5) as u8, (y * 7) as u8, 90]));
    img.save(&png).unwrap();
    let p =
        json(bin().args(["predict", "--model"]).arg(&model).arg("--image").arg(&png).arg("--json").output().unwrap());
    assert!(p["prediction"].as_u64().unwrap() < 10);
    assert_eq!(p["logits"].as_array().unwrap().len(), 10);
}

#[test]
fn errors_exit_non_zero_with_a_clear_message() {
    let junk = tmp("junk.safetensors");
    std::fs::write(&junk, b"not a model").unwrap();
    let out = bin().args(["info", "--model"]).arg(&junk).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("malformed model file"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let out = bin().args(["eval", "--model", "/no/such/model.safetensors", "--data", "/no/data"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/model.safetensors"));

    let out = bin().args(["eval", "--bogus-flag"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "usage errors exit with 2");

    let out = bin()
        .args(["import", "resnet", "--depth", "19", "--weights"])
        .arg(shared("models/resnet20-cifar10.safetensors"))
        .args(["-o", "/tmp/x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("6n + 2"));
}

#[test]
fn backends_lists_builtin_and_discovered_plugins() {
    let dir = tmp("plugins");
    std::fs::create_dir_all(&dir).unwrap();
    let exe = std::env::current_exe().unwrap();
    let name = format!("{}backend_clear{}", std::env::consts::DLL_PREFIX, std::env::consts::DLL_SUFFIX);
    let so = [exe.parent().unwrap().join(&name), exe.parent().unwrap().parent().unwrap().join(&name)]
        .into_iter()
        .find(|p| p.exists())
        .expect("the clear plugin is built (dev-dependency)");
    std::fs::copy(&so, dir.join(&name)).unwrap();
    std::fs::write(dir.join(format!("libbroken{}", std::env::consts::DLL_SUFFIX)), b"nope").unwrap();

    let v = json(bin().args(["backends", "--json", "--plugin-dir"]).arg(&dir).output().unwrap());
    // `ckks` is the default and listed first; `clear` is built in too.
    assert_eq!(v["builtin"][0]["name"], "ckks");
    assert!(v["builtin"].as_array().unwrap().iter().any(|b| b["name"] == "clear"), "{v}");
    let plugins = v["plugins"].as_array().unwrap();
    assert_eq!(plugins.len(), 2);
    assert!(plugins.iter().any(|p| p["name"] == "clear" && p["capabilities"]["Ok"]["slots"] == 32768));
    assert!(plugins.iter().any(|p| p["error"].as_str().is_some_and(|e| e.contains("not a loadable"))));

    // The same through PEREGRINE_PLUGIN_PATH, as text.
    let text = ok(bin().arg("backends").env("PEREGRINE_PLUGIN_PATH", &dir).output().unwrap());
    assert!(text.contains("clear") && text.contains("(skipped)"), "{text}");
}

#[test]
fn import_onnx_writes_a_model_and_refuses_an_unsupported_operator_by_name_writing_nothing() {
    let (good, bad) = (tmp("tiny.onnx"), tmp("tiny-softmax.onnx"));
    std::fs::write(&good, tiny_onnx("Relu")).unwrap();
    std::fs::write(&bad, tiny_onnx("Softmax")).unwrap();
    let out = tmp("tiny-onnx.safetensors");
    let v = json(bin().args(["import", "onnx"]).arg(&good).arg("-o").arg(&out).arg("--json").output().unwrap());
    assert_eq!(v["nodes"], 5, "{v}");
    assert_eq!(v["parameters"], 4 * 27 + 4 + 12 + 3);
    let info = bin().args(["info", "--model"]).arg(&out).output().unwrap();
    assert!(info.status.success());
    let refused = tmp("refused.safetensors");
    let o = bin().args(["import", "onnx"]).arg(&bad).arg("-o").arg(&refused).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("Softmax_node") && err.contains("Softmax"), "{err}");
    assert!(!refused.exists(), "a refused import wrote {}", refused.display());
    let garbage = tmp("garbage.onnx");
    std::fs::write(&garbage, b"\xff\xfe not protobuf").unwrap();
    let o = bin().args(["import", "onnx"]).arg(&garbage).arg("-o").arg(&refused).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("garbage.onnx") && !err.contains("panicked"), "{err}");
    assert!(!refused.exists());
}

#[test]
fn ensemble_widens_members_into_one_model_and_refuses_mismatched_ones_writing_nothing() {
    let model = import_resnet20();
    let out = tmp("r20-ensemble2.safetensors");
    let v = json(
        bin().args(["ensemble", "--json", "--models"]).arg(&model).arg(&model).arg("-o").arg(&out).output().unwrap(),
    );
    // Two members, one averaged classifier bias, the shortcuts as grouped 1×1 convolutions.
    assert_eq!(v["parameters"], 2 * 271_098 - 10 + 2 * (32 * 16 + 64 * 32));
    // Two equal members: the ensemble's predictions are the member's.
    let eval = |m: &PathBuf| {
        json(
            bin()
                .args(["eval", "--model"])
                .arg(m)
                .arg("--data")
                .arg(shared("data/cifar10/test_batch.bin.gz"))
                .args(["--limit", "24", "--json"])
                .output()
                .unwrap(),
        )["accuracy"]
            .as_f64()
            .unwrap()
    };
    assert_eq!(eval(&out), eval(&model));
    // Weights: member 2 at weight 0 leaves member 1 exactly, image by image (`eval --outputs`).
    let committed = |name: &str| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models").join(name);
    let (sft, sft_e5) = (committed("resnet20-sft2.safetensors"), committed("resnet20-sft2-e5.safetensors"));
    let first = tmp("r20-ensemble-first.safetensors");
    let v = json(
        bin()
            .args(["ensemble", "--json", "--models"])
            .arg(&sft)
            .arg(&sft_e5)
            .args(["--weights", "3", "0", "-o"])
            .arg(&first)
            .output()
            .unwrap(),
    );
    assert_eq!(v["weights"], serde_json::json!([1.0, 0.0]));
    let rows = |m: &PathBuf, name: &str| -> Vec<Vec<String>> {
        let csv = tmp(name);
        let v = json(
            bin()
                .args(["eval", "--json", "--limit", "24", "--model"])
                .arg(m)
                .arg("--data")
                .arg(shared("data/cifar10/test_batch.bin.gz"))
                .arg("--outputs")
                .arg(&csv)
                .output()
                .unwrap(),
        );
        let text = std::fs::read_to_string(&csv).unwrap();
        let rows: Vec<Vec<String>> = text.lines().map(|l| l.split(',').map(String::from).collect()).collect();
        assert_eq!(rows[0][..4], ["image", "label", "prediction", "output0"]);
        assert_eq!(rows.len(), 25, "a header and 24 images");
        // The CSV's predictions give the accuracy eval reports.
        let right = rows[1..].iter().filter(|r| r[1] == r[2]).count();
        assert_eq!(right as u64, v["correct"].as_u64().unwrap());
        rows[1..].to_vec()
    };
    let (a, b) = (rows(&sft, "member1.csv"), rows(&first, "first-only.csv"));
    for (ra, rb) in a.iter().zip(&b) {
        assert_eq!(ra[..3], rb[..3], "same image, label and prediction");
        for (x, y) in ra[3..].iter().zip(&rb[3..]) {
            let (x, y): (f64, f64) = (x.parse().unwrap(), y.parse().unwrap());
            assert!((x - y).abs() <= 1e-4 * x.abs().max(1.0), "output {x} against {y}");
        }
    }
    let mixed = rows(&out, "mixed.csv");
    assert_eq!(mixed.len(), 24);
    // Weights that do not fit: refused, nothing written.
    for w in [&["1", "2", "3"][..], &["-1", "2"]] {
        let bad = tmp("ensemble-badweights.safetensors");
        let o = bin()
            .args(["ensemble", "--models"])
            .arg(&sft)
            .arg(&sft_e5)
            .arg("--weights")
            .args(w)
            .arg("-o")
            .arg(&bad)
            .output()
            .unwrap();
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && e.contains("--weights") && !bad.exists(), "{w:?}: {e}");
    }
    // Another architecture: refused by name, nothing written.
    let onnx = tmp("ensemble-tiny.onnx");
    std::fs::write(&onnx, tiny_onnx("Relu")).unwrap();
    let tiny = tmp("ensemble-tiny.safetensors");
    ok(bin().args(["import", "onnx"]).arg(&onnx).arg("-o").arg(&tiny).output().unwrap());
    let bad = tmp("ensemble-bad.safetensors");
    let o = bin().args(["ensemble", "--models"]).arg(&model).arg(&tiny).arg("-o").arg(&bad).output().unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("member 2"), "{e}");
    assert!(!bad.exists());
    // One member is not an ensemble.
    let o = bin().args(["ensemble", "--models"]).arg(&model).arg("-o").arg(&bad).output().unwrap();
    assert!(!o.status.success() && !bad.exists());
}

/// `resize`: a model with global average pooling takes a larger input with the same weights;
/// a shape it cannot take is refused by name and nothing is written.
#[test]
fn resize_rederives_every_shape_or_refuses() {
    let model = import_resnet20();
    let big = tmp("resnet20-48x40.safetensors");
    let v = json(
        bin()
            .args(["resize", "--model"])
            .arg(&model)
            .args(["--input-shape", "3,48,40", "-o"])
            .arg(&big)
            .arg("--json")
            .output()
            .unwrap(),
    );
    assert_eq!(v["input_shape"], serde_json::json!([3, 48, 40]));
    assert_eq!(v["output_shape"], serde_json::json!([10]));
    let info = json(bin().args(["info", "--model"]).arg(&big).arg("--json").output().unwrap());
    assert_eq!(info["input"]["shape"], serde_json::json!([3, 48, 40]), "{info}");
    let png = tmp("resize.png");
    image::RgbImage::from_fn(48, 40, |x, y| image::Rgb([(x * 5) as u8, (y * 6) as u8, 40])).save(&png).unwrap();
    let p = json(bin().args(["predict", "--model"]).arg(&big).arg("--image").arg(&png).arg("--json").output().unwrap());
    assert_eq!(p["logits"].as_array().unwrap().len(), 10);

    // A fully connected layer after a flatten fixes the input size.
    use peregrine_model::{ir::*, testkit::*};
    let mut r = rng(3);
    let mut w = Weights::new();
    w.insert("c.w".into(), uniform(&mut r, &[4, 3, 3, 3], -0.5, 0.5));
    w.insert("fc.w".into(), uniform(&mut r, &[2, 4 * 9 * 7], -0.5, 0.5));
    let nodes = vec![
        node("c", conv(3, 4, 3, 1, 1, 1, 1, "c.w", None), &[INPUT]),
        node("flat", Op::Flatten, &["c"]),
        node("fc", linear(4 * 9 * 7, 2, "fc.w", None), &["flat"]),
    ];
    let fixed = tmp("flat-fc.safetensors");
    peregrine_model::save_model(&Model::new(graph("flatfc", raw_input([3, 9, 7]), nodes, "fc"), w).unwrap(), &fixed)
        .unwrap();
    let refused = tmp("resnet20-refused.safetensors");
    for (m, shape, says) in [
        (&model, "1,32,32", "input channels"),
        (&model, "3,32", "C,H,W"),
        (&model, "3,0,32", "non-zero"),
        (&fixed, "3,9,8", "cannot take"),
    ] {
        let out = bin()
            .args(["resize", "--model"])
            .arg(m)
            .args(["--input-shape", shape, "-o"])
            .arg(&refused)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{shape} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{shape}: {err}");
        assert!(!refused.exists(), "{shape}: a file was written");
    }
}

/// A reader that stops early (`peregrine … | head`) ends the process quietly, as with other
/// command-line tools, instead of a panic on the first write to the closed pipe.
#[test]
fn a_closed_output_pipe_ends_the_process_without_a_panic() {
    let mut child = bin()
        .arg("backends")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Closed before the child has started: its first write meets a pipe without a reader.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "{err}");
}
