//! The encoder's special FFT as sparse linear maps on complex slot vectors — the building
//! blocks of bootstrapping's SlotToCoeff (the forward FFT) and CoeffToSlot (its inverse).
//!
//! Each radix-2 stage of [`crate::encoding::Encoder`]'s FFT touches, at slot p, only slots p
//! and p ± half, so in the rotation basis (`rot(v, r)[p] = v[p + r mod n]`) it is three
//! diagonals: offsets 0, half and n − half. Bit reversal is not a rotation-sparse map; as in
//! every CKKS bootstrapping it is left out: CoeffToSlot leaves the coefficients in bit-reversed
//! slot order, the slot-wise modular reduction does not care, and SlotToCoeff takes them in
//! that order. Consecutive stages multiply into one map of more diagonals ([`merge`]), which
//! trades rotations for levels: k stages in one level need up to 2^(k+1) − 1 diagonals.
//!
//! This module is cleartext arithmetic, checked against the direct evaluation of the message
//! polynomial at the slot roots; the encrypted transforms evaluate the same diagonals.

use std::collections::BTreeMap;

use crate::encoding::Encoder;

/// A complex number.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Complex {
    /// Real part.
    pub re: f64,
    /// Imaginary part.
    pub im: f64,
}

impl Complex {
    /// `re + i·im`.
    pub fn new(re: f64, im: f64) -> Self {
        Complex { re, im }
    }
    fn add(self, o: Complex) -> Complex {
        Complex::new(self.re + o.re, self.im + o.im)
    }
    fn mul(self, o: Complex) -> Complex {
        Complex::new(self.re * o.re - self.im * o.im, self.re * o.im + self.im * o.re)
    }
    fn scale(self, k: f64) -> Complex {
        Complex::new(self.re * k, self.im * k)
    }
}

/// A linear map on n complex slots as its nonzero diagonals: `out = Σ_r d_r ⊙ rot(v, r)`,
/// offsets r in `0..n`.
#[derive(Clone, Debug, PartialEq)]
pub struct SlotTransform {
    /// Number of slots n.
    pub slots: usize,
    /// Diagonal of each offset.
    pub diagonals: BTreeMap<usize, Vec<Complex>>,
}

impl SlotTransform {
    fn empty(slots: usize) -> Self {
        SlotTransform { slots, diagonals: BTreeMap::new() }
    }

    fn entry(&mut self, r: usize, p: usize, w: Complex) {
        let n = self.slots;
        let d = self.diagonals.entry(r % n).or_insert_with(|| vec![Complex::default(); n]);
        d[p] = d[p].add(w);
    }

    /// Applies the map to a slot vector.
    pub fn apply(&self, v: &[Complex]) -> Vec<Complex> {
        let n = self.slots;
        let mut out = vec![Complex::default(); n];
        for (&r, d) in &self.diagonals {
            for p in 0..n {
                out[p] = out[p].add(d[p].mul(v[(p + r) % n]));
            }
        }
        out
    }

    /// `self ∘ first` (first applied first): the diagonals of the product.
    pub fn after(&self, first: &SlotTransform) -> SlotTransform {
        let n = self.slots;
        let mut out = SlotTransform::empty(n);
        // (A∘B)v = Σ_a a ⊙ rot(Σ_b b ⊙ rot(v, b'), a') = Σ_{a,b} (a ⊙ rot(b, a')) ⊙ rot(v, a' + b').
        for (&ra, a) in &self.diagonals {
            for (&rb, b) in &first.diagonals {
                for p in 0..n {
                    let w = a[p].mul(b[(p + ra) % n]);
                    if w != Complex::default() {
                        out.entry(ra + rb, p, w);
                    }
                }
            }
        }
        out
    }

    /// The same map on `m` slots (a multiple of n) acting on n-periodic vectors: every
    /// diagonal repeated m/n times (on such vectors a rotation by r and by r + n agree; an
    /// offset above n/2 stays the same negative rotation).
    pub fn lift(&self, m: usize) -> SlotTransform {
        let n = self.slots;
        assert!(m.is_multiple_of(n), "{m} slots are not a multiple of {n}");
        let diagonals = self
            .diagonals
            .iter()
            .map(|(&r, d)| (if r > n / 2 { r + m - n } else { r }, (0..m).map(|p| d[p % n]).collect()))
            .collect();
        SlotTransform { slots: m, diagonals }
    }

    /// `self` followed by a slot-wise product with `mask` (`mask ⊙ self(v)`).
    pub fn masked(&self, mask: &[Complex]) -> SlotTransform {
        assert_eq!(mask.len(), self.slots);
        let diagonals =
            self.diagonals.iter().map(|(&r, d)| (r, d.iter().zip(mask).map(|(&x, &k)| x.mul(k)).collect())).collect();
        SlotTransform { slots: self.slots, diagonals }
    }

    /// The map `Σ_r d_r ⊙ rot(v, r)` of the given diagonals on `slots` slots.
    pub fn from_diagonals(slots: usize, diagonals: impl IntoIterator<Item = (usize, Vec<Complex>)>) -> Self {
        let mut t = SlotTransform::empty(slots);
        for (r, d) in diagonals {
            assert_eq!(d.len(), slots);
            for (p, w) in d.into_iter().enumerate() {
                t.entry(r, p, w);
            }
        }
        t
    }

    /// Number of rotations a baby-step giant-step evaluation needs (offsets other than 0).
    pub fn rotations(&self) -> usize {
        self.diagonals.keys().filter(|&&r| r != 0).count()
    }
}

