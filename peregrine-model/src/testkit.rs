//! Small hand-written models and their building blocks, shared by the tests and benches of
//! every crate (feature `test-support`).
//!
//! Random weights come from [`uniform`] over a seeded [`StdRng`], so a test that builds the
//! same model from the same seed always gets the same numbers.

use ndarray::{ArrayD, IxDyn};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::ir::*;

/// A seeded random generator.
pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// A tensor of `shape` with entries uniform in `[lo, hi)`.
pub fn uniform(r: &mut StdRng, shape: &[usize], lo: f32, hi: f32) -> ArrayD<f32> {
    let n = shape.iter().product();
    ArrayD::from_shape_vec(IxDyn(shape), (0..n).map(|_| r.gen_range(lo..hi)).collect()).expect("sized")
}

/// A tensor of `shape` with entries uniform in `[−1, 1)`.
pub fn rand_tensor(r: &mut StdRng, shape: &[usize]) -> ArrayD<f32> {
    uniform(r, shape, -1.0, 1.0)
}

/// `n` random values in `[−1, 1)`, e.g. one preprocessed input.
pub fn rand_input(r: &mut StdRng, n: usize) -> Vec<f64> {
    (0..n).map(|_| r.gen_range(-1.0..1.0)).collect()
}

/// `n` deterministic values in `[−k/2, k/2)` (a fixed sawtooth over the primes 7919 and 101).
pub fn sawtooth(n: usize, k: f32) -> Vec<f32> {
    (0..n).map(|i| (((i * 7919) % 101) as f32 / 101.0 - 0.5) * k).collect()
}

/// A node named `name` computing `op` on `inputs`.
pub fn node(name: &str, op: Op, inputs: &[&str]) -> Node {
    Node { name: name.into(), op, inputs: inputs.iter().map(|s| s.to_string()).collect() }
}

/// A `c×h×w` input normalised with mean 0.5 and standard deviation 0.25, resized as needed.
pub fn input_spec(shape: [usize; 3]) -> InputSpec {
    InputSpec {
        shape: shape.to_vec(),
        preprocess: Preprocess { mean: vec![0.5; shape[0]], std: vec![0.25; shape[0]], resize: true },
    }
}

/// A `c×h×w` input taken as it is (mean 0, standard deviation 1, not resized).
pub fn raw_input(shape: [usize; 3]) -> InputSpec {
    InputSpec {
        shape: shape.to_vec(),
        preprocess: Preprocess { mean: vec![0.0; shape[0]], std: vec![1.0; shape[0]], resize: false },
    }
}

/// A graph without class names.
pub fn graph(name: &str, input: InputSpec, nodes: Vec<Node>, output: &str) -> Graph {
    Graph { version: FORMAT_VERSION, name: name.into(), input, nodes, output: output.into(), classes: vec![] }
}

/// A square convolution: kernel `k`, stride, padding, dilation, groups.
#[allow(clippy::too_many_arguments)]
pub fn conv(
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    pad: usize,
    dil: usize,
    groups: usize,
    w: &str,
    b: Option<&str>,
) -> Op {
    Op::Conv2d(Conv2d {
        in_channels: cin,
        out_channels: cout,
        kernel: [k, k],
        stride: [stride, stride],
        padding: [pad, pad],
        dilation: [dil, dil],
        groups,
        weight: w.into(),
        bias: b.map(Into::into),
    })
}

/// A square transposed convolution: kernel `k`, stride, padding, output padding `[ph, pw]`,
/// groups (no dilation).
#[allow(clippy::too_many_arguments)]
pub fn conv_transpose(
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    pad: usize,
    output_padding: [usize; 2],
    groups: usize,
    w: &str,
    b: Option<&str>,
) -> Op {
    Op::ConvTranspose2d(ConvTranspose2d {
        in_channels: cin,
        out_channels: cout,
        kernel: [k, k],
        stride: [stride, stride],
        padding: [pad, pad],
        output_padding,
        dilation: [1, 1],
        groups,
        weight: w.into(),
        bias: b.map(Into::into),
    })
}

/// A batch norm over `channels` with the tensors `{p}.w`, `{p}.b`, `{p}.m` (mean), `{p}.v`.
pub fn batch_norm(channels: usize, p: &str) -> Op {
    Op::BatchNorm(BatchNorm::named(channels, ["w", "b", "m", "v"].map(|t| format!("{p}.{t}"))))
}

