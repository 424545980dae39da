//! The RNS polynomial ring Z_Q[X]/(X^N + 1): limbs modulo word-sized primes, negacyclic NTTs
//! (by `tfhe-ntt`), automorphisms X → X^g in the NTT domain, and exact-enough base conversion.
//!
//! A polynomial is a flat `Vec<u64>` of limbs of N residues each; which primes the limbs belong
//! to is given by a *basis*, a list of indices into [`Ring::moduli`] (the ciphertext primes
//! q_0 … q_L first, then the special primes p_0 … p_{k−1}).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rayon::prelude::*;
use tfhe_ntt::prime64::Plan;

use crate::arith::Modulus;

/// The ring: dimension, primes, NTT plans and cached automorphism tables.
pub struct Ring {
    /// Ring dimension N (a power of two).
    pub n: usize,
    /// log2 N.
    pub log_n: u32,
    /// Every prime: q_0 … q_L, then p_0 … p_{k−1}.
    pub moduli: Vec<Modulus>,
    /// Number of ciphertext primes (L + 1).
    pub q_count: usize,
    plans: Vec<Plan>,
    /// Exponent e_j (odd, mod 2N) of the root at NTT position j, relative to position 0's root.
    exponents: Vec<u32>,
    /// Position of the root with exponent e (for odd e).
    positions: Vec<u32>,
    perms: Mutex<HashMap<u64, Arc<Vec<u32>>>>,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ring(N={}, {} primes)", self.n, self.moduli.len())
    }
}

/// Failure to build a ring from the given primes.
#[derive(Debug, thiserror::Error)]
#[error("no negacyclic NTT of size {n} exists modulo {prime}")]
pub struct RingError {
    n: usize,
    prime: u64,
}

impl Ring {
    /// The ring of dimension 2^log_n over `q` (ciphertext primes) and `p` (special primes).
    pub fn new(log_n: u32, q: &[u64], p: &[u64]) -> Result<Self, RingError> {
        let n = 1usize << log_n;
        let all: Vec<u64> = q.iter().chain(p).copied().collect();
        let plans = all
            .iter()
            .map(|&prime| Plan::try_new(n, prime).ok_or(RingError { n, prime }))
            .collect::<Result<Vec<_>, _>>()?;
        let moduli: Vec<Modulus> = all.iter().map(|&x| Modulus::new(x)).collect();
        let (exponents, positions) = root_exponents(&plans[0], &moduli[0], n);
        Ok(Ring { n, log_n, moduli, q_count: q.len(), plans, exponents, positions, perms: Mutex::new(HashMap::new()) })
    }

    /// Indices of the special primes.
    pub fn special(&self) -> std::ops::Range<usize> {
        self.q_count..self.moduli.len()
    }

    /// Indices q_0 … q_level.
    pub fn q_basis(&self, level: usize) -> Vec<usize> {
        (0..=level).collect()
    }

    /// Forward NTT of one limb modulo prime `i`.
    #[inline]
    pub fn ntt(&self, limb: &mut [u64], i: usize) {
        self.plans[i].fwd(limb);
    }

    /// Inverse NTT of one limb modulo prime `i` (normalised).
    #[inline]
    pub fn intt(&self, limb: &mut [u64], i: usize) {
        self.plans[i].inv(limb);
        self.plans[i].normalize(limb);
    }

    /// Forward NTT of every limb of `poly` (limbs in `basis`), in parallel.
    pub fn ntt_all(&self, poly: &mut [u64], basis: &[usize]) {
        poly.par_chunks_mut(self.n).zip(basis.par_iter()).for_each(|(l, &i)| self.ntt(l, i));
    }

    /// Inverse NTT of every limb of `poly` (limbs in `basis`), in parallel.
    pub fn intt_all(&self, poly: &mut [u64], basis: &[usize]) {
        poly.par_chunks_mut(self.n).zip(basis.par_iter()).for_each(|(l, &i)| self.intt(l, i));
    }

    /// `acc += a · b` limb-wise (NTT domain) modulo prime `i`.
    #[inline]
    pub fn mul_acc(&self, acc: &mut [u64], a: &[u64], b: &[u64], i: usize) {
        self.plans[i].mul_accumulate(acc, a, b);
    }

