//! The training graph computes what the reference executor computes on the exported model.

use std::path::Path;

use peregrine_data::{load_cifar10, preprocess};
use peregrine_model::reference::Reference;
use peregrine_sft::train::{make_batch, Activations, Pass, TrainModel};

fn shared() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared"))
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn resnet20_training_graph_matches_reference() {
    let weights = shared().join("models/resnet20-cifar10.safetensors");
    let model = peregrine_model::import::import_cifar_resnet(20, &weights).unwrap();
    let images = load_cifar10(shared().join("data/cifar10/test_batch.bin.gz"), Some(8)).unwrap();
    let idx: Vec<usize> = (0..8).collect();
    for act in [Activations::Keep, Activations::Hermite { degree: 4, bound: 3.0 }] {
        let mut train = TrainModel::new(&model, act).unwrap();
        let x = make_batch(&images, &idx, &model.graph().input, None).unwrap();
        train.forward(&x, Pass::Calibrate).unwrap();
        let out = train.forward(&x, Pass::Frozen).unwrap();
        let got: Vec<f32> = out.logits.flatten_all().unwrap().to_vec1().unwrap();
        let exported = train.export("").unwrap();
        let xr = preprocess::<f32>(&images.pixels, 8, &model.graph().input).unwrap();
        let want = Reference::<f32>::new(&exported).run(&xr).unwrap();
        let want: Vec<f32> = want.iter().copied().collect();
        let d = max_abs_diff(&got, &want);
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(d <= 1e-3 * scale.max(1.0), "{act:?}: max diff {d} (logit scale {scale})");
    }
}

fn odd_input(r: &mut rand::rngs::StdRng, n: usize) -> ndarray::ArrayD<f32> {
    use rand::Rng;
    ndarray::ArrayD::from_shape_vec(
        ndarray::IxDyn(&[n, 3, 19, 23]),
        (0..n * 3 * 19 * 23).map(|_| r.gen_range(-1.5f32..1.5)).collect(),
    )
    .unwrap()
}

/// Calibrates the training graph of `model` on `xr`, runs it frozen, and checks its output
/// against the reference executor on its export; returns the export.
fn training_graph_matches_its_export(
    model: &peregrine_model::Model,
    act: Activations,
    xr: &ndarray::ArrayD<f32>,
) -> peregrine_model::Model {
    let mut train = TrainModel::new(model, act).unwrap();
    let x = peregrine_sft::train::to_channels_last(xr, train.device()).unwrap();
    train.forward(&x, Pass::Calibrate).unwrap();
    let got: Vec<f32> = train.forward(&x, Pass::Frozen).unwrap().logits.flatten_all().unwrap().to_vec1().unwrap();
    let exported = train.export("").unwrap();
    let want: Vec<f32> = Reference::<f32>::new(&exported).run(xr).unwrap().iter().copied().collect();
    let d = max_abs_diff(&got, &want);
    assert!(d < 1e-4, "{act:?}: training graph vs reference on the export differ by {d}");
    exported
}

#[test]
fn every_operation_matches_the_reference_on_odd_shapes() {
    use rand::SeedableRng;
    let model = peregrine_model::testkit::odd_training_model(11);
    let mut r = rand::rngs::StdRng::seed_from_u64(12);
    let xr = odd_input(&mut r, 3);
    for act in [
        Activations::Keep,
        Activations::Hermite { degree: 4, bound: 3.0 },
        Activations::Hermite { degree: 2, bound: 2.0 },
    ] {
        let mut train = TrainModel::new(&model, act).unwrap();
        let x = peregrine_sft::train::to_channels_last(&xr, train.device()).unwrap();
        train.forward(&x, Pass::Calibrate).unwrap();
        let got: Vec<f32> = train.forward(&x, Pass::Frozen).unwrap().logits.flatten_all().unwrap().to_vec1().unwrap();
        let exported = train.export("").unwrap();
        assert!(
            exported.graph().nodes.iter().all(|n| !matches!(n.op, peregrine_model::ir::Op::BatchNorm(_))),
            "batch norms folded on export"
        );
        let want: Vec<f32> = Reference::<f32>::new(&exported).run(&xr).unwrap().iter().copied().collect();
        let d = max_abs_diff(&got, &want);
        assert!(d < 1e-4, "{act:?}: training graph vs reference on the export differ by {d}");
        if act != Activations::Keep {
            let kinds: Vec<&str> = exported.graph().nodes.iter().map(|n| n.op.kind()).collect();
            assert!(
                !kinds.contains(&"max_pool")
                    && !kinds.contains(&"relu")
                    && !kinds.contains(&"silu")
                    && !kinds.contains(&"gelu"),
                "{kinds:?}"
            );
            assert_eq!(kinds.iter().filter(|k| **k == "poly").count(), 3);
        }
    }
}

