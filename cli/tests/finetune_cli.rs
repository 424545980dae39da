//! `peregrine finetune` end to end on ResNet-20 with a handful of images: JSON report,
//! checkpoints, resuming, and clear errors.

mod common;

use common::*;
use peregrine_model::format::load_model;

fn resnet20(tag: &str) -> std::path::PathBuf {
    let relu = tmp(&format!("r20-ft-{tag}.safetensors"));
    if !relu.exists() {
        let out = bin()
            .args(["import", "resnet", "--weights"])
            .arg(shared("models/resnet20-cifar10.safetensors"))
            .arg("-o")
            .arg(&relu)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    relu
}

fn finetune(extra: &[&str], out: &std::path::Path) -> std::process::Output {
    bin()
        .args(["finetune", "--data"])
        .arg(shared("data/cifar10"))
        .args(["--limit", "64", "--batch", "32", "--eval-limit", "40", "--calibration-batches", "2", "--json"])
        .args(extra)
        .arg("-o")
        .arg(out)
        .output()
        .unwrap()
}

#[test]
fn finetune_reports_checkpoints_and_resumes_to_the_same_model() {
    let relu = resnet20("resume");
    let relu = relu.to_str().unwrap();
    let full = tmp("ft-full.safetensors");
    // Distilled from the ReLU model itself: the checkpoint must remember the teacher.
    let v = json(finetune(&["--model", relu, "--degree", "2", "--epochs", "2", "--distill", "0.5"], &full));
    assert_eq!(v["epochs"].as_array().unwrap().len(), 2);
    assert_eq!(v["train_images"], 64);
    assert_eq!(v["test_images"], 40);
    assert!(v["baseline_test_accuracy"].as_f64().is_some() && v["test_accuracy"].as_f64().is_some());
    let model = load_model(&full).unwrap();
    assert_eq!(model.graph().name, "resnet20-sft2-e2");
    let kinds: Vec<&str> = model.graph().nodes.iter().map(|n| n.op.kind()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "poly").count(), 19);
    assert!(!kinds.contains(&"batch_norm") && !kinds.contains(&"relu"));
    assert!(tmp("ft-full.ckpt.json").exists());

    // The same run interrupted after one epoch and resumed.
    let part = tmp("ft-part.safetensors");
    let v = json(finetune(
        &["--model", relu, "--degree", "2", "--epochs", "2", "--distill", "0.5", "--stop-after", "1"],
        &part,
    ));
    assert_eq!(v["epochs_done"], 1);
    assert_eq!(load_model(&part).unwrap().graph().name, "resnet20-sft2-e1");
    let ckpt = tmp("ft-part.ckpt.json");
    let v = json(finetune(&["--resume", ckpt.to_str().unwrap()], &part));
    assert_eq!(v["epochs_done"], 2);
    let resumed = load_model(&part).unwrap();
    assert_eq!(resumed.graph().name, "resnet20-sft2-e2");
    let mut worst = 0.0f32;
    for (name, w) in model.weights() {
        let r = &resumed.weights()[name];
        for (a, b) in w.iter().zip(r.iter()) {
            worst = worst.max((a - b).abs() / (1.0 + a.abs()));
        }
    }
    assert!(worst < 1e-3, "resumed run differs from the uninterrupted one by {worst}");
}

#[test]
fn finetune_errors_name_the_problem() {
    let relu = resnet20("errors");
    let relu = relu.to_str().unwrap();
    let out = tmp("ft-bad.safetensors");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--model", relu, "--degree", "0", "--epochs", "0"], "degree must be 1..=16"),
        (vec!["--model", relu, "--lr=-1", "--epochs", "0"], "learning rate must be a non-negative number"),
        (vec!["--model", "/nonexistent/model.safetensors", "--epochs", "0"], "/nonexistent/model.safetensors"),
        (vec!["--resume", "/nonexistent/run.ckpt.json"], "/nonexistent/run.ckpt.json"),
    ];
    for (args, want) in cases {
        let o = finetune(&args, &out);
        let e = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {e}");
        assert!(e.contains(want), "{args:?}: expected '{want}' in: {e}");
    }
    // A file that is not a checkpoint.
    let bogus = tmp("bogus.ckpt.json");
    std::fs::write(&bogus, "{\"not\": 1}").unwrap();
    let o = finetune(&["--resume", bogus.to_str().unwrap()], &out);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("not a fine-tuning checkpoint"), "{e}");
    // Data directory without CIFAR-10 batches.
    let empty = tmp("empty-data");
    std::fs::create_dir_all(&empty).unwrap();
    let o = bin()
        .args(["finetune", "--model", relu, "--epochs", "0", "--data"])
        .arg(&empty)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("data_batch_1"), "{e}");
}

