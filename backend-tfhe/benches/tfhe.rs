//! Criterion benchmarks of the TFHE backend's two primitives: one programmable bootstrap (per
//! precision) and a 1,000-term weighted sum.
//!
//! `cargo bench -p backend-tfhe --bench tfhe`

use backend_tfhe::lwe::{LweClient, LweParams};
use criterion::{criterion_group, criterion_main, Criterion};

fn bootstrap(c: &mut Criterion) {
    let mut g = c.benchmark_group("tfhe");
    g.sample_size(10);
    for bits in [4u32, 5, 6] {
        let client = LweClient::new(LweParams::with_bits(bits).expect("published set"));
        let server = client.server();
        let x = server.weighted_sum(&[(&client.encrypt(3).expect("in range"), 2)], -1).expect("within the bound");
        let lut = server.lut(|v| v.max(0));
        g.bench_function(format!("bootstrap/{bits}-bit"), |b| b.iter(|| server.bootstrap(&x, &lut)));
        if bits == 6 {
            // 1,000 fresh inputs with weights ±1: 2-norm √1000 ≈ 31.6, within the bound 63.
            let xs: Vec<_> = (0..1000).map(|i| client.encrypt((i % 7) as i64 - 3).expect("in range")).collect();
            let terms: Vec<_> = xs.iter().enumerate().map(|(i, x)| (x, if i % 2 == 0 { 1 } else { -1 })).collect();
            g.bench_function("weighted_sum/1000-terms/6-bit", |b| {
                b.iter(|| server.weighted_sum(&terms, 0).expect("within the bound"))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bootstrap);
criterion_main!(benches);
