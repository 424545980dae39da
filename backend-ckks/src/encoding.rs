//! Canonical-embedding encoding of real vectors into the slots of X^N + 1.
//!
//! With n ≤ N/2 slots (a power of two) a message is a polynomial in Y = X^(N/2n) of degree
//! < 2n whose values at the roots ζ^(5^j) (ζ a primitive 4n-th root of unity, j < n) are the
//! slot values; the "special FFT" maps between the n complex values and the 2n real
//! coefficients in O(n log n). Slot j of a rotation by r holds slot j + r (X → X^(5^r)).

/// Special FFT tables for `slots` slots. Complex vectors are held split (real parts, imaginary
/// parts) so the butterflies vectorise; on CPUs with AVX-512 or AVX2+FMA the same loops are
/// compiled for those instruction sets and chosen at run time.
#[derive(Clone, Debug)]
pub struct Encoder {
    /// Number of slots n.
    pub slots: usize,
    /// Stride of Y = X^gap in the ring of dimension N: gap = N / 2n.
    pub gap: usize,
    /// Twiddles of the forward FFT, stage by stage (len = 2, 4, …, n; len/2 each).
    pub(crate) fwd: Twiddles,
    /// Twiddles of the inverse FFT, in the same layout.
    pub(crate) inv: Twiddles,
    /// Bit-reversal permutation of 0..n.
    pub(crate) bit_rev: Vec<u32>,
}

/// Real and imaginary parts of a twiddle table.
#[derive(Clone, Debug, Default)]
pub(crate) struct Twiddles {
    pub(crate) re: Vec<f64>,
    pub(crate) im: Vec<f64>,
}

/// Forward (`inverse = false`: coefficients → values, input bit-reversed) or inverse (values →
/// n·coefficients, output bit-reversed) radix-2 FFT over split complex vectors.
#[inline(always)]
fn fft_stages(tw: &Twiddles, re: &mut [f64], im: &mut [f64], inverse: bool) {
    let n = re.len();
    let stages: Vec<(usize, usize)> = {
        // (len, offset of the stage's twiddles); stages were stored from len = 2 upwards.
        let mut v = Vec::new();
        let (mut len, mut offset) = (2, 0);
        while len <= n {
            v.push((len, offset));
            offset += len / 2;
            len *= 2;
        }
        if inverse {
            v.reverse();
        }
        v
    };
    for (len, offset) in stages {
        let half = len / 2;
        let (wr, wi) = (&tw.re[offset..offset + half], &tw.im[offset..offset + half]);
        for (r, i) in re.chunks_exact_mut(len).zip(im.chunks_exact_mut(len)) {
            let (r0, r1) = r.split_at_mut(half);
            let (i0, i1) = i.split_at_mut(half);
            if inverse {
                for j in 0..half {
                    let (ur, ui) = (r0[j] + r1[j], i0[j] + i1[j]);
                    let (dr, di) = (r0[j] - r1[j], i0[j] - i1[j]);
                    r0[j] = ur;
                    i0[j] = ui;
                    r1[j] = dr * wr[j] - di * wi[j];
                    i1[j] = dr * wi[j] + di * wr[j];
                }
            } else {
                for j in 0..half {
                    let (tr, ti) = (r1[j] * wr[j] - i1[j] * wi[j], r1[j] * wi[j] + i1[j] * wr[j]);
                    let (ur, ui) = (r0[j], i0[j]);
                    r0[j] = ur + tr;
                    i0[j] = ui + ti;
                    r1[j] = ur - tr;
                    i1[j] = ui - ti;
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod fft_x86 {
    use super::{fft_stages, Twiddles};

    /// [`fft_stages`] compiled for AVX-512.
    ///
    /// # Safety
    /// The CPU must have AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn avx512(tw: &Twiddles, re: &mut [f64], im: &mut [f64], inverse: bool) {
        fft_stages(tw, re, im, inverse)
    }

    /// [`fft_stages`] compiled for AVX2 with FMA.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn avx2(tw: &Twiddles, re: &mut [f64], im: &mut [f64], inverse: bool) {
        fft_stages(tw, re, im, inverse)
    }
}

/// [`fft_stages`] with the widest vector instructions this CPU has.
fn fft(tw: &Twiddles, re: &mut [f64], im: &mut [f64], inverse: bool) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static LEVEL: OnceLock<u8> = OnceLock::new();
        let level = *LEVEL.get_or_init(|| {
            if is_x86_feature_detected!("avx512f") {
                2
            } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                1
            } else {
                0
            }
        });
        // SAFETY: each variant runs only on a CPU that has its instruction set (checked above).
        match level {
            2 => return unsafe { fft_x86::avx512(tw, re, im, inverse) },
            1 => return unsafe { fft_x86::avx2(tw, re, im, inverse) },
            _ => {}
        }
    }
    fft_stages(tw, re, im, inverse)
}

