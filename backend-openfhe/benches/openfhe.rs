//! OpenFHE primitives at production size (N = 2^16, the backend's default 128-bit parameters):
//! mult+relinearise+rescale, rotation, 8 hoisted rotations, and bootstrapping.
//!
//! `cargo bench -p backend-openfhe --bench openfhe` (about 20 min and ~20 GiB with the
//! bootstrap; `PEREGRINE_BENCH_NO_BOOTSTRAP=1` skips it and its keys).
#![cfg_attr(not(openfhe), allow(unused))]

use std::time::Duration;

use backend_openfhe::{OpenFheParams, OpenFheScheme};
use criterion::{criterion_group, criterion_main, Criterion};
use peregrine_backend::{Backend, Client, KeyRequest, Scheme};

fn primitives(c: &mut Criterion) {
    if !backend_openfhe::AVAILABLE {
        eprintln!("SKIPPED: OpenFHE was not found when this was built");
        return;
    }
    let with_bootstrap = std::env::var_os("PEREGRINE_BENCH_NO_BOOTSTRAP").is_none();
    let p = OpenFheParams { bootstrap: with_bootstrap, ..OpenFheParams::default() };
    let steps: Vec<i64> = (0..8).map(|i| 1i64 << i).collect();
    let client = OpenFheScheme::keygen(
        &p,
        &KeyRequest { rotations: steps.iter().copied().collect(), bootstrap: with_bootstrap, ..Default::default() },
    )
    .expect("keys");
    // Keys shared in memory: N = 2^16 key files do not yet fit twice in this machine's memory.
    let server = client.server_in_process().unwrap();
    let caps = client.capabilities();
    let x: Vec<f64> = (0..caps.slots).map(|i| ((i % 97) as f64 - 48.0) / 50.0).collect();
    let a = client.encrypt_values(&x).unwrap();
    let mut g = c.benchmark_group("openfhe_n16");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.bench_function("mul_relin_rescale", |b| b.iter(|| server.rescale(&server.mul(&a, &a).unwrap()).unwrap()));
    g.bench_function("rotate", |b| b.iter(|| server.rotate(&a, 1).unwrap()));
    g.bench_function("rotate_many_8_hoisted", |b| b.iter(|| server.rotate_many(&a, &steps).unwrap()));
    if with_bootstrap {
        let low = server.drop_to_level(&a, 0).unwrap();
        g.measurement_time(Duration::from_secs(60));
        g.bench_function("bootstrap", |b| b.iter(|| server.bootstrap(&low).unwrap()));
    }
    g.finish();
}

criterion_group!(benches, primitives);
criterion_main!(benches);
