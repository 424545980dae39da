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
    Graph {
        version: FORMAT_VERSION,
        name: name.into(),
        input,
        nodes,
        output: output.into(),
        classes: vec![],
        client_activation: None,
    }
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
        padding_end: None,
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
    tiny_poly_cnn_sized(seed, 4, 2)
}

/// [`tiny_poly_cnn`] with `width` channels and convolution stride `stride` (padding 1, so
/// `width · ⌈32 / stride⌉²` activation elements: 1,024 for the default, 128 for width 2 and
/// stride 4, which is what backends paying one bootstrap per element, such as `tfhe`, test with).
pub fn tiny_poly_cnn_sized(seed: u64, width: usize, stride: usize) -> Model {
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
        node("c", conv(3, width, 3, stride, 1, 1, 1, "c.w", None), &[INPUT]),
        node("p", poly("p.c", None, None), &["c"]),
        node("gap", Op::GlobalAvgPool, &["p"]),
        node("flat", Op::Flatten, &["gap"]),
        node("fc", linear(width, 10, "fc.w", Some("fc.b")), &["flat"]),
    ];
    let classes = (0..10).map(|i| format!("c{i}")).collect();
    let g = Graph { classes, ..graph("small", input_spec([3, 32, 32]), nodes, "fc") };
    Model::new(g, w).expect("a valid test model")
}

/// A small residual network with quadratic activations on CIFAR-shaped input: conv s2 →
/// quad → conv + identity shortcut → quad → GAP → linear (10 classes). Both quadratics can
/// share a prime with the linear layer after them (tower reuse): 3 levels instead of 5.
pub fn tiny_square_resnet(seed: u64) -> Model {
    let width = 4;
    let shift = (seed as usize % 97) * 13;
    let det = |n: usize, k: f32| -> Vec<f32> { sawtooth(n + shift, k)[shift..].to_vec() };
    let mut w = Weights::new();
    w.insert("c1.w".into(), ArrayD::from_shape_vec(IxDyn(&[width, 3, 3, 3]), det(27 * width, 0.6)).expect("sized"));
    w.insert(
        "c2.w".into(),
        ArrayD::from_shape_vec(IxDyn(&[width, width, 3, 3]), det(9 * width * width, 0.3)).expect("sized"),
    );
    let quad = |w: &mut Weights, name: &str, lead: f32| {
        let mut c = det(3 * width, 0.2);
        for ch in 0..width {
            c[ch * 3 + 1] = 0.5;
            c[ch * 3 + 2] = lead * (1.0 + 0.2 * ch as f32);
        }
        w.insert(format!("{name}.c"), ArrayD::from_shape_vec(IxDyn(&[width, 3]), c).expect("sized"));
    };
    quad(&mut w, "q1", 0.25);
    quad(&mut w, "q2", -0.15);
    w.insert("fc.w".into(), ArrayD::from_shape_vec(IxDyn(&[10, width]), det(10 * width, 1.0)).expect("sized"));
    w.insert("fc.b".into(), ArrayD::from_shape_vec(IxDyn(&[10]), det(10, 0.1)).expect("sized"));
    let nodes = vec![
        node("c1", conv(3, width, 3, 2, 1, 1, 1, "c1.w", None), &[INPUT]),
        node("q1", poly("q1.c", None, None), &["c1"]),
        node("c2", conv(width, width, 3, 1, 1, 1, 1, "c2.w", None), &["q1"]),
        node("add", Op::Add, &["c2", "q1"]),
        node("q2", poly("q2.c", None, None), &["add"]),
        node("gap", Op::GlobalAvgPool, &["q2"]),
        node("flat", Op::Flatten, &["gap"]),
        node("fc", linear(width, 10, "fc.w", Some("fc.b")), &["flat"]),
    ];
    let classes = (0..10).map(|i| format!("c{i}")).collect();
    let g = Graph { classes, ..graph("square-resnet", input_spec([3, 32, 32]), nodes, "fc") };
    Model::new(g, w).expect("a valid test model")
}

