//! A tiny CNN trained from scratch on a few hundred CIFAR-10 images, converted to degree-2
//! PolyAct-RN, then fine-tuned: fine-tuning must beat the zero-epoch conversion.

use std::path::Path;

use ndarray::{ArrayD, IxDyn};
use peregrine_data::load_cifar10;
use peregrine_model::ir::*;
use peregrine_model::testkit::{batch_norm, conv, graph, linear, node};
use peregrine_sft::train::{evaluate, FinetuneConfig, Finetuner};
use rand::{rngs::StdRng, SeedableRng};
use rand_distr::{Distribution, Normal};

fn shared() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared"))
}

fn he(r: &mut StdRng, shape: &[usize]) -> ArrayD<f32> {
    let fan_in: usize = shape[1..].iter().product();
    let d = Normal::new(0.0, (2.0 / fan_in as f64).sqrt()).unwrap();
    let n = shape.iter().product();
    ArrayD::from_shape_vec(IxDyn(shape), (0..n).map(|_| d.sample(r) as f32).collect()).unwrap()
}

fn tiny_cnn() -> Model {
    let mut r = StdRng::seed_from_u64(7);
    let mut w = Weights::new();
    w.insert("c1.w".into(), he(&mut r, &[8, 3, 3, 3]));
    w.insert("c2.w".into(), he(&mut r, &[16, 8, 3, 3]));
    w.insert("fc.w".into(), he(&mut r, &[10, 16]));
    w.insert("fc.b".into(), ArrayD::zeros(IxDyn(&[10])));
    for (bn, c) in [("bn1", 8), ("bn2", 16)] {
        w.insert(format!("{bn}.w"), ArrayD::ones(IxDyn(&[c])));
        w.insert(format!("{bn}.b"), ArrayD::zeros(IxDyn(&[c])));
        w.insert(format!("{bn}.m"), ArrayD::zeros(IxDyn(&[c])));
        w.insert(format!("{bn}.v"), ArrayD::ones(IxDyn(&[c])));
    }
    let nodes = vec![
        node("c1", conv(3, 8, 3, 1, 1, 1, 1, "c1.w", None), &[INPUT]),
        node("bn1", batch_norm(8, "bn1"), &["c1"]),
        node("r1", Op::Activation(Activation::Relu), &["bn1"]),
        node("mp", Op::MaxPool(Pool2d { kernel: [2, 2], stride: [2, 2], padding: [0, 0] }), &["r1"]),
        node("c2", conv(8, 16, 3, 2, 1, 1, 1, "c2.w", None), &["mp"]),
        node("bn2", batch_norm(16, "bn2"), &["c2"]),
        node("r2", Op::Activation(Activation::Relu), &["bn2"]),
        node("gap", Op::GlobalAvgPool, &["r2"]),
        node("flat", Op::Flatten, &["gap"]),
        node("fc", linear(16, 10, "fc.w", Some("fc.b")), &["flat"]),
    ];
    let cifar = Preprocess { mean: vec![0.4914, 0.4822, 0.4465], std: vec![0.247, 0.243, 0.261], resize: false };
    let graph = graph("tiny", InputSpec { shape: vec![3, 32, 32], preprocess: cifar }, nodes, "fc");
    Model::new(graph, w).unwrap()
}

