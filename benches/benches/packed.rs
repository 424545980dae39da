//! Packed (GIP) execution on the `clear` backend at 2^15 slots: one ResNet-20 stage-1 layer
//! (3×3 conv 16→16 on 32×32 + batch-norm fold + degree-4 activation), planning and executing.
//! Run with `cargo bench -p peregrine-benches --bench packed`.

use backend_clear::{ClearParams, ClearScheme};
use criterion::{criterion_group, criterion_main, Criterion};
use ndarray::{ArrayD, IxDyn};
use peregrine_backend::{Client, Scheme};
use peregrine_model::ir::*;
use peregrine_model::testkit::{conv, graph, node, poly, raw_input, sawtooth};
use peregrine_ops::{compile, encrypt_input, execute, plan};

fn layer_model() -> Model {
    let tensor = |shape: &[usize], n: usize| ArrayD::from_shape_vec(IxDyn(shape), sawtooth(n, 0.3)).expect("sized");
    let mut w = Weights::new();
    w.insert("c.w".into(), tensor(&[16, 16, 3, 3], 2304));
    w.insert("p.c".into(), tensor(&[16, 5], 80));
    let nodes =
        vec![node("c", conv(16, 16, 3, 1, 1, 1, 1, "c.w", None), &[INPUT]), node("p", poly("p.c", None, None), &["c"])];
    Model::new(graph("layer", raw_input([16, 32, 32]), nodes, "p"), w).expect("a valid model")
}

fn packed(c: &mut Criterion) {
    let model = layer_model();
    let params = ClearParams { levels: 6, ..ClearParams::default() };
    let caps = ClearScheme::capabilities(&params).unwrap();
    let mut g = c.benchmark_group("packed_clear_2^15");
    g.sample_size(10);
    g.bench_function("compile_and_plan_conv16x32x32_poly4", |b| {
        b.iter(|| plan(compile(&model, caps.slots).unwrap(), &caps).unwrap())
    });
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
