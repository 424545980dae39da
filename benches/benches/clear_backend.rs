//! `clear` backend primitives at N = 2^16 (32,768 slots): the cost floor of the operator layer.
//! Run with `cargo bench -p peregrine-benches --bench clear_backend`.

use backend_clear::{ClearParams, ClearScheme, NoiseModel};
use criterion::{criterion_group, criterion_main, Criterion};
use peregrine_backend::{Backend, Client, KeyRequest, Scheme};

fn primitives(c: &mut Criterion) {
    for (label, noise) in [("exact", None), ("ckks_noise", Some(NoiseModel::ckks(1 << 16)))] {
        let p = ClearParams { noise, ..ClearParams::default() };
        let client = ClearScheme::keygen(&p, &KeyRequest::rotations([1, 64])).unwrap();
        let server = ClearScheme::server(&client.evaluation_keys().unwrap()).unwrap();
        let x: Vec<f64> = (0..32768).map(|i| ((i % 97) as f64 - 48.0) / 50.0).collect();
        let a = client.encrypt_values(&x).unwrap();
        let mut g = c.benchmark_group(format!("clear_{label}"));
        g.bench_function("mul_relin_rescale", |b| b.iter(|| server.rescale(&server.mul(&a, &a).unwrap()).unwrap()));
        g.bench_function("rotate", |b| b.iter(|| server.rotate(&a, 64).unwrap()));
        g.bench_function("eval_poly_degree4", |b| {
            b.iter(|| server.eval_poly(&a, &[0.1, 0.5, 0.3, 0.0, -0.05]).unwrap())
        });
        g.finish();
    }
}

criterion_group!(benches, primitives);
criterion_main!(benches);
