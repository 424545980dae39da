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