#[test]
fn mobile_activations_and_products_match_the_reference_on_odd_shapes() {
    use rand::SeedableRng;
    let model = peregrine_model::testkit::odd_mobile_model(5);
    let mut r = rand::rngs::StdRng::seed_from_u64(6);
    let xr = odd_input(&mut r, 3);
    for act in [Activations::Keep, Activations::Hermite { degree: 4, bound: 3.0 }] {
        let mut train = TrainModel::new(&model, act).unwrap();
        let x = peregrine_sft::train::to_channels_last(&xr, train.device()).unwrap();
        train.forward(&x, Pass::Calibrate).unwrap();
        let got: Vec<f32> = train.forward(&x, Pass::Frozen).unwrap().logits.flatten_all().unwrap().to_vec1().unwrap();
        let exported = train.export("").unwrap();
        let want: Vec<f32> = Reference::<f32>::new(&exported).run(&xr).unwrap().iter().copied().collect();
        let d = max_abs_diff(&got, &want);
        assert!(d < 1e-4, "{act:?}: training graph vs reference on the export differ by {d}");
        let kinds: Vec<&str> = exported.graph().nodes.iter().map(|n| n.op.kind()).collect();
        assert_eq!(kinds.iter().filter(|k| **k == "mul").count(), 2, "{kinds:?}");
        if act == Activations::Keep {
            // The exact activations, checked against their definitions through the reference.
            let plain: Vec<f32> = Reference::<f32>::new(&model).run(&xr).unwrap().iter().copied().collect();
            assert!(max_abs_diff(&got, &plain) < 1e-4);
        } else {
            assert_eq!(kinds.iter().filter(|k| **k == "poly").count(), 5, "{kinds:?}");
        }
    }
}

#[test]
fn weight_gradients_match_finite_differences_through_every_operation() {
    use candle_core::Tensor;
    use rand::{Rng, SeedableRng};
    let model = peregrine_model::testkit::odd_training_model(21);
    let mut r = rand::rngs::StdRng::seed_from_u64(22);
    let xr = odd_input(&mut r, 2);
    let mut train = TrainModel::new(&model, Activations::Hermite { degree: 4, bound: 3.0 }).unwrap();
    let x = peregrine_sft::train::to_channels_last(&xr, train.device()).unwrap();
    train.forward(&x, Pass::Calibrate).unwrap();
    let probe =
        Tensor::from_vec((0..14).map(|_| r.gen_range(-1.0f32..1.0)).collect::<Vec<_>>(), (2, 7), train.device())
            .unwrap();
    let loss = |t: &mut TrainModel| -> f64 {
        t.forward(&x, Pass::Frozen).unwrap().logits.mul(&probe).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap()
            as f64
    };
    let out = train.forward(&x, Pass::Frozen).unwrap().logits.mul(&probe).unwrap().sum_all().unwrap();
    let grads = out.backward().unwrap();
    let mut checked = 0;
    for name in ["c1.w", "c1.b", "dw.w", "side.w", "ct.w", "bn1.w", "bn2.b", "fc.w"] {
        let var = train.params()[name].clone();
        let g: Vec<f32> = grads
            .get(&var)
            .unwrap_or_else(|| panic!("no gradient for {name}"))
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let w0: Vec<f32> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        for &i in &[0, w0.len() / 2, w0.len() - 1] {
            let h = 1e-2f32;
            let mut w = w0.clone();
            w[i] += h;
            var.set(&Tensor::from_vec(w.clone(), var.as_tensor().dims(), train.device()).unwrap()).unwrap();
            let up = loss(&mut train);
            w[i] -= 2.0 * h;
            var.set(&Tensor::from_vec(w, var.as_tensor().dims(), train.device()).unwrap()).unwrap();
            let down = loss(&mut train);
            var.set(&Tensor::from_vec(w0.clone(), var.as_tensor().dims(), train.device()).unwrap()).unwrap();
            let fd = (up - down) / (2.0 * h as f64);
            assert!(
                (g[i] as f64 - fd).abs() < 2e-2 * (1.0 + fd.abs()),
                "{name}[{i}]: autodiff {} vs finite difference {fd}",
                g[i]
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 24);
}

#[test]
fn range_penalty_measures_inputs_beyond_the_running_range() {
    use rand::SeedableRng;
    let model = peregrine_model::testkit::odd_training_model(31);
    let mut r = rand::rngs::StdRng::seed_from_u64(32);
    let mut train = TrainModel::new(&model, Activations::Hermite { degree: 2, bound: 3.0 }).unwrap();
    train.track_penalty = true;
    let small = odd_input(&mut r, 2);
    let x = peregrine_sft::train::to_channels_last(&small, train.device()).unwrap();
    train.forward(&x, Pass::Calibrate).unwrap();
    // A batch ten times larger than the calibration data exceeds the running ranges.
    let big = peregrine_sft::train::to_channels_last(&small.mapv(|v| v * 10.0), train.device()).unwrap();
    let p = train.forward(&big, Pass::Train).unwrap().range_penalty.to_scalar::<f32>().unwrap();
    assert!(p > 0.1, "penalty {p} for inputs far beyond the running range");
}

/// A model whose only node is the polynomial activation p(t) = t on `channels` channels: its
/// output is its input, so what a training pass adds to it is the injected noise.
fn identity_poly(channels: usize, shape: [usize; 2]) -> peregrine_model::ir::Model {
    use peregrine_model::ir::*;
    use peregrine_model::testkit::{graph, node, raw_input};
    let mut w = Weights::new();
    let coeffs: Vec<f32> = (0..channels).flat_map(|_| [0.0, 1.0]).collect();
    w.insert("p.c".into(), ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[channels, 2]), coeffs).unwrap());
    let act = Activation::Poly { coeffs: "p.c".into(), input_scale: None, approximates: None };
    let g = graph(
        "identity",
        raw_input([channels, shape[0], shape[1]]),
        vec![node("p", Op::Activation(act), &[INPUT])],
        "p",
    );
    Model::new(g, w).unwrap()
}