/// [`batch_norm`] with random statistics inserted in `w`: weight, bias and mean uniform in
/// `[−0.5, 0.5)`, variance in `[0.5, 1.5)`.
pub fn random_batch_norm(r: &mut StdRng, w: &mut Weights, p: &str, channels: usize) -> Op {
    for t in ["w", "b", "m"] {
        w.insert(format!("{p}.{t}"), uniform(r, &[channels], -0.5, 0.5));
    }
    w.insert(format!("{p}.v"), uniform(r, &[channels], -1.0, 1.0).mapv(|v| v.abs() + 0.5));
    batch_norm(channels, p)
}

/// Square average pooling.
pub fn avg_pool(k: usize, stride: usize, pad: usize) -> Op {
    Op::AvgPool(Pool2d { kernel: [k, k], stride: [stride, stride], padding: [pad, pad] })
}

/// A fully connected layer.
pub fn linear(inputs: usize, outputs: usize, w: &str, b: Option<&str>) -> Op {
    Op::Linear(Linear { in_features: inputs, out_features: outputs, weight: w.into(), bias: b.map(Into::into) })
}

/// A per-channel polynomial activation with coefficients `coeffs`, an optional input scale
/// and the activation it approximates.
pub fn poly(coeffs: &str, input_scale: Option<&str>, approximates: Option<Approximated>) -> Op {
    Op::Activation(Activation::Poly { coeffs: coeffs.into(), input_scale: input_scale.map(Into::into), approximates })
}

/// A small model touching every operation of the IR (input 3×13×11, random weights).
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
    // The random stream once drew a 5×14 fully connected weight here; keep drawing it so the
    // weights stay what they were.
    let _ = rand_tensor(&mut r, &[5, 14]);
    w.insert("fc.b".into(), rand_tensor(&mut r, &[5]));
    let convt = conv_transpose(6, 4, 3, 2, 1, [1, 0], 2, "ct.w", Some("ct.b"));
    let nodes = vec![
        node("c1", conv(3, 6, 3, 2, 1, 1, 1, "c1.w", Some("c1.b")), &[INPUT]),
        node("bn", batch_norm(6, "bn"), &["c1"]),
        node("silu", Op::Activation(Activation::Silu), &["bn"]),
        node("dw", conv(6, 6, 3, 1, 2, 2, 6, "dw.w", None), &["silu"]),
        node("poly", poly("p.c", Some("p.s"), None), &["dw"]),
        node("gelu", Op::Activation(Activation::Gelu), &["poly"]),
        node("add", Op::Add, &["gelu", "silu"]),
        node("ct", convt, &["add"]),
        node("mp", Op::MaxPool(Pool2d { kernel: [3, 3], stride: [2, 2], padding: [1, 1] }), &["ct"]),
        node("up", Op::Upsample { factor: 2 }, &["mp"]),
        node("ap", avg_pool(2, 2, 0), &["up"]),
        node("sub", Op::SubsampleChannelPad { stride: 1, pad_before: 1, pad_after: 2 }, &["ap"]),
        node("relu", Op::Activation(Activation::Relu), &["sub"]),
        node("cat", Op::Concat, &["relu", "ap"]),
        node("gap", Op::GlobalAvgPool, &["cat"]),
        node("flat", Op::Flatten, &["gap"]),
        node("fc", linear(11, 5, "fc.w", Some("fc.b")), &["flat"]),
    ];
    // cat has 7 + 4 = 11 channels.
    w.insert("fc.w".into(), rand_tensor(&mut r, &[5, 11]));
    Model::new(graph("test", input_spec([3, 13, 11]), nodes, "fc"), w).expect("a valid test model")
}

/// A small CIFAR-shaped model with polynomial activations (4 channels, degree 4):
/// 3×3 convolution with stride 2 → per-channel polynomial → global average pooling → fully
/// connected to 10 classes. Plannable on every CKKS backend in 4 levels; `seed` varies the
/// weights (seed 0: the CLI tests' model).
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
    let nodes = vec![
        node("c", conv(3, width, 3, 2, 1, 1, 1, "c.w", None), &[INPUT]),
        node("p", poly("p.c", None, None), &["c"]),
        node("gap", Op::GlobalAvgPool, &["p"]),
        node("flat", Op::Flatten, &["gap"]),
        node("fc", linear(width, 10, "fc.w", Some("fc.b")), &["flat"]),
    ];
    let classes = (0..10).map(|i| format!("c{i}")).collect();
    let g = Graph { classes, ..graph("small", input_spec([3, 32, 32]), nodes, "fc") };
    Model::new(g, w).expect("a valid test model")
}