#[test]
fn fine_tuning_beats_the_zero_epoch_conversion() {
    let train = load_cifar10(shared().join("data/cifar10/data_batch_1.bin.gz"), Some(800)).unwrap();
    let test = load_cifar10(shared().join("data/cifar10/test_batch.bin.gz"), Some(1000)).unwrap();
    // 1. Train the ReLU network from scratch (the "pretrained" model).
    let relu_cfg =
        FinetuneConfig { degree: None, epochs: 6, batch: 32, lr: 0.05, augment: false, ..FinetuneConfig::default() };
    let mut run = Finetuner::new(&tiny_cnn(), relu_cfg).unwrap();
    for _ in 0..6 {
        run.train_epoch(&train, |_| {}).unwrap();
    }
    let relu = run.export().unwrap();
    let relu_acc = evaluate(&relu, &test).unwrap();
    assert!(relu_acc > 0.2, "the ReLU network did not learn: {relu_acc}");
    // 2. Zero-epoch conversion to degree 2.
    let cfg = FinetuneConfig {
        degree: Some(2),
        epochs: 0,
        batch: 32,
        lr: 0.01,
        calibration_batches: 10,
        augment: false,
        ..FinetuneConfig::default()
    };
    let mut e0 = Finetuner::new(&relu, cfg.clone()).unwrap();
    e0.calibrate(&train).unwrap();
    let e0_acc = evaluate(&e0.export().unwrap(), &test).unwrap();
    // 3. Fine-tuning.
    let mut ft = Finetuner::new(&relu, FinetuneConfig { epochs: 4, ..cfg }).unwrap();
    ft.calibrate(&train).unwrap();
    for _ in 0..4 {
        ft.train_epoch(&train, |_| {}).unwrap();
    }
    let model = ft.export().unwrap();
    let ft_acc = evaluate(&model, &test).unwrap();
    eprintln!(
        "tiny CNN on 1000 test images: ReLU {relu_acc:.3}, degree-2 epochs 0 {e0_acc:.3}, fine-tuned {ft_acc:.3}"
    );
    assert!(ft_acc > e0_acc + 0.02, "fine-tuning did not help: {e0_acc} -> {ft_acc}");
    assert!(model
        .graph()
        .nodes
        .iter()
        .all(|n| !matches!(n.op, Op::Activation(Activation::Relu) | Op::MaxPool(_) | Op::BatchNorm(_))));
}

/// Distinct values of every clusterable weight tensor of `model`.
fn distinct_weights(model: &Model) -> Vec<(String, usize)> {
    peregrine_model::cluster::clusterable_weights(model.graph())
        .into_iter()
        .map(|name| {
            let mut v: Vec<f32> = model.weight(&name).iter().copied().collect();
            v.sort_by(f32::total_cmp);
            v.dedup();
            (name, v.len())
        })
        .collect()
}

#[test]
fn clustering_applied_in_fine_tuning_recovers_what_clustering_alone_loses() {
    let train = load_cifar10(shared().join("data/cifar10/data_batch_1.bin.gz"), Some(800)).unwrap();
    let test = load_cifar10(shared().join("data/cifar10/test_batch.bin.gz"), Some(1000)).unwrap();
    let cfg =
        FinetuneConfig { degree: None, epochs: 6, batch: 32, lr: 0.05, augment: false, ..FinetuneConfig::default() };
    let mut run = Finetuner::new(&tiny_cnn(), cfg.clone()).unwrap();
    for _ in 0..6 {
        run.train_epoch(&train, |_| {}).unwrap();
    }
    let trained = run.export().unwrap(); // batch norms folded
    let acc = evaluate(&trained, &test).unwrap();
    let k = 3;
    let (posthoc, _) = peregrine_model::cluster::cluster_weights(&trained, k).unwrap();
    let posthoc_acc = evaluate(&posthoc, &test).unwrap();

    let clustered_cfg = FinetuneConfig { epochs: 3, lr: 0.01, weight_clusters: Some(k), ..cfg.clone() };
    let mut ft = Finetuner::new(&trained, clustered_cfg).unwrap();
    let mut train_acc = Vec::new();
    for _ in 0..3 {
        train_acc.push(ft.train_epoch(&train, |_| {}).unwrap().accuracy);
    }
    let model = ft.export().unwrap();
    for (name, n) in distinct_weights(&model) {
        assert!(n <= k, "{name} holds {n} distinct values after clustered fine-tuning");
    }
    let ft_acc = evaluate(&model, &test).unwrap();
    eprintln!(
        "tiny CNN, 1000 test images: trained {acc:.3}; {k} values per layer: clustered alone {posthoc_acc:.3}, clustered in fine-tuning {ft_acc:.3} (training accuracy per epoch {train_acc:?})"
    );
    assert!(posthoc_acc < acc - 0.02, "{k} values should cost accuracy without training: {acc} -> {posthoc_acc}");
    assert!(ft_acc > posthoc_acc + 0.02, "fine-tuning with clustering did not recover: {posthoc_acc} -> {ft_acc}");

    // Batch norms (folded afterwards, which would scale the clusters) and k < 2: refused by name.
    let e = Finetuner::new(&tiny_cnn(), FinetuneConfig { weight_clusters: Some(4), ..cfg.clone() }).err().unwrap();
    assert!(e.to_string().contains("batch norm 'bn1'"), "{e}");
    let e = Finetuner::new(&trained, FinetuneConfig { weight_clusters: Some(1), ..cfg }).err().unwrap();
    assert!(e.to_string().contains("at least 2 values"), "{e}");
}

