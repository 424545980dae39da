//! Vector kernels of the limb arithmetic, chosen at run time: AVX-512 IFMA (eight 52-bit
//! multiply-adds per instruction) for primes below 2^50, AVX-512 F + DQ (64-bit products from
//! 32-bit pieces) for wider ones, portable scalar loops everywhere else.
//!
//! - **Sums of products** — base conversion Σ_a x_a · h_a (constants h_a) and the dot products
//!   Σ_k x_k ⊙ y_k of key switching, linear maps and tensors — are summed *lazily*: the exact
//!   wide sum of a pass of terms (IFMA: low and high 52-bit halves; AVX-512 F: three sums of
//!   32-bit pieces) is reduced once per coefficient instead of once per product, the pass
//!   length chosen from the operands' bounds so nothing overflows.
//! - **A limb times a constant** (rescale, ModDown, scalar products) by Shoup's method, and the
//!   centred residues of a dropped limb.

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
            // Lazy passes: a product's high 52-bit half is below row_max·t/2^52, and a pass's
            // high sum plus the carries of its low sum must stay below 2^52.
            let bound = small.iter().map(|&a| row_max[a]).max().unwrap_or(0) as u128;
            let high = ((bound * t.q as u128) >> 52) as u64 + 1;
            let per_pass = (((1u64 << 52) - 1) / (high + 1)).min(64) as usize;
            if per_pass >= 2 {
                for (k, (r, h)) in small_rows.chunks(per_pass).zip(small_hats.chunks(per_pass)).enumerate() {
                    // SAFETY: the CPU has AVX-512F and IFMA (checked above); every row has
                    // `out.len()` entries below 2^52.
                    unsafe { ifma::accumulate_lazy52(out, r, h, t.q, k > 0) };
                }
            } else {
                let shoup: Vec<u64> = small_hats.iter().map(|&h| (((h as u128) << 52) / t.q as u128) as u64).collect();
                // SAFETY: as above.
                unsafe { ifma::accumulate(out, &small_rows, &small_hats, &shoup, t.q) };
            }
            if !big.is_empty() {
                let big_rows: Vec<&[u64]> = big.iter().map(|&a| rows[a]).collect();
                let big_hats: Vec<u64> = big.iter().map(|&a| hats[a]).collect();
                let big_max = big.iter().map(|&a| row_max[a]).max().unwrap_or(u64::MAX);
                accumulate_wide(out, &big_rows, big_max, &big_hats, t, true);
            }
            return;
        }
    }
    accumulate_wide(out, rows, row_max.iter().copied().max().unwrap_or(u64::MAX), hats, t, false);
}

/// Largest target prime of the 64-bit AVX-512 kernel (a lazy sum below 4t must fit 64 bits).
pub const WIDE_MAX_PRIME: u64 = 1 << 62;

