//! Secret keys, key-switching keys (hybrid, with `digits` digits and special primes P), and
//! the evaluation-key set the server receives.

use std::collections::BTreeMap;

use rand::Rng;
use rayon::prelude::*;

use crate::context::{gaussian, ternary, Context};

/// The secret key s (ternary), as coefficients and in the NTT domain over every prime.
#[derive(Clone)]
pub struct SecretKey {
    /// Coefficients in {−1, 0, 1}.
    pub coeffs: Vec<i64>,
    /// NTT-domain residues over q_0 … q_L, p_0 … p_{k−1}.
    pub ntt: Vec<u64>,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(<hidden>)")
    }
}

impl Drop for SecretKey {
    /// The key's coefficients and residues are zeroed before their memory is freed.
    fn drop(&mut self) {
        self.wipe();
    }
}

impl SecretKey {
    /// Zeroes the key in place (also done on drop).
    pub fn wipe(&mut self) {
        peregrine_backend::integrity::wipe(&mut self.coeffs);
        peregrine_backend::integrity::wipe(&mut self.ntt);
    }

    /// A fresh secret for `ctx` (uniform ternary or sparse, as the parameters say).
    pub fn generate(ctx: &Context, rng: &mut impl Rng) -> Self {
        let coeffs = ternary(rng, ctx.n(), ctx.params.secret_hamming_weight);
        Self::from_coeffs(ctx, coeffs)
    }

    /// The key with these ternary coefficients.
    pub fn from_coeffs(ctx: &Context, coeffs: Vec<i64>) -> Self {
        let all: Vec<usize> = (0..ctx.ring.moduli.len()).collect();
        let ntt = ctx.lift(&coeffs, &all);
        SecretKey { coeffs, ntt }
    }

    /// The limb of s modulo prime `i`.
    pub fn limb(&self, n: usize, i: usize) -> &[u64] {
        &self.ntt[i * n..(i + 1) * n]
    }
}

/// A key-switching key from a secret s_in to s: for each digit j, (b_j, a_j) with
/// b_j = −a_j·s + e_j + P·[s_in on the primes of digit j], over q_0 … q_max_level and P.
#[derive(Clone)]
pub struct SwitchKey {
    /// Highest level this key serves (limbs q_0 … q_max_level are stored).
    pub max_level: usize,
    /// Seed of the a_j parts (they are expanded from it, so files carry only the seed).
    pub seed: [u8; 32],
    /// Stream of this key within the seed.
    pub stream: u64,
    /// b_j per digit.
    pub b: Vec<Vec<u64>>,
    /// a_j per digit.
    pub a: Vec<Vec<u64>>,
}

impl SwitchKey {
    /// Bytes held in memory.
    pub fn memory_bytes(&self) -> usize {
        8 * (self.b.iter().map(Vec::len).sum::<usize>() + self.a.iter().map(Vec::len).sum::<usize>())
    }

    /// Number of digits stored.
    pub fn digits(&self) -> usize {
        self.b.len()
    }

    /// Generates the key switching from `s_in` (NTT limbs over every prime) to `sk`.
    pub fn generate(
        ctx: &Context,
        sk_out: &[u64],
        s_in: &[u64],
        max_level: usize,
        seed: [u8; 32],
        stream: u64,
        rng: &mut impl Rng,
    ) -> Self {
        let n = ctx.n();
        let basis = ctx.ext_basis(max_level);
        let digits = ctx.digits_at(max_level);
        let mut b = Vec::with_capacity(digits.len());
        let mut a = Vec::with_capacity(digits.len());
        for (j, group) in digits.iter().enumerate() {
            let aj = Self::expand_a(ctx, &seed, stream, j, max_level);
            let e = gaussian(rng, n);
            let mut bj = ctx.lift(&e, &basis);
            bj.par_chunks_mut(n).zip(basis.par_iter()).enumerate().for_each(|(pos, (limb, &i))| {
                let m = &ctx.ring.moduli[i];
                let s = &sk_out[i * n..(i + 1) * n];
                let al = &aj[pos * n..(pos + 1) * n];
                let gadget = if group.contains(&i) { Some(ctx.p_mod[i]) } else { None };
                let sin = &s_in[i * n..(i + 1) * n];
                for c in 0..n {
                    let mut v = m.sub(limb[c], m.mul(al[c], s[c]));
                    if let Some(pm) = gadget {
                        v = m.add(v, m.mul(pm, sin[c]));
                    }
                    limb[c] = v;
                }
            });
            b.push(bj);
            a.push(aj);
        }
        SwitchKey { max_level, seed, stream, b, a }
    }