    /// `out (+)= Σ_k a_k · b_k` limb-wise (NTT domain) modulo prime `i` (`add`: onto `out`):
    /// the products are summed lazily and reduced once per coefficient where a vector kernel
    /// fits ([`crate::simd::dot`]), else accumulated pair by pair.
    pub fn dot(&self, out: &mut [u64], pairs: &[(&[u64], &[u64])], i: usize, add: bool) {
        if crate::simd::dot(out, pairs, &self.moduli[i], add) {
            return;
        }
        if !add {
            out.iter_mut().for_each(|o| *o = 0);
        }
        for (a, b) in pairs {
            self.plans[i].mul_accumulate(out, &a[..out.len()], &b[..out.len()]);
        }
    }

    /// The NTT-domain permutation of the automorphism X → X^g (g odd): `out[j] = in[perm[j]]`.
    pub fn galois_perm(&self, g: u64) -> Arc<Vec<u32>> {
        let two_n = 2 * self.n as u64;
        let g = g % two_n;
        let mut cache = self.perms.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .entry(g)
            .or_insert_with(|| {
                Arc::new(self.exponents.iter().map(|&e| self.positions[((e as u64 * g) % two_n) as usize]).collect())
            })
            .clone()
    }

    /// Applies X → X^g to every limb of an NTT-domain polynomial.
    pub fn automorphism_ntt(&self, src: &[u64], g: u64) -> Vec<u64> {
        let perm = self.galois_perm(g);
        // Collected straight into the new vector (an indexed parallel iterator writes every
        // entry once; nothing is zeroed first).
        let n = self.n;
        let mut out = Vec::with_capacity(src.len());
        (0..src.len())
            .into_par_iter()
            .with_min_len(n)
            .map(|j| src[(j & !(n - 1)) + perm[j & (n - 1)] as usize])
            .collect_into_vec(&mut out);
        out
    }

    /// Fast base conversion of coefficient-domain limbs `src` (basis `from`) into the primes
    /// `to`: y = Σ_i [x_i · (Q/q_i)^{-1}]_{q_i} · (Q/q_i) mod t, which equals x + u·Q for a small
    /// u ∈ [0, |from|). Returns limbs in the order of `to`.
    pub fn base_convert(&self, src: &[u64], from: &[usize], to: &[usize]) -> Vec<u64> {
        self.convert(src, from, to, false)
    }

    /// Exact conversion of the *centred* value x ∈ (−Q/2, Q/2] of coefficient-domain limbs
    /// `src` (basis `from`) into the primes `to`: the multiple u·Q of [`Ring::base_convert`] is
    /// removed with u = round(Σ_i [x_i · (Q/q_i)^{-1}]_{q_i} / q_i), computed in floating point
    /// (off by one only within 2^-40 of the boundary, which then costs an error of ±Q).
    pub fn base_convert_centred(&self, src: &[u64], from: &[usize], to: &[usize]) -> Vec<u64> {
        self.convert(src, from, to, true)
    }

    fn convert(&self, src: &[u64], from: &[usize], to: &[usize], centred: bool) -> Vec<u64> {
        let n = self.n;
        let mut out = vec![0u64; to.len() * n];
        let conversion = self.conversion(src, from, centred);
        out.par_chunks_mut(n).zip(to.par_iter()).for_each(|(limb, &t)| conversion.limb_into(t, limb));
        out
    }

