//! Small hand-written models shared by the tests of several crates (feature `test-support`).
//!
//! Weights are deterministic (no random generator), so every crate's tests see the same
//! numbers.

use ndarray::{ArrayD, IxDyn};

use crate::ir::*;

/// `n` deterministic values in `[−k/2, k/2)` (a fixed sawtooth over the primes 7919 and 101).
pub fn sawtooth(n: usize, k: f32) -> Vec<f32> {
    (0..n).map(|i| (((i * 7919) % 101) as f32 / 101.0 - 0.5) * k).collect()
}

/// A node named `name` computing `op` on `inputs`.
pub fn node(name: &str, op: Op, inputs: &[&str]) -> Node {
    Node { name: name.into(), op, inputs: inputs.iter().map(|s| s.to_string()).collect() }
}

/// The input of a `c×h×w` image with mean 0.5 and standard deviation 0.25 per channel.
pub fn input_spec(shape: [usize; 3]) -> InputSpec {
    InputSpec { shape: shape.to_vec(), preprocess: Preprocess { mean: vec![0.5; shape[0]], std: vec![0.25; shape[0]], resize: true } }
}

/// A graph named `name` over an input of `input` shape.
pub fn graph(name: &str, input: [usize; 3], nodes: Vec<Node>, output: &str, classes: usize) -> Graph {
    Graph {
        version: FORMAT_VERSION,
        name: name.into(),
        input: input_spec(input),
        nodes,
        output: output.into(),
        classes: (0..classes).map(|i| format!("c{i}")).collect(),
    }
}

/// A small CIFAR-shaped model with polynomial activations (`width` channels, degree 4):
/// 3×3 convolution with stride 2 → per-channel polynomial → global average pooling → fully
/// connected to 10 classes. Plannable on every CKKS backend in 4 levels; `seed` varies the
/// weights.
pub fn tiny_poly_cnn(seed: u64) -> Model {
    let width = 4;
    let shift = (seed as usize % 97) * 13;
    let det = |n: usize, k: f32| -> Vec<f32> { sawtooth(n + shift, k)[shift..].to_vec() };
    let mut w = Weights::new();
    w.insert("c.w".into(), ArrayD::from_shape_vec(IxDyn(&[width, 3, 3, 3]), det(27 * width, 0.6)).expect("sized"));
    let mut coeffs = det(5 * width, 0.2);
    for c in 0..width {
        coeffs[c * 5 + 1] = 0.5;
    }
    w.insert("p.c".into(), ArrayD::from_shape_vec(IxDyn(&[width, 5]), coeffs).expect("sized"));
    w.insert("fc.w".into(), ArrayD::from_shape_vec(IxDyn(&[10, width]), det(10 * width, 1.0)).expect("sized"));
    w.insert("fc.b".into(), ArrayD::from_shape_vec(IxDyn(&[10]), det(10, 0.1)).expect("sized"));
    let poly = Activation::Poly { coeffs: "p.c".into(), input_scale: None, approximates: None };
    let nodes = vec![
        node("c", Op::Conv2d(Conv2d::square3(3, width, 2, "c.w", None)), &[INPUT]),
        node("p", Op::Activation(poly), &["c"]),
        node("gap", Op::GlobalAvgPool, &["p"]),
        node("flat", Op::Flatten, &["gap"]),
        node("fc", Op::Linear(Linear { in_features: width, out_features: 10, weight: "fc.w".into(), bias: Some("fc.b".into()) }), &["flat"]),
    ];
    Model::new(graph("small", [3, 32, 32], nodes, "fc", 10), w).expect("a valid test model")
}
