//! Every rule of the `clear` backend: CKKS level and scale bookkeeping, keys, encoding,
//! bootstrapping, polynomial evaluation, serialisation and noise.

use backend_clear::*;
use peregrine_backend::BackendError;
use peregrine_backend::*;
use rand::{rngs::StdRng, Rng, SeedableRng};

fn params() -> ClearParams {
    ClearParams { log_ring_dimension: 6, log_scale: 30, first_modulus_bits: 40, levels: 5, ..ClearParams::default() }
}

fn setup(p: ClearParams, req: KeyRequest) -> (ClearClient, ClearServer) {
    let client = ClearScheme::keygen(&p, &req).unwrap();
    let server = ClearScheme::server(&client.evaluation_keys().unwrap()).unwrap();
    (client, server)
}

fn rand_vec(rng: &mut StdRng, n: usize, r: f64) -> Vec<f64> {
    (0..n).map(|_| rng.gen_range(-r..r)).collect()
}

fn close(a: &[f64], b: &[f64], tol: f64) {
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= tol, "slot {i}: {x} vs {y}");
    }
}

#[test]
fn moduli_are_distinct_ntt_primes_near_the_scale() {
    let p = params();
    let q = p.moduli();
    assert_eq!(q.len(), 6);
    let two_n = 1u64 << 7;
    for (i, qi) in q.iter().enumerate() {
        let v = *qi as u64;
        assert_eq!(v % two_n, 1, "q_{i} = {v} must be 1 mod 2N");
        let bits = if i == 0 { 40.0 } else { 30.0 };
        assert!((qi.log2() - bits).abs() < 0.01, "q_{i} = 2^{}", qi.log2());
    }
    let mut s = q.clone();
    s.sort_by(f64::total_cmp);
    s.dedup();
    assert_eq!(s.len(), q.len(), "moduli distinct");
    let caps = ClearScheme::capabilities(&p).unwrap();
    assert_eq!((caps.slots, caps.max_level, caps.security_bits), (32, 5, None));
    assert!(caps.summary().contains("NOT secure") || caps.summary().contains("not secure"));
}

#[test]
fn encrypt_decrypt_round_trip_pads_with_zeros() {
    let (c, _) = setup(params(), KeyRequest::default());
    let v = vec![0.5, -1.25, 3.0];
    let ct = c.encrypt_values(&v).unwrap();
    let out = c.decrypt_values(&ct).unwrap();
    assert_eq!(out.len(), 32);
    assert_eq!(&out[..3], &v[..]);
    assert!(out[3..].iter().all(|x| *x == 0.0));
}

#[test]
fn encode_checks_length_level_and_overflow() {
    let (c, s) = setup(params(), KeyRequest::default());
    let e = c.encode(&vec![1.0; 33], 5, 2f64.powi(30)).unwrap_err();
    assert_eq!(e, BackendError::TooManyValues { len: 33, slots: 32 });
    assert!(matches!(s.encode(&[1.0], 6, 1e9).unwrap_err(), BackendError::OutOfRange { .. }));
    // Q_0 ≈ 2^40: a value of 2^12 at scale 2^30 overflows level 0 but not level 5.
    assert!(matches!(s.encode(&[4096.0], 0, 2f64.powi(30)).unwrap_err(), BackendError::Overflow { level: 0, .. }));
    assert!(s.encode(&[4096.0], 5, 2f64.powi(30)).is_ok());
}