    /// Prepares the conversion of coefficient-domain limbs `src` (basis `from`) so that any
    /// target prime's limb can then be written where the caller wants it (and transformed
    /// while it is still in cache): see [`Conversion::limb_into`].
    pub fn conversion(&self, src: &[u64], from: &[usize], centred: bool) -> Conversion<'_> {
        let n = self.n;
        let k = from.len();
        // (Q/q_i)^{-1} mod q_i.
        let inv_hat: Vec<u64> = from
            .iter()
            .enumerate()
            .map(|(a, &i)| {
                let m = &self.moduli[i];
                let hat = from
                    .iter()
                    .enumerate()
                    .filter(|(b, _)| *b != a)
                    .fold(1u64, |acc, (_, &j)| m.mul(acc, self.moduli[j].q % m.q));
                m.inv(hat)
            })
            .collect();
        // Scaled inputs [x_i · inv_hat_i]_{q_i}.
        let mut scaled = vec![0u64; k * n];
        scaled.par_chunks_mut(n).enumerate().for_each(|(a, out)| {
            let m = &self.moduli[from[a]];
            // One row times one constant: the vector kernels where the CPU has them.
            crate::simd::accumulate(out, &[&src[a * n..(a + 1) * n]], &[m.q], &[inv_hat[a]], m);
        });
        // The multiple of Q to subtract: round(Σ_i scaled_i / q_i).
        if centred {
            let inv_q: Vec<f64> = from.iter().map(|&i| 1.0 / self.moduli[i].q as f64).collect();
            let mut sum = vec![0.0f64; n];
            for (a, w) in inv_q.iter().enumerate() {
                for (s, &y) in sum.iter_mut().zip(&scaled[a * n..(a + 1) * n]) {
                    *s += y as f64 * w;
                }
            }
            scaled.extend(sum.into_iter().map(|s| s.round() as u64));
        }
        Conversion { ring: self, from: from.to_vec(), scaled, centred }
    }
}

/// A base conversion ready to produce target limbs: the scaled source rows and (centred) the
/// overflow counts. Made by [`Ring::conversion`].
pub struct Conversion<'a> {
    ring: &'a Ring,
    from: Vec<usize>,
    /// k scaled rows, then (centred) one row of overflow counts u ≤ k.
    scaled: Vec<u64>,
    centred: bool,
}

impl Conversion<'_> {
    /// Writes the coefficient-domain limb of prime `t` (an index into [`Ring::moduli`]).
    pub fn limb_into(&self, t: usize, limb: &mut [u64]) {
        let ring = self.ring;
        let n = ring.n;
        let k = self.from.len();
        let m = &ring.moduli[t];
        let q_mod_t = |skip: Option<usize>| {
            self.from
                .iter()
                .enumerate()
                .filter(|(b, _)| Some(*b) != skip)
                .fold(1u64, |acc, (_, &j)| m.mul(acc, ring.moduli[j].q % m.q))
        };
        // Rows and their exclusive bounds: the scaled inputs with constants (Q/q_a) mod t,
        // then (centred) the overflow count u ≤ k with constant −Q mod t.
        let rows: Vec<&[u64]> = self.scaled.chunks(n).collect();
        let mut row_max: Vec<u64> = self.from.iter().map(|&i| ring.moduli[i].q).collect();
        let mut hats: Vec<u64> = (0..k).map(|a| q_mod_t(Some(a))).collect();
        if self.centred {
            row_max.push(k as u64 + 1);
            hats.push(m.neg(q_mod_t(None)));
        }
        crate::simd::accumulate(limb, &rows, &row_max, &hats, m);
    }
}