#[test]
fn quantisation_aware_training_reports_what_the_tfhe_simulation_computes_and_resumes() {
    let init = tmp("qat-init.safetensors");
    ok(bin().args(["import", "small-cnn", "--widths", "6,5", "-o"]).arg(&init).output().unwrap());
    let params = r#"{"bits":4,"extra_bits":1,"act_bits":2,"calibration_images":16,"activation":"exact"}"#;
    let init = init.to_str().unwrap();
    let out = tmp("qat.safetensors");
    let args = ["--model", init, "--keep-activations", "--epochs", "2", "--lr", "0.05", "--tfhe", params];
    let v = json(finetune(&args, &out));
    assert!(v["baseline_simulated_accuracy"].as_f64().is_some(), "{v}");
    let epochs = v["epochs"].as_array().unwrap();
    assert_eq!(epochs.len(), 2);
    let reported =
        epochs[1]["simulated_test_accuracy"].as_f64().expect("every epoch reports the simulation's accuracy");
    // The written model, simulated by `peregrine simulate` with the same parameters on the same
    // 40 test images, scores exactly what training reported.
    let sim = json(
        bin()
            .args(["simulate", "--model"])
            .arg(&out)
            .args(["--params", params, "--limit", "40", "--json", "--data"])
            .arg(shared("data/cifar10/test_batch.bin.gz"))
            .output()
            .unwrap(),
    );
    assert_eq!(sim["quantised_correct"].as_u64().unwrap() as f64 / 40.0, reported, "{sim}");
    assert!(
        !load_model(&out).unwrap().graph().nodes.iter().any(|n| n.op.kind() == "batch_norm"),
        "batch norms are folded first"
    );

    // Interrupted and resumed, the run keeps quantising the same way.
    let part = tmp("qat-part.safetensors");
    json(finetune(&[&args[..], &["--stop-after", "1"]].concat(), &part));
    let ckpt = tmp("qat-part.ckpt.json");
    let v = json(finetune(&["--resume", ckpt.to_str().unwrap()], &part));
    assert_eq!(v["epochs_done"], 2);
    assert_eq!(
        v["epochs"][0]["simulated_test_accuracy"].as_f64(),
        Some(reported),
        "the resumed run reproduces the uninterrupted one"
    );

    // Bad requests name the problem.
    let o = finetune(&["--model", init, "--keep-activations", "--epochs", "1", "--tfhe", r#"{"bits":3}"#], &out);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("precision must be 4 to 8 bits"), "{e}");
    let o = finetune(&["--model", init, "--keep-activations", "--epochs", "1", "--tfhe", r#"{"bitz":5}"#], &out);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("invalid --params for the tfhe backend"), "{e}");
}

/// Three small photos (colour ramps with a disc) in a fresh directory.
fn photo_dir(tag: &str) -> std::path::PathBuf {
    let dir = tmp(&format!("photos-{tag}"));
    std::fs::create_dir_all(&dir).unwrap();
    for (k, (w, h)) in [(57u32, 43u32), (38, 50), (70, 31)].into_iter().enumerate() {
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            let disc = (x as i64 - w as i64 / 2).pow(2) + (y as i64 - h as i64 / 3).pow(2) < (h as i64 / 4).pow(2);
            if disc {
                image::Rgb([230, 200 - 50 * k as u8, 40])
            } else {
                image::Rgb([(x * 255 / w) as u8, (y * 255 / h) as u8, 60 + 50 * k as u8])
            }
        });
        img.save(dir.join(format!("p{k}.png"))).unwrap();
    }
    dir
}

#[test]
fn finetune_distils_on_photos_without_labels() {
    // A model with hard swish, leaky ReLU, ReLU6, hard sigmoid, sigmoid and two products.
    let model = tmp("ft-photo-teacher.safetensors");
    peregrine_model::format::save_model(&peregrine_model::testkit::odd_mobile_model(9), &model).unwrap();
    let photos = photo_dir("ft");
    let out = tmp("ft-photo.safetensors");
    let run = |extra: &[&str]| {
        bin()
            .args(["finetune", "--model"])
            .arg(&model)
            .arg("--images")
            .arg(&photos)
            .arg("--eval-images")
            .arg(&photos)
            .args(["--crops", "24", "--eval-limit", "12", "--batch", "8", "--calibration-batches", "2"])
            .args(["--degree", "4", "--lr", "0.01", "--json"])
            .args(extra)
            .arg("-o")
            .arg(&out)
            .output()
            .unwrap()
    };
    let v = json(run(&["--epochs", "2"]));
    assert_eq!(v["train_images"], 24);
    assert_eq!(v["test_images"], 12);
    assert_eq!(v["config"]["match_outputs"], true);
    assert_eq!(v["config"]["distill"], 1.0);
    assert_eq!(v["epochs"].as_array().unwrap().len(), 2);
    // Agreement with the teacher on held-out crops labelled by it: a fraction, before and after.
    for key in ["baseline_test_accuracy", "test_accuracy"] {
        let a = v[key].as_f64().unwrap_or_else(|| panic!("{key} missing: {v}"));
        assert!((0.0..=1.0).contains(&a), "{key} = {a}");
    }
    let m = load_model(&out).unwrap();
    let kinds: Vec<&str> = m.graph().nodes.iter().map(|n| n.op.kind()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "poly").count(), 5, "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| **k == "mul").count(), 2, "{kinds:?}");

    // Photos and CIFAR together, or photo options without photos, are refused by name.
    let o = run(&["--data", "somewhere"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--data"), "{}", String::from_utf8_lossy(&o.stderr));
    let o = bin()
        .args(["finetune", "--model"])
        .arg(&model)
        .args(["--data", "x", "--crops", "5", "-o"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--images"), "{}", String::from_utf8_lossy(&o.stderr));
    // A directory without photos.
    let empty = tmp("photos-empty");
    std::fs::create_dir_all(&empty).unwrap();
    let o = bin()
        .args(["finetune", "--model"])
        .arg(&model)
        .arg("--images")
        .arg(&empty)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no PNG or JPEG"), "{}", String::from_utf8_lossy(&o.stderr));
}