// Models of the CKKS packer's tests (peregrine-ops).

/// A degree-4 polynomial activation over `c` channels with random coefficients (linear term
/// 0.5) and, if `scaled`, a random per-channel input scale; its weights go into `w`.
pub fn random_poly(name: &str, c: usize, w: &mut Weights, r: &mut StdRng, scaled: bool) -> Op {
    let mut coeffs = uniform(r, &[c, 5], -0.3, 0.3);
    for ch in 0..c {
        coeffs[[ch, 1]] = 0.5;
    }
    w.insert(format!("{name}.c"), coeffs);
    let scale = if scaled {
        w.insert(format!("{name}.s"), uniform(r, &[c], -1.0, 1.0).mapv(|v| 0.3 + v.abs() * 0.5));
        Some(format!("{name}.s"))
    } else {
        None
    };
    poly(&format!("{name}.c"), scale.as_deref(), None)
}

/// 3×37×53 → conv s2 → poly → depthwise (dilated) → poly → upsample ×2 → concat with a
/// 1×1 conv of the input at full size → avg pool → BN → transposed conv → option-A shortcut
/// add → GAP → flatten → linear.
pub fn odd_packed_model(seed: u64) -> Model {
    let (mut r, mut w) = (rng(seed), Weights::new());
    w.insert("c1.w".into(), uniform(&mut r, &[4, 3, 3, 3], -0.4, 0.4));
    w.insert("c1.b".into(), uniform(&mut r, &[4], -0.1, 0.1));
    w.insert("dw.w".into(), uniform(&mut r, &[4, 1, 3, 3], -0.4, 0.4));
    w.insert("side.w".into(), uniform(&mut r, &[2, 3, 1, 1], -0.5, 0.5));
    let bn = random_batch_norm(&mut r, &mut w, "bn", 6);
    w.insert("ct.w".into(), uniform(&mut r, &[6, 3, 2, 2], -0.3, 0.3));
    w.insert("fc.w".into(), uniform(&mut r, &[7, 3], -0.5, 0.5));
    w.insert("fc.b".into(), uniform(&mut r, &[7], -0.1, 0.1));
    let p1 = random_poly("p1", 4, &mut w, &mut r, true);
    let p2 = random_poly("p2", 4, &mut w, &mut r, false);
    let p3 = random_poly("p3", 3, &mut w, &mut r, true);
    let nodes = vec![
        node("c1", conv(3, 4, 3, 2, 1, 1, 1, "c1.w", Some("c1.b")), &[INPUT]),
        node("p1", p1, &["c1"]),
        node("dw", conv(4, 4, 3, 1, 2, 2, 4, "dw.w", None), &["p1"]),
        node("p2", p2, &["dw"]),
        node("up", Op::Upsample { factor: 2 }, &["p2"]),
        node("side", conv(3, 2, 1, 1, 0, 1, 1, "side.w", None), &[INPUT]),
        node("sidecrop", avg_pool(1, 1, 0), &["side"]),
        node("cat", Op::Concat, &["up", "sidecrop2"]),
        node("sidecrop2", conv(2, 2, 2, 1, 1, 1, 2, "crop.w", None), &["sidecrop"]),
        node("pool", avg_pool(3, 2, 1), &["cat"]),
        node("bn", bn, &["pool"]),
        node("ct", conv_transpose(6, 3, 2, 2, 0, [0, 0], 1, "ct.w", None), &["bn"]),
        node("p3", p3, &["ct"]),
        node("short", Op::SubsampleChannelPad { stride: 1, pad_before: 0, pad_after: 0 }, &["p3"]),
        node("add", Op::Add, &["p3", "short"]),
        node("gap", Op::GlobalAvgPool, &["add"]),
        node("flat", Op::Flatten, &["gap"]),
        node("fc", linear(3, 7, "fc.w", Some("fc.b")), &["flat"]),
    ];
    // Grow the 37×53 side branch to 38×54 with a 2×2 depthwise convolution, padding 1.
    w.insert("crop.w".into(), uniform(&mut r, &[2, 1, 2, 2], -0.5, 0.5));
    let graph = graph("odd", raw_input([3, 37, 53]), nodes, "fc");
    Model::new(graph, w).expect("valid odd model")
}

