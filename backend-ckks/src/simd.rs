//! The inner loop of base conversion, Σ_a x_a · h_a mod t over whole limbs, with an AVX-512
//! IFMA kernel (eight 52-bit multiply-adds per instruction) where the CPU has one, an AVX-512
//! F + DQ kernel of 64-bit Shoup products for wider primes, and a portable 128-bit scalar loop
//! everywhere else.
//!
//! The IFMA kernel reduces every term by Shoup's method in 52-bit arithmetic, so it needs
//! rows below 2^52, constants h_a < t and t < 2^50 (all primes of the default chains but
//! q_0 and the bootstrapping primes); the 64-bit kernel takes any rows and t < 2^62.

use crate::arith::Modulus;

/// Largest target prime the IFMA kernel accepts (the sum of a row's lazily reduced terms,
/// each below 2t, must stay far inside 64 bits).
pub const IFMA_MAX_PRIME: u64 = 1 << 50;

/// Largest row value the IFMA kernel accepts (its multipliers read 52 bits).
pub const IFMA_MAX_ROW: u64 = 1 << 52;

/// Whether this CPU runs the AVX-512 IFMA kernel.
pub fn has_ifma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512ifma"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `out[c] = Σ_a rows[a][c] · hats[a] mod t` for every `c`, by whichever kernel applies.
///
/// Every `rows[a]` has `out.len()` entries, all below the exclusive bound `row_max[a]`; every
/// `hats[a]` is below `t`. With IFMA, rows below 2^52 go through the vector kernel and the
/// others (q_0's, typically) are added by a scalar Shoup loop.
pub fn accumulate(out: &mut [u64], rows: &[&[u64]], row_max: &[u64], hats: &[u64], t: &Modulus) {
    debug_assert_eq!(rows.len(), hats.len());
    debug_assert_eq!(rows.len(), row_max.len());
    #[cfg(target_arch = "x86_64")]
    if has_ifma() && t.q < IFMA_MAX_PRIME && rows.len() < 1024 {
        let (small, big): (Vec<usize>, Vec<usize>) = (0..rows.len()).partition(|&a| row_max[a] <= IFMA_MAX_ROW);
        if !small.is_empty() {
            let small_rows: Vec<&[u64]> = small.iter().map(|&a| rows[a]).collect();
            let small_hats: Vec<u64> = small.iter().map(|&a| hats[a]).collect();
            let shoup: Vec<u64> = small_hats.iter().map(|&h| (((h as u128) << 52) / t.q as u128) as u64).collect();
            // SAFETY: the CPU has AVX-512F and IFMA (checked above); the kernel reads
            // `out.len()` entries of each row, which every row has.
            unsafe { ifma::accumulate(out, &small_rows, &small_hats, &shoup, t.q) };
            if !big.is_empty() {
                let big_rows: Vec<&[u64]> = big.iter().map(|&a| rows[a]).collect();
                let big_hats: Vec<u64> = big.iter().map(|&a| hats[a]).collect();
                accumulate_wide(out, &big_rows, &big_hats, t, true);
            }
            return;
        }
    }
    accumulate_wide(out, rows, hats, t, false);
}

/// Largest target prime of the 64-bit AVX-512 kernel (a lazy sum below 4t must fit 64 bits).
pub const WIDE_MAX_PRIME: u64 = 1 << 62;

