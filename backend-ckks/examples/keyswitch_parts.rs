//! Where a key switch spends its time at N = 2^16 (one thread): ModUp (INTT, base conversion,
//! NTT), the key inner product, ModDown and the automorphism.
//!
//! `RAYON_NUM_THREADS=1 cargo run --release -p backend-ckks --example keyswitch_parts -- [levels] [log_scale] [digits]`

use std::time::Instant;

use backend_ckks::context::{os_rng, os_seed, Context};
use backend_ckks::keys::{SecretKey, SwitchKey};
use backend_ckks::CkksParams;

fn ms<T>(label: &str, reps: usize, mut f: impl FnMut() -> T) -> T {
    let mut best = f64::INFINITY;
    let mut out = None;
    for _ in 0..reps {
        let t = Instant::now();
        out = Some(f());
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!("{label:<28} {:8.1} ms", best * 1e3);
    out.expect("one repetition")
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let levels = args.first().copied().unwrap_or(39);
    let params = CkksParams {
        levels,
        log_scale: args.get(1).copied().unwrap_or(36) as u32,
        digits: args.get(2).copied().unwrap_or(0),
        ..CkksParams::default()
    };
    backend_ckks::backend::tune_allocator();
    let ctx = Context::new(&params).expect("parameters");
    let mut rng = os_rng();
    let sk = SecretKey::generate(&ctx, &mut rng);
    let key = SwitchKey::generate(&ctx, &sk.ntt, &sk.ntt, levels, os_seed(), 0, &mut rng);
    let d = ctx.uniform(&os_seed(), 9, &(0..=levels).collect::<Vec<_>>());
    println!("levels {levels}, digits {}, special primes {}", key.digits(), ctx.ring.special().len());
    let qb: Vec<usize> = (0..=levels).collect();
    ms("INTT all q limbs", 3, || {
        let mut c = d.clone();
        ctx.ring.intt_all(&mut c, &qb);
        c
    });
    if std::env::var("ONLY_ENCODE").is_ok() {
        let values: Vec<f64> = (0..ctx.n() / 2).map(|i| (i % 7) as f64 / 7.0).collect();
        ms("encode x30", 30, || ctx.encode(&values, levels, 2f64.powi(33)).expect("encodes"));
        return;
    }
    if std::env::var("ONLY_MOD_UP").is_ok() {
        ms("mod_up x20", 20, || ctx.mod_up(&d, levels));
        return;
    }
    let digits = ms("mod_up", 3, || ctx.mod_up(&d, levels));
    let (a0, _a1) = ms("key_inner", 3, || ctx.key_inner(&digits, &key, levels));
    ms("mod_down (one part)", 3, || ctx.mod_down(a0.clone(), levels));
    ms("automorphism (one part)", 3, || ctx.ring.automorphism_ntt(&d, 5));
    ms("full key switch", 3, || ctx.key_switch(&d, &key, levels));
    let values: Vec<f64> = (0..ctx.n() / 2).map(|i| (i % 7) as f64 / 7.0).collect();
    ms("encode: FFT only", 3, || ctx.encoder.encode_coeffs(&values, 2f64.powi(33)));
    ms("encode: all", 3, || ctx.encode(&values, levels, 2f64.powi(33)).expect("encodes"));
    for l in [2usize, 8, 20] {
        ms(&format!("encode at level {l}"), 5, || ctx.encode(&values, l, 2f64.powi(33)).expect("encodes"));
    }
    let mut limb = d[..ctx.n()].to_vec();
    ms("one NTT", 10, || ctx.ring.ntt(&mut limb, 1));
}
