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
