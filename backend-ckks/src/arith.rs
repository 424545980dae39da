//! Word-sized modular arithmetic: Barrett and Shoup reduction, powers, inverses, NTT primes.

/// A prime modulus q < 2^62 with its Barrett constant ⌊2^128 / q⌋.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Modulus {
    /// The prime.
    pub q: u64,
    ratio_lo: u64,
    ratio_hi: u64,
}

impl Modulus {
    /// The modulus `q` (must be below 2^62).
    pub fn new(q: u64) -> Self {
        assert!(q > 1 && q < (1 << 62), "modulus {q} out of range");
        // ⌊(2^128 − 1) / q⌋ equals ⌊2^128 / q⌋ because q is not a power of two.
        let ratio = u128::MAX / q as u128;
        Modulus { q, ratio_lo: ratio as u64, ratio_hi: (ratio >> 64) as u64 }
    }

    /// `x mod q` for any `x < q · 2^64` (in particular every product of two residues and every
    /// sum of up to 2^(126 − 2·bits) such products).
    #[inline(always)]
    pub fn reduce_u128(&self, x: u128) -> u64 {
        let x0 = x as u64;
        let x1 = (x >> 64) as u64;
        // ⌊x · ratio / 2^128⌋ from the four partial products, keeping only what reaches the top.
        let lo_lo = ((x0 as u128 * self.ratio_lo as u128) >> 64) as u64;
        let lo_hi = x0 as u128 * self.ratio_hi as u128;
        let hi_lo = x1 as u128 * self.ratio_lo as u128;
        let mid = (lo_hi as u64) as u128 + (hi_lo as u64) as u128 + lo_lo as u128;
        let quotient = x1
            .wrapping_mul(self.ratio_hi)
            .wrapping_add((lo_hi >> 64) as u64)
            .wrapping_add((hi_lo >> 64) as u64)
            .wrapping_add((mid >> 64) as u64);
        let mut r = x0.wrapping_sub(quotient.wrapping_mul(self.q));
        // The estimate is at most 2 below the true quotient.
        if r >= self.q {
            r -= self.q;
        }
        if r >= self.q {
            r -= self.q;
        }
        r
    }

    /// `x mod q` for a 64-bit `x`.
    #[inline(always)]
    pub fn reduce(&self, x: u64) -> u64 {
        if x < self.q {
            x
        } else {
            self.reduce_u128(x as u128)
        }
    }

    /// `x mod q` for any 64-bit `x` by one Shoup step (multiply-high, no branch but one select):
    /// `one_shoup` must be [`Modulus::shoup`]`(1)`.
    #[inline(always)]
    pub fn reduce_shoup(&self, x: u64, one_shoup: u64) -> u64 {
        self.mul_shoup(x, 1, one_shoup)
    }

    /// `a · b mod q`.
    #[inline(always)]
    pub fn mul(&self, a: u64, b: u64) -> u64 {
        self.reduce_u128(a as u128 * b as u128)
    }

    /// `a + b mod q` for reduced inputs.
    #[inline(always)]
    pub fn add(&self, a: u64, b: u64) -> u64 {
        let s = a + b;
        s.min(s.wrapping_sub(self.q))
    }

    /// `a − b mod q` for reduced inputs.
    #[inline(always)]
    pub fn sub(&self, a: u64, b: u64) -> u64 {
        let d = a.wrapping_sub(b);
        d.min(d.wrapping_add(self.q))
    }

    /// `−a mod q`.
    #[inline(always)]
    pub fn neg(&self, a: u64) -> u64 {
        if a == 0 {
            0
        } else {
            self.q - a
        }
    }

    /// `a^e mod q`.
    pub fn pow(&self, mut a: u64, mut e: u64) -> u64 {
        let mut r = 1 % self.q;
        a %= self.q;
        while e > 0 {
            if e & 1 == 1 {
                r = self.mul(r, a);
            }
            a = self.mul(a, a);
            e >>= 1;
        }
        r
    }

    /// `a^-1 mod q` (q prime, a ≠ 0 mod q).
    pub fn inv(&self, a: u64) -> u64 {
        self.pow(a, self.q - 2)
    }

