//! The shared context of one parameter set (ring, encoder, chain, digest, precomputed
//! constants) and the randomness used by key generation and encryption.

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rayon::prelude::*;

use peregrine_backend::{BResult, BackendError};

use crate::arith::Modulus;
use crate::encoding::Encoder;
use crate::params::{Chain, CkksParams};
use crate::ring::Ring;

/// Standard deviation of the error distribution.
pub const SIGMA: f64 = 3.2;

/// Everything derived from one [`CkksParams`].
pub struct Context {
    /// The parameters as given.
    pub params: CkksParams,
    /// The modulus chain and key-switching layout.
    pub chain: Chain,
    /// The ring over q_0 … q_L, p_0 … p_{k−1}.
    pub ring: Ring,
    /// Slot encoder.
    pub encoder: Encoder,
    /// BLAKE3 digest of the parameter set: keys and ciphertexts carry it.
    pub digest: [u8; 32],
    /// `rescale_inv[l][i]` = q_l^{-1} mod q_i (i < l).
    pub rescale_inv: Vec<Vec<u64>>,
    /// P^{-1} mod q_i.
    pub p_inv: Vec<u64>,
    /// P mod q_i.
    pub p_mod: Vec<u64>,
    /// Buffers of finished key-switching decompositions, overwritten by the next
    /// [`Context::mod_up`] instead of being freed and allocated (and zeroed) again.
    pub(crate) digit_buffers: std::sync::Mutex<Vec<Vec<u64>>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ckks::Context({:?}, {} digits)", self.ring, self.chain.digits)
    }
}

impl Context {
    /// Builds the context of `params` (checking them, security included).
    pub fn new(params: &CkksParams) -> BResult<Self> {
        let chain = params.chain()?;
        let ring = Ring::new(params.log_ring_dimension, &chain.q, &chain.p)
            .map_err(|e| BackendError::InvalidParameters(e.to_string()))?;
        let encoder = Encoder::new(ring.n, chain.slots);
        let mut h = blake3::Hasher::new();
        h.update(b"peregrine-ckks parameters v1");
        for x in [ring.n as u64, chain.slots as u64, chain.digits as u64, params.secret_hamming_weight as u64] {
            h.update(&x.to_le_bytes());
        }
        for &x in chain.q.iter().chain(&chain.p) {
            h.update(&x.to_le_bytes());
        }
        let digest = *h.finalize().as_bytes();
        let qm = &ring.moduli;
        let rescale_inv =
            (0..chain.q.len()).map(|l| (0..l).map(|i| qm[i].inv(chain.q[l] % qm[i].q)).collect()).collect();
        let p_mod: Vec<u64> =
            (0..chain.q.len()).map(|i| chain.p.iter().fold(1u64, |a, &p| qm[i].mul(a, p % qm[i].q))).collect();
        let p_inv = p_mod.iter().enumerate().map(|(i, &pm)| qm[i].inv(pm)).collect();
        Ok(Context {
            params: params.clone(),
            chain,
            ring,
            encoder,
            digest,
            rescale_inv,
            p_inv,
            p_mod,
            digit_buffers: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// N.
    pub fn n(&self) -> usize {
        self.ring.n
    }

    /// L, the level of a fresh ciphertext (the computation levels).
    pub fn max_level(&self) -> usize {
        self.chain.levels
    }

    /// The top of the chain: L, or above it the bootstrapping levels a raised ciphertext starts at.
    pub fn top_level(&self) -> usize {
        self.chain.q.len() - 1
    }

    /// The modulus q_i.
    pub fn q(&self, i: usize) -> &Modulus {
        &self.ring.moduli[i]
    }

    /// The basis q_0 … q_level followed by the special primes (key-switching basis).
    pub fn ext_basis(&self, level: usize) -> Vec<usize> {
        (0..=level).chain(self.ring.special()).collect()
    }

    /// The key-switching digits at `level`: the groups restricted to q_0 … q_level.
    pub fn digits_at(&self, level: usize) -> Vec<Vec<usize>> {
        self.chain
            .groups
            .iter()
            .map(|g| g.iter().copied().filter(|&i| i <= level).collect::<Vec<_>>())
            .filter(|g| !g.is_empty())
            .collect()
    }

    /// Signed integer coefficients → NTT-domain residues in `basis`.
    pub fn lift(&self, coeffs: &[i64], basis: &[usize]) -> Vec<u64> {
        let n = self.n();
        let mut out = vec![0u64; basis.len() * n];
        out.par_chunks_mut(n).zip(basis.par_iter()).for_each(|(limb, &i)| {
            let m = &self.ring.moduli[i];
            for (o, &c) in limb.iter_mut().zip(coeffs) {
                *o = m.from_i64(c);
            }
            self.ring.ntt(limb, i);
        });
        out
    }

    /// A uniformly random polynomial in `basis` (NTT domain: uniform either way) expanded from
    /// `seed` and `stream`.
    pub fn uniform(&self, seed: &[u8; 32], stream: u64, basis: &[usize]) -> Vec<u64> {
        let n = self.n();
        let mut out = vec![0u64; basis.len() * n];
        out.par_chunks_mut(n).zip(basis.par_iter()).enumerate().for_each(|(pos, (limb, &i))| {
            let mut rng = ChaCha20Rng::from_seed(*seed);
            // One stream per (purpose, prime position): limbs expand independently in parallel.
            rng.set_stream(stream.wrapping_mul(1 << 16).wrapping_add(pos as u64));
            let q = self.ring.moduli[i].q;
            for o in limb.iter_mut() {
                *o = rng.gen_range(0..q);
            }
        });
        out
    }
}

/// A fresh 32-byte seed from the operating system's CSPRNG.
pub fn os_seed() -> [u8; 32] {
    let mut s = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut s);
    s
}

/// A CSPRNG seeded from the operating system.
pub fn os_rng() -> ChaCha20Rng {
    ChaCha20Rng::from_seed(os_seed())
}

/// Rounded Gaussian samples of standard deviation [`SIGMA`] (cut at 6σ).
pub fn gaussian(rng: &mut impl Rng, n: usize) -> Vec<i64> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        // Box–Muller: two independent normal samples per pair of uniforms.
        let u1: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
        let u2: f64 = rng.gen();
        let r = (-2.0 * u1.ln()).sqrt() * SIGMA;
        for z in [r * (std::f64::consts::TAU * u2).cos(), r * (std::f64::consts::TAU * u2).sin()] {
            if z.abs() <= 6.0 * SIGMA && out.len() < n {
                out.push(z.round() as i64);
            }
        }
    }
    out
}

/// A ternary secret: uniform over {−1, 0, 1}, or exactly `hamming_weight` nonzero ±1 values.
pub fn ternary(rng: &mut impl Rng, n: usize, hamming_weight: usize) -> Vec<i64> {
    if hamming_weight == 0 {
        return (0..n).map(|_| rng.gen_range(-1i64..=1)).collect();
    }
    let mut s = vec![0i64; n];
    let mut placed = 0;
    while placed < hamming_weight {
        let i = rng.gen_range(0..n);
        if s[i] == 0 {
            s[i] = if rng.gen::<bool>() { 1 } else { -1 };
            placed += 1;
        }
    }
    s
}
