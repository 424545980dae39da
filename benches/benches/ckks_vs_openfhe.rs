//! `ckks` against OpenFHE in one run, on the same parameter shape (N = 2^16, 128-bit):
//! mult + relin + rescale, rotation, 8 hoisted rotations, ct×pt (+ rescale), and ckks's NTT.
//!
//! `CKKS_TOWERS=20 RAYON_NUM_THREADS=1 cargo bench -p peregrine-benches --bench ckks_vs_openfhe`
//! (also `CKKS_TOWERS=40`). The tower count sets the chain: q0 of 60 bits and towers − 1 primes
//! at the largest secure scale ≤ 2^40 (`ckks` sizes it; OpenFHE gets the same levels, scale and
//! digit count). OpenFHE is skipped, saying so, when it was not found at build time.

use std::time::Duration;

use backend_ckks::{CkksParams, CkksScheme};
use backend_openfhe::{OpenFheParams, OpenFheScheme};
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion};
use peregrine_backend::{Backend, Client, KeyRequest, Scheme};

fn ops<S: Scheme>(
    g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    client: &S::Client,
    server: &S::Server,
) where
    S::Client: Client<Backend = S::Server>,
{
    let caps = client.capabilities();
    let x: Vec<f64> = (0..caps.slots).map(|i| ((i % 97) as f64 - 48.0) / 50.0).collect();
    let a = server
        .deserialize_ciphertext(&client.serialize_ciphertext(&client.encrypt_values(&x).unwrap()).unwrap())
        .unwrap();
    let top = server.level(&a);
    let pt = server.encode(&x, top, server.modulus(top)).unwrap();
    let steps: Vec<i64> = (1..=8).collect();
    g.bench_function(format!("{name}/mul_relin_rescale"), |b| {
        b.iter(|| server.rescale(&server.mul(&a, &a).unwrap()).unwrap())
    });
    g.bench_function(format!("{name}/rotate"), |b| b.iter(|| server.rotate(&a, 1).unwrap()));
    g.bench_function(format!("{name}/rotate_many_8_hoisted"), |b| b.iter(|| server.rotate_many(&a, &steps).unwrap()));
    g.bench_function(format!("{name}/ct_x_pt"), |b| b.iter(|| server.mul_plain(&a, &pt).unwrap()));
    g.bench_function(format!("{name}/ct_x_pt_rescale"), |b| {
        b.iter(|| server.rescale(&server.mul_plain(&a, &pt).unwrap()).unwrap())
    });
}

fn compare(c: &mut Criterion) {
    let towers: usize = std::env::var("CKKS_TOWERS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let params = CkksScheme::sized_for_levels(&CkksParams::default(), towers - 1).expect("a secure set exists");
    let ctx = backend_ckks::backend::context(&params).unwrap();
    let request = KeyRequest::rotations(1..=8);
    let mut g = c.benchmark_group(format!("n16_{towers}_towers"));
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    let mut limb: Vec<u64> = (0..ctx.n() as u64).collect();
    g.bench_function("ckks/ntt_one_limb", |b| b.iter(|| ctx.ring.ntt(&mut limb, 1)));
    let client = CkksScheme::keygen(&params, &request).unwrap();
    let server = client.local_server().unwrap().unwrap();
    ops::<CkksScheme>(&mut g, "ckks", &client, &server);
    drop((client, server));
    // Without an OpenFHE install the backend's types are uninhabited: the code after keygen
    // is unreachable in that build.
    #[allow(unreachable_code, unused_variables)]
    if backend_openfhe::AVAILABLE {
        let p = OpenFheParams {
            levels: params.levels,
            log_scale: params.log_scale,
            first_modulus_bits: params.first_modulus_bits,
            bootstrap: false,
            large_digits: ctx.chain.digits as u32,
            secret: backend_openfhe::params::SecretDist::UniformTernary,
            ..OpenFheParams::default()
        };
        let client = OpenFheScheme::keygen(&p, &request).unwrap();
        let server = client.server_in_process().unwrap();
        ops::<OpenFheScheme>(&mut g, "openfhe", &client, &server);
    } else {
        eprintln!("SKIPPED openfhe: OpenFHE was not found when this was built");
    }
    g.finish();
}

criterion_group!(benches, compare);
criterion_main!(benches);
