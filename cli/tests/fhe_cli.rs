//! `peregrine convert`, `plan` and `run` end to end on the `clear` backend.

mod common;

use std::path::{Path, PathBuf};

use common::*;

use peregrine_model::save_model;
use peregrine_model::testkit::{tiny_poly_cnn, tiny_poly_cnn_sized};

/// The shared small model (conv s2 → poly4 → GAP → linear), written to a scratch file.
fn small_model(tag: &str) -> PathBuf {
    let p = tmp(&format!("small-{tag}.safetensors"));
    save_model(&tiny_poly_cnn(0), &p).unwrap();
    p
}

/// The `tfhe` tests' model: [`small_model`] with 2 channels and stride 4, so 128 activation
/// elements (one programmable bootstrap each at 128-bit parameters) instead of 1,024.
fn tfhe_model(tag: &str) -> PathBuf {
    let p = tmp(&format!("tfhe-{tag}.safetensors"));
    save_model(&tiny_poly_cnn_sized(0, 2, 4), &p).unwrap();
    p
}

/// The shared pretrained ResNet-20, imported into the scratch file `name`.
fn resnet20(name: &str) -> PathBuf {
    let out = tmp(name);
    let weights = shared("models/resnet20-cifar10.safetensors");
    ok(bin().args(["import", "resnet", "--weights"]).arg(weights).arg("-o").arg(&out).output().unwrap());
    out
}

/// `keygen` → `encrypt` (`limit` images) → `infer` with the secret key hidden (and `decrypt`
/// refused meanwhile) → `decrypt --json`, in the session directory `tag`; returns it and the
/// decryption report.
fn session(tag: &str, backend: &str, params: &str, model: &Path, limit: usize) -> (PathBuf, serde_json::Value) {
    let dir = tmp(tag);
    let _ = std::fs::remove_dir_all(&dir);
    let keygen = ["keygen", "--backend", backend, "--params", params, "--json", "--model"];
    let k = json(bin().args(keygen).arg(model).arg("--dir").arg(&dir).output().unwrap());
    assert!(k["evaluation_key_bytes"].as_u64().unwrap() > 0, "{k}");
    for f in ["session.json", "client.secret", "evaluation.keys"] {
        assert!(dir.join(f).exists(), "{f}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("client.secret")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "client.secret is created owner-only");
    }
    let data = shared("data/cifar10/test_batch.bin.gz");
    ok(bin()
        .args(["encrypt", "--limit", &limit.to_string(), "--data"])
        .arg(&data)
        .arg("--dir")
        .arg(&dir)
        .output()
        .unwrap());
    // A secret others can read is refused by name, before it is used.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let secret = dir.join("client.secret");
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = bin().args(["encrypt", "--limit", "1", "--data"]).arg(&data).arg("--dir").arg(&dir).output().unwrap();
        let msg = String::from_utf8_lossy(&e.stderr);
        assert!(
            !e.status.success() && msg.contains("readable or writable by other users") && msg.contains("chmod 600"),
            "{msg}"
        );
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    // The server side must not need the secret: hide it while `infer` runs.
    std::fs::rename(dir.join("client.secret"), dir.join("away")).unwrap();
    let inf = json(bin().args(["infer", "--json", "--dir"]).arg(&dir).output().unwrap());
    assert_eq!(inf["images"], limit);
    let e = bin().args(["decrypt", "--dir"]).arg(&dir).output().unwrap();
    assert!(!e.status.success() && String::from_utf8_lossy(&e.stderr).contains("client.secret"));
    std::fs::rename(dir.join("away"), dir.join("client.secret")).unwrap();
    let d = json(bin().args(["decrypt", "--json", "--dir"]).arg(&dir).output().unwrap());
    (dir, d)
}

const PARAMS: &str = r#"{"log_ring_dimension": 12, "levels": 8}"#;

#[test]
fn plan_reports_cost_and_run_agrees_with_the_reference() {
    let model = small_model("run");
    let plan = json(
        bin()
            .args(["plan", "--backend", "clear", "--params", PARAMS, "--json", "--model"])
            .arg(&model)
            .output()
            .unwrap(),
    );
    assert_eq!(plan["capabilities"]["slots"], 2048);
    // The degree-4 activation is folded into the convolution (its leading coefficients share a sign).
    assert_eq!(plan["cost"]["levels_consumed"], 4, "conv 1 + folded poly4 2 + fc 1");
    assert!(plan["cost"]["rotations"].as_u64().unwrap() > 0);
    assert_eq!(
        plan["cost"]["rotation_keys"].as_u64().unwrap() as usize,
        plan["rotation_keys"].as_array().unwrap().len()
    );

    let run = json(
        bin()
            .args(["run", "--backend", "clear", "--params", PARAMS, "--limit", "3", "--trace", "--json", "--model"])
            .arg(&model)
            .arg("--data")
            .arg(shared("data/cifar10/test_batch.bin.gz"))
            .output()
            .unwrap(),
    );
    assert_eq!(run["summary"]["images"], 3);
    assert_eq!(run["summary"]["agree"], 3);
    assert!(run["summary"]["max_abs_logit_error"].as_f64().unwrap() < 1e-6);
    assert!(!run["trace"].as_array().unwrap().is_empty());
    for row in run["trace"].as_array().unwrap() {
        assert!(row["precision_bits"].as_f64().unwrap() > 30.0, "{row}");
    }

    // One image of any size.
    let png = tmp("img.png");
    image::RgbImage::from_fn(41, 29, |x, y| image::Rgb([(x * 6) as u8, (y * 8) as u8, 77])).save(&png).unwrap();
    let one = json(
        bin()
            .args(["run", "--backend", "clear", "--params", PARAMS, "--json", "--model"])
            .arg(&model)
            .arg("--image")
            .arg(&png)
            .output()
            .unwrap(),
    );
    assert_eq!(one["summary"]["agree"], 1);
}

/// A segmenter-shaped model: 3×13×11 photo → 3×3 convolution → degree-2 polynomial → a
/// one-channel 13×11 map (taken as it is: no resizing, no normalisation).
fn tiny_map_model(tag: &str) -> PathBuf {
    tiny_map_model_biased(tag, -0.4)
}

/// [`tiny_map_model`] with another bias before its polynomial.
fn tiny_map_model_biased(tag: &str, bias: f32) -> PathBuf {
    use peregrine_model::ir::{Graph, INPUT};
    use peregrine_model::testkit::{conv, graph, node, poly, raw_input, sawtooth};
    use peregrine_model::Model;
    let mut w = peregrine_model::ir::Weights::new();
    let arr = |shape: &[usize], v: Vec<f32>| ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(shape), v).unwrap();
    w.insert("c.w".into(), arr(&[1, 3, 3, 3], sawtooth(27, 0.3)));
    w.insert("c.b".into(), arr(&[1], vec![bias]));
    w.insert("p.c".into(), arr(&[1, 3], vec![0.05, 1.0, 0.2]));
    let nodes = vec![
        node("c", conv(3, 1, 3, 1, 1, 1, 1, "c.w", Some("c.b")), &[INPUT]),
        node("p", poly("p.c", None, None), &["c"]),
    ];
    let g: Graph = graph("map", raw_input([3, 13, 11]), nodes, "p");
    let p = tmp(&format!("map-{tag}.safetensors"));
    save_model(&Model::new(g, w).unwrap(), &p).unwrap();
    p
}