#[test]
fn additions_need_equal_levels_and_scales() {
    let (c, s) = setup(params(), KeyRequest::default());
    let mut r = StdRng::seed_from_u64(1);
    let (a, b) = (rand_vec(&mut r, 31, 1.0), rand_vec(&mut r, 31, 1.0));
    let (ca, cb) = (c.encrypt_values(&a).unwrap(), c.encrypt_values(&b).unwrap());
    let sum = c.decrypt_values(&s.add(&ca, &cb).unwrap()).unwrap();
    close(&sum, &a.iter().zip(&b).map(|(x, y)| x + y).collect::<Vec<_>>(), 1e-15);
    let diff = c.decrypt_values(&s.sub(&ca, &cb).unwrap()).unwrap();
    close(&diff, &a.iter().zip(&b).map(|(x, y)| x - y).collect::<Vec<_>>(), 1e-15);
    let low = s.drop_to_level(&cb, 3).unwrap();
    assert_eq!(s.add(&ca, &low).unwrap_err(), BackendError::LevelMismatch { op: "add", left: 5, right: 3 });
    let scaled = s.mul_scalar(&cb, 1.0, 2.0).unwrap();
    assert!(matches!(s.sub(&ca, &scaled).unwrap_err(), BackendError::ScaleMismatch { op: "sub", .. }));
    let pt = s.encode(&b, 4, s.scale(&ca)).unwrap();
    assert!(matches!(s.add_plain(&ca, &pt).unwrap_err(), BackendError::LevelMismatch { .. }));
    let pt = s.encode(&b, 5, 2f64.powi(31)).unwrap();
    assert!(matches!(s.sub_plain(&ca, &pt).unwrap_err(), BackendError::ScaleMismatch { .. }));
    let neg = c.decrypt_values(&s.negate(&ca).unwrap()).unwrap();
    close(&neg, &a.iter().map(|x| -x).collect::<Vec<_>>(), 0.0);
}

#[test]
fn multiplications_multiply_scales_and_rescale_divides_by_the_real_prime() {
    let (c, s) = setup(params(), KeyRequest::default());
    let mut r = StdRng::seed_from_u64(2);
    let (a, b) = (rand_vec(&mut r, 17, 2.0), rand_vec(&mut r, 17, 2.0));
    let (ca, cb) = (c.encrypt_values(&a).unwrap(), c.encrypt_values(&b).unwrap());
    let delta = 2f64.powi(30);
    let prod = s.mul(&ca, &cb).unwrap();
    assert_eq!((s.level(&prod), s.scale(&prod)), (5, delta * delta));
    let resc = s.rescale(&prod).unwrap();
    assert_eq!(s.level(&resc), 4);
    assert_eq!(s.scale(&resc), delta * delta / s.modulus(5));
    assert_ne!(s.scale(&resc), delta, "real primes make the scale drift");
    close(&c.decrypt_values(&resc).unwrap(), &a.iter().zip(&b).map(|(x, y)| x * y).collect::<Vec<_>>(), 1e-14);
    // ct × pt.
    let pt = s.encode(&b, 5, delta).unwrap();
    let mp = s.mul_plain(&ca, &pt).unwrap();
    assert_eq!(s.scale(&mp), delta * delta);
    let pt4 = s.encode(&b, 4, delta).unwrap();
    assert!(matches!(s.mul_plain(&ca, &pt4).unwrap_err(), BackendError::LevelMismatch { .. }));
    // ct × ct at different levels.
    assert!(matches!(s.mul(&ca, &resc).unwrap_err(), BackendError::LevelMismatch { op: "mul", .. }));
    // Square equals mul(a, a).
    assert_eq!(
        c.decrypt_values(&s.square(&ca).unwrap()).unwrap(),
        c.decrypt_values(&s.mul(&ca, &ca).unwrap()).unwrap()
    );
    // Integer multiplication keeps the scale.
    let k = s.mul_integer(&ca, -3).unwrap();
    assert_eq!(s.scale(&k), delta);
    close(&c.decrypt_values(&k).unwrap(), &a.iter().map(|x| -3.0 * x).collect::<Vec<_>>(), 0.0);
}

#[test]
fn levels_run_out_and_products_overflow() {
    let (c, s) = setup(params(), KeyRequest::default());
    let mut ct = c.encrypt_values(&[0.9]).unwrap();
    for _ in 0..5 {
        ct = s.rescale(&s.mul(&ct, &ct).unwrap()).unwrap();
    }
    assert_eq!(s.level(&ct), 0);
    assert_eq!(s.rescale(&ct).unwrap_err(), BackendError::LevelsExhausted { op: "rescale", needed: 1, have: 0 });
    assert!(matches!(s.drop_to_level(&ct, 1).unwrap_err(), BackendError::LevelsExhausted { .. }));
    // At level 0, Q = q0 ≈ 2^40 and the product sits at scale ≈ 2^60: it wraps.
    let fresh = c.encrypt(&c.encode(&[1.0], 0, 2f64.powi(30)).unwrap()).unwrap();
    assert!(matches!(s.mul(&fresh, &fresh).unwrap_err(), BackendError::Overflow { op: "mul", level: 0, .. }));
}