#[test]
fn a_polynomial_model_fine_tuned_further_keeps_its_ranges_unless_asked_to_recalibrate() {
    use peregrine_model::reference::Reference;
    let images = load_cifar10(shared().join("data/cifar10/data_batch_1.bin.gz"), Some(128)).unwrap();
    let model = peregrine_model::testkit::tiny_poly_cnn(3);
    let x = peregrine_data::preprocess::<f32>(&images.pixels[..3 * 32 * 32 * 4], 4, &model.graph().input).unwrap();
    let want = Reference::<f32>::new(&model).run(&x).unwrap();
    let exported_after = |batches: usize| {
        let cfg =
            FinetuneConfig { degree: Some(4), epochs: 0, calibration_batches: batches, ..FinetuneConfig::default() };
        let mut run = Finetuner::new(&model, cfg).unwrap();
        run.calibrate(&images).unwrap();
        let got = Reference::<f32>::new(&run.export().unwrap()).run(&x).unwrap();
        got.iter().zip(want.iter()).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max)
    };
    let kept = exported_after(0);
    let recalibrated = exported_after(2);
    assert!(kept < 1e-5, "0 calibration batches changed the model by {kept}");
    assert!(recalibrated > 1e-3, "recalibrating should move the ranges ({recalibrated})");
}

/// The tiny network with a channel selection after its first activation (what an imported
/// Split becomes): channels 1, 3, 5 and 7 of eight, written as a 1×1 convolution of 0s and 1s.
fn tiny_cnn_with_selection() -> Model {
    let (graph, mut w) = tiny_cnn().into_parts();
    let mut select = ArrayD::zeros(IxDyn(&[4, 8, 1, 1]));
    for o in 0..4 {
        select[[o, 2 * o + 1, 0, 0]] = 1.0;
    }
    w.insert("s.select".into(), select);
    let mut r = StdRng::seed_from_u64(9);
    w.insert("c2.w".into(), he(&mut r, &[16, 4, 3, 3]));
    let mut nodes = graph.nodes;
    let at = nodes.iter().position(|n| n.name == "mp").unwrap() + 1;
    nodes.insert(at, node("s", Op::Conv2d(Conv2d::pointwise(8, 4, 1, 1, "s.select".into())), &["mp"]));
    let c2 = nodes.iter_mut().find(|n| n.name == "c2").unwrap();
    c2.op = conv(4, 16, 3, 2, 1, 1, 1, "c2.w", None);
    c2.inputs = vec!["s".into()];
    Model::new(Graph { nodes, ..graph }, w).unwrap()
}

#[test]
fn fine_tuning_keeps_channel_selections_exact() {
    let model = tiny_cnn_with_selection();
    let Op::Conv2d(select) = &model.graph().nodes.iter().find(|n| n.name == "s").unwrap().op else { unreachable!() };
    assert!(model.is_channel_selection(select));
    let Op::Conv2d(c2) = &model.graph().nodes.iter().find(|n| n.name == "c2").unwrap().op else { unreachable!() };
    assert!(!model.is_channel_selection(c2), "a learned convolution is not a selection");
    let train = load_cifar10(shared().join("data/cifar10/data_batch_1.bin.gz"), Some(128)).unwrap();
    let cfg = FinetuneConfig {
        degree: Some(2),
        epochs: 2,
        batch: 32,
        lr: 0.05,
        calibration_batches: 2,
        augment: false,
        ..FinetuneConfig::default()
    };
    let mut run = Finetuner::new(&model, cfg).unwrap();
    assert!(!run.model.params().contains_key("s.select"), "the selection is not a trainable weight");
    assert!(run.model.params().contains_key("c2.w"));
    run.calibrate(&train).unwrap();
    for _ in 0..2 {
        run.train_epoch(&train, |_| {}).unwrap();
    }
    let tuned = run.export().unwrap();
    assert_eq!(tuned.weight("s.select"), model.weight("s.select"), "the selection changed in training");
    assert_ne!(tuned.weight("c2.w"), model.weight("c2.w"), "the convolution after it did not train");
    // Its linear map stays one coefficient per output.
    let i = tuned.node_index("s").unwrap();
    let map = peregrine_gip::lower::node_map(&tuned, i).unwrap().unwrap();
    assert_eq!(map.entries.len(), 4 * 16 * 16);
}