// Models of the training graph's tests (peregrine-sft).

/// 3×19×23 through every IR operation: conv (stride 2, bias) + BN + ReLU, dilated depthwise
/// conv + SiLU, max pool, upsample, concat with a grouped side branch, transposed conv
/// (stride 2, output padding) + BN + GELU, option-A shortcut add, GAP, flatten, linear.
pub fn odd_training_model(seed: u64) -> Model {
    let mut r = StdRng::seed_from_u64(seed);
    let mut w = Weights::new();
    w.insert("c1.w".into(), uniform(&mut r, &[6, 3, 3, 3], -0.4, 0.4));
    w.insert("c1.b".into(), uniform(&mut r, &[6], -0.1, 0.1));
    w.insert("dw.w".into(), uniform(&mut r, &[6, 1, 3, 3], -0.4, 0.4));
    w.insert("side.w".into(), uniform(&mut r, &[6, 1, 3, 3], -0.3, 0.3));
    w.insert("ct.w".into(), uniform(&mut r, &[12, 2, 3, 3], -0.2, 0.2));
    w.insert("fc.w".into(), uniform(&mut r, &[7, 6], -0.5, 0.5));
    w.insert("fc.b".into(), uniform(&mut r, &[7], -0.1, 0.1));
    let bn1 = random_batch_norm(&mut r, &mut w, "bn1", 6);
    let bn2 = random_batch_norm(&mut r, &mut w, "bn2", 4);
    let nodes = vec![
        node("c1", conv(3, 6, 3, 2, 1, 1, 1, "c1.w", Some("c1.b")), &[INPUT]), // 6×10×12
        node("bn1", bn1, &["c1"]),
        node("a1", Op::Activation(Activation::Relu), &["bn1"]),
        node("dw", conv(6, 6, 3, 1, 2, 2, 6, "dw.w", None), &["a1"]),
        node("a2", Op::Activation(Activation::Silu), &["dw"]),
        node("mp", Op::MaxPool(Pool2d { kernel: [2, 2], stride: [2, 2], padding: [0, 0] }), &["a2"]), // 6×5×6
        node("up", Op::Upsample { factor: 2 }, &["mp"]),                                              // 6×10×12
        node("side", conv(3, 6, 3, 2, 1, 1, 3, "side.w", None), &[INPUT]), // 6×10×12, groups 3
        node("cat", Op::Concat, &["up", "side"]),                          // 12×10×12
        node("ct", conv_transpose(12, 4, 3, 2, 1, [1, 1], 2, "ct.w", None), &["cat"]), // 4×20×24
        node("bn2", bn2, &["ct"]),
        node("a3", Op::Activation(Activation::Gelu), &["bn2"]),
        node("short", Op::SubsampleChannelPad { stride: 2, pad_before: 1, pad_after: 1 }, &["a3"]), // 6×10×12
        node("pool", avg_pool(3, 2, 1), &["a3"]),                                                   // 4×10×12
        node("pad", Op::SubsampleChannelPad { stride: 1, pad_before: 2, pad_after: 0 }, &["pool"]), // 6×10×12
        node("add", Op::Add, &["short", "pad", "a1"]),
        node("gap", Op::GlobalAvgPool, &["add"]),
        node("flat", Op::Flatten, &["gap"]),
        node("fc", linear(6, 7, "fc.w", Some("fc.b")), &["flat"]),
    ];
    let graph = graph("odd", raw_input([3, 19, 23]), nodes, "fc");
    Model::new(graph, w).expect("valid odd model")
}