/// `out[c] (+)= Σ_a rows[a][c] · hats[a] mod t` for rows below `row_max` (`add`: onto `out`,
/// whose entries are below t): with AVX-512 F + DQ, lazy 128-bit sums of 32-bit pieces reduced
/// once (t < [`DOT_MAX_PRIME`], rows narrow enough for two terms a pass) or 64-bit Shoup products
/// (t < [`WIDE_MAX_PRIME`]), else the portable loop.
fn accumulate_wide(out: &mut [u64], rows: &[&[u64]], row_max: u64, hats: &[u64], t: &Modulus, add: bool) {
    #[cfg(target_arch = "x86_64")]
    if has_avx512dq() && t.q < DOT_MAX_PRIME {
        // Lazy passes (see `ifma::accumulate_lazy64`): a term adds below
        // 2^bits(t) + row_max + 2^32 to the middle sum, which must stay in 64 bits.
        let per_term = (1u128 << (64 - t.q.leading_zeros())) + row_max as u128 + (1 << 32) + 1;
        let per_pass = (u64::MAX as u128 / per_term).min(64) as usize;
        if per_pass >= 2 {
            for (k, (r, h)) in rows.chunks(per_pass).zip(hats.chunks(per_pass)).enumerate() {
                // SAFETY: the CPU has AVX-512F and DQ (checked above); every row has
                // `out.len()` entries below `row_max`.
                unsafe { ifma::accumulate_lazy64(out, r, h, t.q, add || k > 0) };
            }
            if rows.is_empty() && !add {
                out.iter_mut().for_each(|o| *o = 0);
            }
            return;
        }
    }
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

/// Largest prime of the lazy dot-product kernels (a sum of reduced halves below 5t must fit
/// 64 bits, and a product's 32-bit pieces must leave room for a few terms).
pub const DOT_MAX_PRIME: u64 = 1 << 61;

/// `out[c] (+)= Σ_k x_k[c] · y_k[c] mod t` (`add`: onto `out`, whose entries are below t) by a
/// vector kernel that sums the products lazily — exact wide sums, one reduction per
/// coefficient instead of one per product: AVX-512 IFMA for t < 2^50, AVX-512 F + DQ for
/// t < [`DOT_MAX_PRIME`]. Every operand must be below t. Returns false, touching nothing,
/// when no kernel fits this CPU and prime (the caller then multiplies pair by pair).
pub fn dot(out: &mut [u64], pairs: &[(&[u64], &[u64])], t: &Modulus, add: bool) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        debug_assert!(pairs.iter().all(|(x, y)| x.len() >= out.len() && y.len() >= out.len()));
        debug_assert!(pairs.iter().all(|(x, y)| x[..out.len()].iter().chain(&y[..out.len()]).all(|&v| v < t.q)));
        if has_ifma() && t.q < IFMA_MAX_PRIME {
            // Each lazy pass takes at most 15 pairs: its high sum stays below 2^52.
            for (k, chunk) in pairs.chunks(15).enumerate() {
                // SAFETY: the CPU has AVX-512F and IFMA (checked); every slice holds
                // `out.len()` entries, all below t < 2^50.
                unsafe { ifma::dot52(out, chunk, t.q, add || k > 0) };
            }
            if pairs.is_empty() && !add {
                out.iter_mut().for_each(|o| *o = 0);
            }
            return true;
        }
        if has_avx512dq() && t.q < DOT_MAX_PRIME {
            let bits = 64 - t.q.leading_zeros();
            // A pair adds below 2^(bits+1) + 2^32 to the middle sum, which must stay in 64 bits.
            let per_pass = ((u64::MAX / ((1u64 << (bits + 1)) + (1 << 32) + 1)) as usize).clamp(1, 32);
            for (k, chunk) in pairs.chunks(per_pass).enumerate() {
                // SAFETY: the CPU has AVX-512F and DQ (checked); every slice holds `out.len()`
                // entries, all below t < 2^61.
                unsafe { ifma::dot64(out, chunk, t.q, add || k > 0) };
            }
            if pairs.is_empty() && !add {
                out.iter_mut().for_each(|o| *o = 0);
            }
            return true;
        }
    }
    let _ = (out, pairs, t, add);
    false
}

/// What [`shoup_limb`] computes for every entry, `w` being a constant below t.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimbOp {
    /// `out ← out · w`.
    Mul,
    /// `out ← out + v · w`.
    MulAdd,
    /// `out ← (out − v) · w`.
    SubMul,
}

/// One limb times a constant modulo t (entries of `out` and `v` below t, `w` < t), by Shoup's
/// method: eight entries at a time with AVX-512 (IFMA's 52-bit products for t < 2^50, exact
/// 64-bit high products otherwise), else one at a time.
pub fn shoup_limb(out: &mut [u64], v: &[u64], w: u64, t: &Modulus, op: LimbOp) {
    debug_assert!(op == LimbOp::Mul || v.len() >= out.len());
    #[cfg(target_arch = "x86_64")]
    if has_avx512dq() {
        // SAFETY: the CPU has AVX-512F and DQ (and IFMA where that kernel is chosen); the
        // kernels stay within `out` and read as many entries of `v`.
        unsafe {
            if has_ifma() && t.q < IFMA_MAX_PRIME {
                ifma::shoup_limb52(out, v, w, t.q, op);
            } else {
                ifma::shoup_limb64(out, v, w, t.q, op);
            }
        }
        return;
    }
    shoup_limb_scalar(out, v, w, t, op);
}

fn shoup_limb_scalar(out: &mut [u64], v: &[u64], w: u64, t: &Modulus, op: LimbOp) {
    let ws = t.shoup(w);
    match op {
        LimbOp::Mul => out.iter_mut().for_each(|u| *u = t.mul_shoup(*u, w, ws)),
        LimbOp::MulAdd => out.iter_mut().zip(v).for_each(|(u, &x)| *u = t.add(*u, t.mul_shoup(x, w, ws))),
        LimbOp::SubMul => out.iter_mut().zip(v).for_each(|(u, &x)| *u = t.mul_shoup(t.sub(*u, x), w, ws)),
    }
}

