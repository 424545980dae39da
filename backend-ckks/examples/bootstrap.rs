//! Measures one bootstrap: `cargo run --release -p backend-ckks --example bootstrap -- [log_n] [range]`
//! (environment: SLOTS for sparse slots, FMB, LOGSCALE, LEVELS, DIGITS, DEG, DA, K, EMB, CTSB,
//! STCB, CTSL, STCL, DH=1 (double hoisting) for the parameters, REPEAT for more bootstraps of the same input, CONST=1 for the same value in every slot).
use std::time::Instant;

use backend_ckks::params::BootstrapParams;
use backend_ckks::{CkksParams, CkksScheme};
use peregrine_backend::{Backend, Client, KeyRequest, Scheme};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let log_n: u32 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10);
    let range: f64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1.0);
    let env = |k: &str, d: u32| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let d = BootstrapParams::default();
    let boot = BootstrapParams {
        range,
        cos_degree: env("DEG", d.cos_degree as u32) as usize,
        cts_bits: env("CTSB", d.cts_bits),
        stc_bits: env("STCB", d.stc_bits),
        double_angles: env("DA", d.double_angles as u32) as usize,
        k: env("K", d.k as u32) as usize,
        eval_mod_bits: env("EMB", d.eval_mod_bits),
        cts_levels: env("CTSL", d.cts_levels as u32) as usize,
        stc_levels: env("STCL", d.stc_levels as u32) as usize,
        double_hoisting: env("DH", 0) == 1,
        ..d
    };
    let mut params = CkksParams {
        log_ring_dimension: log_n,
        levels: env("LEVELS", 2) as usize,
        log_scale: env("LOGSCALE", 40),
        first_modulus_bits: env("FMB", 48),
        insecure_test_only: log_n < 16,
        digits: env("DIGITS", if log_n >= 16 { 6 } else { 0 }) as usize,
        slots: env("SLOTS", 0) as usize,
        bootstrap: Some(boot),
        ..CkksParams::default()
    };
    if log_n >= 16 && std::env::var("LEVELS").is_err() {
        // The most computation levels 128-bit security leaves.
        params.levels =
            (1..=40).rev().find(|&l| CkksParams { levels: l, ..params.clone() }.chain().is_ok()).expect("fits");
    }
    let chain = params.chain().expect("parameters");
    eprintln!(
        "chain: {} primes, log QP {:.0}, digits {}, special {}",
        chain.q.len(),
        chain.log_qp,
        chain.digits,
        chain.p.len()
    );
    let t = Instant::now();
    let client = CkksScheme::keygen(&params, &KeyRequest { bootstrap: true, ..Default::default() }).expect("keygen");
    eprintln!("keygen {:.1} s", t.elapsed().as_secs_f64());
    let server = client.local_server().unwrap().unwrap();
    let keys = server.keys();
    let boot_steps = backend_ckks::bootstrap::BootPlan::new(server.context()).unwrap().rotations().len();
    eprintln!(
        "evaluation keys in memory: {:.2} GiB ({} rotation keys for the bootstrap, conjugation, relinearisation, 2 encapsulation keys; files hold seeds for the a parts: about half)",
        keys.memory_bytes() as f64 / (1u64 << 30) as f64,
        boot_steps
    );
    let caps = client.capabilities();
    let n = caps.slots;
    // Random-looking values in [−range, range], or (CONST=1) the same value in every slot, the
    // worst case for EvalMod (all of the message in one coefficient).
    let vals: Vec<f64> = if std::env::var("CONST").is_ok() {
        vec![0.9 * range; n]
    } else {
        (0..n).map(|i| range * (((i * 7919 + 13) % 2001) as f64 / 1000.0 - 1.0)).collect()
    };
    let ct =
        client.encrypt(&client.encode(&vals, caps.max_level, 2f64.powi(params.log_scale as i32)).unwrap()).unwrap();
    let ct = server.drop_to_level(&ct, 0).unwrap();
    let t = Instant::now();
    let b = server.bootstrapper().unwrap();
    eprintln!("bootstrapper {:.1} s ({b:?})", t.elapsed().as_secs_f64());
    let repeat = env("REPEAT", 1).max(1);
    for _ in 1..repeat {
        let t = Instant::now();
        server.bootstrap(&ct).expect("bootstrap");
        eprintln!("bootstrap (repeat) {:.2} s", t.elapsed().as_secs_f64());
    }
    let t = Instant::now();
    let out = server.bootstrap(&ct).expect("bootstrap");
    eprintln!(
        "bootstrap {:.2} s, level {} scale 2^{:.2}",
        t.elapsed().as_secs_f64(),
        server.level(&out),
        server.scale(&out).log2()
    );
    let got = client.decrypt_values(&out).unwrap();
    let err = vals.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    eprintln!(
        "max error {err:.3e} = {:.1} bits (relative to range {range}: {:.1})",
        -err.log2(),
        -(err / range).log2()
    );
    for i in 0..4 {
        eprintln!("  {} -> {}", vals[i], got[i]);
    }
}
