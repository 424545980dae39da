//! Bootstrapping on small insecure rings (tests only): the result decrypts to the input within
//! the stated bound, at the stated level and the caller's scale, and bad requests are errors.

use backend_ckks::params::BootstrapParams;
use backend_ckks::{CkksParams, CkksScheme};
use peregrine_backend::{Backend, BackendError, Client, KeyRequest, Scheme};
use rand::{Rng, SeedableRng};

/// N = 2^log_n, two computation levels at Δ = 2^40, q_0/Δ = 2^(8 + log2 range).
fn params(log_n: u32, range: f64) -> CkksParams {
    CkksParams {
        log_ring_dimension: log_n,
        levels: 2,
        log_scale: 40,
        first_modulus_bits: 48 + range.log2().ceil() as u32,
        insecure_test_only: true,
        bootstrap: Some(BootstrapParams { range, ..BootstrapParams::default() }),
        ..CkksParams::default()
    }
}

fn bootstrap_keys() -> KeyRequest {
    KeyRequest { bootstrap: true, ..Default::default() }
}

/// Largest error of bootstrapping `values` (at level 0, scale 2^40), relative to `range`.
fn bootstrapped_error(params: &CkksParams, values: &[f64], range: f64) -> f64 {
    let client = CkksScheme::keygen(params, &bootstrap_keys()).unwrap();
    // The server gets its keys through the serialised format, as in a deployment.
    let server = CkksScheme::server(&client.evaluation_keys().unwrap()).unwrap();
    let caps = client.capabilities();
    let ct = client.encrypt(&client.encode(values, caps.max_level, 2f64.powi(40)).unwrap()).unwrap();
    let out = server.bootstrap(&server.drop_to_level(&ct, 0).unwrap()).unwrap();
    assert_eq!(Some(server.level(&out)), caps.bootstrap_level, "level after the bootstrap");
    assert_eq!(server.scale(&out), 2f64.powi(40), "the caller's scale is kept");
    // The levels it leaves work: one product and rescale.
    let sq = server.rescale(&server.mul(&out, &out).unwrap()).unwrap();
    let got = client.decrypt_values(&out).unwrap();
    let got_sq = client.decrypt_values(&sq).unwrap();
    let mut worst = 0.0f64;
    for (i, v) in values.iter().enumerate() {
        worst = worst.max((got[i] - v).abs() / range);
        assert!((got_sq[i] - v * v).abs() < 1e-3 * range * range, "slot {i}: square {} vs {}", got_sq[i], v * v);
    }
    for (i, g) in got.iter().enumerate().skip(values.len()) {
        worst = worst.max(g.abs() / range);
        assert!(g.abs() < 1e-3, "unused slot {i} holds {g}");
    }
    worst
}

#[test]
fn bootstrap_returns_the_input_within_2_to_the_minus_18_of_its_range() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(19);
    for (range, count) in [(1.0, 1001usize), (16.0, 777)] {
        let p = params(12, range);
        let values: Vec<f64> = (0..count).map(|_| rng.gen_range(-range..=range)).collect();
        let err = bootstrapped_error(&p, &values, range);
        eprintln!(
            "N = 2^12, range {range}, {count} random values: max error {err:.3e} of the range ({:.1} bits)",
            -err.log2()
        );
        assert!(err < 2f64.powi(-18), "range {range}: {err:e}");
        // The worst case for EvalMod: the whole message in one coefficient.
        let constant = vec![0.9 * range; 2048];
        let err = bootstrapped_error(&p, &constant, range);
        eprintln!(
            "N = 2^12, range {range}, constant {}: max error {err:.3e} of the range ({:.1} bits)",
            0.9 * range,
            -err.log2()
        );
        assert!(err < 2f64.powi(-18), "range {range}, constant: {err:e}");
    }
}