/// The forward FFT's stages (coefficients in bit-reversed order → slot values), first stage
/// first: SlotToCoeff's maps.
pub fn slot_to_coeff_stages(enc: &Encoder) -> Vec<SlotTransform> {
    let n = enc.slots;
    let mut stages = Vec::new();
    let (mut len, mut offset) = (2, 0);
    while len <= n {
        let half = len / 2;
        let mut t = SlotTransform::empty(n);
        for p in 0..n {
            let j = p % len;
            if j < half {
                let w = Complex::new(enc.fwd.re[offset + j], enc.fwd.im[offset + j]);
                t.entry(0, p, Complex::new(1.0, 0.0));
                t.entry(half, p, w);
            } else {
                let w = Complex::new(enc.fwd.re[offset + j - half], enc.fwd.im[offset + j - half]);
                t.entry(n - half, p, Complex::new(1.0, 0.0));
                t.entry(0, p, w.scale(-1.0));
            }
        }
        stages.push(t);
        offset += half;
        len *= 2;
    }
    stages
}

/// The inverse FFT's stages (slot values → coefficients in bit-reversed order, the 1/n folded
/// into the last stage), first stage first: CoeffToSlot's maps.
pub fn coeff_to_slot_stages(enc: &Encoder) -> Vec<SlotTransform> {
    let n = enc.slots;
    let mut stages = Vec::new();
    let (mut len, mut offset) = (n, n.saturating_sub(1));
    while len >= 2 {
        let half = len / 2;
        offset -= half;
        let k = if len == 2 { 1.0 / n as f64 } else { 1.0 };
        let mut t = SlotTransform::empty(n);
        for p in 0..n {
            let j = p % len;
            if j < half {
                t.entry(0, p, Complex::new(k, 0.0));
                t.entry(half, p, Complex::new(k, 0.0));
            } else {
                let w = Complex::new(enc.inv.re[offset + j - half], enc.inv.im[offset + j - half]).scale(k);
                t.entry(n - half, p, w);
                t.entry(0, p, w.scale(-1.0));
            }
        }
        stages.push(t);
        len /= 2;
    }
    stages
}

/// Multiplies consecutive stages into `levels` maps (as even as possible; earlier groups take
/// the extra stage), each applied in one level.
pub fn merge(stages: &[SlotTransform], levels: usize) -> Vec<SlotTransform> {
    let levels = levels.clamp(1, stages.len().max(1));
    let (base, extra) = (stages.len() / levels, stages.len() % levels);
    let mut out = Vec::with_capacity(levels);
    let mut k = 0;
    for g in 0..levels {
        let size = base + usize::from(g < extra);
        let mut m = stages[k].clone();
        for s in &stages[k + 1..k + size] {
            m = s.after(&m);
        }
        out.push(m);
        k += size;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Slot k of the message whose complex coefficients are v: Σ_j v_j ζ^(5^k·j), ζ = e^(2πi/4n).
    fn direct(v: &[Complex]) -> Vec<Complex> {
        let n = v.len();
        let m = 4 * n;
        let mut g = 1usize;
        (0..n)
            .map(|_| {
                let z = v.iter().enumerate().fold(Complex::default(), |acc, (j, c)| {
                    let a = 2.0 * std::f64::consts::PI * ((g * j) % m) as f64 / m as f64;
                    acc.add(c.mul(Complex::new(a.cos(), a.sin())))
                });
                g = g * 5 % m;
                z
            })
            .collect()
    }

    fn close(a: &[Complex], b: &[Complex], what: &str) {
        for (k, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x.re - y.re).abs() < 1e-9 && (x.im - y.im).abs() < 1e-9, "{what}: slot {k}: {x:?} vs {y:?}");
        }
    }

    #[test]
    fn stages_compute_the_special_fft_and_its_inverse_up_to_bit_reversal() {
        for (ring, slots) in [(64usize, 32usize), (256, 16), (512, 256)] {
            let enc = Encoder::new(ring, slots);
            let v: Vec<Complex> = (0..slots)
                .map(|j| Complex::new(((j * 37 % 11) as f64 - 5.0) / 3.0, ((j * 13 % 7) as f64 - 3.0) / 5.0))
                .collect();
            let reversed: Vec<Complex> = enc.bit_rev.iter().map(|&r| v[r as usize]).collect();
            let want = direct(&v);
            // SlotToCoeff: bit-reversed coefficients → slots.
            let forward = slot_to_coeff_stages(&enc);
            assert_eq!(forward.len(), slots.trailing_zeros() as usize);
            let got = forward.iter().fold(reversed.clone(), |x, t| t.apply(&x));
            close(&got, &want, "forward stages");
            // CoeffToSlot: slots → bit-reversed coefficients.
            let inverse = coeff_to_slot_stages(&enc);
            let back = inverse.iter().fold(want.clone(), |x, t| t.apply(&x));
            close(&back, &reversed, "inverse stages");
            // Merged into fewer levels: same maps, at most 2^(k+1) − 1 diagonals for k stages.
            for levels in [1, 2, 3] {
                let merged = merge(&forward, levels);
                assert_eq!(merged.len(), levels.min(forward.len()));
                let got = merged.iter().fold(reversed.clone(), |x, t| t.apply(&x));
                close(&got, &want, &format!("forward merged into {levels}"));
                let k = forward.len().div_ceil(levels);
                for m in &merged {
                    assert!(m.diagonals.len() < 1 << (k + 1), "{} diagonals for {k} stages", m.diagonals.len());
                }
                let back = merge(&inverse, levels).iter().fold(want.clone(), |x, t| t.apply(&x));
                close(&back, &reversed, &format!("inverse merged into {levels}"));
            }
        }
    }
}