    /// The a part of digit `j`, expanded from the seed.
    pub fn expand_a(ctx: &Context, seed: &[u8; 32], stream: u64, j: usize, max_level: usize) -> Vec<u64> {
        ctx.uniform(seed, stream * 256 + j as u64 + 1, &ctx.ext_basis(max_level))
    }

    /// Limb position of prime `i` (global index) within this key's limbs.
    #[inline]
    pub fn position(&self, ctx: &Context, i: usize) -> usize {
        if i < ctx.ring.q_count {
            i
        } else {
            self.max_level + 1 + (i - ctx.ring.q_count)
        }
    }
}

/// A rotation key: its Galois element and key (which switches s to σ_g⁻¹(s), so that the
/// automorphism can be applied after the key switch).
#[derive(Clone)]
pub struct RotationKey {
    /// The Galois element g = 5^step mod 2N (or 2N − 1 for conjugation).
    pub galois: u64,
    /// The key.
    pub key: SwitchKey,
}

/// The sparse-secret encapsulation of bootstrapping: the ciphertext is switched to a sparse
/// secret s' at level 0 (so ModRaise adds a small multiple of q_0), raised, and switched back
/// to the dense secret s at the top. The sparse secret appears only under these two keys: one
/// over the small modulus q_0·P, the other encrypted under s.
#[derive(Clone)]
pub struct EncapsulationKeys {
    /// s → s' at level 0.
    pub to_sparse: SwitchKey,
    /// s' → s at the top of the chain.
    pub from_sparse: SwitchKey,
}

/// The evaluation keys a server holds: relinearisation, rotations, conjugation, and the
/// bootstrapping encapsulation keys.
#[derive(Clone, Default)]
pub struct EvaluationKeys {
    /// Random identifier of the key generation (ciphertexts carry it).
    pub key_id: u64,
    /// Relinearisation key (s² → s).
    pub relin: Option<SwitchKey>,
    /// Rotation keys by normalised left step.
    pub rotations: BTreeMap<i64, RotationKey>,
    /// Conjugation key.
    pub conjugation: Option<RotationKey>,
    /// Bootstrapping's encapsulation keys (present when bootstrapping keys were requested).
    pub encapsulation: Option<EncapsulationKeys>,
}

impl EvaluationKeys {
    /// Bytes held in memory by all keys.
    pub fn memory_bytes(&self) -> usize {
        self.relin.iter().map(SwitchKey::memory_bytes).sum::<usize>()
            + self.rotations.values().chain(&self.conjugation).map(|r| r.key.memory_bytes()).sum::<usize>()
            + self
                .encapsulation
                .iter()
                .map(|e| e.to_sparse.memory_bytes() + e.from_sparse.memory_bytes())
                .sum::<usize>()
    }
}

/// The Galois element of a left rotation by `step` slots: 5^step mod 2N.
pub fn galois_element(step: i64, slots: usize, two_n: u64) -> u64 {
    let s = step.rem_euclid(slots as i64) as u64;
    let mut r = 1u64;
    let mut base = 5u64;
    let mut e = s;
    while e > 0 {
        if e & 1 == 1 {
            r = r * base % two_n;
        }
        base = base * base % two_n;
        e >>= 1;
    }
    r
}

/// The inverse of an odd `g` modulo 2N.
pub fn galois_inverse(g: u64, two_n: u64) -> u64 {
    // The group (Z/2N)* has exponent dividing N/2, so g^(N/2 − 1) = g^-1.
    let mut r = 1u64;
    let mut base = g % two_n;
    let mut e = two_n / 4 - 1;
    while e > 0 {
        if e & 1 == 1 {
            r = r * base % two_n;
        }
        base = base * base % two_n;
        e >>= 1;
    }
    debug_assert_eq!(r * g % two_n, 1);
    r
}