impl Encoder {
    /// Tables for `slots` slots in a ring of dimension `ring_dim` (slots a power of two ≤ N/2).
    pub fn new(ring_dim: usize, slots: usize) -> Self {
        assert!(slots.is_power_of_two() && slots <= ring_dim / 2);
        let m = 4 * slots;
        let mut rot_group = Vec::with_capacity(slots);
        let mut g = 1usize;
        for _ in 0..slots {
            rot_group.push(g);
            g = (g * 5) % m;
        }
        let angle = |k: usize| 2.0 * std::f64::consts::PI * k as f64 / m as f64;
        // Contiguous per-stage twiddles: the FFTs then read memory in order.
        let (mut fwd, mut inv) = (Twiddles::default(), Twiddles::default());
        let mut len = 2;
        while len <= slots {
            let lenq = 4 * len;
            let step = m / lenq;
            for &g in &rot_group[..len / 2] {
                let (f, i) = (angle((g % lenq) * step), angle((lenq - g % lenq) * step));
                fwd.re.push(f.cos());
                fwd.im.push(f.sin());
                inv.re.push(i.cos());
                inv.im.push(i.sin());
            }
            len *= 2;
        }
        let bits = slots.trailing_zeros();
        let bit_rev = (0..slots as u32).map(|i| if bits == 0 { 0 } else { i.reverse_bits() >> (32 - bits) }).collect();
        Encoder { slots, gap: ring_dim / (2 * slots), fwd, inv, bit_rev }
    }

    /// The real coefficients (of X^0 … X^(N−1), times `scale`, not yet rounded) whose slots
    /// hold `values` (missing values are 0). Only every `gap`-th coefficient can be nonzero;
    /// returns the 2n coefficients of Y^0 … Y^(2n−1).
    pub fn encode_coeffs(&self, values: &[f64], scale: f64) -> Vec<f64> {
        self.encode_complex_coeffs(values, &[], scale)
    }

    /// [`Encoder::encode_coeffs`] for complex slot values (real parts `re`, imaginary parts
    /// `im`; missing ones are 0).
    pub fn encode_complex_coeffs(&self, re: &[f64], im: &[f64], scale: f64) -> Vec<f64> {
        let n = self.slots;
        let padded = |v: &[f64]| -> Vec<f64> { (0..n).map(|j| v.get(j).copied().unwrap_or(0.0)).collect() };
        let (mut re, mut im) = (padded(re), padded(im));
        fft(&self.inv, &mut re, &mut im, true);
        let s = scale / n as f64;
        let mut out = vec![0.0; 2 * n];
        let (lo, hi) = out.split_at_mut(n);
        for ((a, b), &r) in lo.iter_mut().zip(hi.iter_mut()).zip(&self.bit_rev) {
            *a = re[r as usize] * s;
            *b = im[r as usize] * s;
        }
        out
    }

    /// The slot values of a message given by its 2n coefficients of Y (already divided by the
    /// scale).
    pub fn decode_coeffs(&self, coeffs: &[f64]) -> Vec<f64> {
        let n = self.slots;
        let mut re: Vec<f64> = self.bit_rev.iter().map(|&r| coeffs[r as usize]).collect();
        let mut im: Vec<f64> = self.bit_rev.iter().map(|&r| coeffs[r as usize + n]).collect();
        fft(&self.fwd, &mut re, &mut im, false);
        re
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_then_decode_is_the_identity_and_matches_direct_evaluation() {
        for (ring, slots) in [(64usize, 32usize), (64, 8), (1024, 512), (1024, 1)] {
            let e = Encoder::new(ring, slots);
            let vals: Vec<f64> = (0..slots).map(|i| ((i * 37 % 11) as f64 - 5.0) / 3.0).collect();
            let c = e.encode_coeffs(&vals, 1.0);
            let back = e.decode_coeffs(&c);
            for (a, b) in vals.iter().zip(&back) {
                assert!((a - b).abs() < 1e-12, "{a} vs {b}");
            }
            // Direct evaluation of m(Y) at ζ_4n^(5^j).
            let m = 4 * slots;
            for j in 0..slots.min(4) {
                let e5 = (0..j).fold(1usize, |g, _| g * 5 % m);
                let (mut re, mut _im) = (0.0, 0.0);
                for (k, &ck) in c.iter().enumerate() {
                    let a = 2.0 * std::f64::consts::PI * (e5 * k % m) as f64 / m as f64;
                    re += ck * a.cos();
                    _im += ck * a.sin();
                }
                assert!((re - vals[j]).abs() < 1e-9, "slot {j}: {re} vs {}", vals[j]);
            }
        }
    }
}
