//! Activations that are not positively homogeneous (SiLU, hard swish, sigmoid, ReLU6, hard
//! sigmoid) get one polynomial per channel range, and a model is distilled from its original
//! on crops of a few photos, without labels.

use ndarray::ArrayD;
use peregrine_data::photos::{photo_crops, CropSettings};
use peregrine_data::{preprocess, LabeledImages};
use peregrine_model::ir::{Activation, Model};
use peregrine_model::reference::Reference;
use peregrine_sft::hermite::{hermite_polynomial, positively_homogeneous, ScaledHermite};
use peregrine_sft::train::{FinetuneConfig, Finetuner, Pass};
use rand::{Rng, SeedableRng};

fn mobile_activations() -> Vec<Activation> {
    vec![
        Activation::Silu,
        Activation::HardSwish,
        Activation::Sigmoid,
        Activation::HardSigmoid { alpha: 0.2, beta: 0.5 },
        Activation::Clip { min: 0.0, max: 6.0 },
    ]
}

#[test]
fn range_tables_match_a_direct_fit_between_and_on_their_grid_points() {
    assert!(positively_homogeneous(&Activation::Relu) && positively_homogeneous(&Activation::LeakyRelu { alpha: 0.1 }));
    for act in mobile_activations() {
        assert!(!positively_homogeneous(&act), "{act:?}");
        let f = |x: f64| act.eval(x).unwrap();
        let table = ScaledHermite::new(f, 4);
        for s in [0.0137, 0.37, 1.0, 4.1, 23.0, 310.0] {
            let want = hermite_polynomial(|t| f(s * t) / s, 4);
            let got = table.polynomial(s);
            let size = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            let err = want.iter().zip(&got).fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
            assert!(err <= 5e-3 * size, "{act:?} at range {s}: table off by {err} (coefficients up to {size})");
        }
    }
}

/// Max |a − b| / max |b|.
fn relative(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f64 {
    let size = b.iter().fold(0.0f32, |m, v| m.max(v.abs())) as f64;
    a.iter().zip(b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs())) as f64 / size
}

/// The odd mobile model (hard swish, leaky ReLU, ReLU6, hard sigmoid, sigmoid, two products)
/// with its first convolution scaled up so that activation ranges are far from 1.
fn wide_mobile_model(seed: u64, gain: f32) -> Model {
    let (graph, mut weights) = peregrine_model::testkit::odd_mobile_model(seed).into_parts();
    for name in ["c1.w", "c1.b", "side.w"] {
        weights.get_mut(name).unwrap().mapv_inplace(|v| v * gain);
    }
    Model::new(graph, weights).unwrap()
}

#[test]
fn zero_epoch_conversion_keeps_non_homogeneous_activations_at_any_range() {
    let mut r = rand::rngs::StdRng::seed_from_u64(3);
    let x = ArrayD::from_shape_fn(ndarray::IxDyn(&[6, 3, 19, 23]), |_| r.gen_range(-1.0f32..1.0));
    for gain in [0.5f32, 4.0] {
        let model = wide_mobile_model(11, gain);
        let want = Reference::<f32>::new(&model).run(&x).unwrap();
        let converted = peregrine_sft::convert::convert(&model, 4, 3.0, &x, 3).unwrap();
        let got = Reference::<f32>::new(&converted).run(&x).unwrap();
        let err = relative(&got, &want);
        eprintln!("gain {gain}: converted model off by {err:.4} of the output");
        // Measured 0.005 (gain 0.5) and 0.03 (gain 4); s·p(x/s) with one polynomial for every
        // range (the ReLU rule, which these activations do not obey) is off by 0.23 at gain 0.5.
        assert!(err < 0.08, "gain {gain}: the converted model is off by {err:.3} of the output");
    }
}

/// Three small photos: colour gradients with a disc and a bar of other colours.
fn write_photos(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    for (k, (w, h)) in [(61u32, 47u32), (40, 52), (73, 33)].into_iter().enumerate() {
        let k = k as u32;
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            let (cx, cy) = (w as i64 / 2 + k as i64 * 3, h as i64 / 3);
            let disc = (x as i64 - cx).pow(2) + (y as i64 - cy).pow(2) < (h as i64 / 4).pow(2);
            let bar = (y + k * 5) % 17 < 4;
            let base = [(x * 255 / w) as u8, (y * 255 / h) as u8, (80 + 40 * k) as u8];
            match (disc, bar) {
                (true, _) => image::Rgb([240, 220 - 60 * k as u8, 30]),
                (_, true) => image::Rgb([20, 40, 200]),
                _ => image::Rgb(base),
            }
        });
        img.save(dir.join(format!("p{k}.png"))).unwrap();
    }
    peregrine_data::image_files(dir).unwrap()
}

