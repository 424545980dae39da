//! Timings and precision of the `ckks` primitives at production sizes (N = 2^16, 128-bit).
//!
//! `cargo run --release -p backend-ckks --example measure -- [towers…]` (default: 20 40).
//! For each tower count T: T − 1 levels at the largest secure scale ≤ 2^40 with the default
//! key-switching layout; reports the chain, the minimum over repetitions of NTT, encode,
//! encrypt, decrypt, ct×pt (+ rescale), mult + relin + rescale, one rotation, 8 hoisted
//! rotations, 8 rotations summed (rotate + add against `rotate_sum`), key sizes, and bits of
//! precision against f64 on lengths 37, 1001 and 20001.

use std::time::Instant;

use backend_ckks::{CkksParams, CkksScheme};
use peregrine_backend::{Backend, Client, KeyRequest, Scheme};

fn min_time<T>(reps: usize, mut f: impl FnMut() -> T) -> (f64, T) {
    let mut best = f64::INFINITY;
    let mut out = None;
    for _ in 0..reps {
        let t = Instant::now();
        let r = f();
        best = best.min(t.elapsed().as_secs_f64());
        out = Some(r);
    }
    (best * 1e3, out.expect("at least one repetition"))
}

fn bits(got: &[f64], want: &[f64]) -> f64 {
    let err = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    let mag = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    -(err / mag).log2()
}

