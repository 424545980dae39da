//! Substituted forward passes (the straight-through estimator of quantisation-aware training):
//! the substituted values go forward exactly, gradients flow through the float graph.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use peregrine_sft::train::{Activations, Pass, Substitute, TrainModel};
use rand::{rngs::StdRng, Rng, SeedableRng};

fn random(r: &mut StdRng, dims: &[usize], scale: f32) -> Tensor {
    let n: usize = dims.iter().product();
    Tensor::from_vec((0..n).map(|_| r.gen_range(-scale..scale)).collect::<Vec<f32>>(), dims, &Device::Cpu).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn substituted_values_go_forward_and_gradients_flow_through_the_float_graph() {
    let mut r = StdRng::seed_from_u64(7);
    // conv1 → bn1 → pool1 → relu1 → flatten → linear, 5 channels, 3 images.
    let model = peregrine_model::import::small_cnn(&[5], 3).unwrap();
    let mut train = TrainModel::new(&model, Activations::Keep).unwrap();
    let x = random(&mut r, &[3, 32, 32, 3], 2.0);
    let g = random(&mut r, &[3, 10], 1.0);
    let grad_of = |train: &mut TrainModel, sub: Option<&Substitute>, name: &str| -> (Vec<f32>, Vec<f32>) {
        let out = match sub {
            Some(s) => train.forward_substituted(&x, Pass::Frozen, s).unwrap(),
            None => train.forward(&x, Pass::Frozen).unwrap(),
        };
        let loss = (&out.logits * &g).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        (values(&out.logits), values(grads.get(&train.params()[name]).unwrap()))
    };
    let (float_logits, float_conv_grad) = grad_of(&mut train, None, "conv1.weight");
    let (_, float_linear_grad) = grad_of(&mut train, None, "linear.weight");

    // relu1 is [3, 8, 8, 5] channels last; its substitute and the logits' are arbitrary.
    let relu = random(&mut r, &[3, 8, 8, 5], 1.5).abs().unwrap();
    let logits = random(&mut r, &[3, 10], 4.0);
    let sub = Substitute { nodes: HashMap::from([("relu1".to_string(), relu)]), logits: logits.clone() };
    let (got_logits, conv_grad) = grad_of(&mut train, Some(&sub), "conv1.weight");
    let (_, linear_grad) = grad_of(&mut train, Some(&sub), "linear.weight");

    let within = |a: &[f32], b: &[f32], tol: f32| a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol * (1.0 + x.abs()));
    // y + (v − y) is v up to one rounding.
    assert!(within(&got_logits, &values(&logits), 1e-6), "the substituted logits go forward");
    assert!(!within(&got_logits, &float_logits, 1e-2));
    // Everything after relu1 is linear, so the gradient reaching conv1 through the float
    // graph is the same whatever relu1's substituted value...
    let close = |a: &[f32], b: &[f32]| within(a, b, 1e-4);
    assert!(close(&conv_grad, &float_conv_grad), "conv1's gradient must be the float graph's");
    // ...while the linear layer's gradient is taken at the substituted activations.
    assert!(!close(&linear_grad, &float_linear_grad), "the linear layer must see the substituted activations");
}

#[test]
fn a_substitute_of_the_wrong_shape_is_refused() {
    let mut r = StdRng::seed_from_u64(8);
    let model = peregrine_model::import::small_cnn(&[5], 3).unwrap();
    let mut train = TrainModel::new(&model, Activations::Keep).unwrap();
    let x = random(&mut r, &[2, 32, 32, 3], 1.0);
    let sub = Substitute {
        nodes: HashMap::from([("relu1".to_string(), random(&mut r, &[2, 8, 8, 4], 1.0))]),
        logits: random(&mut r, &[2, 10], 1.0),
    };
    let e = train.forward_substituted(&x, Pass::Frozen, &sub).err().expect("shape mismatch").to_string();
    assert!(e.contains("substituted values have shape"), "{e}");
}