/// A small odd-sized model with the activations of mobile networks (hard swish, leaky ReLU,
/// ReLU6 as a clip, hard sigmoid, sigmoid) and both products of two tensors: a
/// squeeze-and-excitation gate `[C, 1, 1]` times its map, and two equally shaped maps.
pub fn odd_mobile_model(seed: u64) -> Model {
    let mut r = StdRng::seed_from_u64(seed);
    let mut w = Weights::new();
    w.insert("c1.w".into(), uniform(&mut r, &[6, 3, 3, 3], -0.5, 0.5));
    w.insert("c1.b".into(), uniform(&mut r, &[6], -0.1, 0.1));
    w.insert("dw.w".into(), uniform(&mut r, &[6, 1, 3, 3], -0.5, 0.5));
    w.insert("se1.w".into(), uniform(&mut r, &[3, 6, 1, 1], -0.8, 0.8));
    w.insert("se1.b".into(), uniform(&mut r, &[3], 0.0, 0.5));
    w.insert("se2.w".into(), uniform(&mut r, &[6, 3, 1, 1], -0.8, 0.8));
    w.insert("se2.b".into(), uniform(&mut r, &[6], -0.2, 0.2));
    w.insert("side.w".into(), uniform(&mut r, &[6, 3, 3, 3], -0.4, 0.4));
    w.insert("fc.w".into(), uniform(&mut r, &[7, 6], -0.5, 0.5));
    w.insert("fc.b".into(), uniform(&mut r, &[7], -0.1, 0.1));
    let nodes = vec![
        node("c1", conv(3, 6, 3, 2, 1, 1, 1, "c1.w", Some("c1.b")), &[INPUT]), // 6×10×12
        node("a1", Op::Activation(Activation::HardSwish), &["c1"]),
        node("dw", conv(6, 6, 3, 1, 1, 1, 6, "dw.w", None), &["a1"]),
        node("a2", Op::Activation(Activation::LeakyRelu { alpha: 0.1 }), &["dw"]),
        node("gap", Op::GlobalAvgPool, &["a2"]), // 6×1×1
        node("se1", conv(6, 3, 1, 1, 0, 1, 1, "se1.w", Some("se1.b")), &["gap"]),
        node("relu6", Op::Activation(Activation::Clip { min: 0.0, max: 6.0 }), &["se1"]),
        node("se2", conv(3, 6, 1, 1, 0, 1, 1, "se2.w", Some("se2.b")), &["relu6"]),
        node("gate", Op::Activation(Activation::HardSigmoid { alpha: 0.2, beta: 0.5 }), &["se2"]),
        node("excite", Op::Mul, &["gate", "a2"]), // gate first: the broadcast works either way
        node("side", conv(3, 6, 3, 2, 1, 1, 1, "side.w", None), &[INPUT]),
        node("a3", Op::Activation(Activation::Sigmoid), &["side"]),
        node("both", Op::Mul, &["excite", "a3"]),
        node("pool", Op::GlobalAvgPool, &["both"]),
        node("flat", Op::Flatten, &["pool"]),
        node("fc", linear(6, 7, "fc.w", Some("fc.b")), &["flat"]),
    ];
    let graph = graph("odd-mobile", raw_input([3, 19, 23]), nodes, "fc");
    Model::new(graph, w).expect("valid odd mobile model")
}