fn main() {
    let towers: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let towers = if towers.is_empty() { vec![20, 40] } else { towers };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let simd = if flags.contains("avx512ifma") {
        "AVX-512 IFMA"
    } else if flags.contains("avx512f") {
        "AVX-512"
    } else if flags.contains("avx2") {
        "AVX2"
    } else {
        "scalar"
    };
    println!("cpu: {cpu} ({simd}), threads: {}", rayon::current_num_threads());
    for t in towers {
        let base = CkksParams { levels: t - 1, ..CkksParams::default() };
        let mut params = <CkksScheme as Scheme>::sized_for_levels(&base, t - 1).expect("a secure parameter set exists");
        // CKKS_DIGITS=d fixes the key-switching digit count (must stay secure).
        if let Some(d) = std::env::var("CKKS_DIGITS").ok().and_then(|v| v.parse().ok()) {
            params.digits = d;
        }
        if let Some(l) = std::env::var("CKKS_LOG_N").ok().and_then(|v| v.parse().ok()) {
            params.log_ring_dimension = l;
            params.insecure_test_only = true;
        }
        let ctx = backend_ckks::backend::context(&params).expect("valid parameters");
        let chain = &ctx.chain;
        println!(
            "\n== N = 2^{}, {} towers (q0 {} bits + {} × {} bits), {} digits, {} special primes of {} bits, log2(QP) = {:.0}, security {:?}",
            params.log_ring_dimension,
            t,
            params.first_modulus_bits,
            t - 1,
            params.log_scale,
            chain.digits,
            chain.p.len(),
            params.special_prime_bits,
            chain.log_qp,
            chain.security_bits
        );
        let n = ctx.n();
        let mut limb: Vec<u64> = (0..n as u64).collect();
        let (ntt_q, _) = min_time(50, || ctx.ring.ntt(&mut limb, 1));
        let sp = ctx.ring.special().start;
        let (ntt_p, _) = min_time(50, || ctx.ring.ntt(&mut limb, sp));
        let (ntt_0, _) = min_time(50, || ctx.ring.ntt(&mut limb, 0));
        println!(
            "NTT one limb: {:.0} µs ({} bits), {:.0} µs ({} bits), {:.0} µs (q0, {} bits)",
            ntt_q * 1e3,
            params.log_scale,
            ntt_p * 1e3,
            params.special_prime_bits,
            ntt_0 * 1e3,
            params.first_modulus_bits
        );
        let steps: Vec<i64> = (1..=8).collect();
        let (keygen_ms, client) =
            min_time(1, || CkksScheme::keygen(&params, &KeyRequest::rotations(steps.clone())).expect("keygen"));
        let keys = client.keys().expect("fresh client has keys");
        let server = client.local_server().expect("server").expect("local server");
        let per_key = keys.rotations[&1].key.memory_bytes();
        println!("keygen (relin + 8 rotations): {:.2} s; one key in memory {:.0} MiB (serialised {:.0} MiB: a parts travel as a seed)", keygen_ms / 1e3, per_key as f64 / (1u64 << 20) as f64, per_key as f64 / 2.0 / (1u64 << 20) as f64);
        let slots = chain.slots;
        let x: Vec<f64> = (0..slots).map(|i| ((i * 7919) % 2001) as f64 / 1000.0 - 1.0).collect();
        let y: Vec<f64> = (0..slots).map(|i| ((i * 104729) % 1999) as f64 / 1000.0 - 1.0).collect();
        let top = ctx.max_level();
        let scale = ctx.params.log_scale as f64;
        let (enc_ms, pt) = min_time(5, || client.encode(&x, top, scale.exp2()).expect("encode"));
        let (encrypt_ms, ct) = min_time(5, || client.encrypt(&pt).expect("encrypt"));
        let (dec_ms, _) = min_time(5, || client.decrypt(&ct).expect("decrypt"));
        let (decode_ms, _) = min_time(5, || client.decode(&pt).expect("decode"));
        let cty = client.encrypt_values(&y).expect("encrypt");
        let pty = server.encode(&y, top, server.modulus(top)).expect("encode");
        let (ptmul_ms, _) = min_time(5, || server.mul_plain(&ct, &pty).expect("mul_plain"));
        let (ptenc_mul_ms, _) = min_time(5, || {
            let p = server.encode(&y, top, server.modulus(top)).expect("encode");
            server.rescale(&server.mul_plain(&ct, &p).expect("mul_plain")).expect("rescale")
        });
        let (mul_ms, prod) = min_time(3, || server.rescale(&server.mul(&ct, &cty).expect("mul")).expect("rescale"));
        let (rot_ms, rot) = min_time(3, || server.rotate(&ct, 1).expect("rotate"));
        let (hoist_ms, many) = min_time(2, || server.rotate_many(&ct, &steps).expect("rotate_many"));
        // Eight ciphertexts rotated by their own steps and summed (the BSGS giant steps of a
        // linear layer): rotate and add each, or `rotate_sum` (one ModDown for all).
        let eight: Vec<_> = many.iter().take(8).collect();
        let (rot_add_ms, by_rotate) = min_time(2, || {
            eight.iter().zip(&steps).fold(None, |acc: Option<_>, (c, &s)| {
                let r = server.rotate(c, s).expect("rotate");
                Some(match acc {
                    None => r,
                    Some(a) => server.add(&a, &r).expect("add"),
                })
            })
        });
        let terms: Vec<_> = eight.iter().copied().zip(steps.iter().copied()).collect();
        let (rot_sum_ms, by_sum) = min_time(2, || server.rotate_sum(&terms).expect("rotate_sum"));
        println!(
            "8 ciphertexts rotated and summed: rotate + add {rot_add_ms:.0} ms, rotate_sum {rot_sum_ms:.0} ms; the two agree to {:.1} bits",
            bits(
                &client.decrypt_values(&by_sum).expect("decrypt"),
                &client.decrypt_values(&by_rotate.expect("eight terms")).expect("decrypt")
            )
        );
        let want_prod: Vec<f64> = x.iter().zip(&y).map(|(a, b)| a * b).collect();
        let want_rot: Vec<f64> = (0..slots).map(|i| x[(i + 1) % slots]).collect();
        let want_rot8: Vec<f64> = (0..slots).map(|i| x[(i + 8) % slots]).collect();
        println!("encode {enc_ms:.1} ms, encrypt {encrypt_ms:.1} ms, decrypt {dec_ms:.1} ms, decode {decode_ms:.1} ms");
        println!("ct×pt {ptmul_ms:.1} ms; encode + ct×pt + rescale {ptenc_mul_ms:.1} ms");
        println!("mult + relin + rescale {mul_ms:.0} ms; rotation {rot_ms:.0} ms; 8 hoisted rotations {hoist_ms:.0} ms ({:.0} ms each)", hoist_ms / 8.0);
        println!(
            "precision (bits vs f64): fresh {:.1}, product {:.1}, rotation {:.1}, hoisted rotation by 8 {:.1}",
            bits(&client.decrypt_values(&ct).expect("decrypt"), &x),
            bits(&client.decrypt_values(&prod).expect("decrypt"), &want_prod),
            bits(&client.decrypt_values(&rot).expect("decrypt"), &want_rot),
            bits(&client.decrypt_values(&many[7]).expect("decrypt"), &want_rot8)
        );
        for len in [37usize, 1001, 20001].into_iter().filter(|&l| l <= slots) {
            let v: Vec<f64> = x[..len].to_vec();
            let c = client.encrypt_values(&v).expect("encrypt");
            let sq = server.rescale(&server.mul(&c, &c).expect("mul")).expect("rescale");
            let got = client.decrypt_values(&sq).expect("decrypt");
            let want: Vec<f64> = (0..slots).map(|i| if i < len { v[i] * v[i] } else { 0.0 }).collect();
            println!("length {len}: square + rescale {:.1} bits", bits(&got, &want));
        }
    }
}
