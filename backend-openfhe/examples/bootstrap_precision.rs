//! Measures OpenFHE at production size: key generation, evaluation-key size, and the time and
//! precision of mult+relinearise+rescale, rotation, hoisted rotations and bootstrapping, on a
//! full vector of random values in [-1, 1]. Parameters as JSON (default: the backend's
//! defaults, N = 2^16, 128-bit).
//!
//! `cargo run --release -p backend-openfhe --example bootstrap_precision -- '{}'`

#![cfg_attr(not(openfhe), allow(unused, unreachable_code))]

use std::collections::BTreeSet;
use std::time::Instant;

use backend_openfhe::{OpenFheParams, OpenFheScheme};
use peregrine_backend::*;

fn bits(want: &[f64], got: &[f64]) -> (f64, f64) {
    let err = want.iter().zip(got).fold(0f64, |m, (a, b)| m.max((a - b).abs()));
    (err, -err.log2())
}

fn main() {
    if !backend_openfhe::AVAILABLE {
        eprintln!("{}", openfhe_sys_reason());
        std::process::exit(1);
    }
    let json = std::env::args().nth(1).unwrap_or_else(|| "{}".into());
    let p: OpenFheParams = serde_json::from_str(&json).expect("parameters as JSON");
    let caps = OpenFheScheme::capabilities(&p).expect("parameters");
    println!("params {json}\n{}", caps.summary());
    let t = Instant::now();
    let steps: BTreeSet<i64> = [1i64, 2, 4, 8, 16, 32, 64, 128].into_iter().collect();
    let client = OpenFheScheme::keygen(
        &p,
        &KeyRequest { rotations: steps.clone(), bootstrap: p.bootstrap, ..Default::default() },
    )
    .unwrap();
    println!("keygen (incl. bootstrap setup): {:.1} s", t.elapsed().as_secs_f64());
    // PEREGRINE_KEYS_IN_PROCESS=1 shares the keys in memory instead of serialising them
    // (N = 2^16 key files do not yet fit twice in 24 GiB).
    let server = if std::env::var_os("PEREGRINE_KEYS_IN_PROCESS").is_some() {
        client.server_in_process().unwrap()
    } else {
        let t = Instant::now();
        let keys = client.evaluation_keys().unwrap();
        println!(
            "evaluation keys: {:.2} GiB, serialised in {:.1} s",
            keys.len() as f64 / (1u64 << 30) as f64,
            t.elapsed().as_secs_f64()
        );
        let t = Instant::now();
        let server = OpenFheScheme::server(&keys).unwrap();
        println!("server from keys: {:.1} s", t.elapsed().as_secs_f64());
        server
    };
    println!("server holds a secret key: {}", server.holds_secret_key());

    let n = caps.slots;
    let mut s = 0x2545F4914F6CDD1Du64;
    let mut rnd = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    };
    let x: Vec<f64> = (0..n).map(|_| rnd()).collect();
    let y: Vec<f64> = (0..n).map(|_| rnd()).collect();
    let a = client.encrypt_values(&x).unwrap();
    let b = client.encrypt_values(&y).unwrap();
    let (err, b0) = bits(&x, &client.decrypt_values(&a).unwrap());
    println!("fresh: error {err:.2e} ({b0:.1} bits)");

    let t = Instant::now();
    let m = server.rescale(&server.mul(&a, &b).unwrap()).unwrap();
    let dt = t.elapsed().as_secs_f64();
    let xy: Vec<f64> = x.iter().zip(&y).map(|(u, v)| u * v).collect();
    let (err, bm) = bits(&xy, &client.decrypt_values(&m).unwrap());
    println!("mult+relin+rescale: {dt:.3} s, error {err:.2e} ({bm:.1} bits)");

    let t = Instant::now();
    let r = server.rotate(&a, 1).unwrap();
    let dt = t.elapsed().as_secs_f64();
    let want: Vec<f64> = (0..n).map(|i| x[(i + 1) % n]).collect();
    let (err, br) = bits(&want, &client.decrypt_values(&r).unwrap());
    println!("rotate: {dt:.3} s, error {err:.2e} ({br:.1} bits)");

    let st: Vec<i64> = steps.iter().copied().collect();
    let t = Instant::now();
    let rs = server.rotate_many(&a, &st).unwrap();
    println!("hoisted rotations: {} in {:.3} s", rs.len(), t.elapsed().as_secs_f64());

    if p.bootstrap {
        let low = server.drop_to_level(&a, 0).unwrap();
        for i in 0..2 {
            let t = Instant::now();
            let bt = server.bootstrap(&low).unwrap();
            let dt = t.elapsed().as_secs_f64();
            let (err, bb) = bits(&x, &client.decrypt_values(&bt).unwrap());
            println!("bootstrap #{i}: {dt:.1} s, level 0 -> {}, error {err:.2e} ({bb:.1} bits)", server.level(&bt));
        }
    }
}

fn openfhe_sys_reason() -> &'static str {
    "OpenFHE was not found when this was built; install it and set OPENFHE_ROOT, then rebuild"
}
