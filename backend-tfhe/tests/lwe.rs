//! The quantised-integer LWE layer against plain integer arithmetic: TFHE is exact as long as
//! the noise stays within the parameter set's bound, so every result must match exactly.

mod common;

use backend_tfhe::lwe::{LweClient, LweError, LweParams, LweServer};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[test]
fn every_value_round_trips_and_out_of_range_values_are_refused() {
    let (c, _) = common::keys();
    let (lo, hi) = c.params().range();
    assert_eq!((lo, hi), (-8, 7));
    for v in lo..=hi {
        assert_eq!(c.decrypt(&c.encrypt(v).unwrap()), v);
    }
    let e = c.encrypt(8).err().unwrap();
    assert_eq!(e, LweError::OutOfRange { value: 8, bits: 4 });
    assert!(e.to_string().contains("[-8, 8)"), "{e}");
}

#[test]
fn weighted_sums_of_odd_lengths_are_exact_within_the_noise_bound() {
    let (c, s) = common::keys();
    let bound = s.params().noise_bound;
    let mut rng = StdRng::seed_from_u64(11);
    let mut done = 0;
    while done < 25 {
        let n = [1usize, 3, 5, 7][rng.gen_range(0..4)];
        let xs: Vec<i64> = (0..n).map(|_| rng.gen_range(-8..=7)).collect();
        let ws: Vec<i64> = (0..n).map(|_| rng.gen_range(-2..=2)).collect();
        let bias = rng.gen_range(-3..=3);
        let want: i64 = xs.iter().zip(&ws).map(|(x, w)| x * w).sum::<i64>() + bias;
        let norm = (ws.iter().map(|w| (w * w) as f64).sum::<f64>()).sqrt();
        if !(-8..=7).contains(&want) || norm > bound {
            continue;
        }
        let cts: Vec<_> = xs.iter().map(|&x| c.encrypt(x).unwrap()).collect();
        let terms: Vec<_> = cts.iter().zip(&ws).map(|(ct, &w)| (ct, w)).collect();
        let sum = s.weighted_sum(&terms, bias).unwrap();
        assert_eq!(c.decrypt(&sum), want, "xs {xs:?} ws {ws:?} bias {bias}");
        assert!((sum.noise() - norm).abs() < 1e-9 || norm == 0.0);
        done += 1;
    }
}

#[test]
fn a_sum_beyond_the_noise_bound_is_refused_with_advice() {
    let (c, s) = common::keys();
    let x = c.encrypt(1).unwrap();
    let big = (s.params().noise_bound.ceil() as i64) + 1;
    let e = s.weighted_sum(&[(&x, big)], 0).err().unwrap();
    assert!(matches!(e, LweError::NoiseBudget { .. }), "{e:?}");
    assert!(e.to_string().contains("smaller integer weights"), "{e}");
    // Noise compounds through unbootstrapped sums: two halves of the budget each are too much.
    let half = (s.params().noise_bound / 2f64.sqrt()).floor() as i64;
    let once = s.weighted_sum(&[(&x, half)], 0).unwrap();
    assert!(s.weighted_sum(&[(&once, 2)], 0).is_err());
    assert!(s.weighted_sum(&[], 0).is_err());
}

#[test]
fn bootstrapping_applies_activation_and_rescale_exactly_and_resets_noise() {
    let (c, s) = common::keys();
    // ReLU followed by a rescale by 3/4 (rounded): one lookup table.
    let f = |v: i64| ((v.max(0) as f64) * 0.75).round() as i64;
    let lut = s.lut(f);
    assert_eq!(lut.clamped, 0);
    for v in [-8, -5, -1, 0, 1, 3, 6, 7] {
        let x = c.encrypt(v).unwrap();
        let noisy = s.weighted_sum(&[(&x, 1)], 0).unwrap();
        let y = s.bootstrap(&noisy, &lut);
        assert_eq!(c.decrypt(&y), f(v), "f({v})");
        assert_eq!(y.noise(), 1.0);
    }
    // A chain: sum → bootstrap → sum → bootstrap.
    let a = c.encrypt(3).unwrap();
    let b = c.encrypt(-2).unwrap();
    let h = s.bootstrap(&s.weighted_sum(&[(&a, 2), (&b, 1)], -1).unwrap(), &s.lut(|v| v.max(0)));
    let out = s.bootstrap(&s.weighted_sum(&[(&h, -2), (&a, 1)], 0).unwrap(), &s.lut(|v| v.abs()));
    let relu = |v: i64| v.max(0);
    assert_eq!(c.decrypt(&out), (relu(2 * 3 - 2 - 1) * -2 + 3).abs());
    // A function leaving the range is clamped, and the count says so.
    assert_eq!(s.lut(|v| 3 * v).clamped, 11);
}

#[test]
fn six_bit_parameters_bootstrap_exactly() {
    let c = LweClient::new(LweParams::with_bits(6).unwrap());
    let s = c.server();
    assert_eq!(c.params().range(), (-32, 31));
    let lut = s.lut(|v| (v * v) / 40 - 5);
    for v in [-32, -17, 0, 9, 31] {
        let x = s.weighted_sum(&[(&c.encrypt(v).unwrap(), 1)], 0).unwrap();
        assert_eq!(c.decrypt(&s.bootstrap(&x, &lut)), (v * v) / 40 - 5);
    }
    assert!(LweParams::with_bits(3).is_err() && LweParams::with_bits(9).is_err());
}

#[test]
fn with_one_extra_bit_every_boundary_value_reads_its_own_box() {
    // k = 1: two units per box, so every odd sum lies next to a box boundary. The integers on
    // either side of every boundary, in noisy sums near the noise bound, must read the box
    // `quant::apply_table` says (round, halves up). Without the half-unit shift the integer on
    // the boundary reads either box at random (about half of these 30 would fail).
    let c = LweClient::new(LweParams::with_accumulator(4, 1).unwrap());
    let s = c.server();
    assert_eq!(s.half_unit_shift() * 2, 1u64 << (63 - 4 - 1));
    let table: Vec<i64> = (-8..8).collect();
    let lut = s.lut(|b| b);
    let zeros: Vec<_> = (0..6).map(|_| c.encrypt(0).unwrap()).collect();
    let w = ((s.params().noise_bound.powi(2) - 1.0) / 6.0).sqrt().floor() as i64;
    let mut checked = 0;
    for b in -7..8i64 {
        let edge = b * 2 - 1;
        for v in [edge - 1, edge] {
            let x = c.encrypt(v).unwrap();
            let mut terms = vec![(&x, 1i64)];
            terms.extend(zeros.iter().map(|z| (z, w)));
            let sum = s.weighted_sum(&terms, 0).unwrap();
            let want = backend_tfhe::quant::apply_table(&table, v, 4, 1);
            assert_eq!(want, if v == edge { b } else { b - 1 });
            assert_eq!(c.decrypt(&s.bootstrap(&sum, &lut)), want, "value {v} next to the boundary of box {b}");
            checked += 1;
        }
    }
    assert_eq!(checked, 30);
    assert_eq!(LweServer::from_bytes(&s.to_bytes().unwrap()).unwrap().half_unit_shift(), s.half_unit_shift());
}