/// The exponent of each NTT position's root relative to the root at position 0, and the
/// inverse map (exponent → position), read off the transform of the monomial X.
fn root_exponents(plan: &Plan, m: &Modulus, n: usize) -> (Vec<u32>, Vec<u32>) {
    let mut x = vec![0u64; n];
    x[1] = 1;
    plan.fwd(&mut x);
    let g0 = x[0];
    let two_n = 2 * n;
    let mut log = HashMap::with_capacity(two_n);
    let mut p = 1u64;
    for e in 0..two_n {
        log.insert(p, e as u32);
        p = m.mul(p, g0);
    }
    let exponents: Vec<u32> = x.iter().map(|v| *log.get(v).expect("NTT points are 2N-th roots of unity")).collect();
    let mut positions = vec![u32::MAX; two_n];
    for (j, &e) in exponents.iter().enumerate() {
        positions[e as usize] = j as u32;
    }
    (exponents, positions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arith::ntt_primes;
    use rand::{Rng, SeedableRng};

    fn negacyclic_mul(a: &[u64], b: &[u64], m: &Modulus) -> Vec<u64> {
        let n = a.len();
        let mut out = vec![0u64; n];
        for i in 0..n {
            for j in 0..n {
                let p = m.mul(a[i], b[j]);
                if i + j < n {
                    out[i + j] = m.add(out[i + j], p);
                } else {
                    out[i + j - n] = m.sub(out[i + j - n], p);
                }
            }
        }
        out
    }

    #[test]
    fn ntt_multiplies_and_automorphisms_permute_on_every_prime() {
        let log_n = 6;
        let n = 1 << log_n;
        let mut q = ntt_primes(60, 1, 2 * n as u64, &[]);
        q.extend(ntt_primes(40, 2, 2 * n as u64, &q));
        q.extend(ntt_primes(36, 1, 2 * n as u64, &q));
        let p = ntt_primes(49, 2, 2 * n as u64, &q);
        let ring = Ring::new(log_n, &q, &p).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for i in 0..ring.moduli.len() {
            let m = ring.moduli[i];
            let a: Vec<u64> = (0..n).map(|_| rng.gen_range(0..m.q)).collect();
            let b: Vec<u64> = (0..n).map(|_| rng.gen_range(0..m.q)).collect();
            let want = negacyclic_mul(&a, &b, &m);
            let (mut fa, mut fb) = (a.clone(), b.clone());
            ring.ntt(&mut fa, i);
            ring.ntt(&mut fb, i);
            let mut acc = vec![0u64; n];
            ring.mul_acc(&mut acc, &fa, &fb, i);
            ring.intt(&mut acc, i);
            assert_eq!(acc, want, "prime {i}");
            // X → X^g on coefficients versus the NTT permutation.
            for g in [5u64, 25, 2 * n as u64 - 1, 125 % (2 * n as u64)] {
                let mut want = vec![0u64; n];
                for (k, &c) in a.iter().enumerate() {
                    let e = (k as u64 * g) % (2 * n as u64);
                    if (e as usize) < n {
                        want[e as usize] = m.add(want[e as usize], c);
                    } else {
                        want[e as usize - n] = m.sub(want[e as usize - n], c);
                    }
                }
                let mut got = ring.automorphism_ntt(&fa, g);
                ring.intt(&mut got, i);
                assert_eq!(got, want, "prime {i}, g = {g}");
            }
        }
    }

    #[test]
    fn base_conversion_is_exact_up_to_multiples_of_the_source_modulus() {
        let log_n = 5;
        let n = 1 << log_n;
        let q = ntt_primes(40, 4, 2 * n as u64, &[]);
        let p = ntt_primes(49, 3, 2 * n as u64, &q);
        let ring = Ring::new(log_n, &q, &p).unwrap();
        // x = small signed integers; residues mod q_0..q_3.
        let xs: Vec<i64> = (0..n as i64).map(|i| (i * 7919 - 100_000) * 1_000_003).collect();
        let from = [0usize, 1, 2, 3];
        let mut src = Vec::new();
        for &i in &from {
            src.extend(xs.iter().map(|&x| ring.moduli[i].from_i64(x)));
        }
        let to = [4usize, 5, 6];
        let out = ring.base_convert(&src, &from, &to);
        for (t, &i) in to.iter().enumerate() {
            let m = ring.moduli[i];
            let q_mod: u64 = q.iter().fold(1, |acc, &x| m.mul(acc, x % m.q));
            for (c, &x) in xs.iter().enumerate() {
                let got = out[t * n + c];
                let base = m.from_i64(x);
                // got = x + u·Q for some 0 ≤ u < 4 (x taken in [0, Q)).
                let x_pos = if x < 0 { m.add(base, 0) } else { base };
                let ok = (0..=4u64).any(|u| {
                    let off = m.mul(u % m.q, q_mod);
                    m.add(x_pos, off) == got
                });
                assert!(ok, "limb {t} coefficient {c}");
            }
        }
        // The centred conversion is exact.
        let exact = ring.base_convert_centred(&src, &from, &to);
        for (t, &i) in to.iter().enumerate() {
            let m = ring.moduli[i];
            for (c, &x) in xs.iter().enumerate() {
                assert_eq!(exact[t * n + c], m.from_i64(x), "limb {t} coefficient {c}");
            }
        }
    }
}