#[test]
fn constants_are_rounded_to_their_encoding_scale() {
    let (c, s) = setup(params(), KeyRequest::default());
    let ct = c.encrypt_values(&[3.0]).unwrap();
    let m = s.mul_scalar(&ct, 1.0 / 3.0, 1024.0).unwrap();
    assert_eq!(s.scale(&m), 2f64.powi(30) * 1024.0);
    assert_eq!(c.decrypt_values(&m).unwrap()[0], 3.0 * (1024.0f64 / 3.0).round() / 1024.0);
    let a = s.add_scalar(&ct, 0.1).unwrap();
    assert_eq!(c.decrypt_values(&a).unwrap()[0], 3.0 + (0.1 * 2f64.powi(30)).round() / 2f64.powi(30));
    assert!(matches!(s.mul_scalar(&ct, f64::NAN, 2.0).unwrap_err(), BackendError::OutOfRange { .. }));
}

#[test]
fn rotations_need_keys_and_normalise_steps() {
    let (c, s) = setup(params(), KeyRequest::rotations([1, -2]));
    assert_eq!(s.rotation_steps().into_iter().collect::<Vec<_>>(), vec![1, 30]);
    let v: Vec<f64> = (0..32).map(|i| i as f64).collect();
    let ct = c.encrypt_values(&v).unwrap();
    let r1 = c.decrypt_values(&s.rotate(&ct, 1).unwrap()).unwrap();
    assert_eq!(r1[0], 1.0);
    assert_eq!(r1[31], 0.0);
    let rm2 = c.decrypt_values(&s.rotate(&ct, -2).unwrap()).unwrap();
    assert_eq!(rm2[0], 30.0);
    assert_eq!(c.decrypt_values(&s.rotate(&ct, 30).unwrap()).unwrap(), rm2, "30 ≡ -2 mod 32");
    assert_eq!(c.decrypt_values(&s.rotate(&ct, 32).unwrap()).unwrap(), v, "a full turn needs no key");
    assert_eq!(s.rotate(&ct, 3).unwrap_err(), BackendError::MissingRotationKey(3));
    let many = s.rotate_many(&ct, &[1, 30]).unwrap();
    assert_eq!(c.decrypt_values(&many[1]).unwrap(), rm2);
}

#[test]
fn bootstrapping_rules() {
    let (c, s) = setup(params(), KeyRequest::default());
    let ct = c.encrypt_values(&[0.5]).unwrap();
    assert_eq!(s.bootstrap(&ct).unwrap_err(), BackendError::BootstrapUnsupported);
    assert!(!s.capabilities().can_bootstrap);
    let e = ClearScheme::keygen(&params(), &KeyRequest { bootstrap: true, ..Default::default() }).err().unwrap();
    assert!(matches!(e, BackendError::InvalidParameters(_)));

    let bp = ClearParams { bootstrap: Some(ClearBootstrap { output_level: 3, range: 1.0 }), ..params() };
    let (c2, s2) = setup(bp.clone(), KeyRequest::default());
    let ct = c2.encrypt_values(&[0.5]).unwrap();
    assert_eq!(s2.bootstrap(&ct).unwrap_err(), BackendError::BootstrapNotEnabled);
    let (c3, s3) = setup(bp, KeyRequest { bootstrap: true, ..Default::default() });
    assert!(s3.capabilities().can_bootstrap);
    let mut ct = c3.encrypt_values(&[0.5, -0.25]).unwrap();
    for _ in 0..5 {
        ct = s3.rescale(&s3.mul_scalar(&ct, 1.0, 2f64.powi(30)).unwrap()).unwrap();
    }
    assert_eq!(s3.level(&ct), 0);
    let fresh = s3.bootstrap(&ct).unwrap();
    assert_eq!((s3.level(&fresh), s3.scale(&fresh)), (3, 2f64.powi(30)));
    close(&c3.decrypt_values(&fresh).unwrap()[..2], &[0.5, -0.25], 1e-12);
    let big = c3.encrypt_values(&[1.5]).unwrap();
    assert!(matches!(s3.bootstrap(&big).unwrap_err(), BackendError::OutOfRange { op: "bootstrap", .. }));
    let _ = c;
}

