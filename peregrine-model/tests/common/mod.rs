//! Helpers shared by the integration tests: deterministic random tensors and tiny graphs.
#![allow(dead_code)]

use ndarray::{ArrayD, IxDyn};
use peregrine_model::ir::*;
use rand::{rngs::StdRng, Rng, SeedableRng};

/// Deterministic random tensor with entries in [-1, 1).
pub fn rand_tensor(rng: &mut StdRng, shape: &[usize]) -> ArrayD<f32> {
    let n = shape.iter().product();
    ArrayD::from_shape_vec(IxDyn(shape), (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect()).unwrap()
}

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

pub fn input_spec(shape: [usize; 3]) -> InputSpec {
    InputSpec {
        shape: shape.to_vec(),
        preprocess: Preprocess { mean: vec![0.5; shape[0]], std: vec![0.25; shape[0]], resize: true },
    }
}

pub fn graph(input: [usize; 3], nodes: Vec<Node>, output: &str) -> Graph {
    Graph { version: FORMAT_VERSION, name: "test".into(), input: input_spec(input), nodes, output: output.into(), classes: vec![] }
}

pub fn node(name: &str, op: Op, inputs: &[&str]) -> Node {
    Node { name: name.into(), op, inputs: inputs.iter().map(|s| s.to_string()).collect() }
}

pub fn conv(cin: usize, cout: usize, k: [usize; 2], stride: [usize; 2], pad: [usize; 2], dil: [usize; 2], groups: usize, w: &str, b: Option<&str>) -> Op {
    Op::Conv2d(Conv2d {
        in_channels: cin,
        out_channels: cout,
        kernel: k,
        stride,
        padding: pad,
        dilation: dil,
        groups,
        weight: w.into(),
        bias: b.map(Into::into),
    })
}

/// A small model touching every operation of the IR (input 3×13×11).
pub fn every_op_model(seed: u64) -> Model {
    let mut r = rng(seed);
    let mut w = Weights::new();
    w.insert("c1.w".into(), rand_tensor(&mut r, &[6, 3, 3, 3]));
    w.insert("c1.b".into(), rand_tensor(&mut r, &[6]));
    for t in ["bn.w", "bn.b", "bn.m"] {
        w.insert(t.into(), rand_tensor(&mut r, &[6]));
    }
    w.insert("bn.v".into(), rand_tensor(&mut r, &[6]).mapv(|v| v.abs() + 0.5));
    w.insert("dw.w".into(), rand_tensor(&mut r, &[6, 1, 3, 3]));
    w.insert("p.c".into(), rand_tensor(&mut r, &[6, 5]));
    w.insert("p.s".into(), rand_tensor(&mut r, &[6]));
    w.insert("ct.w".into(), rand_tensor(&mut r, &[6, 2, 3, 3]));
    w.insert("ct.b".into(), rand_tensor(&mut r, &[4]));
    w.insert("fc.w".into(), rand_tensor(&mut r, &[5, 14]));
    w.insert("fc.b".into(), rand_tensor(&mut r, &[5]));
    let nodes = vec![
        node("c1", conv(3, 6, [3, 3], [2, 2], [1, 1], [1, 1], 1, "c1.w", Some("c1.b")), &[INPUT]),
        node("bn", Op::BatchNorm(BatchNorm { channels: 6, eps: 1e-5, weight: "bn.w".into(), bias: "bn.b".into(), running_mean: "bn.m".into(), running_var: "bn.v".into() }), &["c1"]),
        node("silu", Op::Activation(Activation::Silu), &["bn"]),
        node("dw", conv(6, 6, [3, 3], [1, 1], [2, 2], [2, 2], 6, "dw.w", None), &["silu"]),
        node("poly", Op::Activation(Activation::Poly { coeffs: "p.c".into(), input_scale: Some("p.s".into()), approximates: None }), &["dw"]),
        node("gelu", Op::Activation(Activation::Gelu), &["poly"]),
        node("add", Op::Add, &["gelu", "silu"]),
        node("ct", Op::ConvTranspose2d(ConvTranspose2d { in_channels: 6, out_channels: 4, kernel: [3, 3], stride: [2, 2], padding: [1, 1], output_padding: [1, 0], dilation: [1, 1], groups: 2, weight: "ct.w".into(), bias: Some("ct.b".into()) }), &["add"]),
        node("mp", Op::MaxPool(Pool2d { kernel: [3, 3], stride: [2, 2], padding: [1, 1] }), &["ct"]),
        node("up", Op::Upsample { factor: 2 }, &["mp"]),
        node("ap", Op::AvgPool(Pool2d { kernel: [2, 2], stride: [2, 2], padding: [0, 0] }), &["up"]),
        node("sub", Op::SubsampleChannelPad { stride: 1, pad_before: 1, pad_after: 2 }, &["ap"]),
        node("relu", Op::Activation(Activation::Relu), &["sub"]),
        node("cat", Op::Concat, &["relu", "ap"]),
        node("gap", Op::GlobalAvgPool, &["cat"]),
        node("flat", Op::Flatten, &["gap"]),
        node("fc", Op::Linear(Linear { in_features: 11, out_features: 5, weight: "fc.w".into(), bias: Some("fc.b".into()) }), &["flat"]),
    ];
    // cat has 7 + 4 = 11 channels; fix fc weight to 11 inputs.
    w.insert("fc.w".into(), rand_tensor(&mut r, &[5, 11]));
    Model::new(graph([3, 13, 11], nodes, "fc"), w).expect("valid test model")
}