    /// The Shoup companion ⌊w · 2^64 / q⌋ of a fixed multiplicand `w < q`.
    #[inline(always)]
    pub fn shoup(&self, w: u64) -> u64 {
        (((w as u128) << 64) / self.q as u128) as u64
    }

    /// `a · w mod q` with `w`'s Shoup companion `ws` (any `a < 2^64`).
    #[inline(always)]
    pub fn mul_shoup(&self, a: u64, w: u64, ws: u64) -> u64 {
        let quot = ((a as u128 * ws as u128) >> 64) as u64;
        let r = a.wrapping_mul(w).wrapping_sub(quot.wrapping_mul(self.q));
        r.min(r.wrapping_sub(self.q))
    }

    /// A signed integer reduced into `[0, q)`.
    #[inline(always)]
    pub fn from_i64(&self, x: i64) -> u64 {
        if x >= 0 {
            self.reduce(x as u64)
        } else {
            self.neg(self.reduce(x.unsigned_abs()))
        }
    }

    /// A signed 128-bit integer reduced into `[0, q)`.
    pub fn from_i128(&self, x: i128) -> u64 {
        let m = x.unsigned_abs();
        let hi = (m >> 64) as u64 % self.q;
        let r = self.reduce_u128(((hi as u128) << 64) | (m as u64) as u128);
        if x < 0 {
            self.neg(r)
        } else {
            r
        }
    }

    /// The centred representative of `x` in `(−q/2, q/2]`.
    #[inline(always)]
    pub fn centre(&self, x: u64) -> i64 {
        if x > self.q / 2 {
            x as i64 - self.q as i64
        } else {
            x as i64
        }
    }
}

/// Whether `n` is prime (deterministic for 64-bit integers).
pub fn is_prime(n: u64) -> bool {
    tfhe_ntt::prime::is_prime64(n)
}

/// `count` distinct primes q ≡ 1 (mod 2N) of about `bits` bits, none in `avoid`, chosen
/// alternately just above and just below 2^bits so that their product stays close to
/// 2^(bits·count) (which keeps CKKS scales close to their nominal value after rescales).
pub fn ntt_primes(bits: u32, count: usize, two_n: u64, avoid: &[u64]) -> Vec<u64> {
    assert!((20..=61).contains(&bits), "prime size {bits} out of range");
    let centre = 1u64 << bits;
    let mut up = centre + 1;
    let mut down = centre + 1 - two_n;
    let mut out = Vec::with_capacity(count);
    let mut take_up = bits < 61;
    while out.len() < count {
        let candidate = if take_up {
            let c = up;
            up += two_n;
            c
        } else {
            let c = down;
            down -= two_n;
            c
        };
        if is_prime(candidate) && !avoid.contains(&candidate) && !out.contains(&candidate) {
            out.push(candidate);
            if bits < 61 {
                take_up = !take_up;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn barrett_and_shoup_agree_with_u128_remainder() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for bits in [20u32, 36, 40, 49, 50, 55, 60, 61] {
            let q = ntt_primes(bits, 1, 1 << 13, &[])[0];
            let m = Modulus::new(q);
            for _ in 0..2000 {
                let a = rng.gen_range(0..q);
                let b = rng.gen_range(0..q);
                assert_eq!(m.mul(a, b) as u128, (a as u128 * b as u128) % q as u128);
                assert_eq!(m.mul_shoup(a, b, m.shoup(b)) as u128, (a as u128 * b as u128) % q as u128);
                let big: u128 = rng.gen::<u128>() % ((q as u128) << 64);
                assert_eq!(m.reduce_u128(big) as u128, big % q as u128);
                let x: i128 = rng.gen::<i128>() >> 2;
                assert_eq!(m.from_i128(x) as i128, x.rem_euclid(q as i128));
            }
            assert_eq!(m.mul(m.inv(12345), 12345), 1);
        }
    }

    #[test]
    fn primes_are_ntt_friendly_and_distinct() {
        let p = ntt_primes(40, 10, 1 << 17, &[]);
        for &q in &p {
            assert!(is_prime(q) && q % (1 << 17) == 1 && (q as f64).log2() > 39.9 && (q as f64).log2() < 40.1);
        }
        let mut s = p.clone();
        s.sort();
        s.dedup();
        assert_eq!(s.len(), 10);
    }
}