/// Relative squared error of `model`'s outputs against `teacher`'s on `images`.
fn output_error(model: &Model, teacher: &ArrayD<f32>, images: &LabeledImages) -> f64 {
    let x = preprocess::<f32>(&images.pixels, images.len(), &model.graph().input).unwrap();
    let y = Reference::<f32>::new(model).run(&x).unwrap();
    let err: f64 = y.iter().zip(teacher).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
    err / teacher.iter().map(|b| (*b as f64).powi(2)).sum::<f64>()
}

#[test]
fn distilling_on_photo_crops_brings_the_polynomial_model_to_the_original() {
    let dir = std::env::temp_dir().join(format!("peregrine-distil-{}", std::process::id()));
    let files = write_photos(&dir);
    let teacher_model = wide_mobile_model(13, 2.0);
    let teacher_path = dir.join("teacher.safetensors");
    peregrine_model::format::save_model(&teacher_model, &teacher_path).unwrap();
    let input = teacher_model.graph().input.clone();
    let train = photo_crops(&files, &input, 96, 1, &CropSettings::default()).unwrap();
    let held = photo_crops(&files, &input, 48, 2, &CropSettings::default()).unwrap();
    let x = preprocess::<f32>(&held.pixels, held.len(), &input).unwrap();
    let targets = Reference::<f32>::new(&teacher_model).run(&x).unwrap();
    let config = FinetuneConfig {
        degree: Some(2),
        epochs: 4,
        batch: 8,
        lr: 0.02,
        augment: false,
        calibration_batches: 4,
        distill: 1.0,
        teacher: Some(teacher_path),
        match_outputs: true,
        feature_weight: 1.0,
        ..FinetuneConfig::default()
    };
    let mut run = Finetuner::new(&teacher_model, config).unwrap();
    assert!(run.model.collect_features, "feature matching collects the activations' outputs");
    run.calibrate(&train).unwrap();
    let before = output_error(&run.export().unwrap(), &targets, &held);
    let mut losses = Vec::new();
    for _ in 0..4 {
        losses.push(run.train_epoch(&train, |_| {}).unwrap().loss);
    }
    let after = output_error(&run.export().unwrap(), &targets, &held);
    eprintln!("matching loss per epoch {losses:?}; held-out output error {before:.4} -> {after:.4}");
    assert!(losses[3] < 0.75 * losses[0], "the matching loss falls: {losses:?}");
    assert!(after < 0.5 * before, "held-out output error {before:.4} before, {after:.4} after distillation");
    // The exported model is what the training graph computes (frozen ranges, refitted polynomials).
    let t = peregrine_sft::train::to_channels_last(&x, run.model.device()).unwrap();
    let frozen: Vec<f32> =
        run.model.forward(&t, Pass::Frozen).unwrap().logits.flatten_all().unwrap().to_vec1().unwrap();
    let exported = Reference::<f32>::new(&run.export().unwrap()).run(&x).unwrap();
    let d = frozen.iter().zip(exported.iter()).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(d < 1e-4, "training graph and export differ by {d}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn output_matching_keeps_batch_norms_on_their_running_statistics() {
    // conv → hard swish → batch norm (an importer's per-channel Mul after an activation, which
    // no convolution can absorb) → pool → linear. The student starts as the teacher itself:
    // with the statistics frozen the matching loss is 0; batch statistics of 4 crops would
    // normalise every channel of the pooled map and make it large.
    use peregrine_model::ir::{Op, Weights, INPUT};
    use peregrine_model::testkit::{conv, graph, linear, node, random_batch_norm, raw_input, uniform};
    let mut r = rand::rngs::StdRng::seed_from_u64(17);
    let mut w = Weights::new();
    w.insert("c.w".into(), uniform(&mut r, &[5, 3, 3, 3], -0.5, 0.5));
    w.insert("fc.w".into(), uniform(&mut r, &[4, 5], -0.5, 0.5));
    let bn = random_batch_norm(&mut r, &mut w, "bn", 5);
    let nodes = vec![
        node("c", conv(3, 5, 3, 2, 1, 1, 1, "c.w", None), &[INPUT]),
        node("act", Op::Activation(Activation::HardSwish), &["c"]),
        node("bn", bn, &["act"]),
        node("gap", Op::GlobalAvgPool, &["bn"]),
        node("flat", Op::Flatten, &["gap"]),
        node("fc", linear(5, 4, "fc.w", None), &["flat"]),
    ];
    let model = Model::new(graph("bn-after", raw_input([3, 13, 11]), nodes, "fc"), w).unwrap();
    let dir = std::env::temp_dir().join(format!("peregrine-distil-bn-{}", std::process::id()));
    let files = write_photos(&dir);
    let teacher = dir.join("teacher.safetensors");
    peregrine_model::format::save_model(&model, &teacher).unwrap();
    let crops = photo_crops(&files, &model.graph().input, 8, 3, &CropSettings::default()).unwrap();
    let config = FinetuneConfig {
        degree: None,
        batch: 4,
        lr: 0.0,
        augment: false,
        distill: 1.0,
        teacher: Some(teacher),
        match_outputs: true,
        ..FinetuneConfig::default()
    };
    let mut run = Finetuner::new(&model, config).unwrap();
    let loss = run.train_epoch(&crops, |_| {}).unwrap().loss;
    assert!(loss < 1e-10, "the student is the teacher, yet the matching loss is {loss}");
    run.model.freeze_batch_norms = false;
    let loss = run.train_epoch(&crops, |_| {}).unwrap().loss;
    assert!(loss > 1e-3, "batch statistics should change the outputs (loss {loss})");
    std::fs::remove_dir_all(&dir).ok();
}

/// Pixels on the same side of `threshold`, and the intersection over union of the two masks.
fn mask_agreement(got: &[f32], want: &[f32], threshold: f32) -> (f64, f64) {
    let (mut same, mut both, mut either) = (0usize, 0usize, 0usize);
    for (a, b) in got.iter().zip(want) {
        let (a, b) = (*a > threshold, *b > threshold);
        same += (a == b) as usize;
        both += (a && b) as usize;
        either += (a || b) as usize;
    }
    (same as f64 / want.len() as f64, both as f64 / either.max(1) as f64)
}

#[test]
fn a_segmenters_final_sigmoid_is_left_exact_to_the_client() {
    // Logits spread over ±40: a degree-4 polynomial on that range is nearly a straight line
    // through 0.5, so a mask read at 0.3 lands far from the original's.
    use peregrine_model::ir::{Op, INPUT};
    use peregrine_model::testkit::{avg_pool, node, tiny_segmenter};
    let model = tiny_segmenter(21, 40.0);
    // The same network with an identity pooling after the sigmoid, which keeps it in the
    // program: what conversion did before the client took the sigmoid.
    let (mut g, w) = model.clone().into_parts();
    g.nodes.push(node("keep", avg_pool(1, 1, 0), &["prob"]));
    g.output = "keep".into();
    let kept = Model::new(g, w).unwrap();
    assert!(kept.graph().nodes.iter().any(|n| n.inputs.iter().any(|i| i == INPUT)));
    let mut r = rand::rngs::StdRng::seed_from_u64(4);
    let x = ArrayD::from_shape_fn(ndarray::IxDyn(&[12, 3, 13, 11]), |_| r.gen_range(-1.0f32..1.0));
    let want: Vec<f32> = Reference::<f32>::new(&model).run(&x).unwrap().iter().copied().collect();
    let converted = peregrine_sft::convert::convert(&model, 4, 3.0, &x, 4).unwrap();
    assert_eq!(converted.client_activation(), Some(&Activation::Sigmoid));
    assert!(!converted
        .graph()
        .nodes
        .iter()
        .any(|n| matches!(n.op, Op::Activation(Activation::Poly { .. })) && n.name == "prob"));
    let raw: Vec<f32> = Reference::<f32>::new(&converted).run(&x).unwrap().iter().copied().collect();
    let client = mask_agreement(&converted.finish_output(&raw), &want, 0.3);
    let polynomial = peregrine_sft::convert::convert(&kept, 4, 3.0, &x, 4).unwrap();
    assert!(polynomial.client_activation().is_none(), "the pooled sigmoid stays in the program");
    let p: Vec<f32> = Reference::<f32>::new(&polynomial).run(&x).unwrap().iter().copied().collect();
    let server = mask_agreement(&p, &want, 0.3);
    eprintln!("mask at 0.3 (pixels agreeing, IoU): sigmoid on the client {client:.3?}, as a polynomial {server:.3?}");
    // Measured: (0.998, 0.996) against (0.860, 0.752).
    assert!(client.1 > 0.95 && client.0 > 0.98, "client sigmoid: {client:?}");
    assert!(server.1 < client.1 - 0.15, "the polynomial sigmoid should lose the mask: {server:?} vs {client:?}");

    // Distillation trains through the exact sigmoid, and exports the model it trained.
    let dir = std::env::temp_dir().join(format!("peregrine-distil-seg-{}", std::process::id()));
    let files = write_photos(&dir);
    let teacher = dir.join("teacher.safetensors");
    peregrine_model::format::save_model(&model, &teacher).unwrap();
    let crops = photo_crops(&files, &model.graph().input, 32, 5, &CropSettings::default()).unwrap();
    let config = FinetuneConfig {
        degree: Some(4),
        epochs: 1,
        batch: 8,
        lr: 0.002,
        augment: false,
        calibration_batches: 2,
        distill: 1.0,
        teacher: Some(teacher),
        match_outputs: true,
        ..FinetuneConfig::default()
    };
    let mut run = Finetuner::new(&model, config).unwrap();
    run.calibrate(&crops).unwrap();
    run.train_epoch(&crops, |_| {}).unwrap();
    let exported = run.export().unwrap();
    assert_eq!(exported.client_activation(), Some(&Activation::Sigmoid));
    let t = peregrine_sft::train::to_channels_last(&x, run.model.device()).unwrap();
    let frozen: Vec<f32> =
        run.model.forward(&t, Pass::Frozen).unwrap().logits.flatten_all().unwrap().to_vec1().unwrap();
    let raw: Vec<f32> = Reference::<f32>::new(&exported).run(&x).unwrap().iter().copied().collect();
    let finished = exported.finish_output(&raw);
    let d = frozen.iter().zip(&finished).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(d < 1e-4, "the training graph (sigmoid applied) and the export + client sigmoid differ by {d}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn probability_matching_is_zero_at_the_teacher_and_its_gradient_does_not_saturate() {
    use candle_core::{Device, Tensor, Var};
    use peregrine_sft::train::{matching_loss, probability_matching_loss};
    let d = Device::Cpu;
    let t = Tensor::new(&[[0.9f32, 0.02, 0.5, 0.3, 0.999]], &d).unwrap();
    let logit: Vec<f32> = [0.9f32, 0.02, 0.5, 0.3, 0.999].iter().map(|p| (p / (1.0 - p)).ln()).collect();
    let at_teacher = Tensor::from_vec(logit, (1, 5), &d).unwrap();
    let l = probability_matching_loss(&at_teacher, &t).unwrap().to_scalar::<f32>().unwrap();
    assert!(l.abs() < 1e-5, "a student equal to the teacher scores {l}");
    // Sure teacher, student at ½ everywhere: ln 2.
    let sure = Tensor::new(&[[1f32, 0.0, 1.0, 0.0]], &d).unwrap();
    let half = Tensor::zeros((1, 4), candle_core::DType::F32, &d).unwrap();
    let l = probability_matching_loss(&half, &sure).unwrap().to_scalar::<f32>().unwrap();
    assert!((l - std::f32::consts::LN_2).abs() < 1e-5, "{l}");
    // A text pixel the student puts far on the wrong side (logit −12, teacher 1): the gradient
    // of this loss is (σ(s) − t)/n ≈ −1/n; the squared error on σ(s) gives almost nothing.
    let s = Var::new(&[[-12f32]], &d).unwrap();
    let one = Tensor::new(&[[1f32]], &d).unwrap();
    let g = probability_matching_loss(s.as_tensor(), &one).unwrap().backward().unwrap();
    let ours = g.get(&s).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()[0];
    let p = candle_nn::ops::sigmoid(s.as_tensor()).unwrap();
    let g = matching_loss(&p, &one).unwrap().backward().unwrap();
    let squared = g.get(&s).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()[0];
    assert!((ours + 1.0).abs() < 1e-3, "gradient {ours}, want σ(−12) − 1 ≈ −1");
    assert!(squared.abs() < 1e-4, "the squared error's gradient at a saturated pixel is {squared}");
}

/// Heads `[B, k·(64 + classes)·cells]` filled from `f(batch, head, channel, cell)`.
fn heads(
    b: usize,
    k: usize,
    classes: usize,
    cells: usize,
    f: impl Fn(usize, usize, usize, usize) -> f32,
) -> candle_core::Tensor {
    let per = 64 + classes;
    let mut v = Vec::with_capacity(b * k * per * cells);
    for i in 0..b {
        for h in 0..k {
            for c in 0..per {
                for p in 0..cells {
                    v.push(f(i, h, c, p));
                }
            }
        }
    }
    candle_core::Tensor::from_vec(v, (b, k * per * cells), &candle_core::Device::Cpu).unwrap()
}

#[test]
fn detector_heads_are_matched_as_the_client_decodes_them() {
    use candle_core::Var;
    use peregrine_sft::train::{detection_matching_loss, matching_loss};
    let (b, k, classes, [h, w]) = (2, 2, 3, [5usize, 7usize]);
    let cells = h * w;
    let shape = [k * (64 + classes), h, w];
    // The teacher: background everywhere (class logits −14), one object of class 1 at cell 9
    // of head 0 in image 1 (logit 3), box bins varying.
    let object = |i: usize, hd: usize, p: usize| i == 1 && hd == 0 && p == 9;
    let teacher_at = |i: usize, hd: usize, c: usize, p: usize| {
        if c >= 64 {
            if object(i, hd, p) && c == 65 {
                3.0
            } else {
                -14.0
            }
        } else {
            ((c * 7 + p * 3 + i) % 11) as f32 * 0.4 - 2.0
        }
    };
    let teacher = heads(b, k, classes, cells, teacher_at);
    let loss = |s: &candle_core::Tensor| {
        detection_matching_loss(s, &teacher, &shape, classes).unwrap().to_scalar::<f32>().unwrap()
    };
    assert!(loss(&teacher).abs() < 1e-5, "a student equal to the teacher scores {}", loss(&teacher));

    // Box bins changed where the teacher sees nothing: (almost) free. At the object: not.
    let background_boxes = heads(b, k, classes, cells, |i, hd, c, p| {
        if c < 64 && !object(i, hd, p) {
            teacher_at(i, hd, c, p) + if c % 3 == 0 { 3.0 } else { -1.0 }
        } else {
            teacher_at(i, hd, c, p)
        }
    });
    let object_box = heads(b, k, classes, cells, |i, hd, c, p| {
        if c < 64 && object(i, hd, p) {
            teacher_at(i, hd, c, p) + if c % 3 == 0 { 3.0 } else { -1.0 }
        } else {
            teacher_at(i, hd, c, p)
        }
    });
    let (lb, lo) = (loss(&background_boxes), loss(&object_box));
    eprintln!("boxes changed on {} background cells: {lb:.2e}; on the object's cell: {lo:.3}", b * k * cells - 1);
    assert!(lo > 0.1 && lb < lo / 50.0, "background boxes {lb}, the object's box {lo}");

    // A missed object (student logit −12 at the teacher's 3) weighs like a whole image of
    // spurious ones would, not 1/(cells·classes) of the mean; the relative squared error on raw
    // heads barely sees it: the teacher's −14 background dominates its energy.
    let missed = |i: usize, hd: usize, c: usize, p: usize| {
        if object(i, hd, p) && c == 65 {
            -12.0
        } else {
            teacher_at(i, hd, c, p)
        }
    };
    let s = Var::from_tensor(&heads(b, k, classes, cells, missed)).unwrap();
    let (image, head) = (1, 0);
    let at = ((image * k + head) * (64 + classes) + 65) * cells + 9; // class 1 at cell 9
    let grad_at = |g: &candle_core::backprop::GradStore| -> f32 {
        g.get(&s).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()[at]
    };
    let l = detection_matching_loss(s.as_tensor(), &teacher, &shape, classes).unwrap();
    let ours = grad_at(&l.backward().unwrap());
    let squared = grad_at(&matching_loss(s.as_tensor(), &teacher).unwrap().backward().unwrap());
    eprintln!(
        "missed object: loss {:.3}, its gradient {ours:.3} (relative squared error's {squared:.2e})",
        l.to_scalar::<f32>().unwrap()
    );
    // σ(3) = 0.953 of the teacher, σ(−12) ≈ 0: gradient (σ(s) − p)/(Σp + B) ≈ −0.953/(0.953 + 2).
    assert!((ours + 0.953 / 2.953).abs() < 0.01, "gradient {ours}");
    assert!(squared.abs() < ours.abs() / 100.0, "squared error gradient {squared} vs {ours}");

    // A spurious detection (student +3 where the teacher says −14) costs about as much.
    let spurious =
        heads(
            b,
            k,
            classes,
            cells,
            |i, hd, c, p| {
                if i == 0 && hd == 1 && p == 4 && c == 66 {
                    3.0
                } else {
                    teacher_at(i, hd, c, p)
                }
            },
        );
    assert!(loss(&spurious) > 0.5, "a spurious box scores {}", loss(&spurious));

    // Outputs that are not YOLO heads with this many classes are refused by name.
    let e = detection_matching_loss(&teacher, &teacher, &[k * (64 + classes) + 1, h, w], classes).unwrap_err();
    assert!(e.to_string().contains("YOLO heads with 3 classes"), "{e}");
}

#[test]
fn a_detector_distils_with_head_matching_and_other_outputs_are_refused() {
    use peregrine_model::ir::{Op, INPUT};
    use peregrine_model::testkit::{conv, graph, node, raw_input, uniform};
    // A tiny detector: one head of 2 classes over a 13×11 grid ([66, 13, 11]), its class
    // logits mostly negative as a trained detector's background is; wide activation inputs,
    // so that the degree-2 conversion starts far from it.
    let mut r = rand::rngs::StdRng::seed_from_u64(31);
    let mut w = peregrine_model::ir::Weights::new();
    w.insert("c1.w".into(), uniform(&mut r, &[6, 3, 3, 3], -2.0, 2.0));
    w.insert("c1.b".into(), uniform(&mut r, &[6], -0.1, 0.1));
    w.insert("c2.w".into(), uniform(&mut r, &[66, 6, 3, 3], -0.4, 0.4));
    let mut bias = uniform(&mut r, &[66], -0.2, 0.2);
    bias[[64]] = -1.5;
    bias[[65]] = -1.0;
    w.insert("c2.b".into(), bias);
    let nodes = vec![
        node("c1", conv(3, 6, 3, 1, 1, 1, 1, "c1.w", Some("c1.b")), &[INPUT]),
        node("a1", Op::Activation(Activation::Silu), &["c1"]),
        node("c2", conv(6, 66, 3, 1, 1, 1, 1, "c2.w", Some("c2.b")), &["a1"]),
    ];
    let model = Model::new(graph("tiny-detector", raw_input([3, 13, 11]), nodes, "c2"), w).unwrap();
    let dir = std::env::temp_dir().join(format!("peregrine-distil-det-{}", std::process::id()));
    let files = write_photos(&dir);
    let teacher = dir.join("teacher.safetensors");
    peregrine_model::format::save_model(&model, &teacher).unwrap();
    let crops = photo_crops(&files, &model.graph().input, 48, 5, &CropSettings::default()).unwrap();
    let config = |classes: usize| FinetuneConfig {
        degree: Some(2),
        epochs: 4,
        batch: 8,
        lr: 0.03,
        augment: false,
        calibration_batches: 2,
        distill: 1.0,
        teacher: Some(teacher.clone()),
        match_outputs: true,
        clip_grad_norm: 1.0,
        yolo_classes: Some(classes),
        ..FinetuneConfig::default()
    };
    let e = Finetuner::new(&model, config(5)).err().expect("66 channels are not k·(64 + 5)");
    assert!(e.to_string().contains("YOLO heads with 5 classes") && e.to_string().contains("[66, 13, 11]"), "{e}");
    let e = Finetuner::new(&model, FinetuneConfig { match_outputs: false, distill: 0.0, ..config(2) }).err().unwrap();
    assert!(e.to_string().contains("output matching"), "{e}");

    let mut run = Finetuner::new(&model, config(2)).unwrap();
    run.calibrate(&crops).unwrap();
    let mut losses = Vec::new();
    for _ in 0..4 {
        let report = run.train_epoch(&crops, |_| {}).unwrap();
        losses.push(report.loss);
    }
    eprintln!("detector head matching, loss per epoch: {losses:.4?}");
    assert!(losses.iter().all(|l| l.is_finite()));
    assert!(losses[3] < losses[0] * 0.8, "the head-matching loss should fall: {losses:?}");
    std::fs::remove_dir_all(&dir).ok();
}