#[test]
fn polynomial_evaluation_matches_horner_and_uses_the_documented_depth() {
    let p = ClearParams { levels: 8, ..params() };
    let (c, s) = setup(p, KeyRequest::default());
    let mut r = StdRng::seed_from_u64(3);
    let x = rand_vec(&mut r, 29, 1.0);
    let ct = c.encrypt_values(&x).unwrap();
    for degree in [1usize, 2, 3, 4, 5, 7, 8] {
        let coeffs = rand_vec(&mut r, degree + 1, 1.0);
        let out = s.eval_poly(&ct, &coeffs).unwrap();
        assert_eq!(s.level(&out), 8 - poly_depth(degree), "degree {degree}");
        assert!((s.scale(&out) / 2f64.powi(30) - 1.0).abs() < 1e-12, "result at the default scale");
        let want: Vec<f64> = x.iter().map(|v| coeffs.iter().rev().fold(0.0, |acc, c| acc * v + c)).collect();
        close(&c.decrypt_values(&out).unwrap()[..29], &want, 1e-7);
    }
    assert_eq!(poly_depth(2), 2);
    assert_eq!(poly_depth(4), 3);
    assert_eq!(poly_depth(8), 4);
    let low = s.drop_to_level(&ct, 2).unwrap();
    assert_eq!(
        s.eval_poly(&low, &[0.0, 1.0, 0.0, 0.0, 1.0]).unwrap_err(),
        BackendError::LevelsExhausted { op: "eval_poly", needed: 3, have: 2 }
    );
}

#[test]
fn serialisation_round_trips_and_rejects_corruption_and_foreign_keys() {
    let (c, s) = setup(params(), KeyRequest::default());
    let ct = c.encrypt_values(&[1.0, 2.0, 3.0]).unwrap();
    let bytes = c.serialize_ciphertext(&ct).unwrap();
    let back = s.deserialize_ciphertext(&bytes).unwrap();
    assert_eq!(c.decrypt_values(&back).unwrap(), c.decrypt_values(&ct).unwrap());
    let out = s.serialize_ciphertext(&s.add(&back, &back).unwrap()).unwrap();
    assert_eq!(c.decrypt_values(&c.deserialize_ciphertext(&out).unwrap()).unwrap()[2], 6.0);
    for bad in [&bytes[..bytes.len() - 3], &bytes[..10], b"garbage garbage garbage garbage garbage"] {
        assert!(matches!(s.deserialize_ciphertext(bad).unwrap_err(), BackendError::Deserialize { .. }));
    }
    // A ciphertext of another key pair is refused.
    let other = ClearScheme::keygen(&ClearParams { seed: 99, ..params() }, &KeyRequest::default()).unwrap();
    let foreign = other.serialize_ciphertext(&other.encrypt_values(&[1.0]).unwrap()).unwrap();
    assert!(s.deserialize_ciphertext(&foreign).unwrap_err().to_string().contains("different key"));
    let foreign_ct = other.encrypt_values(&[1.0]).unwrap();
    assert!(s.add(&foreign_ct, &ct).unwrap_err().to_string().contains("different key"));
    // Garbage evaluation keys.
    assert!(matches!(ClearScheme::server(b"{not json").err().unwrap(), BackendError::Deserialize { .. }));
}

#[test]
fn invalid_parameters_are_rejected() {
    for p in [
        ClearParams { log_ring_dimension: 1, ..params() },
        ClearParams { levels: 0, ..params() },
        ClearParams { log_scale: 70, ..params() },
        ClearParams { bootstrap: Some(ClearBootstrap { output_level: 9, range: 1.0 }), ..params() },
    ] {
        assert!(matches!(ClearScheme::capabilities(&p).unwrap_err(), BackendError::InvalidParameters(_)), "{p:?}");
    }
}

#[test]
fn exact_moduli_keep_the_scale_fixed() {
    let p = ClearParams { exact_moduli: true, ..params() };
    let (c, s) = setup(p, KeyRequest::default());
    let ct = c.encrypt_values(&[0.5]).unwrap();
    let r = s.rescale(&s.mul(&ct, &ct).unwrap()).unwrap();
    assert_eq!(s.scale(&r), 2f64.powi(30));
}