/// `out[c]` = the centred residue of `x[c]` (an integer modulo `from`, below it) modulo t:
/// x mod t, or (x − from) mod t when x > from/2.
pub fn centred_residues(out: &mut [u64], x: &[u64], from: u64, t: &Modulus) {
    #[cfg(target_arch = "x86_64")]
    if has_avx512dq() {
        // SAFETY: the CPU has AVX-512F and DQ; the kernel stays within both slices.
        unsafe { ifma::centred_residues(out, x, from, t.q) };
        return;
    }
    centred_residues_scalar(out, x, from, t);
}

fn centred_residues_scalar(out: &mut [u64], x: &[u64], from: u64, t: &Modulus) {
    let one = t.shoup(1);
    let from_mod = t.reduce(from);
    let half = from / 2;
    for (o, &v) in out.iter_mut().zip(x) {
        let r = t.reduce_shoup(v, one);
        *o = if v > half { t.sub(r, from_mod) } else { r };
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

    /// `x mod t` for eight 64-bit `x` by Shoup's method with the constant `w` (< t) and
    /// `ws` = ⌊w·2^64/t⌋: x·w − ⌊x·ws/2^64⌋·t, which lies in [0, 2t).
    #[inline]
    #[target_feature(enable = "avx512f,avx512dq")]
    unsafe fn shoup64(x: __m512i, w: __m512i, ws: __m512i, ws_hi: __m512i, tv: __m512i) -> __m512i {
        let q = mul_hi64(x, ws, ws_hi);
        _mm512_sub_epi64(_mm512_mullo_epi64(x, w), _mm512_mullo_epi64(q, tv))
    }

    /// Brings eight values below 8t into [0, t) (t < 2^61).
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn below_t(mut s: __m512i, t: u64) -> __m512i {
        for k in [4u64, 2, 1] {
            s = _mm512_min_epu64(s, _mm512_sub_epi64(s, _mm512_set1_epi64((k * t) as i64)));
        }
        s
    }

    /// Constants of [`finish64`] for one prime t < 2^61.
    struct Finish64 {
        tv: __m512i,
        mask32: __m512i,
        /// 2^64 mod t, its Shoup companion (whole and high half).
        w: (__m512i, __m512i, __m512i),
        /// 1 and ⌊2^64/t⌋ (whole and high half).
        one: (__m512i, __m512i, __m512i),
    }

    impl Finish64 {
        #[target_feature(enable = "avx512f")]
        unsafe fn new(t: u64) -> Self {
            let w = ((1u128 << 64) % t as u128) as u64;
            let ws = (((w as u128) << 64) / t as u128) as u64;
            let one_s = ((1u128 << 64) / t as u128) as u64;
            let v = |x: u64| _mm512_set1_epi64(x as i64);
            Finish64 {
                tv: v(t),
                mask32: v(0xffff_ffff),
                w: (v(w), v(ws), v(ws >> 32)),
                one: (v(1), v(one_s), v(one_s >> 32)),
            }
        }
    }

    /// A lazy sum low + mid·2^32 + top·2^64 (each lane's pieces summed apart, no overflow)
    /// reduced to [0, 4t): normalised to H·2^64 + L, then H·(2^64 mod t) + L by two Shoup
    /// products.
    #[inline]
    #[target_feature(enable = "avx512f,avx512dq")]
    unsafe fn finish64(f: &Finish64, low: __m512i, mid: __m512i, top: __m512i) -> __m512i {
        let mid = _mm512_add_epi64(mid, _mm512_srli_epi64(low, 32));
        let lo = _mm512_or_si512(_mm512_slli_epi64(mid, 32), _mm512_and_si512(low, f.mask32));
        let hi = _mm512_add_epi64(top, _mm512_srli_epi64(mid, 32));
        _mm512_add_epi64(shoup64(hi, f.w.0, f.w.1, f.w.2, f.tv), shoup64(lo, f.one.0, f.one.1, f.one.2, f.tv))
    }

    /// Constants of [`finish52`] for one prime t < 2^50.
    struct Finish52 {
        tv: __m512i,
        mask52: __m512i,
        /// 2^52 mod t and its 52-bit Shoup companion.
        w: (__m512i, __m512i),
        /// ⌊2^52/t⌋.
        one_s: __m512i,
    }

    impl Finish52 {
        #[target_feature(enable = "avx512f")]
        unsafe fn new(t: u64) -> Self {
            let w = (1u64 << 52) % t;
            let v = |x: u64| _mm512_set1_epi64(x as i64);
            Finish52 {
                tv: v(t),
                mask52: v((1 << 52) - 1),
                w: (v(w), v((((w as u128) << 52) / t as u128) as u64)),
                one_s: v((1u64 << 52) / t),
            }
        }
    }

    /// A lazy sum lo + hi·2^52 of IFMA halves (hi + lo/2^52 below 2^52) reduced to [0, 4t) as
    /// h·(2^52 mod t) + l by two 52-bit Shoup products.
    #[inline]
    #[target_feature(enable = "avx512f,avx512ifma")]
    unsafe fn finish52(f: &Finish52, lo: __m512i, hi: __m512i) -> __m512i {
        let zero = _mm512_setzero_si512();
        let h = _mm512_add_epi64(hi, _mm512_srli_epi64(lo, 52));
        let l = _mm512_and_si512(lo, f.mask52);
        let qh = _mm512_madd52hi_epu64(zero, h, f.w.1);
        let rh = _mm512_and_si512(
            _mm512_sub_epi64(_mm512_madd52lo_epu64(zero, h, f.w.0), _mm512_madd52lo_epu64(zero, qh, f.tv)),
            f.mask52,
        );
        let ql = _mm512_madd52hi_epu64(zero, l, f.one_s);
        let rl = _mm512_and_si512(_mm512_sub_epi64(l, _mm512_madd52lo_epu64(zero, ql, f.tv)), f.mask52);
        _mm512_add_epi64(rh, rl)
    }

    /// Σ_a rows[a]·hats[a] (+ out with `add`) mod t, lazily (see [`finish64`]): t < 2^61, as
    /// many rows as keep the middle sum in 64 bits (the caller's pass limit).
    #[target_feature(enable = "avx512f,avx512dq")]
    pub unsafe fn accumulate_lazy64(out: &mut [u64], rows: &[&[u64]], hats: &[u64], t: u64, add: bool) {
        let n = out.len();
        let lanes = n / 8 * 8;
        let fin = Finish64::new(t);
        let h_lo: Vec<__m512i> = hats.iter().map(|&h| _mm512_set1_epi64((h & 0xffff_ffff) as i64)).collect();
        let h_hi: Vec<__m512i> = hats.iter().map(|&h| _mm512_set1_epi64((h >> 32) as i64)).collect();
        let mut c = 0;
        while c < lanes {
            let (mut low, mut mid, mut top) = (_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512());
            for (a, row) in rows.iter().enumerate() {
                let x = _mm512_loadu_si512(row.as_ptr().add(c) as *const _);
                let x_hi = _mm512_srli_epi64(x, 32);
                let ll = _mm512_mul_epu32(x, h_lo[a]);
                let cross = _mm512_add_epi64(_mm512_mul_epu32(x, h_hi[a]), _mm512_mul_epu32(x_hi, h_lo[a]));
                low = _mm512_add_epi64(low, _mm512_and_si512(ll, fin.mask32));
                mid = _mm512_add_epi64(mid, _mm512_add_epi64(cross, _mm512_srli_epi64(ll, 32)));
                top = _mm512_add_epi64(top, _mm512_mul_epu32(x_hi, h_hi[a]));
            }
            let mut s = finish64(&fin, low, mid, top);
            if add {
                s = _mm512_add_epi64(s, _mm512_loadu_si512(out.as_ptr().add(c) as *const _));
            }
            _mm512_storeu_si512(out.as_mut_ptr().add(c) as *mut _, below_t(s, t));
            c += 8;
        }
        accumulate_tail(&mut out[lanes..], rows, hats, lanes, t, add);
    }

    /// Σ_a rows[a]·hats[a] (+ out with `add`) mod t by IFMA halves summed lazily (see
    /// [`finish52`]): rows < 2^52, t < 2^50, few enough rows that the high sum stays below 2^52.
    #[target_feature(enable = "avx512f,avx512ifma")]
    pub unsafe fn accumulate_lazy52(out: &mut [u64], rows: &[&[u64]], hats: &[u64], t: u64, add: bool) {
        let n = out.len();
        let lanes = n / 8 * 8;
        let zero = _mm512_setzero_si512();
        let fin = Finish52::new(t);
        let hv: Vec<__m512i> = hats.iter().map(|&h| _mm512_set1_epi64(h as i64)).collect();
        let mut c = 0;
        while c < lanes {
            let (mut lo, mut hi) = (zero, zero);
            for (a, row) in rows.iter().enumerate() {
                let x = _mm512_loadu_si512(row.as_ptr().add(c) as *const _);
                lo = _mm512_madd52lo_epu64(lo, x, hv[a]);
                hi = _mm512_madd52hi_epu64(hi, x, hv[a]);
            }
            let mut s = finish52(&fin, lo, hi);
            if add {
                s = _mm512_add_epi64(s, _mm512_loadu_si512(out.as_ptr().add(c) as *const _));
            }
            _mm512_storeu_si512(out.as_mut_ptr().add(c) as *mut _, below_t(s, t));
            c += 8;
        }
        accumulate_tail(&mut out[lanes..], rows, hats, lanes, t, add);
    }

    /// The entries past the last whole vector of a row sum, in 128-bit arithmetic.
    fn accumulate_tail(out: &mut [u64], rows: &[&[u64]], hats: &[u64], offset: usize, t: u64, add: bool) {
        for (j, o) in out.iter_mut().enumerate() {
            let mut acc: u128 = if add { *o as u128 } else { 0 };
            for (row, &h) in rows.iter().zip(hats) {
                acc = (acc + row[offset + j] as u128 * h as u128) % t as u128;
            }
            *o = acc as u64;
        }
    }

    /// See [`super::dot`]: t < 2^61, at most as many pairs as keep the middle sum in 64 bits.
    /// Each product x·y is split into 32-bit pieces: ll = x_lo·y_lo (its halves summed
    /// apart), x_lo·y_hi + x_hi·y_lo + ll_hi (the middle sum) and x_hi·y_hi; the sum
    /// H·2^64 + L is reduced once as H·(2^64 mod t) + L.
    #[target_feature(enable = "avx512f,avx512dq")]
    pub unsafe fn dot64(out: &mut [u64], pairs: &[(&[u64], &[u64])], t: u64, add: bool) {
        let n = out.len();
        let lanes = n / 8 * 8;
        let mask32 = _mm512_set1_epi64(0xffff_ffff);
        let fin = Finish64::new(t);
        let mut c = 0;
        while c < lanes {
            let (mut low, mut mid, mut top) = (_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512());
            for (x, y) in pairs {
                let a = _mm512_loadu_si512(x.as_ptr().add(c) as *const _);
                let b = _mm512_loadu_si512(y.as_ptr().add(c) as *const _);
                let (a_hi, b_hi) = (_mm512_srli_epi64(a, 32), _mm512_srli_epi64(b, 32));
                let ll = _mm512_mul_epu32(a, b);
                let cross = _mm512_add_epi64(_mm512_mul_epu32(a, b_hi), _mm512_mul_epu32(a_hi, b));
                low = _mm512_add_epi64(low, _mm512_and_si512(ll, mask32));
                mid = _mm512_add_epi64(mid, _mm512_add_epi64(cross, _mm512_srli_epi64(ll, 32)));
                top = _mm512_add_epi64(top, _mm512_mul_epu32(a_hi, b_hi));
            }
            let mut s = finish64(&fin, low, mid, top);
            if add {
                s = _mm512_add_epi64(s, _mm512_loadu_si512(out.as_ptr().add(c) as *const _));
            }
            _mm512_storeu_si512(out.as_mut_ptr().add(c) as *mut _, below_t(s, t));
            c += 8;
        }
        dot_tail(&mut out[lanes..], pairs, lanes, t, add);
    }

    /// See [`super::dot`]: t < 2^50, at most 15 pairs. The 104-bit products are summed as
    /// their low and high 52-bit halves (IFMA adds them straight into the accumulators); the
    /// sum h·2^52 + l is reduced once as h·(2^52 mod t) + l by two 52-bit Shoup products.
    #[target_feature(enable = "avx512f,avx512ifma")]
    pub unsafe fn dot52(out: &mut [u64], pairs: &[(&[u64], &[u64])], t: u64, add: bool) {
        let n = out.len();
        let lanes = n / 8 * 8;
        let zero = _mm512_setzero_si512();
        let fin = Finish52::new(t);
        let mut c = 0;
        while c < lanes {
            let (mut lo, mut hi) = (zero, zero);
            for (x, y) in pairs {
                let a = _mm512_loadu_si512(x.as_ptr().add(c) as *const _);
                let b = _mm512_loadu_si512(y.as_ptr().add(c) as *const _);
                lo = _mm512_madd52lo_epu64(lo, a, b);
                hi = _mm512_madd52hi_epu64(hi, a, b);
            }
            let mut s = finish52(&fin, lo, hi);
            if add {
                s = _mm512_add_epi64(s, _mm512_loadu_si512(out.as_ptr().add(c) as *const _));
            }
            _mm512_storeu_si512(out.as_mut_ptr().add(c) as *mut _, below_t(s, t));
            c += 8;
        }
        dot_tail(&mut out[lanes..], pairs, lanes, t, add);
    }

    /// The entries past the last whole vector (odd test lengths only), in 128-bit arithmetic.
    fn dot_tail(out: &mut [u64], pairs: &[(&[u64], &[u64])], offset: usize, t: u64, add: bool) {
        for (j, o) in out.iter_mut().enumerate() {
            let mut acc: u128 = if add { *o as u128 } else { 0 };
            for (x, y) in pairs {
                acc = (acc + x[offset + j] as u128 * y[offset + j] as u128) % t as u128;
            }
            *o = acc as u64;
        }
    }

    /// `r` or `r − t`, whichever is in [0, t), for r < 2t.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn below(r: __m512i, tv: __m512i) -> __m512i {
        _mm512_min_epu64(r, _mm512_sub_epi64(r, tv))
    }

    /// `x · w mod t` (in [0, t)) for x < 2^52, w < t < 2^50, ws = ⌊w·2^52/t⌋: x·w − ⌊x·ws/2^52⌋·t
    /// lies in [0, 2t) and is read from the low 52 bits of both products.
    #[inline]
    #[target_feature(enable = "avx512f,avx512ifma")]
    unsafe fn shoup52(x: __m512i, wv: __m512i, wsv: __m512i, tv: __m512i) -> __m512i {
        let zero = _mm512_setzero_si512();
        let q = _mm512_madd52hi_epu64(zero, x, wsv);
        let r = _mm512_and_si512(
            _mm512_sub_epi64(_mm512_madd52lo_epu64(zero, x, wv), _mm512_madd52lo_epu64(zero, q, tv)),
            _mm512_set1_epi64(((1u64 << 52) - 1) as i64),
        );
        below(r, tv)
    }

    /// See [`super::shoup_limb`], for any t < 2^62 (64-bit Shoup products).
    #[target_feature(enable = "avx512f,avx512dq")]
    pub unsafe fn shoup_limb64(out: &mut [u64], v: &[u64], w: u64, t: u64, op: super::LimbOp) {
        let n = out.len();
        let lanes = n / 8 * 8;
        let ws = (((w as u128) << 64) / t as u128) as u64;
        let (tv, wv) = (_mm512_set1_epi64(t as i64), _mm512_set1_epi64(w as i64));
        let (wsv, ws_hi) = (_mm512_set1_epi64(ws as i64), _mm512_set1_epi64((ws >> 32) as i64));
        let mut c = 0;
        while c < lanes {
            let u = _mm512_loadu_si512(out.as_ptr().add(c) as *const _);
            let r = match op {
                super::LimbOp::Mul => below(shoup64(u, wv, wsv, ws_hi, tv), tv),
                super::LimbOp::MulAdd => {
                    let x = _mm512_loadu_si512(v.as_ptr().add(c) as *const _);
                    below(_mm512_add_epi64(u, below(shoup64(x, wv, wsv, ws_hi, tv), tv)), tv)
                }
                super::LimbOp::SubMul => {
                    let x = _mm512_loadu_si512(v.as_ptr().add(c) as *const _);
                    let d = _mm512_sub_epi64(u, x);
                    let d = _mm512_min_epu64(d, _mm512_add_epi64(d, tv));
                    below(shoup64(d, wv, wsv, ws_hi, tv), tv)
                }
            };
            _mm512_storeu_si512(out.as_mut_ptr().add(c) as *mut _, r);
            c += 8;
        }
        let m = crate::arith::Modulus::new(t);
        super::shoup_limb_scalar(&mut out[lanes..], if op == super::LimbOp::Mul { v } else { &v[lanes..] }, w, &m, op);
    }

    /// See [`super::shoup_limb`], for t < 2^50 (52-bit Shoup products on IFMA).
    #[target_feature(enable = "avx512f,avx512ifma")]
    pub unsafe fn shoup_limb52(out: &mut [u64], v: &[u64], w: u64, t: u64, op: super::LimbOp) {
        let n = out.len();
        let lanes = n / 8 * 8;
        let (tv, wv) = (_mm512_set1_epi64(t as i64), _mm512_set1_epi64(w as i64));
        let wsv = _mm512_set1_epi64((((w as u128) << 52) / t as u128) as i64);
        let mut c = 0;
        while c < lanes {
            let u = _mm512_loadu_si512(out.as_ptr().add(c) as *const _);
            let r = match op {
                super::LimbOp::Mul => shoup52(u, wv, wsv, tv),
                super::LimbOp::MulAdd => {
                    let x = _mm512_loadu_si512(v.as_ptr().add(c) as *const _);
                    let s = _mm512_add_epi64(u, shoup52(x, wv, wsv, tv));
                    _mm512_min_epu64(s, _mm512_sub_epi64(s, tv))
                }
                super::LimbOp::SubMul => {
                    let x = _mm512_loadu_si512(v.as_ptr().add(c) as *const _);
                    let d = _mm512_sub_epi64(u, x);
                    shoup52(_mm512_min_epu64(d, _mm512_add_epi64(d, tv)), wv, wsv, tv)
                }
            };
            _mm512_storeu_si512(out.as_mut_ptr().add(c) as *mut _, r);
            c += 8;
        }
        let m = crate::arith::Modulus::new(t);
        super::shoup_limb_scalar(&mut out[lanes..], if op == super::LimbOp::Mul { v } else { &v[lanes..] }, w, &m, op);
    }

    /// See [`super::centred_residues`] (t < 2^62).
    #[target_feature(enable = "avx512f,avx512dq")]
    pub unsafe fn centred_residues(out: &mut [u64], x: &[u64], from: u64, t: u64) {
        let n = out.len().min(x.len());
        let lanes = n / 8 * 8;
        let one_s = ((1u128 << 64) / t as u128) as u64;
        let (tv, onev) = (_mm512_set1_epi64(t as i64), _mm512_set1_epi64(1));
        let (one_sv, one_s_hi) = (_mm512_set1_epi64(one_s as i64), _mm512_set1_epi64((one_s >> 32) as i64));
        let from_mod = _mm512_set1_epi64((from % t) as i64);
        let half = _mm512_set1_epi64((from / 2) as i64);
        let mut c = 0;
        while c < lanes {
            let v = _mm512_loadu_si512(x.as_ptr().add(c) as *const _);
            let r = shoup64(v, onev, one_sv, one_s_hi, tv);
            let r = _mm512_min_epu64(r, _mm512_sub_epi64(r, tv));
            // Above from/2: subtract from mod t (modulo t).
            let neg = _mm512_cmpgt_epu64_mask(v, half);
            let d = _mm512_sub_epi64(r, from_mod);
            let d = _mm512_min_epu64(d, _mm512_add_epi64(d, tv));
            _mm512_storeu_si512(out.as_mut_ptr().add(c) as *mut _, _mm512_mask_mov_epi64(r, neg, d));
            c += 8;
        }
        let m = crate::arith::Modulus::new(t);
        super::centred_residues_scalar(&mut out[lanes..n], &x[lanes..n], from, &m);
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
            accumulate_wide(&mut got, &refs, 1 << 61, &hats, &m, true);
            assert_eq!(got, want, "t {t_bits} bits, {count} rows, adding");
            let mut got = start.clone();
            accumulate_wide(&mut got, &refs, 1 << 61, &hats, &m, false);
            let fresh: Vec<u64> = want.iter().zip(&start).map(|(&w, &s)| m.sub(w, s)).collect();
            assert_eq!(got, fresh, "t {t_bits} bits, {count} rows, overwriting");
        }
    }

    #[test]
    fn lazy_dot_products_equal_u128_arithmetic_for_every_prime_width() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(13);
        // Widths across both kernels and their pass limits (61 bits: 3 pairs per pass; IFMA:
        // 15), pair counts across those limits, odd lengths for the tails.
        for &(bits, count, len) in &[
            (30u32, 5usize, 1001usize),
            (40, 16, 37),
            (49, 15, 64),
            (49, 31, 9),
            (50, 7, 77),
            (52, 6, 1003),
            (57, 40, 65),
            (58, 6, 16),
            (60, 9, 33),
            (61, 7, 1001),
            (61, 1, 8),
            (45, 0, 24),
        ] {
            let t = crate::arith::ntt_primes(bits, 1, 1 << 10, &[])[0];
            assert!(t < DOT_MAX_PRIME);
            let m = Modulus::new(t);
            // The first 8 coefficients at t − 1 everywhere (the largest sums), the rest random.
            let draw = |rng: &mut rand_chacha::ChaCha20Rng, c: usize| if c < 8 { t - 1 } else { rng.gen_range(0..t) };
            let xs: Vec<Vec<u64>> = (0..count).map(|_| (0..len).map(|c| draw(&mut rng, c)).collect()).collect();
            let ys: Vec<Vec<u64>> = (0..count).map(|_| (0..len).map(|c| draw(&mut rng, c)).collect()).collect();
            let start: Vec<u64> = (0..len).map(|c| draw(&mut rng, c)).collect();
            let pairs: Vec<(&[u64], &[u64])> = xs.iter().zip(&ys).map(|(x, y)| (x.as_slice(), y.as_slice())).collect();
            let sum =
                |c: usize| xs.iter().zip(&ys).fold(0u128, |a, (x, y)| (a + x[c] as u128 * y[c] as u128) % t as u128);
            let fresh: Vec<u64> = (0..len).map(|c| sum(c) as u64).collect();
            let added: Vec<u64> = (0..len).map(|c| ((sum(c) + start[c] as u128) % t as u128) as u64).collect();
            let mut got = vec![u64::MAX; len];
            if dot(&mut got, &pairs, &m, false) {
                assert_eq!(got, fresh, "{bits}-bit prime, {count} pairs");
                let mut got = start.clone();
                assert!(dot(&mut got, &pairs, &m, true));
                assert_eq!(got, added, "{bits}-bit prime, {count} pairs, adding");
            } else {
                assert!(!has_avx512dq(), "no kernel for a {bits}-bit prime on an AVX-512 CPU");
                assert_eq!(got, vec![u64::MAX; len], "a refused call touched its output");
            }
        }
    }

    #[test]
    fn limb_constant_products_and_centred_residues_equal_u128_arithmetic() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(17);
        for &(bits, len) in &[(30u32, 1001usize), (40, 37), (49, 64), (50, 77), (57, 9), (60, 1003), (61, 16)] {
            let t = crate::arith::ntt_primes(bits, 1, 1 << 10, &[])[0];
            let m = Modulus::new(t);
            let draw = |rng: &mut rand_chacha::ChaCha20Rng, c: usize| if c < 8 { t - 1 } else { rng.gen_range(0..t) };
            let u: Vec<u64> = (0..len).map(|c| draw(&mut rng, c)).collect();
            let v: Vec<u64> = (0..len).map(|c| if c < 8 { 0 } else { draw(&mut rng, c) }).collect();
            for w in [0, 1, t - 1, rng.gen_range(0..t)] {
                let mul = |a: u64| (a as u128 * w as u128 % t as u128) as u64;
                for (op, want) in [
                    (LimbOp::Mul, u.iter().map(|&a| mul(a)).collect::<Vec<_>>()),
                    (
                        LimbOp::MulAdd,
                        u.iter().zip(&v).map(|(&a, &b)| ((a as u128 + mul(b) as u128) % t as u128) as u64).collect(),
                    ),
                    (LimbOp::SubMul, u.iter().zip(&v).map(|(&a, &b)| mul((a + t - b) % t)).collect()),
                ] {
                    let mut got = u.clone();
                    shoup_limb(&mut got, &v, w, &m, op);
                    assert_eq!(got, want, "{bits}-bit prime, w {w}, {op:?}");
                    let mut got = u.clone();
                    shoup_limb_scalar(&mut got, &v, w, &m, op);
                    assert_eq!(got, want, "{bits}-bit prime, w {w}, {op:?}, scalar");
                }
            }
            // Residues of integers modulo a wider prime (as a rescale's dropped limb is), centred.
            let from = crate::arith::ntt_primes(60, 1, 1 << 10, &[t])[0];
            let mut x: Vec<u64> = (0..len).map(|_| rng.gen_range(0..from)).collect();
            x[0] = from - 1;
            x[1] = from / 2;
            x[2] = from / 2 + 1;
            x[3] = 0;
            let want: Vec<u64> = x
                .iter()
                .map(|&a| {
                    let centred = if a > from / 2 { a as i128 - from as i128 } else { a as i128 };
                    centred.rem_euclid(t as i128) as u64
                })
                .collect();
            let mut got = vec![u64::MAX; len];
            centred_residues(&mut got, &x, from, &m);
            assert_eq!(got, want, "{bits}-bit prime, centred");
            let mut got = vec![u64::MAX; len];
            centred_residues_scalar(&mut got, &x, from, &m);
            assert_eq!(got, want, "{bits}-bit prime, centred, scalar");
        }
    }
}
