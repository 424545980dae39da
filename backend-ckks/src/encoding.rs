//! Canonical-embedding encoding of real vectors into the slots of X^N + 1.
//!
//! With n ≤ N/2 slots (a power of two) a message is a polynomial in Y = X^(N/2n) of degree
//! < 2n whose values at the roots ζ^(5^j) (ζ a primitive 4n-th root of unity, j < n) are the
//! slot values; the "special FFT" maps between the n complex values and the 2n real
//! coefficients in O(n log n). Slot j of a rotation by r holds slot j + r (X → X^(5^r)).

/// A complex number (only what the FFT needs).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct C64 {
    re: f64,
    im: f64,
}

impl C64 {
    #[inline(always)]
    fn add(self, o: C64) -> C64 {
        C64 { re: self.re + o.re, im: self.im + o.im }
    }
    #[inline(always)]
    fn sub(self, o: C64) -> C64 {
        C64 { re: self.re - o.re, im: self.im - o.im }
    }
    #[inline(always)]
    fn mul(self, o: C64) -> C64 {
        C64 { re: self.re * o.re - self.im * o.im, im: self.re * o.im + self.im * o.re }
    }
}

/// Special FFT tables for `slots` slots.
#[derive(Clone, Debug)]
pub struct Encoder {
    /// Number of slots n.
    pub slots: usize,
    /// Stride of Y = X^gap in the ring of dimension N: gap = N / 2n.
    pub gap: usize,
    /// Twiddles of the forward FFT, stage by stage (len = 2, 4, …, n; len/2 each).
    fwd_twiddles: Vec<C64>,
    /// Twiddles of the inverse FFT, in the same layout.
    inv_twiddles: Vec<C64>,
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
        let root = |k: usize| {
            let a = 2.0 * std::f64::consts::PI * k as f64 / m as f64;
            C64 { re: a.cos(), im: a.sin() }
        };
        // Contiguous per-stage twiddles: the FFTs then read memory in order.
        let (mut fwd_twiddles, mut inv_twiddles) = (Vec::with_capacity(slots), Vec::with_capacity(slots));
        let mut len = 2;
        while len <= slots {
            let lenq = 4 * len;
            let step = m / lenq;
            for &g in &rot_group[..len / 2] {
                fwd_twiddles.push(root((g % lenq) * step));
                inv_twiddles.push(root((lenq - g % lenq) * step));
            }
            len *= 2;
        }
        Encoder { slots, gap: ring_dim / (2 * slots), fwd_twiddles, inv_twiddles }
    }

    fn bit_reverse(v: &mut [C64]) {
        let n = v.len();
        let mut j = 0;
        for i in 1..n {
            let mut bit = n >> 1;
            while j & bit != 0 {
                j ^= bit;
                bit >>= 1;
            }
            j |= bit;
            if i < j {
                v.swap(i, j);
            }
        }
    }

    /// Evaluates: complex coefficients → slot values.
    fn fft(&self, v: &mut [C64]) {
        let n = v.len();
        Self::bit_reverse(v);
        let mut len = 2;
        let mut offset = 0;
        while len <= n {
            let half = len / 2;
            let tw = &self.fwd_twiddles[offset..offset + half];
            offset += half;
            for i in (0..n).step_by(len) {
                for j in 0..half {
                    let w = tw[j];
                    let u = v[i + j];
                    let t = v[i + j + half].mul(w);
                    v[i + j] = u.add(t);
                    v[i + j + half] = u.sub(t);
                }
            }
            len *= 2;
        }
    }

    /// Interpolates: slot values → complex coefficients.
    fn ifft(&self, v: &mut [C64]) {
        let n = v.len();
        let mut len = n;
        // Stage offsets of the twiddle table (stages were stored from len = 2 upwards).
        let mut offset = n - 1;
        while len >= 2 {
            let half = len / 2;
            offset -= half;
            let tw = &self.inv_twiddles[offset..offset + half];
            for i in (0..n).step_by(len) {
                for j in 0..half {
                    let w = tw[j];
                    let u = v[i + j].add(v[i + j + half]);
                    let t = v[i + j].sub(v[i + j + half]).mul(w);
                    v[i + j] = u;
                    v[i + j + half] = t;
                }
            }
            len /= 2;
        }
        Self::bit_reverse(v);
        let inv = 1.0 / n as f64;
        for x in v.iter_mut() {
            x.re *= inv;
            x.im *= inv;
        }
    }

    /// The real coefficients (of X^0 … X^(N−1), times `scale`, not yet rounded) whose slots
    /// hold `values` (missing values are 0). Only every `gap`-th coefficient can be nonzero;
    /// returns the 2n coefficients of Y^0 … Y^(2n−1).
    pub fn encode_coeffs(&self, values: &[f64], scale: f64) -> Vec<f64> {
        let n = self.slots;
        let mut v: Vec<C64> = (0..n).map(|j| C64 { re: values.get(j).copied().unwrap_or(0.0), im: 0.0 }).collect();
        self.ifft(&mut v);
        let mut out = vec![0.0; 2 * n];
        for j in 0..n {
            out[j] = v[j].re * scale;
            out[j + n] = v[j].im * scale;
        }
        out
    }

    /// The slot values of a message given by its 2n coefficients of Y (already divided by the
    /// scale).
    pub fn decode_coeffs(&self, coeffs: &[f64]) -> Vec<f64> {
        let n = self.slots;
        let mut v: Vec<C64> = (0..n).map(|j| C64 { re: coeffs[j], im: coeffs[j + n] }).collect();
        self.fft(&mut v);
        v.into_iter().map(|c| c.re).collect()
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