/// Sparse slots (n < N/2: the trace to the subring, one EvalMod for the real and imaginary
/// halves packed in 2n slots) hold the same bound, down to the fewest slots the four-level
/// CoeffsToSlots maps allow (16).
#[test]
fn sparse_slot_bootstrap_returns_the_input_within_2_to_the_minus_18_of_its_range() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(23);
    for (slots, count, range) in [(1024usize, 1001usize, 1.0), (256, 201, 16.0), (16, 13, 1.0)] {
        let p = CkksParams { slots, ..params(12, range) };
        let values: Vec<f64> = (0..count).map(|_| rng.gen_range(-range..=range)).collect();
        let err = bootstrapped_error(&p, &values, range);
        eprintln!(
            "N = 2^12, {slots} slots, range {range}, {count} random values: max error {err:.3e} of the range ({:.1} bits)",
            -err.log2()
        );
        assert!(err < 2f64.powi(-18), "{slots} slots, range {range}: {err:e}");
    }
    let p = CkksParams { slots: 512, ..params(12, 1.0) };
    let err = bootstrapped_error(&p, &vec![-0.9; 512], 1.0);
    eprintln!("N = 2^12, 512 slots, constant -0.9: max error {err:.3e} ({:.1} bits)", -err.log2());
    assert!(err < 2f64.powi(-18), "512 slots, constant: {err:e}");
}

/// A tensor known to stay within r < R (the parameters' range) is multiplied by ⌊R/r⌋ before
/// ModRaise and divided again in the last SlotsToCoeffs map: the same parameters give it
/// log2⌊R/r⌋ more bits, at the same level and the caller's scale. Sparse and full slots.
#[test]
fn a_bootstrap_within_a_smaller_range_is_that_much_more_precise() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(41);
    for slots in [0usize, 256] {
        let p = CkksParams { slots, ..params(12, 16.0) };
        let client = CkksScheme::keygen(&p, &bootstrap_keys()).unwrap();
        let server = CkksScheme::server(&client.evaluation_keys().unwrap()).unwrap();
        let caps = client.capabilities();
        let count = if slots == 0 { 1999 } else { 251 };
        let values: Vec<f64> = (0..count).map(|_| rng.gen_range(-1.9..=1.9)).collect();
        let ct = client.encrypt(&client.encode(&values, caps.max_level, 2f64.powi(40)).unwrap()).unwrap();
        let low = server.drop_to_level(&ct, 0).unwrap();
        let error = |out: &_| {
            assert_eq!(Some(server.level(out)), caps.bootstrap_level);
            assert_eq!(server.scale(out), 2f64.powi(40), "the caller's scale is kept");
            let got = client.decrypt_values(out).unwrap();
            values.iter().zip(&got).map(|(v, g)| (v - g).abs()).fold(0.0, f64::max)
        };
        let plain = error(&server.bootstrap(&low).unwrap());
        // r = 2: gain 8. A range at or above R, or a gain beyond the cap, is a plain bootstrap.
        let within = error(&server.bootstrap_within(&low, 2.0).unwrap());
        let wide = error(&server.bootstrap_within(&low, 40.0).unwrap());
        eprintln!(
            "N = 2^12, {slots} slots, values in ±1.9, range 16: max error {plain:.3e} ({:.1} bits of 2); within range 2: {within:.3e} ({:.1} bits of 2); range 40: {wide:.3e}",
            -(plain / 2.0).log2(),
            -(within / 2.0).log2()
        );
        assert!(within < 2.0 * 2f64.powi(-18), "{slots} slots: within range 2, error {within:e}");
        assert!(within < plain / 3.0, "{slots} slots: gain 8 should cut the error: {within:e} vs {plain:e}");
        assert!(wide < 16.0 * 2f64.powi(-18), "{slots} slots: range 40 (gain 1): {wide:e}");
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let err = server.bootstrap_within(&low, bad).unwrap_err().to_string();
            assert!(err.contains("bootstrap range must be positive"), "{bad}: {err}");
        }
    }
}