#[test]
fn noise_has_the_configured_size_and_is_reproducible() {
    let noise =
        NoiseModel { fresh: 2f64.powi(10), rescale: 0.0, key_switch: 0.0, bootstrap_relative: 0.0, encode: 0.0 };
    let p = ClearParams { log_ring_dimension: 12, noise: Some(noise), ..params() };
    let (c, s) = setup(p.clone(), KeyRequest::default());
    let v = vec![0.25; 2048];
    let out = c.decrypt_values(&c.encrypt_values(&v).unwrap()).unwrap();
    let errs: Vec<f64> = out.iter().zip(&v).map(|(a, b)| a - b).collect();
    let std = (errs.iter().map(|e| e * e).sum::<f64>() / errs.len() as f64).sqrt();
    let want = 2f64.powi(10 - 30);
    assert!((std / want - 1.0).abs() < 0.1, "noise std {std:e}, configured {want:e}");
    // Same seed, same noise.
    let (c2, _) = setup(p, KeyRequest::default());
    assert_eq!(c2.decrypt_values(&c2.encrypt_values(&v).unwrap()).unwrap(), out);
    // Real-CKKS-sized noise at N = 2^16, Δ = 2^40 keeps ~25+ bits after a multiplication.
    let real = ClearParams {
        log_ring_dimension: 16,
        log_scale: 40,
        first_modulus_bits: 60,
        levels: 3,
        noise: Some(NoiseModel::ckks(1 << 16)),
        ..ClearParams::default()
    };
    let (c3, s3) = setup(real, KeyRequest::default());
    let x = vec![0.5; 100];
    let ct = c3.encrypt_values(&x).unwrap();
    let sq = s3.rescale(&s3.mul(&ct, &ct).unwrap()).unwrap();
    let got = c3.decrypt_values(&sq).unwrap();
    let max_err = got[..100].iter().map(|g| (g - 0.25).abs()).fold(0.0, f64::max);
    assert!(max_err > 0.0 && max_err < 2f64.powi(-20), "max error {max_err:e}");
    let _ = s;
}

#[test]
fn flipped_truncated_and_swapped_files_are_refused_by_name() {
    let (client, server) = setup(params(), KeyRequest::rotations([1]));
    let keys = client.evaluation_keys().unwrap();
    let secret = client.save_secret().unwrap();
    let ct = server.serialize_ciphertext(&client.encrypt_values(&[0.5, -0.25]).unwrap()).unwrap();
    let corrupt = |bytes: &[u8], at: usize| {
        let mut b = bytes.to_vec();
        b[at] ^= 0x01;
        b
    };
    // A flipped byte anywhere (header, body or checksum) and a cut file: each names the file kind.
    for at in [0, 20, keys.len() / 2, keys.len() - 1] {
        let e = ClearScheme::server(&corrupt(&keys, at)).err().expect("corrupted keys load").to_string();
        assert!(e.contains("clear evaluation keys") && e.contains("checksum mismatch"), "{e}");
    }
    for at in [3, secret.len() - 40, secret.len() - 1] {
        let e = ClearScheme::load_client(&corrupt(&secret, at)).err().expect("corrupted secret loads").to_string();
        assert!(e.contains("clear client state") && e.contains("checksum mismatch"), "{e}");
    }
    for at in [9, 17, 40, ct.len() - 1] {
        let e = server.deserialize_ciphertext(&corrupt(&ct, at)).unwrap_err().to_string();
        assert!(e.contains("clear ciphertext") && e.contains("checksum mismatch"), "{e}");
    }
    let e = server.deserialize_ciphertext(&ct[..ct.len() - 8]).unwrap_err().to_string();
    assert!(e.contains("checksum mismatch"), "{e}");
    let e = ClearScheme::server(&keys[..10]).err().expect("truncated keys load").to_string();
    assert!(e.contains("clear evaluation keys"), "{e}");
    // A ciphertext of another key pair is refused although its checksum is intact.
    let (other, _) = setup(params(), KeyRequest::rotations([1]));
    let foreign = server.serialize_ciphertext(&other.encrypt_values(&[1.0]).unwrap()).unwrap();
    let e = server.deserialize_ciphertext(&foreign).unwrap_err().to_string();
    assert!(e.contains("different key"), "{e}");
    // Intact files still load.
    assert!(ClearScheme::load_client(&secret).is_ok());
    assert!(server.deserialize_ciphertext(&ct).is_ok());
}