/// A tiny segmenter on a raw 3×13×11 input: conv → hard swish → conv to one channel with
/// logits spread over about ±`spread` → sigmoid, the output (a probability map `[1, 13, 11]`).
pub fn tiny_segmenter(seed: u64, spread: f32) -> Model {
    let mut r = StdRng::seed_from_u64(seed);
    let mut w = Weights::new();
    w.insert("c1.w".into(), uniform(&mut r, &[5, 3, 3, 3], -0.5, 0.5));
    w.insert("c1.b".into(), uniform(&mut r, &[5], -0.1, 0.1));
    w.insert("c2.w".into(), uniform(&mut r, &[1, 5, 3, 3], -spread / 8.0, spread / 8.0));
    w.insert("c2.b".into(), uniform(&mut r, &[1], -0.5, 0.5));
    let nodes = vec![
        node("c1", conv(3, 5, 3, 1, 1, 1, 1, "c1.w", Some("c1.b")), &[INPUT]),
        node("a1", Op::Activation(Activation::HardSwish), &["c1"]),
        node("c2", conv(5, 1, 3, 1, 1, 1, 1, "c2.w", Some("c2.b")), &["a1"]),
        node("prob", Op::Activation(Activation::Sigmoid), &["c2"]),
    ];
    Model::new(graph("tiny-segmenter", raw_input([3, 13, 11]), nodes, "prob"), w).expect("valid tiny segmenter")
}

// Models of the TFHE backend's tests (backend-tfhe).

/// The polynomial `{name}.c` with input scale `{name}.s`.
pub fn ranged_poly(name: &str, approximates: Option<Approximated>) -> Op {
    poly(&format!("{name}.c"), Some(&format!("{name}.s")), approximates)
}

/// Degree-4 ReLU-like polynomial rows `r·p(x/r)` with ranges r in [1, 3).
pub fn ranged_poly_weights(r: &mut StdRng, w: &mut Weights, name: &str, c: usize) {
    let p = [0.1, 0.5, 0.45, 0.0, -0.05];
    let ranges: Vec<f32> = (0..c).map(|_| r.gen_range(1.0..3.0)).collect();
    let coeffs: Vec<f32> = ranges.iter().flat_map(|s| p.iter().map(move |a| s * a)).collect();
    w.insert(format!("{name}.c"), ArrayD::from_shape_vec(IxDyn(&[c, 5]), coeffs).expect("sized"));
    w.insert(
        format!("{name}.s"),
        ArrayD::from_shape_vec(IxDyn(&[c]), ranges.iter().map(|s| 1.0 / s).collect()).expect("sized"),
    );
}

/// A graph named `test` over an input with unequal per-channel normalisation.
pub fn normalised_graph(input: [usize; 3], nodes: Vec<Node>, output: &str) -> Graph {
    let preprocess = Preprocess { mean: vec![0.5, 0.4, 0.45], std: vec![0.25, 0.3, 0.2], resize: true };
    graph("test", InputSpec { shape: input.to_vec(), preprocess }, nodes, output)
}

/// Every operation the TFHE backend supports (lookup-table activations), on odd sizes
/// (input 3×9×7).
pub fn lut_every_op_model(seed: u64) -> Model {
    let mut r = StdRng::seed_from_u64(seed);
    let mut w = Weights::new();
    w.insert("c1.w".into(), uniform(&mut r, &[4, 3, 3, 3], -0.5, 0.5));
    w.insert("c1.b".into(), uniform(&mut r, &[4], -0.2, 0.2));
    for t in ["bn.w", "bn.b", "bn.m"] {
        w.insert(t.into(), uniform(&mut r, &[4], -1.0, 1.0));
    }
    w.insert("bn.v".into(), uniform(&mut r, &[4], 0.5, 1.5));
    w.insert("dw.w".into(), uniform(&mut r, &[4, 1, 3, 3], -0.5, 0.5));
    ranged_poly_weights(&mut r, &mut w, "p", 4);
    w.insert("fc.w".into(), uniform(&mut r, &[5, 10], -1.0, 1.0));
    w.insert("fc.b".into(), uniform(&mut r, &[5], -0.5, 0.5));
    let nodes = vec![
        node("c1", conv(3, 4, 3, 2, 1, 1, 1, "c1.w", Some("c1.b")), &[INPUT]),
        node("bn", batch_norm(4, "bn"), &["c1"]),
        node("silu", Op::Activation(Activation::Silu), &["bn"]),
        node("dw", conv(4, 4, 3, 1, 2, 2, 4, "dw.w", None), &["silu"]),
        node("p", ranged_poly("p", Some(Approximated::Relu)), &["dw"]),
        node("add", Op::Add, &["p", "silu"]),
        node("up", Op::Upsample { factor: 2 }, &["add"]),
        node("ap", avg_pool(3, 2, 1), &["up"]),
        node("sub", Op::SubsampleChannelPad { stride: 1, pad_before: 1, pad_after: 1 }, &["ap"]),
        node("relu", Op::Activation(Activation::Relu), &["sub"]),
        node("gelu", Op::Activation(Activation::Gelu), &["ap"]),
        node("cat", Op::Concat, &["relu", "gelu"]),
        node("gap", Op::GlobalAvgPool, &["cat"]),
        node("flat", Op::Flatten, &["gap"]),
        node("fc", linear(10, 5, "fc.w", Some("fc.b")), &["flat"]),
    ];
    Model::new(normalised_graph([3, 9, 7], nodes, "fc"), w).expect("a valid test model")
}