#[test]
fn bootstrap_without_keys_or_above_level_0_or_without_parameters_is_an_error() {
    let p = params(10, 1.0);
    // Keys generated without bootstrapping.
    let client = CkksScheme::keygen(&p, &KeyRequest::default()).unwrap();
    let server = client.local_server().unwrap().unwrap();
    let ct = client.encrypt_values(&[0.5, -0.25]).unwrap();
    let low = server.drop_to_level(&ct, 0).unwrap();
    assert!(matches!(server.bootstrap(&low), Err(BackendError::BootstrapNotEnabled)));
    // With keys, a ciphertext above level 0.
    let client = CkksScheme::keygen(&p, &bootstrap_keys()).unwrap();
    let server = client.local_server().unwrap().unwrap();
    let ct = client.encrypt_values(&[0.5, -0.25]).unwrap();
    let err = server.bootstrap(&ct).unwrap_err().to_string();
    assert!(err.contains("level 0"), "{err}");
    // Parameters without bootstrapping: no bootstrapping keys, no bootstrap.
    let plain = CkksParams { bootstrap: None, ..p.clone() };
    assert!(matches!(CkksScheme::keygen(&plain, &bootstrap_keys()), Err(BackendError::BootstrapUnsupported)));
    let client = CkksScheme::keygen(&plain, &KeyRequest::default()).unwrap();
    let server = client.local_server().unwrap().unwrap();
    let ct = server.drop_to_level(&client.encrypt_values(&[1.0]).unwrap(), 0).unwrap();
    assert!(matches!(server.bootstrap(&ct), Err(BackendError::BootstrapUnsupported)));
    // Another client's ciphertext.
    let other = CkksScheme::keygen(&p, &bootstrap_keys()).unwrap();
    let foreign = server.drop_to_level(&other.encrypt_values(&[1.0]).unwrap(), 0);
    assert!(foreign.is_err() || server.bootstrap(&foreign.unwrap()).is_err());
    // Fewer slots than the linear maps have levels, and a range q_0 cannot hold.
    let tiny = CkksParams { slots: 4, ..p.clone() };
    let err = CkksScheme::keygen(&tiny, &bootstrap_keys()).err().expect("refused").to_string();
    assert!(err.contains("fewer slots than 2^cts_levels"), "{err}");
    let wide = CkksParams { first_modulus_bits: 48, ..params(10, 16.0) };
    let err = wide.chain().unwrap_err().to_string();
    assert!(err.contains("first_modulus_bits ≥ 52"), "{err}");
}

#[test]
fn production_bootstrap_parameters_are_128_bit_secure_and_leave_eight_levels() {
    let p = CkksParams {
        levels: 8,
        log_scale: 40,
        first_modulus_bits: 48,
        digits: 6,
        bootstrap: Some(BootstrapParams::default()),
        ..CkksParams::default()
    };
    let chain = p.chain().expect("secure");
    assert_eq!(chain.security_bits, Some(128));
    assert_eq!(chain.levels, 8);
    let caps = CkksScheme::capabilities(&p).unwrap();
    assert!(caps.can_bootstrap && caps.bootstrap_level == Some(8) && caps.max_level == 8);
    // One level more does not fit at 128 bits with four CoeffsToSlots levels; with three of
    // 60 bits (the previous default: 9 levels, 13.4 s instead of 11.3 s at N = 2^16) it does.
    assert!(CkksParams { levels: 9, ..p.clone() }.chain().unwrap_err().to_string().contains("insecure"));
    let three = BootstrapParams { cts_levels: 3, cts_bits: 60, cos_degree: 31, ..BootstrapParams::default() };
    let nine = CkksParams { levels: 9, bootstrap: Some(three), ..p.clone() };
    assert_eq!(nine.chain().expect("secure").security_bits, Some(128));
    // Sized for a deep model at Δ = 2^33: q_0 = 2^41 (range 1), the digit count with the least
    // key-switching work per level, at least 8 levels, still secure.
    let deep = CkksParams { log_scale: 33, ..p };
    let sized = CkksScheme::sized_for_levels(&deep, 58).expect("sized");
    let chain = sized.chain().unwrap();
    assert_eq!(sized.first_modulus_bits, 41);
    assert!(sized.levels >= 8 && chain.security_bits == Some(128), "{sized:?}");
}