/// `out[c] (+)= Σ_a rows[a][c] · hats[a] mod t` for rows of any width (`add`: onto `out`,
/// whose entries are below t): the AVX-512 F + DQ kernel (64-bit Shoup products) where the CPU
/// has it and t < [`WIDE_MAX_PRIME`], else the portable loop.
fn accumulate_wide(out: &mut [u64], rows: &[&[u64]], hats: &[u64], t: &Modulus, add: bool) {
    #[cfg(target_arch = "x86_64")]
    if has_avx512dq() && t.q < WIDE_MAX_PRIME {
        let shoup: Vec<u64> = hats.iter().map(|&h| (((h as u128) << 64) / t.q as u128) as u64).collect();
        // SAFETY: the CPU has AVX-512F and DQ (checked above); the kernel reads `out.len()`
        // entries of each row, which every row has.
        unsafe { ifma::accumulate_wide(out, rows, hats, &shoup, t.q, add) };
        return;
    }
    if add {
        let before = out.to_vec();
        accumulate_scalar(out, rows, hats, t);
        for (o, b) in out.iter_mut().zip(before) {
            *o = t.add(*o, b);
        }
    } else {
        accumulate_scalar(out, rows, hats, t);
    }
}

/// The portable kernel: 128-bit lazy sums, one Barrett reduction every 16 terms and at the end.
pub fn accumulate_scalar(out: &mut [u64], rows: &[&[u64]], hats: &[u64], t: &Modulus) {
    const CHUNK: usize = 1024;
    let n = out.len();
    let mut acc = [0u128; CHUNK];
    for start in (0..n).step_by(CHUNK) {
        let end = (start + CHUNK).min(n);
        let acc = &mut acc[..end - start];
        acc.iter_mut().for_each(|a| *a = 0);
        for (a, (row, &h)) in rows.iter().zip(hats).enumerate() {
            for (s, &x) in acc.iter_mut().zip(&row[start..end]) {
                *s += x as u128 * h as u128;
            }
            if a % 16 == 15 {
                for s in acc.iter_mut() {
                    *s = t.reduce_u128(*s) as u128;
                }
            }
        }
        for (o, &s) in out[start..end].iter_mut().zip(acc.iter()) {
            *o = t.reduce_u128(s);
        }
    }
}

/// `out[k] = c_k mod q` for integers `c_k` held exactly in f64 (|c_k| < 2^52, q < 2^61):
/// eight at a time with AVX-512 where the CPU has it.
pub fn reduce_integers(out: &mut [u64], values: &[f64], q: u64) {
    #[cfg(target_arch = "x86_64")]
    if has_avx512dq() {
        // SAFETY: the CPU has AVX-512F and DQ (checked); the kernel stays within both slices.
        unsafe { ifma::reduce_integers(out, values, q) };
        return;
    }
    reduce_integers_scalar(out, values, q);
}

fn reduce_integers_scalar(out: &mut [u64], values: &[f64], q: u64) {
    let qi = q as i64;
    let inv = 1.0 / q as f64;
    for (o, &c) in out.iter_mut().zip(values) {
        // quot is within one of c / q, so r lies in (−2q, 2q).
        let quot = (c * inv) as i64;
        let mut r = (c as i64).wrapping_sub(quot.wrapping_mul(qi));
        r += qi & (r >> 63);
        r += qi & (r >> 63);
        r -= qi & ((qi - 1 - r) >> 63);
        r -= qi & ((qi - 1 - r) >> 63);
        *o = r as u64;
    }
}

/// Whether this CPU runs the AVX-512 (F + DQ) integer-reduction kernel.
pub fn has_avx512dq() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512dq"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(target_arch = "x86_64")]
mod ifma {
    use std::arch::x86_64::*;

    /// See [`super::reduce_integers`].
    #[target_feature(enable = "avx512f,avx512dq")]
    pub unsafe fn reduce_integers(out: &mut [u64], values: &[f64], q: u64) {
        let n = out.len().min(values.len());
        let lanes = n / 8 * 8;
        let qv = _mm512_set1_epi64(q as i64);
        let qm1 = _mm512_set1_epi64(q as i64 - 1);
        let inv = _mm512_set1_pd(1.0 / q as f64);
        let zero = _mm512_setzero_si512();
        let mut k = 0;
        while k < lanes {
            let c = _mm512_loadu_pd(values.as_ptr().add(k));
            let quot = _mm512_cvttpd_epi64(_mm512_mul_pd(c, inv));
            let ci = _mm512_cvttpd_epi64(c);
            let mut r = _mm512_sub_epi64(ci, _mm512_mullo_epi64(quot, qv));
            for _ in 0..2 {
                let neg = _mm512_cmplt_epi64_mask(r, zero);
                r = _mm512_mask_add_epi64(r, neg, r, qv);
            }
            for _ in 0..2 {
                let big = _mm512_cmpgt_epi64_mask(r, qm1);
                r = _mm512_mask_sub_epi64(r, big, r, qv);
            }
            _mm512_storeu_si512(out.as_mut_ptr().add(k) as *mut _, r);
            k += 8;
        }
        super::reduce_integers_scalar(&mut out[lanes..n], &values[lanes..n], q);
    }