/// A small polynomial CNN for the TFHE backend (input 3×7×5): conv, poly, average pool, conv, poly, fully connected.
/// 140 + 18 activation elements; the padded convolutions read 5×3 + 3×1 padding positions.
pub fn lut_poly_cnn(seed: u64, approximates: Option<Approximated>) -> Model {
    let mut r = StdRng::seed_from_u64(seed);
    let mut w = Weights::new();
    w.insert("c1.w".into(), uniform(&mut r, &[4, 3, 3, 3], -0.4, 0.4));
    w.insert("c1.b".into(), uniform(&mut r, &[4], -0.2, 0.2));
    ranged_poly_weights(&mut r, &mut w, "p1", 4);
    w.insert("c2.w".into(), uniform(&mut r, &[3, 4, 3, 3], -0.4, 0.4));
    ranged_poly_weights(&mut r, &mut w, "p2", 3);
    w.insert("fc.w".into(), uniform(&mut r, &[4, 18], -1.0, 1.0));
    w.insert("fc.b".into(), uniform(&mut r, &[4], -0.5, 0.5));
    let nodes = vec![
        node("c1", conv(3, 4, 3, 1, 1, 1, 1, "c1.w", Some("c1.b")), &[INPUT]),
        node("p1", ranged_poly("p1", approximates), &["c1"]),
        node("ap", avg_pool(2, 2, 0), &["p1"]),
        node("c2", conv(4, 3, 3, 1, 1, 1, 1, "c2.w", None), &["ap"]),
        node("p2", ranged_poly("p2", approximates), &["c2"]),
        node("flat", Op::Flatten, &["p2"]),
        node("fc", linear(18, 4, "fc.w", Some("fc.b")), &["flat"]),
    ];
    Model::new(normalised_graph([3, 7, 5], nodes, "fc"), w).expect("a valid test model")
}

// Bounded-allocation tests.

/// A global allocator that follows the heap's size, for tests that bound what a loader
/// allocates on hostile input. Install it in a test binary with
/// `#[global_allocator] static A: PeakAllocator = PeakAllocator;` and measure with
/// [`PeakAllocator::peak_growth`] (one measuring test per binary: the counters are global).
pub struct PeakAllocator;