#[test]
fn predict_against_reports_a_converted_models_agreement_with_its_original() {
    let photo = tmp("against-map.png");
    image::RgbImage::from_fn(11, 13, |x, y| image::Rgb([(x * 23) as u8, (y * 19) as u8, ((x * y) % 7 * 30) as u8]))
        .save(&photo)
        .unwrap();
    let predict = |model: &Path, against: &Path, extra: &[&str]| {
        bin()
            .args(["predict", "--json", "--model"])
            .arg(model)
            .arg("--against")
            .arg(against)
            .arg("--image")
            .arg(&photo)
            .args(extra)
            .output()
            .unwrap()
    };
    // A map against itself: every pixel agrees, the masks coincide.
    let map = tiny_map_model_biased("against-a", -0.4);
    let same = json(predict(&map, &map, &["--mask=-0.4"]));
    assert_eq!(same["against"]["what"], "mask", "{same}");
    assert_eq!(same["against"]["agree"], 143, "{same}");
    assert!(same["against"]["summary"].as_str().unwrap().contains("mask IoU 1.000"), "{same}");
    // Another bias moves some pixels across the threshold: the agreement counts exactly the
    // pixels on the same side in both, and the IoU is below 1.
    let moved = tiny_map_model_biased("against-b", -0.1);
    let other = json(predict(&moved, &map, &["--mask=-0.4"]));
    let (m1, m2) = (same["mask_pixels"].as_u64().unwrap(), other["mask_pixels"].as_u64().unwrap());
    let agree = other["against"]["agree"].as_u64().unwrap();
    assert!(m1 != m2, "the bias changes the mask ({m1} pixels)");
    assert!(agree < 143 && agree + m1.abs_diff(m2) <= 143 && agree >= 143 - (m1 + m2).min(143), "{other}");
    assert!(!other["against"]["summary"].as_str().unwrap().contains("mask IoU 1.000"), "{other}");
    // A classifier against itself: top-1 equal.
    let model = small_model("against");
    let png = tmp("against-in.png");
    image::RgbImage::from_fn(40, 30, |x, y| image::Rgb([(x * 6) as u8, (y * 8) as u8, 90])).save(&png).unwrap();
    let c = json(
        bin()
            .args(["predict", "--json", "--model"])
            .arg(&model)
            .arg("--against")
            .arg(&model)
            .arg("--image")
            .arg(&png)
            .output()
            .unwrap(),
    );
    assert_eq!(c["against"]["what"], "top-1", "{c}");
    assert_eq!(c["against"]["agree"], 1, "{c}");
    // Models that read the image differently are refused by name.
    let out = predict(&model, &map, &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--against") && err.contains("differs from the model's input"), "{err}");

    // A directory of photos: per photo and pooled, the intersection and union summed.
    let dir = tmp("against-dir");
    std::fs::create_dir_all(&dir).unwrap();
    for k in 0..3u32 {
        image::RgbImage::from_fn(11, 13, |x, y| image::Rgb([(x * 23 + k * 40) as u8, (y * 19) as u8, (k * 70) as u8]))
            .save(dir.join(format!("p{k}.png")))
            .unwrap();
    }
    let pooled = |extra: &[&str]| {
        bin()
            .args(["predict", "--json", "--model"])
            .arg(&moved)
            .arg("--against")
            .arg(&map)
            .arg("--image")
            .arg(&dir)
            .args(extra)
            .output()
            .unwrap()
    };
    let p = json(pooled(&["--mask=-0.4"]));
    assert_eq!(p["images"].as_array().unwrap().len(), 3, "{p}");
    let agree: u64 = p["images"].as_array().unwrap().iter().map(|r| r["agree"].as_u64().unwrap()).sum();
    assert_eq!(p["pooled"]["mask"]["agree"], agree, "{p}");
    assert_eq!(p["pooled"]["mask"]["pixels"], 3 * 143, "{p}");
    let (both, either) =
        (p["pooled"]["mask"]["both"].as_u64().unwrap(), p["pooled"]["mask"]["either"].as_u64().unwrap());
    assert!(both < either, "{p}");
    let iou = format!("pooled mask IoU {:.3}", both as f64 / either as f64);
    assert!(p["pooled"]["summary"].as_str().unwrap().contains(&iou), "{p}");
    // A directory needs --against, and cannot be drawn.
    let out = bin().args(["predict", "--model"]).arg(&map).arg("--image").arg(&dir).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is a directory: give --against"));
    let out = pooled(&["--mask=-0.4", "--annotate", "x.png"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--annotate draws one photo"));
}

#[test]
fn run_decodes_draws_and_checks_the_decrypted_output_of_a_photo() {
    // A classifier: the caption is drawn, the top-1 compared with the cleartext model's.
    let model = small_model("annotate");
    let png = tmp("annotate-in.png");
    image::RgbImage::from_fn(201, 120, |x, y| image::Rgb([(x % 251) as u8, (y * 2) as u8, 77])).save(&png).unwrap();
    let out = tmp("annotate-out.png");
    let _ = std::fs::remove_file(&out);
    let run = json(
        bin()
            .args(["run", "--backend", "clear", "--params", PARAMS, "--json", "--model"])
            .arg(&model)
            .arg("--image")
            .arg(&png)
            .arg("--annotate")
            .arg(&out)
            .output()
            .unwrap(),
    );
    let client = &run["client_output"];
    assert_eq!(client["agreement"]["what"], "top-1", "{run}");
    assert_eq!(client["agreement"]["agree"], 1, "{run}");
    assert_eq!(client["decrypted"]["prediction"], run["images"][0]["packed_prediction"], "{run}");
    let drawn = image::open(&out).unwrap().to_rgb8();
    assert_eq!(drawn.dimensions(), (201, 120), "drawn on the photo at its own size");
    assert_eq!(drawn.get_pixel(0, 0).0, [0, 0, 0], "the caption's box starts at the corner");
    let white = (0..9).flat_map(|y| (0..60).map(move |x| (x, y))).filter(|&(x, y)| drawn.get_pixel(x, y).0 == [255; 3]);
    assert!(white.count() > 20, "the caption's letters are drawn");
    assert_eq!(drawn.get_pixel(150, 100).0, image::open(&png).unwrap().to_rgb8().get_pixel(150, 100).0);

    // A one-channel map: the decrypted mask agrees pixel for pixel and is drawn in red.
    let map = tiny_map_model("annotate");
    let photo = tmp("annotate-map.png");
    image::RgbImage::from_fn(11, 13, |x, y| image::Rgb([(x * 23) as u8, (y * 19) as u8, ((x * y) % 7 * 30) as u8]))
        .save(&photo)
        .unwrap();
    let mask_png = tmp("annotate-mask.png");
    let run = json(
        bin()
            .args(["run", "--backend", "clear", "--params", PARAMS, "--json", "--mask=-0.4", "--model"])
            .arg(&map)
            .arg("--image")
            .arg(&photo)
            .arg("--annotate")
            .arg(&mask_png)
            .output()
            .unwrap(),
    );
    let client = &run["client_output"];
    assert_eq!(client["agreement"]["what"], "mask", "{run}");
    assert_eq!(client["agreement"]["agree"], 143, "{run}");
    let inside = client["decrypted"]["mask_pixels"].as_u64().unwrap();
    assert!(inside > 0 && inside < 143, "a mask with both sides ({inside})");
    let before = image::open(&photo).unwrap().to_rgb8();
    let after = image::open(&mask_png).unwrap().to_rgb8();
    let changed = before.pixels().zip(after.pixels()).filter(|(a, b)| a != b).count() as u64;
    assert!(changed <= inside && changed + 3 >= inside, "{changed} pixels redrawn for {inside} masked");

    // Refusals, before any encryption.
    let e = bin()
        .args(["run", "--backend", "clear", "--params", PARAMS, "--annotate", "x.png", "--model"])
        .arg(&model)
        .arg("--data")
        .arg(shared("data/cifar10/test_batch.bin.gz"))
        .output()
        .unwrap();
    assert!(!e.status.success() && String::from_utf8_lossy(&e.stderr).contains("give --image"));
    let e = bin()
        .args(["run", "--backend", "clear", "--params", PARAMS, "--mask", "0.5", "--model"])
        .arg(&model)
        .arg("--image")
        .arg(&png)
        .output()
        .unwrap();
    let msg = String::from_utf8_lossy(&e.stderr);
    assert!(!e.status.success() && msg.contains("one-channel [1, H, W] output") && msg.contains("[10]"), "{msg}");
    assert!(!msg.contains("predicted"), "refused before the run: {msg}");
}

#[test]
fn plan_errors_are_clear() {
    let model = small_model("errors");
    let out = bin()
        .args(["plan", "--backend", "clear", "--params", r#"{"log_ring_dimension": 12, "levels": 3}"#, "--model"])
        .arg(&model)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("needs 4 levels") && e.contains("offers 3"), "{e}");

    let out = bin().args(["plan", "--backend", "nosuch", "--model"]).arg(&model).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown backend 'nosuch'"));

    let out = bin()
        .args(["plan", "--backend", "clear", "--params", "{\"levls\": 3}", "--model"])
        .arg(&model)
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("levls"), "{e}");

    // A ReLU model must be converted first.
    let relu = resnet20("resnet20.safetensors");
    let out = bin().args(["plan", "--model"]).arg(&relu).output().unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("RELU") && e.contains("convert"), "{e}");
}

#[test]
fn convert_makes_a_plannable_resnet20_that_needs_bootstrapping_at_default_levels() {
    let relu = resnet20("r20.safetensors");
    let poly = tmp("r20p2.safetensors");
    let v = json(
        bin()
            .args(["convert", "--degree", "2", "--calibration-images", "32", "--json", "--model"])
            .arg(&relu)
            .arg("--calibration")
            .arg(shared("data/cifar10/data_batch_1.bin.gz"))
            .arg("-o")
            .arg(&poly)
            .output()
            .unwrap(),
    );
    assert_eq!(v["degree"], 2);
    // 19 quadratics folded (1 level each) + 19 linear layers + the head: 39 levels, more than
    // the 24 the user asks for here.
    let out = bin()
        .args(["plan", "--backend", "clear", "--params", r#"{"levels": 24}"#, "--model"])
        .arg(&poly)
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("needs 39 levels") && e.contains("offers 24"), "{e}");
    // With the chain the planner chooses (every square sharing a prime with the next linear
    // layer): 20 levels, no bootstrap.
    let tower = json(bin().args(["plan", "--backend", "clear", "--json", "--model"]).arg(&poly).output().unwrap());
    assert_eq!(tower["cost"]["levels_consumed"], 20, "{}", tower["cost"]);
    assert_eq!(tower["lazy_squares"], 19);
    assert_eq!(tower["cost"]["bootstraps"], 0);
    let p = json(
        bin()
            .args(["plan", "--backend", "clear", "--params", r#"{"levels": 39}"#, "--json", "--model"])
            .arg(&poly)
            .output()
            .unwrap(),
    );
    assert_eq!(p["cost"]["levels_consumed"], 39);
    assert_eq!(p["cost"]["bootstraps"], 0);
}

#[test]
fn keygen_encrypt_infer_decrypt_as_separate_processes() {
    let model = small_model("session");
    let (dir, d) = session("session", "clear", PARAMS, &model, 3);
    assert_eq!(d["agree"], 3);
    // Identical to `run` on the same images.
    let run = json(
        bin()
            .args(["run", "--backend", "clear", "--params", PARAMS, "--limit", "3", "--json", "--data"])
            .arg(shared("data/cifar10/test_batch.bin.gz"))
            .arg("--model")
            .arg(&model)
            .output()
            .unwrap(),
    );
    for i in 0..3 {
        assert_eq!(d["images"][i]["prediction"], run["images"][i]["packed_prediction"]);
        assert!(d["images"][i]["max_abs_logit_error"].as_f64().unwrap() < 1e-6);
    }
    // A corrupted ciphertext file is a clear error, not a crash.
    let f = dir.join("image-1.in.ct");
    let b = std::fs::read(&f).unwrap();
    std::fs::write(&f, &b[..b.len() / 2]).unwrap();
    let e = bin().args(["infer", "--dir"]).arg(&dir).output().unwrap();
    assert_eq!(e.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&e.stderr).contains("image-1.in.ct"), "{}", String::from_utf8_lossy(&e.stderr));
}

#[test]
fn compare_prints_one_row_per_backend_and_names_failures() {
    let model = small_model("compare");
    let params = format!("clear={PARAMS}");
    let saved = tmp("compare-saved");
    let _ = std::fs::remove_dir_all(&saved);
    let out = bin()
        .args(["compare", "--backends", "clear,nope", "--params", &params, "--limit", "2", "--model"])
        .arg(&model)
        .arg("--data")
        .arg(shared("data/cifar10/test_batch.bin.gz"))
        .arg("--save")
        .arg(&saved)
        .env("PEREGRINE_PLUGIN_PATH", tmp("no-plugins-here"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a failed backend must fail the command");
    assert!(stderr.contains("1 of 2 backends failed"), "{stderr}");
    let clear = stdout.lines().find(|l| l.starts_with("clear ")).unwrap_or_else(|| panic!("no clear row: {stdout}"));
    assert!(clear.contains("2/2"), "agreement 2/2 expected: {clear}");
    assert!(stdout.lines().any(|l| l.starts_with("reference ")), "{stdout}");
    let nope = stdout.lines().find(|l| l.starts_with("nope ")).unwrap_or_else(|| panic!("no row for nope: {stdout}"));
    assert!(nope.contains("unknown backend 'nope'"), "{nope}");
    // The child's per-image log lines are echoed live with the backend's name, and its full
    // output is kept.
    assert!(stderr.contains("[clear] clear: 2/2 predicted"), "{stderr}");
    let kept: serde_json::Value = serde_json::from_slice(&std::fs::read(saved.join("clear.json")).unwrap()).unwrap();
    assert_eq!(kept["summary"]["images"], 2);
    assert!(!saved.join("nope.json").exists());

    let v = json(
        bin()
            .args(["compare", "--json", "--backends", "clear", "--params", &params, "--limit", "2", "--model"])
            .arg(&model)
            .arg("--data")
            .arg(shared("data/cifar10/test_batch.bin.gz"))
            .output()
            .unwrap(),
    );
    let s = &v["backends"][0]["summary"];
    assert_eq!(s["agreement"], 1.0);
    assert_eq!(s["images"], 2);
    assert!(s["peak_rss_bytes"].as_u64().unwrap() > 1 << 20, "{s}");
    assert!(s["evaluation_key_bytes"].as_u64().unwrap() > 0, "{s}");
    assert_eq!(v["reference"]["images"], 2);

    let bad = bin()
        .args(["compare", "--backends", "clear", "--params", "tfhe={}", "--model"])
        .arg(&model)
        .arg("--data")
        .arg(shared("data/cifar10/test_batch.bin.gz"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not in --backends"));
}

#[test]
fn tfhe_run_reproduces_its_quantised_simulation_and_names_bad_requests() {
    let model = tfhe_model("run");
    let data = shared("data/cifar10/test_batch.bin.gz");
    // 4-bit set with 4 extra accumulator bits (without them every weight of this 27-term
    // convolution rounds to zero); the encrypted top-1 must equal the simulation's.
    let params = r#"{"bits": 4, "extra_bits": 4, "act_bits": 3, "calibration_images": 32}"#;
    let out = bin()
        .args([
            "run",
            "--backend",
            "tfhe",
            "--activation",
            "poly",
            "--params",
            params,
            "--limit",
            "1",
            "--json",
            "--model",
        ])
        .arg(&model)
        .arg("--data")
        .arg(&data)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr).to_string();
    let run = json(out);
    assert_eq!(run["security_bits"], 128);
    assert_eq!(run["summary"]["images"], 1);
    assert_eq!(run["summary"]["failed"], 0);
    assert_eq!(run["summary"]["agree_quantised"], 1, "{run}");
    // The distance from the simulation is reported, consistently with the identity flag.
    let units = run["images"][0]["output_units_from_simulation"].as_i64().expect("reported");
    assert_eq!(units == 0, run["images"][0]["identical_to_simulation"] == true, "{run}");
    // The per-image log line says the same.
    let said = if units == 0 { "outputs identical".to_string() } else { format!("outputs {units} units off") };
    assert!(log.contains("tfhe: 1/1 predicted") && log.contains(&said), "{log}");
    assert!(run["summary"]["output_step"].as_f64().unwrap() > 0.0, "{run}");
    // One bootstrap per activation element (2 channels × 8 × 8), none for the padding.
    assert_eq!(run["images"][0]["bootstraps"], 128);
    assert_eq!(run["summary"]["cost"]["bootstraps"], 128);
    // Bad requests fail with a message saying what to change.
    let refusals: [(&[&str], &str); 5] = [
        // Exact activations need the model to record what its polynomial approximates.
        (&["--backend", "tfhe", "--activation", "exact", "--params", params], "--activation poly"),
        (&["--backend", "tfhe", "--params", r#"{"bits": 12}"#], "4 to 8 bits"),
        (&["--backend", "tfhe", "--params", r#"{"noise_margin": 0.5}"#], "noise_margin must be"),
        (&["--backend", "tfhe", "--params", r#"{"clip": 1.5, "activation": "poly"}"#], "calibration quantile (clip)"),
        (&["--backend", "clear", "--activation", "exact"], "needs the tfhe backend"),
    ];
    for (args, says) in refusals {
        let bad = bin().arg("run").args(args).arg("--model").arg(&model).arg("--data").arg(&data).output().unwrap();
        let e = String::from_utf8_lossy(&bad.stderr);
        assert!(!bad.status.success() && e.contains(says), "{args:?}: {e}");
    }
}

#[test]
fn tfhe_plans_runs_as_separate_processes_and_compares_with_clear() {
    let model = tfhe_model("session");
    let data = shared("data/cifar10/test_batch.bin.gz");
    let calibration = shared("data/cifar10/data_batch_1.bin.gz");
    let params = format!(
        r#"{{"bits": 4, "extra_bits": 4, "act_bits": 3, "calibration_images": 32, "activation": "poly", "calibration": "{}"}}"#,
        calibration.display()
    );
    let plan = json(
        bin()
            .args(["plan", "--backend", "tfhe", "--params", &params, "--json", "--model"])
            .arg(&model)
            .output()
            .unwrap(),
    );
    assert_eq!(plan["bootstraps"], 128, "{plan}");

    // keygen / encrypt / infer / decrypt, the server without the secret key.
    let (_, d) = session("tfhe-session", "tfhe", &params, &model, 1);
    let image = &d["images"][0];
    // The decrypted outputs are compared with the quantised simulation, consistently.
    let units = image["output_units_from_simulation"].as_i64().expect("compared with the simulation");
    assert_eq!(units == 0, image["identical_to_simulation"] == true, "{d}");
    assert_eq!(image["agree_quantised"], true, "{d}");

    // The same backend beside `clear` in one table.
    let out = bin()
        .args([
            "compare",
            "--backends",
            "clear,tfhe",
            "--params",
            &format!("clear={PARAMS}"),
            "--params",
            &format!("tfhe={params}"),
        ])
        .args(["--limit", "1", "--model"])
        .arg(&model)
        .arg("--data")
        .arg(&data)
        .output()
        .unwrap();
    let table = ok(out);
    assert!(
        table.lines().any(|l| l.starts_with("clear ") && l.contains("1/1")),
        "clear must agree with the reference: {table}"
    );
    assert!(table.lines().any(|l| l.starts_with("tfhe ") && l.contains("128-bit")), "no tfhe row: {table}");
    // The 4-bit toy model need not agree with the float reference, but must with its simulation.
    assert!(table.contains("tfhe: top-1 equal to its quantised simulation 1/1"), "{table}");
}

/// Small insecure `ckks` parameters for tests (the runtime sizes the levels to the model).
const CKKS_PARAMS: &str = r#"{"log_ring_dimension": 13, "insecure_test_only": true}"#;

#[test]
fn ckks_is_the_default_and_runs_a_separate_process_session_and_compare() {
    let model = small_model("ckks");
    // `plan` without --backend plans for ckks, sized to the model's depth.
    let plan = json(bin().args(["plan", "--json", "--params", CKKS_PARAMS, "--model"]).arg(&model).output().unwrap());
    assert_eq!(plan["backend"], "ckks", "{plan}");
    assert_eq!(plan["capabilities"]["max_level"], plan["cost"]["levels_consumed"], "levels sized to the model: {plan}");
    // Client and server as separate processes, the secret key hidden from `infer`.
    let (_, d) = session("ckks-session", "ckks", CKKS_PARAMS, &model, 2);
    assert_eq!(d["agree"], 2, "{d}");
    // Beside `clear` in one table.
    let out = bin()
        .args(["compare", "--backends", "clear,ckks", "--params", &format!("clear={PARAMS}")])
        .args(["--params", &format!("ckks={CKKS_PARAMS}"), "--limit", "1", "--model"])
        .arg(&model)
        .arg("--data")
        .arg(shared("data/cifar10/test_batch.bin.gz"))
        .output()
        .unwrap();
    let table = ok(out);
    assert!(table.lines().any(|l| l.starts_with("ckks ") && l.contains("1/1")), "ckks must agree: {table}");
    // Insecure parameters are refused unless asked for, by name (no level count fits 128-bit
    // security at N = 2^11, and the ring the user names is not silently enlarged).
    let bad = bin()
        .args(["plan", "--backend", "ckks", "--params", r#"{"log_ring_dimension": 11}"#, "--model"])
        .arg(&model)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("insecure parameters"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

/// `run` of one test image on `ckks` with `params`: agrees with the reference, logits within 1e-3.
fn run_one_image_agrees(model: &Path, params: &str) {
    let run = json(
        bin()
            .args(["run", "--json", "--backend", "ckks", "--params", params, "--limit", "1", "--model"])
            .arg(model)
            .arg("--data")
            .arg(shared("data/cifar10/test_batch.bin.gz"))
            .output()
            .unwrap(),
    );
    assert_eq!(run["summary"]["agree"], 1, "{run}");
    assert!(run["summary"]["max_abs_logit_error"].as_f64().unwrap() < 1e-3, "{run}");
}

/// With bootstrapping, `ckks` plans for the fewest slots that keep the layouts (sparse slots
/// bootstrap with one EvalMod instead of two), unless the user fixes the slot count; the
/// encrypted run with its bootstraps agrees with the reference.
#[test]
fn ckks_bootstraps_sparse_slots_when_the_layouts_fit() {
    let model = small_model("ckks-boot");
    let params = |extra: &str| {
        format!(
            r#"{{"log_ring_dimension": 13, "levels": 3, "log_scale": 40, "first_modulus_bits": 52, "insecure_test_only": true, "bootstrap": {{"range": 16}}{extra}}}"#
        )
    };
    let plan = |p: &str| {
        json(
            bin().args(["plan", "--json", "--backend", "ckks", "--params", p, "--model"]).arg(&model).output().unwrap(),
        )
    };
    let auto = plan(&params(""));
    let full = plan(&params(r#", "slots": 4096"#));
    assert_eq!(full["capabilities"]["slots"], 4096, "{full}");
    let slots = auto["capabilities"]["slots"].as_u64().unwrap();
    assert!(slots < 4096, "sparse slots expected: {auto}");
    assert!(auto["cost"]["bootstraps"].as_u64().unwrap() > 0, "{auto}");
    assert_eq!(auto["cost"]["bootstraps"], full["cost"]["bootstraps"], "{auto}\n{full}");
    assert!(auto["cost"]["key_switches"].as_u64() <= full["cost"]["key_switches"].as_u64(), "{auto}\n{full}");
    run_one_image_agrees(&model, &params(""));
}

/// Without a range in the parameters, `ckks` sets the bootstrap range from calibration images
/// (the largest value any bootstrapped tensor takes on them, with a margin): from
/// `--calibration`, or `data_batch_1` beside `--data`; each bootstrap also gets its own
/// tensor's range; the run with them agrees with the reference. Without either, the plan says
/// the range is not calibrated.
#[test]
fn ckks_calibrates_the_bootstrap_range_on_training_images() {
    let model = small_model("ckks-calibrated");
    let params = r#"{"log_ring_dimension": 13, "levels": 3, "log_scale": 40, "first_modulus_bits": 52, "insecure_test_only": true, "bootstrap": {}}"#;
    let plan = |extra: &[&str]| {
        json(
            bin()
                .args(["plan", "--json", "--backend", "ckks", "--params", params])
                .args(extra)
                .arg("--model")
                .arg(&model)
                .output()
                .unwrap(),
        )
    };
    let batch = shared("data/cifar10/data_batch_1.bin.gz");
    let calibrated = plan(&["--calibration", batch.to_str().unwrap()]);
    let cal = &calibrated["bootstrap_calibration"];
    assert_eq!(cal["calibrated"], true, "{cal}");
    assert_eq!(cal["images"], 64);
    let per = cal["per_bootstrap"].as_array().unwrap();
    assert_eq!(per.len() as u64, calibrated["cost"]["bootstraps"].as_u64().unwrap(), "{cal}");
    let largest = per.iter().map(|b| b["largest_abs"].as_f64().unwrap()).fold(0f64, f64::max);
    assert!(largest > 0.0);
    // Each bootstrap runs within its own tensor's range (the run below uses them).
    for b in per {
        let (own, m) = (b["range"].as_f64().unwrap(), b["largest_abs"].as_f64().unwrap());
        assert!((own - 1.25 * m).abs() < 1e-9 * own, "{b}");
    }
    // The parameters' range covers the bootstraps without a level to spare; the others divide
    // by an integer first when beyond it.
    let range = calibrated["capabilities"]["bootstrap_range"].as_f64().unwrap();
    let tight: Vec<f64> =
        per.iter().filter(|b| b["spare_level"] == false).map(|b| b["largest_abs"].as_f64().unwrap()).collect();
    let need = if tight.is_empty() {
        per.iter().map(|b| b["largest_abs"].as_f64().unwrap()).fold(f64::INFINITY, f64::min)
    } else {
        tight.iter().copied().fold(0f64, f64::max)
    };
    assert!(need <= largest);
    assert!((range - 1.25 * need).abs() < 1e-9 * range, "range {range} for a largest value of {need}: {cal}");
    for b in per {
        let own = b["range"].as_f64().unwrap();
        let divisor = b["divisor"].as_i64().unwrap();
        if own > range * (1.0 + 1e-9) {
            assert_eq!(b["spare_level"], true, "{b}");
            assert_eq!(divisor, (own / range).ceil() as i64, "{b}");
        } else {
            assert_eq!(divisor, 1, "{b}");
        }
    }
    let plain = plan(&[]);
    assert_eq!(plain["bootstrap_calibration"]["calibrated"], false, "{plain}");
    assert_eq!(plain["capabilities"]["bootstrap_range"], 1.0, "the parameters' own range (the default)");
    run_one_image_agrees(&model, params);
}

/// A calibrated range no parameters of the family can build (Δ = 2^52 leaves a 61-bit q_0 room
/// for values up to 2; the small model's activation, times 8, reaches about 6.5) is refused by
/// name, instead of run at a range the values leave (the run would return garbage without a
/// word). The same model at Δ = 2^40 plans.
#[test]
fn ckks_refuses_a_calibrated_range_it_cannot_build() {
    let (graph, mut weights) = tiny_poly_cnn(0).into_parts();
    weights.get_mut("p.c").unwrap().mapv_inplace(|v| 8.0 * v);
    let model = tmp("small-ckks-unbuildable-range.safetensors");
    save_model(&peregrine_model::Model::new(graph, weights).unwrap(), &model).unwrap();
    let at = |log_scale: u32| {
        let params = format!(
            r#"{{"log_ring_dimension": 13, "levels": 3, "log_scale": {log_scale}, "insecure_test_only": true, "bootstrap": {{}}}}"#
        );
        bin()
            .args(["plan", "--backend", "ckks", "--params", &params, "--calibration"])
            .arg(shared("data/cifar10/data_batch_1.bin.gz"))
            .arg("--model")
            .arg(&model)
            .output()
            .unwrap()
    };
    let fine = at(40);
    assert!(fine.status.success(), "{}", String::from_utf8_lossy(&fine.stderr));
    let out = at(52);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("more than any bootstrap these parameters can build"), "{err}");
    assert!(err.contains("data_batch_1"), "names the calibration images: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// The committed degree-2 ResNet-20 plans leveled on `ckks` with tower reuse: every square
/// shares a prime with the next linear layer, 20 levels, log2(Q·P) ≤ 881 — 128-bit at
/// N = 2^15 (the chain the leveled-FHE paper needed 906 bits for).
/// The degree-2 ResNet-20 on `ckks` with the chain left to the planner: tower reuse fits it in
/// 20 levels at N = 2^15 (log2(Q·P) ≤ 881, 128-bit), but the simulated output precision there is
/// too low, so the planner takes N = 2^16 and its larger Δ, and says why.
#[test]
fn ckks_plans_the_degree_2_resnet20_with_tower_reuse_in_the_smallest_ring_precise_enough() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/resnet20-sft2.safetensors");
    let plan = json(bin().args(["plan", "--json", "--model"]).arg(&model).output().unwrap());
    let caps = &plan["capabilities"];
    assert_eq!(caps["ring_dimension"], 1 << 16, "{caps}");
    assert_eq!(caps["security_bits"], 128);
    assert_eq!(plan["lazy_squares"], 19, "every square of ResNet-20 shares a prime");
    assert_eq!(plan["cost"]["levels_consumed"], 20);
    assert_eq!(plan["cost"]["bootstraps"], 0);
    let bits = plan["estimated_output_bits"].as_f64().expect("estimated");
    assert!(bits >= 8.0, "{bits}");
    let aside = plan["smaller_rings_set_aside"].as_array().expect("listed");
    assert_eq!(aside.len(), 1, "{plan}");
    assert_eq!(aside[0]["log_ring_dimension"], 15);
    let small_bits = aside[0]["estimated_output_bits"].as_f64().unwrap();
    assert!(small_bits < 8.0 && small_bits < bits - 4.0, "{aside:?}");
    // A ring the user names is kept, with its precision reported: at N = 2^15 the tower chain
    // is 128-bit (log2(Q·P) ≤ 881).
    let at15 = json(
        bin()
            .args(["plan", "--json", "--params", r#"{"log_ring_dimension": 15}"#, "--model"])
            .arg(&model)
            .output()
            .unwrap(),
    );
    let caps15 = &at15["capabilities"];
    assert_eq!(caps15["ring_dimension"], 1 << 15, "{caps15}");
    assert_eq!(caps15["security_bits"], 128);
    assert_eq!(at15["lazy_squares"], 19);
    assert_eq!(at15["cost"]["levels_consumed"], 20);
    let log_qp = caps15["log_qp"].as_f64().unwrap();
    assert!(log_qp <= 881.0, "log2(Q·P) = {log_qp}");
    assert_eq!(at15["smallest_secure_ring"], 1 << 15);
    assert!(at15["capabilities"]["log_scale"].as_f64().unwrap() < caps["log_scale"].as_f64().unwrap());
    assert!((at15["estimated_output_bits"].as_f64().unwrap() - small_bits).abs() < 1.0, "{at15}");
    let text =
        ok(bin().args(["plan", "--params", r#"{"log_ring_dimension": 15}"#, "--model"]).arg(&model).output().unwrap());
    assert!(text.contains("LOW: outputs may differ"), "{text}");
    // The user's own level count keeps the uniform chain.
    let fixed = json(
        bin()
            .args(["plan", "--json", "--params", r#"{"levels": 39, "log_scale": 35}"#, "--model"])
            .arg(&model)
            .output()
            .unwrap(),
    );
    assert_eq!(fixed["lazy_squares"], 0, "{}", fixed["capabilities"]);
}

/// A small residual network with two quadratics runs encrypted on `ckks` (small insecure
/// ring) on its tower-reuse chain: 3 levels instead of 5, and the same top-1 as `clear`.
#[test]
fn ckks_runs_a_tower_reuse_chain_encrypted() {
    let model = tmp("square-resnet.safetensors");
    save_model(&peregrine_model::testkit::tiny_square_resnet(1), &model).unwrap();
    let plan = json(bin().args(["plan", "--json", "--params", CKKS_PARAMS, "--model"]).arg(&model).output().unwrap());
    assert_eq!(plan["lazy_squares"], 2, "{plan}");
    assert_eq!(plan["cost"]["levels_consumed"], 3);
    // The chain's output precision is estimated, and a smaller Δ leaves fewer bits.
    let bits = plan["estimated_output_bits"].as_f64().expect("estimated");
    assert!(bits >= 8.0, "{bits}");
    let coarse = r#"{"log_ring_dimension": 13, "insecure_test_only": true, "log_scale": 22}"#;
    let coarse = json(bin().args(["plan", "--json", "--params", coarse, "--model"]).arg(&model).output().unwrap());
    assert!(
        coarse["capabilities"]["log_scale"].as_f64().unwrap() < plan["capabilities"]["log_scale"].as_f64().unwrap()
    );
    let coarse_bits = coarse["estimated_output_bits"].as_f64().expect("estimated");
    assert!(coarse_bits < bits - 4.0, "{coarse_bits} vs {bits}");
    let out = bin()
        .args(["compare", "--backends", "clear,ckks", "--params", &format!("clear={PARAMS}")])
        .args(["--params", &format!("ckks={CKKS_PARAMS}"), "--limit", "2", "--json", "--model"])
        .arg(&model)
        .arg("--data")
        .arg(shared("data/cifar10/test_batch.bin.gz"))
        .output()
        .unwrap();
    let table = json(out);
    let rows = table["backends"].as_array().expect("rows");
    let ckks = &rows.iter().find(|r| r["backend"] == "ckks").expect("a ckks row")["summary"];
    assert_eq!(ckks["agreement"], 1.0, "{table}");
    let err = ckks["max_abs_logit_error"].as_f64().unwrap();
    assert!(err < 1e-3, "|Δlogit| {err:e}");
}
