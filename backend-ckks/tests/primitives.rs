//! Encrypted primitives against the `clear` reference on random inputs of odd lengths, with
//! the error bound asserted, and every kind of bad input refused by name.

use backend_ckks::{CkksParams, CkksScheme};
use backend_clear::{ClearParams, ClearScheme};
use peregrine_backend::{Backend, BackendError, Client, KeyRequest, Scheme};
use rand::{Rng, SeedableRng};

fn random(n: usize, seed: u64) -> Vec<f64> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect()
}

fn max_err(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

/// The same computation on `ckks` and on `clear` (exact moduli of the same sizes), compared.
#[test]
fn a_small_network_of_operations_matches_clear_on_odd_lengths() {
    let params = CkksParams::insecure_for_tests(12, 6, 40);
    let steps = [1i64, -7, 300];
    let request = KeyRequest::rotations(steps);
    let client = CkksScheme::keygen(&params, &request).unwrap();
    let server = CkksScheme::server(&client.evaluation_keys().unwrap()).unwrap();
    let cp = ClearParams { log_ring_dimension: 12, levels: 6, ..ClearParams::default() };
    let cclient = ClearScheme::keygen(&cp, &request).unwrap();
    let cserver = ClearScheme::server(&cclient.evaluation_keys().unwrap()).unwrap();
    for (n, seed) in [(37usize, 1u64), (1001, 2), (2047, 3)] {
        let x = random(n, seed);
        let w = random(n, seed + 100);
        macro_rules! pipeline {
            ($c:expr, $s:expr) => {{
                let ct = $s
                    .deserialize_ciphertext(&$c.serialize_ciphertext(&$c.encrypt_values(&x).unwrap()).unwrap())
                    .unwrap();
                let top = $s.level(&ct);
                let scale = $s.scale(&ct);
                let pw = $s.encode(&w, top, $s.modulus(top)).unwrap();
                // y = rescale(x ⊙ w) + 0.5; z = rescale(y²) rotated by every step and summed; − 0.25·x
                let y = $s.add_scalar(&$s.rescale(&$s.mul_plain(&ct, &pw).unwrap()).unwrap(), 0.5).unwrap();
                let sq = $s.rescale(&$s.square(&y).unwrap()).unwrap();
                let rots = $s.rotate_many(&sq, &steps).unwrap();
                let mut acc = rots[0].clone();
                for r in &rots[1..] {
                    acc = $s.add(&acc, r).unwrap();
                }
                let lx = $s.drop_to_level(&ct, $s.level(&acc)).unwrap();
                let t = $s.rescale(&$s.mul_scalar(&lx, -0.25, $s.modulus($s.level(&lx))).unwrap()).unwrap();
                let t = $s.sub(&$s.mul_integer(&t, 3).unwrap(), &$s.negate(&t).unwrap()).unwrap();
                let _ = scale;
                let back = |c: &_| {
                    $c.decrypt_values(&$c.deserialize_ciphertext(&$s.serialize_ciphertext(c).unwrap()).unwrap())
                        .unwrap()
                };
                let mut out = back(&acc);
                out.extend(back(&t));
                out
            }};
        }
        let got = pipeline!(client, server);
        let want = pipeline!(cclient, cserver);
        // Plain f64 check of the reference itself on the first n slots.
        let slots = 2048;
        let mut xs = x.clone();
        xs.resize(slots, 0.0);
        let mut ws = w.clone();
        ws.resize(slots, 0.0);
        let sq: Vec<f64> = (0..slots).map(|i| (xs[i] * ws[i] + 0.5).powi(2)).collect();
        let mut f64ref: Vec<f64> = (0..slots)
            .map(|i| steps.iter().map(|&s| sq[(i as i64 + s).rem_euclid(slots as i64) as usize]).sum::<f64>())
            .collect();
        f64ref.extend(xs.iter().map(|v| -v));
        assert!(max_err(&want, &f64ref) < 1e-6, "clear reference itself off");
        let err = max_err(&got, &want);
        let bits = -(err / 9.0).log2();
        assert!(bits > 20.0, "n = {n}: ckks vs clear max error {err:e} ({bits:.1} bits)");
    }
}

#[test]
fn bad_inputs_are_refused_with_a_clear_error() {
    let params = CkksParams::insecure_for_tests(10, 3, 40);
    let client = CkksScheme::keygen(&params, &KeyRequest::rotations([1])).unwrap();
    let keys = client.evaluation_keys().unwrap();
    let server = CkksScheme::server(&keys).unwrap();
    let ct = client.encrypt_values(&[1.0, 2.0]).unwrap();
    // A missing rotation key.
    assert!(matches!(server.rotate(&ct, 2), Err(BackendError::MissingRotationKey(2))));
    // A ciphertext under other parameters is refused by name.
    let other = CkksParams::insecure_for_tests(10, 4, 40);
    let oc = CkksScheme::keygen(&other, &KeyRequest::default()).unwrap();
    let bytes = oc.serialize_ciphertext(&oc.encrypt_values(&[1.0]).unwrap()).unwrap();
    let e = server.deserialize_ciphertext(&bytes).unwrap_err().to_string();
    assert!(e.contains("other CKKS parameters"), "{e}");
    // A ciphertext from another key generation under the same parameters.
    let c2 = CkksScheme::keygen(&params, &KeyRequest::default()).unwrap();
    let bytes = c2.serialize_ciphertext(&c2.encrypt_values(&[1.0]).unwrap()).unwrap();
    assert!(matches!(server.deserialize_ciphertext(&bytes), Err(BackendError::WrongKey { .. })));
    // A truncated key file.
    let dir = std::env::temp_dir().join(format!("ckks-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("keys.bin");
    std::fs::write(&path, &keys[..keys.len() - 100]).unwrap();
    let e = CkksScheme::server_from_file(&path).unwrap_err().to_string();
    assert!(e.contains("truncated or corrupted"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
    // Insecure parameters without the explicit flag.
    let p = CkksParams { insecure_test_only: false, ..params.clone() };
    let e = CkksScheme::keygen(&p, &KeyRequest::default()).err().unwrap().to_string();
    assert!(e.contains("insecure parameters"), "{e}");
    // Values that would overflow the modulus.
    let e = client.encode(&[1e30], 0, 2f64.powi(40)).err().unwrap().to_string();
    assert!(e.contains("overflow"), "{e}");
}

#[test]
fn level_aware_rotation_keys_are_smaller_and_refuse_higher_levels() {
    let params = CkksParams::insecure_for_tests(10, 6, 40);
    let mut request = KeyRequest::rotations([1, 2]);
    request.rotation_levels.insert(2, 1);
    let client = CkksScheme::keygen(&params, &request).unwrap();
    let keys = client.keys().unwrap();
    assert!(keys.rotations[&2].key.memory_bytes() * 2 < keys.rotations[&1].key.memory_bytes());
    let server = CkksScheme::server(&client.evaluation_keys().unwrap()).unwrap();
    let x = random(37, 9);
    let ct = client.encrypt_values(&x).unwrap();
    let e = server.rotate(&ct, 2).err().unwrap().to_string();
    assert!(e.contains("levels up to 1"), "{e}");
    let low = server.drop_to_level(&ct, 1).unwrap();
    let got = client.decrypt_values(&server.rotate(&low, 2).unwrap()).unwrap();
    let mut xs = x.clone();
    xs.resize(512, 0.0);
    let want: Vec<f64> = (0..512).map(|i| xs[(i + 2) % 512]).collect();
    assert!(max_err(&got, &want) < 1e-5);
}

#[test]
fn public_key_encryption_decrypts() {
    let params = CkksParams::insecure_for_tests(10, 2, 40);
    let client = CkksScheme::keygen(&params, &KeyRequest::default()).unwrap();
    let x = random(101, 4);
    let pt = client.encode(&x, 2, 2f64.powi(40)).unwrap();
    let got = client.decrypt_values(&client.encrypt_public(&pt).unwrap()).unwrap();
    assert!(max_err(&got[..101], &x) < 1e-6);
}

/// Encoding rounds a plaintext's coefficients to integers: a sparse, small plaintext (the
/// diagonals of a classifier after global pooling) has coefficients of rms s·‖d‖₂/(√2·n) at
/// scale s over n slots, and below ~1 most round to 0 and its values vanish. At the scale the
/// planner's rule asks for (`peregrine_ops::plan::plaintext_bits_needed`: rms ≥ 4) they stay
/// within about 7 % of their norm; 8 bits lower most of the plaintext is gone.
#[test]
fn sparse_small_plaintexts_survive_encoding_at_the_planned_scale_only() {
    let params = CkksParams::insecure_for_tests(12, 3, 40);
    let client = CkksScheme::keygen(&params, &KeyRequest::default()).unwrap();
    let n = client.capabilities().slots;
    let mut d = vec![0.0; n];
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    for _ in 0..7 {
        d[rng.gen_range(0..n)] = rng.gen_range(0.002..0.02) * if rng.gen_bool(0.5) { 1.0 } else { -1.0 };
    }
    let norm = d.iter().map(|v| v * v).sum::<f64>().sqrt();
    let bits = (4.0 * std::f64::consts::SQRT_2 * n as f64 / norm).log2().ceil();
    let relative = |scale: f64| {
        let back = client.decode(&client.encode(&d, 1, scale).unwrap()).unwrap();
        d.iter().zip(&back).map(|(a, b)| (a - b) * (a - b)).sum::<f64>().sqrt() / norm
    };
    let kept = relative(bits.exp2());
    let lost = relative((bits - 8.0).exp2());
    assert!(kept < 0.12, "at 2^{bits} the plaintext moved by {kept} of its norm");
    assert!(lost > 0.5, "at 2^{} the plaintext should mostly vanish, it moved by {lost}", bits - 8.0);
}