static HEAP_NOW: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static HEAP_PEAK: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl PeakAllocator {
    /// Runs `f` and returns its result with the largest heap growth above the starting level
    /// while it ran, in bytes.
    pub fn peak_growth<R>(f: impl FnOnce() -> R) -> (R, usize) {
        use std::sync::atomic::Ordering::SeqCst;
        let base = HEAP_NOW.load(SeqCst);
        HEAP_PEAK.store(base, SeqCst);
        let r = f();
        (r, HEAP_PEAK.load(SeqCst).saturating_sub(base))
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator; the counters only observe.
unsafe impl std::alloc::GlobalAlloc for PeakAllocator {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        use std::sync::atomic::Ordering::SeqCst;
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        let p = unsafe { std::alloc::System.alloc(layout) };
        if !p.is_null() {
            let now = HEAP_NOW.fetch_add(layout.size(), SeqCst) + layout.size();
            HEAP_PEAK.fetch_max(now, SeqCst);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: the caller's contract for `dealloc` is passed on as is.
        unsafe { std::alloc::System.dealloc(ptr, layout) };
        HEAP_NOW.fetch_sub(layout.size(), std::sync::atomic::Ordering::SeqCst);
    }
}

/// A small ONNX model's bytes: Conv 3→4 (3×3, pad 1) → `last` (an operator with one input) →
/// GlobalAveragePool → Flatten → Gemm 4→3, input `[1, 3, 9, 7]`; node names are `<op>_node`.
pub fn tiny_onnx(last: &str) -> Vec<u8> {
    use crate::onnx::proto::{self, Message};
    let tensor = |name: &str, dims: &[i64], seed: f32| {
        let n: i64 = dims.iter().product();
        let mut t = proto::TensorProto::new();
        t.name = name.into();
        t.dims = dims.to_vec();
        t.data_type = 1;
        t.float_data = (0..n).map(|i| ((i as f32 + seed) * 0.37).sin() * 0.5).collect();
        t
    };
    let node = |op: &str, ins: &[&str], out: &str| {
        let mut n = proto::NodeProto::new();
        n.op_type = op.into();
        n.name = format!("{op}_node");
        n.input = ins.iter().map(|s| s.to_string()).collect();
        n.output = vec![out.into()];
        n
    };
    let mut conv = node("Conv", &["image", "w", "b"], "c");
    let mut pads = proto::AttributeProto::new();
    pads.name = "pads".into();
    pads.type_ = proto::attribute_proto::AttributeType::INTS.into();
    pads.ints = vec![1, 1, 1, 1];
    conv.attribute.push(pads);
    let mut trans = proto::AttributeProto::new();
    trans.name = "transB".into();
    trans.type_ = proto::attribute_proto::AttributeType::INT.into();
    trans.i = 1;
    let mut gemm = node("Gemm", &["f", "fw", "fb"], "logits");
    gemm.attribute.push(trans);
    let mut g = proto::GraphProto::new();
    g.name = "tiny".into();
    g.node =
        vec![conv, node(last, &["c"], "r"), node("GlobalAveragePool", &["r"], "p"), node("Flatten", &["p"], "f"), gemm];
    g.initializer = vec![
        tensor("w", &[4, 3, 3, 3], 1.0),
        tensor("b", &[4], 2.0),
        tensor("fw", &[3, 4], 3.0),
        tensor("fb", &[3], 4.0),
    ];
    let mut input = proto::ValueInfoProto::new();
    input.name = "image".into();
    let mut tt = proto::type_proto::Tensor::new();
    tt.elem_type = 1;
    let mut shape = proto::TensorShapeProto::new();
    for d in [1, 3, 9, 7] {
        let mut dim = proto::tensor_shape_proto::Dimension::new();
        dim.set_dim_value(d);
        shape.dim.push(dim);
    }
    tt.shape = Some(shape).into();
    let mut ty = proto::TypeProto::new();
    ty.set_tensor_type(tt);
    input.type_ = Some(ty).into();
    g.input = vec![input];
    let mut output = proto::ValueInfoProto::new();
    output.name = "logits".into();
    g.output = vec![output];
    let mut m = proto::ModelProto::new();
    m.ir_version = 8;
    let mut opset = proto::OperatorSetIdProto::new();
    opset.version = 17;
    m.opset_import = vec![opset];
    m.graph = Some(g).into();
    m.write_to_bytes().expect("a model serialises")
}
