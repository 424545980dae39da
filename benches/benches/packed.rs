//! Packed (GIP) execution on the `clear` backend at 2^15 slots: one ResNet-20 stage-1 layer
//! (3×3 conv 16→16 on 32×32 + batch-norm fold + degree-4 activation), planning and executing.
//! Run with `cargo bench -p peregrine-benches --bench packed`.

use criterion::{criterion_group, criterion_main, Criterion};
use ndarray::{ArrayD, IxDyn};
use peregrine_backend::{Client, Scheme};
use backend_clear::{ClearParams, ClearScheme};
use peregrine_model::ir::*;
use peregrine_ops::{compile, encrypt_input, execute, plan};

fn layer_model() -> Model {
    let det = |n: usize, k: f32| -> Vec<f32> { (0..n).map(|i| (((i * 7919) % 101) as f32 / 101.0 - 0.5) * k).collect() };
    let mut w = Weights::new();
    w.insert("c.w".into(), ArrayD::from_shape_vec(IxDyn(&[16, 16, 3, 3]), det(2304, 0.3)).unwrap());
    w.insert("p.c".into(), ArrayD::from_shape_vec(IxDyn(&[16, 5]), det(80, 0.3)).unwrap());
    let nodes = vec![
        Node {
            name: "c".into(),
            op: Op::Conv2d(Conv2d { in_channels: 16, out_channels: 16, kernel: [3, 3], stride: [1, 1], padding: [1, 1], dilation: [1, 1], groups: 1, weight: "c.w".into(), bias: None }),
            inputs: vec![INPUT.into()],
        },
        Node { name: "p".into(), op: Op::Activation(Activation::Poly { coeffs: "p.c".into(), input_scale: None, approximates: None }), inputs: vec!["c".into()] },
    ];
    let graph = Graph {
        version: FORMAT_VERSION,
        name: "layer".into(),
        input: InputSpec { shape: vec![16, 32, 32], preprocess: Preprocess { mean: vec![0.0; 16], std: vec![1.0; 16], resize: false } },
        nodes,
        output: "p".into(),
        classes: vec![],
    };
    Model::new(graph, w).unwrap()
}

fn packed(c: &mut Criterion) {
    let model = layer_model();
    let params = ClearParams { levels: 6, ..ClearParams::default() };
    let caps = ClearScheme::capabilities(&params).unwrap();
    let mut g = c.benchmark_group("packed_clear_2^15");
    g.sample_size(10);
    g.bench_function("compile_and_plan_conv16x32x32_poly4", |b| b.iter(|| plan(compile(&model, caps.slots).unwrap(), &caps).unwrap()));
    let p = plan(compile(&model, caps.slots).unwrap(), &caps).unwrap();
    let client = ClearScheme::keygen(&params, &p.key_request()).unwrap();
    let server = ClearScheme::server(&client.evaluation_keys().unwrap()).unwrap();
    let x: Vec<f64> = (0..16 * 32 * 32).map(|i| ((i % 17) as f64 - 8.0) / 10.0).collect();
    g.bench_function("execute_conv16x32x32_poly4", |b| {
        b.iter(|| execute(&p, &server, encrypt_input(&client, &p, &x).unwrap(), |_, _, _| {}).unwrap())
    });
    g.finish();
}

criterion_group!(benches, packed);
criterion_main!(benches);