/// The tiny network converted to degree 2 with calibrated ranges (batch norms folded), and the
/// images it was calibrated on.
fn tiny_poly2() -> (Model, peregrine_data::LabeledImages) {
    let train = load_cifar10(shared().join("data/cifar10/data_batch_1.bin.gz"), Some(128)).unwrap();
    let cfg = FinetuneConfig {
        degree: Some(2),
        epochs: 0,
        batch: 32,
        calibration_batches: 4,
        augment: false,
        ..FinetuneConfig::default()
    };
    let mut run = Finetuner::new(&tiny_cnn(), cfg).unwrap();
    run.calibrate(&train).unwrap();
    (run.export().unwrap(), train)
}

#[test]
fn trained_polynomial_coefficients_get_exact_gradients_and_export_as_they_compute() {
    use candle_core::Tensor;
    use peregrine_model::reference::Reference;
    use peregrine_sft::train::{make_batch, Activations, Pass, TrainModel};
    let (poly, images) = tiny_poly2();
    let mut tm = TrainModel::new(&poly, Activations::Hermite { degree: 2, bound: 3.0 }).unwrap();
    tm.train_coefficients().unwrap();
    let idx: Vec<usize> = (0..16).collect();
    let x = make_batch(&images, &idx, &poly.graph().input, None).unwrap();
    // Move every coefficient off Hermite's, so the check is not at a special point.
    let mut r = StdRng::seed_from_u64(11);
    let jitter = Normal::new(0.0, 0.05).unwrap();
    for name in ["r1.poly_base", "r2.poly_base"] {
        let var = &tm.params()[name];
        let v: Vec<f32> = var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|a| a + jitter.sample(&mut r) as f32)
            .collect();
        var.set(&Tensor::from_vec(v, var.as_tensor().dims(), &candle_core::Device::Cpu).unwrap()).unwrap();
    }
    let mix: Vec<f32> = (0..16 * 10).map(|_| jitter.sample(&mut r) as f32 * 20.0).collect();
    let mix = Tensor::from_vec(mix, (16, 10), &candle_core::Device::Cpu).unwrap();
    let loss = |tm: &mut TrainModel| -> Tensor {
        let out = tm.forward(&x, Pass::Frozen).unwrap();
        (out.logits * &mix).unwrap().sum_all().unwrap()
    };
    let grads = loss(&mut tm).backward().unwrap();
    for (name, entries) in
        [("r1.poly_base", [(0usize, 0usize), (3, 1), (7, 2)]), ("r2.poly_base", [(2, 0), (9, 1), (15, 2)])]
    {
        let var = tm.params()[name].clone();
        let g = grads.get(&var).expect("the coefficients get a gradient").to_vec2::<f32>().unwrap();
        for (ch, k) in entries {
            let base = var.as_tensor().to_vec2::<f32>().unwrap();
            let h = 1e-2f32;
            let mut at = |d: f32| {
                let mut b = base.clone();
                b[ch][k] += d;
                let flat: Vec<f32> = b.concat();
                var.set(&Tensor::from_vec(flat, var.as_tensor().dims(), &candle_core::Device::Cpu).unwrap()).unwrap();
                loss(&mut tm).to_scalar::<f32>().unwrap() as f64
            };
            let numeric = (at(h) - at(-h)) / (2.0 * h as f64);
            at(0.0);
            let analytic = g[ch][k] as f64;
            assert!(
                (numeric - analytic).abs() <= 0.02 * analytic.abs().max(numeric.abs()) + 1e-3,
                "{name}[{ch}][{k}]: autograd {analytic}, central difference {numeric}"
            );
        }
    }
    // The exported model computes what the training graph computes with these coefficients.
    let exported = tm.export("").unwrap();
    assert!(exported.graph().nodes.iter().all(|n| n.name != "r1.poly_base"));
    assert!(!exported.weights().keys().any(|k| k.ends_with(".poly_base")), "a training variable leaked into the model");
    let want = tm.forward(&x, Pass::Frozen).unwrap().logits.to_vec2::<f32>().unwrap();
    let xs = peregrine_data::preprocess::<f32>(&images.pixels[..16 * 3 * 32 * 32], 16, &poly.graph().input).unwrap();
    let got = Reference::<f32>::new(&exported).run(&xs).unwrap();
    let scale = want.iter().flatten().fold(0f32, |m, v| m.max(v.abs()));
    let err = got.iter().zip(want.iter().flatten()).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(err <= 1e-4 * scale, "exported logits differ by {err} (largest {scale})");
}