    /// The high 64 bits of the 64 × 64-bit products `a · b` (`b_hi` = b >> 32), exact.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn mul_hi64(a: __m512i, b: __m512i, b_hi: __m512i) -> __m512i {
        let mask32 = _mm512_set1_epi64(0xffff_ffff);
        let a_hi = _mm512_srli_epi64(a, 32);
        let ll = _mm512_mul_epu32(a, b);
        let lh = _mm512_mul_epu32(a, b_hi);
        let hl = _mm512_mul_epu32(a_hi, b);
        let hh = _mm512_mul_epu32(a_hi, b_hi);
        // mid < 3 · 2^32: the carry into the high word.
        let mid = _mm512_add_epi64(
            _mm512_srli_epi64(ll, 32),
            _mm512_add_epi64(_mm512_and_si512(lh, mask32), _mm512_and_si512(hl, mask32)),
        );
        _mm512_add_epi64(
            _mm512_add_epi64(hh, _mm512_srli_epi64(mid, 32)),
            _mm512_add_epi64(_mm512_srli_epi64(lh, 32), _mm512_srli_epi64(hl, 32)),
        )
    }

    /// See [`super::accumulate_wide`]: any rows, hats < t < 2^62, shoup[a] = ⌊hats[a]·2^64 / t⌋;
    /// with `add`, `out`'s entries (below t) are added to the sum.
    #[target_feature(enable = "avx512f,avx512dq")]
    pub unsafe fn accumulate_wide(out: &mut [u64], rows: &[&[u64]], hats: &[u64], shoup: &[u64], t: u64, add: bool) {
        let n = out.len();
        let lanes = n / 8 * 8;
        let tv = _mm512_set1_epi64(t as i64);
        let t2 = _mm512_set1_epi64((2 * t) as i64);
        let hv: Vec<__m512i> = hats.iter().map(|&h| _mm512_set1_epi64(h as i64)).collect();
        let sv: Vec<__m512i> = shoup.iter().map(|&s| _mm512_set1_epi64(s as i64)).collect();
        let sv_hi: Vec<__m512i> = shoup.iter().map(|&s| _mm512_set1_epi64((s >> 32) as i64)).collect();
        let mut c = 0;
        while c < lanes {
            // acc < 2t throughout; each term r = x·h − q̂·t with q̂ = ⌊x·h'/2^64⌋ lies in [0, 2t).
            let mut acc =
                if add { _mm512_loadu_si512(out.as_ptr().add(c) as *const _) } else { _mm512_setzero_si512() };
            for (a, row) in rows.iter().enumerate() {
                let x = _mm512_loadu_si512(row.as_ptr().add(c) as *const _);
                let qhat = mul_hi64(x, sv[a], sv_hi[a]);
                let r = _mm512_sub_epi64(_mm512_mullo_epi64(x, hv[a]), _mm512_mullo_epi64(qhat, tv));
                acc = _mm512_add_epi64(acc, r);
                acc = _mm512_min_epu64(acc, _mm512_sub_epi64(acc, t2));
            }
            acc = _mm512_min_epu64(acc, _mm512_sub_epi64(acc, tv));
            _mm512_storeu_si512(out.as_mut_ptr().add(c) as *mut _, acc);
            c += 8;
        }
        // The tail (N is a power of two ≥ 8, so only for odd test lengths).
        for c in lanes..n {
            let mut acc: u128 = if add { out[c] as u128 } else { 0 };
            for (row, &h) in rows.iter().zip(hats) {
                acc = (acc + row[c] as u128 * h as u128) % t as u128;
            }
            out[c] = acc as u64;
        }
    }

    /// See [`super::accumulate`]: rows < 2^52, hats < t < 2^50, shoup[a] = ⌊hats[a]·2^52 / t⌋.
    #[target_feature(enable = "avx512f,avx512ifma")]
    pub unsafe fn accumulate(out: &mut [u64], rows: &[&[u64]], hats: &[u64], shoup: &[u64], t: u64) {
        let n = out.len();
        let lanes = n / 8 * 8;
        let mask52 = _mm512_set1_epi64(((1u64 << 52) - 1) as i64);
        let tv = _mm512_set1_epi64(t as i64);
        let zero = _mm512_setzero_si512();
        // acc < 2t · rows: the conditional subtractions of t·2^j, j from high to 0, bring it
        // below t.
        let mut steps = 0;
        while (1u128 << steps) < 2 * rows.len() as u128 {
            steps += 1;
        }
        let hv: Vec<__m512i> = hats.iter().map(|&h| _mm512_set1_epi64(h as i64)).collect();
        let sv: Vec<__m512i> = shoup.iter().map(|&s| _mm512_set1_epi64(s as i64)).collect();
        let mut c = 0;
        while c < lanes {
            let mut acc = zero;
            for (a, row) in rows.iter().enumerate() {
                let x = _mm512_loadu_si512(row.as_ptr().add(c) as *const _);
                // q̂ = ⌊x·h'/2^52⌋ ∈ {⌊x·h/t⌋ − 1, ⌊x·h/t⌋}; r = x·h − q̂·t ∈ [0, 2t) from the
                // low 52 bits of both products.
                let qhat = _mm512_madd52hi_epu64(zero, x, sv[a]);
                let lo = _mm512_madd52lo_epu64(zero, x, hv[a]);
                let qt = _mm512_madd52lo_epu64(zero, qhat, tv);
                let r = _mm512_and_si512(_mm512_sub_epi64(lo, qt), mask52);
                acc = _mm512_add_epi64(acc, r);
            }
            let mut j = steps;
            while j > 0 {
                j -= 1;
                let m = _mm512_set1_epi64((t << j) as i64);
                let ge = _mm512_cmpge_epu64_mask(acc, m);
                acc = _mm512_mask_sub_epi64(acc, ge, acc, m);
            }
            _mm512_storeu_si512(out.as_mut_ptr().add(c) as *mut _, acc);
            c += 8;
        }
        // The tail (N is a power of two ≥ 8, so only for odd test lengths).
        for c in lanes..n {
            let mut acc: u128 = 0;
            for (row, &h) in rows.iter().zip(hats) {
                acc += row[c] as u128 * h as u128;
            }
            out[c] = (acc % t as u128) as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn integer_reduction_matches_euclidean_remainder_on_odd_lengths() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
        for (bits, len) in [(33u32, 1001usize), (49, 37), (60, 20001), (36, 8)] {
            let q = crate::arith::ntt_primes(bits, 1, 1 << 10, &[])[0];
            let mut values: Vec<f64> =
                (0..len).map(|_| rng.gen_range(-(1i64 << 52) + 1..(1i64 << 52)) as f64).collect();
            values[0] = 0.0;
            values[len - 1] = -(q as f64);
            let want: Vec<u64> = values.iter().map(|&c| (c as i64).rem_euclid(q as i64) as u64).collect();
            let mut got = vec![0u64; len];
            reduce_integers(&mut got, &values, q);
            assert_eq!(got, want, "{bits}-bit prime");
            let mut got = vec![0u64; len];
            reduce_integers_scalar(&mut got, &values, q);
            assert_eq!(got, want, "{bits}-bit prime, scalar");
        }
    }

    #[test]
    fn both_kernels_agree_with_u128_arithmetic_on_odd_lengths() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
        for &(t_bits, row_bits, count, len) in &[
            (36u32, 36u32, 6usize, 1001usize),
            (49, 52, 13, 37),
            (49, 49, 1, 8),
            (36, 60, 3, 77),
            (60, 60, 5, 64),
            (61, 61, 7, 1003),
            (58, 49, 7, 67),
        ] {
            // Mixed bounds: the first row is wide (as q_0's residues are) when `row_bits` is 60.
            let t = crate::arith::ntt_primes(t_bits, 1, 1 << 10, &[])[0];
            let m = Modulus::new(t);
            let rows: Vec<Vec<u64>> = (0..count)
                .map(|a| {
                    let bits = if a == 0 { row_bits } else { row_bits.min(52) };
                    (0..len).map(|_| rng.gen_range(0..(1u64 << bits))).collect()
                })
                .collect();
            let hats: Vec<u64> = (0..count).map(|_| rng.gen_range(0..t)).collect();
            let refs: Vec<&[u64]> = rows.iter().map(|r| r.as_slice()).collect();
            let want: Vec<u64> = (0..len)
                .map(|c| {
                    (rows.iter().zip(&hats).map(|(r, &h)| r[c] as u128 * h as u128).sum::<u128>() % t as u128) as u64
                })
                .collect();
            let mut got = vec![0u64; len];
            let mut bounds = vec![1u64 << row_bits.min(52); count];
            bounds[0] = 1u64 << row_bits;
            accumulate(&mut got, &refs, &bounds, &hats, &m);
            assert_eq!(got, want, "dispatching kernel, t {t_bits} bits, rows {row_bits} bits");
            let mut got = vec![0u64; len];
            accumulate_scalar(&mut got, &refs, &hats, &m);
            assert_eq!(got, want, "scalar kernel, t {t_bits} bits, rows {row_bits} bits");
        }
    }

    #[test]
    fn wide_kernel_adds_onto_its_output_and_survives_extreme_operands() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(11);
        for &(t_bits, count, len) in &[(61u32, 7usize, 1001usize), (59, 1, 16), (40, 13, 37)] {
            let t = crate::arith::ntt_primes(t_bits, 1, 1 << 10, &[])[0];
            let m = Modulus::new(t);
            // Extremes first (every row and constant at t − 1), then random 61-bit rows.
            let rows: Vec<Vec<u64>> = (0..count)
                .map(|a| (0..len).map(|c| if c < 8 || a == 0 { t - 1 } else { rng.gen_range(0..1u64 << 61) }).collect())
                .collect();
            let mut hats: Vec<u64> = (0..count).map(|_| rng.gen_range(0..t)).collect();
            hats[0] = t - 1;
            let start: Vec<u64> = (0..len).map(|c| if c < 8 { t - 1 } else { rng.gen_range(0..t) }).collect();
            let refs: Vec<&[u64]> = rows.iter().map(|r| r.as_slice()).collect();
            let want: Vec<u64> = (0..len)
                .map(|c| {
                    rows.iter()
                        .zip(&hats)
                        .fold(start[c] as u128, |acc, (r, &h)| (acc + r[c] as u128 * h as u128) % t as u128)
                        as u64
                })
                .collect();
            let mut got = start.clone();
            accumulate_wide(&mut got, &refs, &hats, &m, true);
            assert_eq!(got, want, "t {t_bits} bits, {count} rows, adding");
            let mut got = start.clone();
            accumulate_wide(&mut got, &refs, &hats, &m, false);
            let fresh: Vec<u64> = want.iter().zip(&start).map(|(&w, &s)| m.sub(w, s)).collect();
            assert_eq!(got, fresh, "t {t_bits} bits, {count} rows, overwriting");
        }
    }
}