#[test]
fn activation_noise_is_added_in_training_passes_only_and_is_reproducible() {
    use peregrine_sft::train::ActivationNoise;
    use rand::SeedableRng;
    let model = identity_poly(3, [19, 23]);
    let mut r = rand::rngs::StdRng::seed_from_u64(5);
    let x = odd_input(&mut r, 2);
    let mut train = TrainModel::new(&model, Activations::Keep).unwrap();
    let xt = peregrine_sft::train::to_channels_last(&x, train.device()).unwrap();
    let clean: Vec<f32> = train.forward(&xt, Pass::Frozen).unwrap().logits.flatten_all().unwrap().to_vec1().unwrap();
    let run = |train: &mut TrainModel, pass: Pass, seed: u64| -> Vec<f32> {
        train.activation_noise = Some(ActivationNoise { std: 0.25, seed });
        train.forward(&xt, pass).unwrap().logits.flatten_all().unwrap().to_vec1().unwrap()
    };
    let a = run(&mut train, Pass::Train, 1);
    let b = run(&mut train, Pass::Train, 1);
    let c = run(&mut train, Pass::Train, 2);
    // Training passes also move the running ranges, which changes s·p(x/s) by rounding only.
    let gap = |u: &[f32], v: &[f32]| u.iter().zip(v).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(gap(&a, &b) < 1e-5, "the same seed must draw the same noise (gap {})", gap(&a, &b));
    assert!(gap(&a, &c) > 0.1, "another seed must draw other noise (gap {})", gap(&a, &c));
    // The added values are N(0, 0.25²): mean near 0, standard deviation near 0.25.
    let d: Vec<f64> = a.iter().zip(&clean).map(|(n, c)| (n - c) as f64).collect();
    let n = d.len() as f64;
    let mean = d.iter().sum::<f64>() / n;
    let std = (d.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n).sqrt();
    assert!(
        d.len() == 2 * 3 * 19 * 23 && mean.abs() < 0.02 && (std - 0.25).abs() < 0.02,
        "mean {mean}, std {std} over {n}"
    );
    // Evaluation and calibration passes see the model as it is.
    for pass in [Pass::Frozen, Pass::Calibrate] {
        let g = gap(&run(&mut train, pass, 1), &clean);
        assert!(g < 1e-5, "{pass:?} pass must not add noise (gap {g})");
    }
}

#[test]
fn asymmetric_padding_trains_the_graph_the_reference_runs() {
    use peregrine_model::ir::{Conv2d, Op, Weights, INPUT};
    use peregrine_model::testkit::{conv, graph, linear, node, raw_input, rng, uniform};
    use rand::SeedableRng;
    let mut r = rng(41);
    let mut w = Weights::new();
    w.insert("c.w".into(), uniform(&mut r, &[5, 3, 3, 3], -0.4, 0.4));
    w.insert("c.b".into(), uniform(&mut r, &[5], -0.1, 0.1));
    w.insert("fc.w".into(), uniform(&mut r, &[4, 5], -0.5, 0.5));
    let Op::Conv2d(c) = conv(3, 5, 3, 2, 0, 1, 1, "c.w", Some("c.b")) else { unreachable!() };
    let c = Conv2d { padding: [0, 2], padding_end: Some([1, 0]), ..c };
    let nodes = vec![
        node("c", Op::Conv2d(c), &[INPUT]),
        node("act", Op::Activation(peregrine_model::ir::Activation::Relu), &["c"]),
        node("gap", Op::GlobalAvgPool, &["act"]),
        node("flat", Op::Flatten, &["gap"]),
        node("fc", linear(5, 4, "fc.w", None), &["flat"]),
    ];
    let model = peregrine_model::Model::new(graph("asym", raw_input([3, 19, 23]), nodes, "fc"), w).unwrap();
    // (19 + 0 + 1 − 3) / 2 + 1 = 9 rows, (23 + 2 + 0 − 3) / 2 + 1 = 12 columns.
    assert_eq!(model.shape(0), &[5, 9, 12]);
    let mut rr = rand::rngs::StdRng::seed_from_u64(42);
    let xr = odd_input(&mut rr, 2);
    for act in [Activations::Keep, Activations::Hermite { degree: 2, bound: 2.0 }] {
        training_graph_matches_its_export(&model, act, &xr);
    }
}