#[test]
fn fine_tuning_trains_polynomial_coefficients_keeps_their_leading_sign_and_resumes() {
    let (poly, images) = tiny_poly2();
    let dir = std::env::temp_dir().join(format!("peregrine-coeffs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = FinetuneConfig {
        degree: Some(2),
        epochs: 2,
        batch: 32,
        lr: 0.2,
        calibration_batches: 0,
        augment: false,
        train_coefficients: true,
        ..FinetuneConfig::default()
    };
    let mut run = Finetuner::new(&poly, cfg.clone()).unwrap();
    assert!(run.model.params().contains_key("r1.poly_base") && run.model.params().contains_key("r2.poly_base"));
    run.train_epoch(&images, |_| {}).unwrap();
    let ckpt = run.save_checkpoint(&dir.join("c.safetensors")).unwrap();
    let tuned = run.export().unwrap();
    // Base polynomials p_c = stored coefficients / s_c (the stored input scale is 1/s_c).
    let base = |m: &Model, node: &str| -> Vec<[f32; 3]> {
        let a = m.weight(&format!("{node}.poly_coeffs"));
        let inv = m.weight(&format!("{node}.poly_input_scale"));
        (0..inv.len()).map(|c| std::array::from_fn(|k| a[[c, k]] * inv[[c]])).collect()
    };
    let hermite = peregrine_sft::hermite::hermite_polynomial(|x| x.max(0.0), 2);
    let mut moved = 0f32;
    for node in ["r1", "r2"] {
        for (p, q) in base(&tuned, node).iter().zip(base(&poly, node)) {
            moved = moved.max((0..3).map(|k| (p[k] - q[k]).abs()).fold(0.0, f32::max));
            assert!(p[2] >= 0.25 * hermite[2] as f32 - 1e-6, "{node}: leading coefficient {} below the floor", p[2]);
        }
    }
    assert!(moved > 1e-3, "no coefficient trained (largest change {moved})");
    assert!(!tuned.weights().keys().any(|k| k.ends_with(".poly_base")));
    // The checkpoint resumes with the coefficients' momenta.
    let mut resumed = Finetuner::resume(&ckpt).unwrap();
    assert!(resumed.model.params().contains_key("r1.poly_base"));
    resumed.train_epoch(&images, |_| {}).unwrap();
    assert_eq!(resumed.epochs_done(), 2);
    std::fs::remove_dir_all(&dir).ok();
    // Refused where it cannot apply, by name.
    let e = Finetuner::new(&poly, FinetuneConfig { degree: None, ..cfg.clone() }).err().unwrap().to_string();
    assert!(e.contains("coefficients") && e.contains("degree"), "{e}");
    let (graph, weights) = tiny_cnn().into_parts();
    let mut graph = graph;
    graph.nodes.iter_mut().find(|n| n.name == "r1").unwrap().op = Op::Activation(Activation::Silu);
    let silu = Model::new(graph, weights).unwrap();
    let e = Finetuner::new(&silu, cfg).err().unwrap().to_string();
    assert!(e.contains("'r1'") && e.contains("homogeneous"), "{e}");
}
