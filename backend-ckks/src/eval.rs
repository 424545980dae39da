//! Homomorphic operations on RNS ciphertexts (NTT domain throughout): encoding, encryption,
//! decryption, additions, products, rescaling, hybrid key switching, rotations (hoisted).
//!
//! These functions do the arithmetic only; the level/scale rules are checked by the
//! [`Backend`](peregrine_backend::Backend) implementation around them.

use rayon::prelude::*;

use peregrine_backend::{BResult, BackendError, CtMeta};

use crate::context::{gaussian, ternary, Context};
use crate::encoding::Encoder;
use crate::keys::{SecretKey, SwitchKey};
use crate::simd::LimbOp;

/// A ciphertext (c0, c1) at some level: limbs q_0 … q_level of N residues each, NTT domain.
#[derive(Clone)]
pub struct Ciphertext {
    /// c0 limbs.
    pub c0: Vec<u64>,
    /// c1 limbs.
    pub c1: Vec<u64>,
    /// Level and scale.
    pub meta: CtMeta,
    /// Key generation this ciphertext belongs to.
    pub key_id: u64,
    /// Seed of c1 for a fresh ciphertext (c1 is then uniform from the seed and need not be sent).
    pub seed: Option<[u8; 32]>,
}

/// An encoded message at some level: limbs q_0 … q_level, NTT domain.
#[derive(Clone)]
pub struct Plaintext {
    /// Limbs.
    pub poly: Vec<u64>,
    /// Level and scale.
    pub meta: CtMeta,
}

peregrine_backend::has_meta!(Ciphertext, Plaintext);

impl std::fmt::Debug for Ciphertext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Ciphertext(level {}, scale 2^{:.2}, key {:016x})",
            self.meta.level,
            self.meta.scale.log2(),
            self.key_id
        )
    }
}

impl std::fmt::Debug for Plaintext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Plaintext(level {}, scale 2^{:.2})", self.meta.level, self.meta.scale.log2())
    }
}

impl Ciphertext {
    /// Its level.
    pub fn level(&self) -> usize {
        self.meta.level
    }
}

/// The two parts of a ciphertext over the key-switching basis q_0 … q_level, P, scaled by P
/// (what a key product leaves before ModDown; see [`Context::hoisted_rotations_ext`]).
pub type ExtParts = (Vec<u64>, Vec<u64>);

/// Decomposition buffers a context keeps for reuse (two decompositions of up to four digits
/// may be in flight at once, e.g. under `rayon::join`).
const KEPT_DIGIT_BUFFERS: usize = 8;

/// A key-switching decomposition (see [`Context::mod_up`]): one polynomial per digit over
/// q_0 … q_level and P. When dropped, its buffers go back to the context, whose next
/// decomposition overwrites them (no allocation, no zeroing).
pub struct Digits<'a> {
    parts: Vec<Vec<u64>>,
    ctx: &'a Context,
}

impl std::ops::Deref for Digits<'_> {
    type Target = [Vec<u64>];
    fn deref(&self) -> &[Vec<u64>] {
        &self.parts
    }
}

impl Drop for Digits<'_> {
    fn drop(&mut self) {
        let mut kept = self.ctx.digit_buffers.lock().unwrap_or_else(|p| p.into_inner());
        for part in self.parts.drain(..) {
            if kept.len() < KEPT_DIGIT_BUFFERS {
                kept.push(part);
            }
        }
    }
}

/// Coefficients per block of the key inner product: two accumulators of 8 KiB stay in L1.
pub const KEY_BLOCK: usize = 1024;

/// `a += b` limb-wise.
pub(crate) fn add_into(ctx: &Context, a: &mut [u64], b: &[u64]) {
    let n = ctx.n();
    a.par_chunks_mut(n).zip(b.par_chunks(n)).enumerate().for_each(|(i, (x, y))| {
        let m = ctx.q(i);
        for (u, &v) in x.iter_mut().zip(y) {
            *u = m.add(*u, v);
        }
    });
}

/// `a += b` limb-wise, limb k of both being prime `basis[k]`.
fn add_into_basis(ctx: &Context, a: &mut [u64], b: &[u64], basis: &[usize]) {
    let n = ctx.n();
    a.par_chunks_mut(n).zip(b.par_chunks(n)).zip(basis.par_iter()).for_each(|((x, y), &i)| {
        let m = ctx.q(i);
        for (u, &v) in x.iter_mut().zip(y) {
            *u = m.add(*u, v);
        }
    });
}

/// `acc += σ(src)` limb-wise, σ given by its NTT-domain permutation (`out[j] = in[perm[j]]`);
/// limb k of both is prime `basis[k]`.
fn add_permuted_into(ctx: &Context, acc: &mut [u64], src: &[u64], perm: &[u32], basis: &[usize]) {
    let n = ctx.n();
    acc.par_chunks_mut(n).zip(src.par_chunks(n)).zip(basis.par_iter()).for_each(|((a, s), &i)| {
        let m = ctx.q(i);
        for (x, &p) in a.iter_mut().zip(perm) {
            *x = m.add(*x, s[p as usize]);
        }
    });
}

/// `a −= b` limb-wise.
fn sub_into(ctx: &Context, a: &mut [u64], b: &[u64]) {
    let n = ctx.n();
    a.par_chunks_mut(n).zip(b.par_chunks(n)).enumerate().for_each(|(i, (x, y))| {
        let m = ctx.q(i);
        for (u, &v) in x.iter_mut().zip(y) {
            *u = m.sub(*u, v);
        }
    });
}

/// `a ⊙ b` limb-wise (NTT domain).
fn mul_poly(ctx: &Context, a: &[u64], b: &[u64]) -> Vec<u64> {
    let n = ctx.n();
    let mut out = vec![0u64; a.len()];
    out.par_chunks_mut(n)
        .zip(a.par_chunks(n).zip(b.par_chunks(n)))
        .enumerate()
        .for_each(|(i, (o, (x, y)))| ctx.ring.mul_acc(o, x, y, i));
    out
}

/// `out += a ⊙ b` limb-wise (NTT domain).
fn mul_acc_poly(ctx: &Context, out: &mut [u64], a: &[u64], b: &[u64]) {
    let n = ctx.n();
    out.par_chunks_mut(n)
        .zip(a.par_chunks(n).zip(b.par_chunks(n)))
        .enumerate()
        .for_each(|(i, (o, (x, y)))| ctx.ring.mul_acc(o, x, y, i));
}

/// Multiplies every limb by the residues of a signed 128-bit constant.
fn mul_const(ctx: &Context, a: &mut [u64], k: i128) {
    let n = ctx.n();
    a.par_chunks_mut(n).enumerate().for_each(|(i, x)| {
        let m = ctx.q(i);
        crate::simd::shoup_limb(x, &[], m.from_i128(k), m, LimbOp::Mul);
    });
}

/// Rounds `x` to a signed 128-bit integer, or reports an overflow.
fn round_i128(op: &'static str, x: f64, level: usize, log_q: f64) -> BResult<i128> {
    let r = x.round();
    if !(r.abs() < 2f64.powi(126)) || r.abs().log2() >= log_q - 1.0 {
        return Err(BackendError::Overflow { op, log_magnitude: r.abs().log2(), log_half_modulus: log_q - 1.0, level });
    }
    Ok(r as i128)
}

impl Context {
    /// log2 of Q_level.
    pub fn log_q(&self, level: usize) -> f64 {
        self.chain.q[..=level].iter().map(|&q| (q as f64).log2()).sum()
    }

    /// Encodes `values` (≤ slots) at `level` and `scale`.
    pub fn encode(&self, values: &[f64], level: usize, scale: f64) -> BResult<Vec<u64>> {
        self.encode_from_coeffs(&self.encoder.encode_coeffs(values, scale), level)
    }

    /// Encodes complex slot values (real parts `re`, imaginary parts `im`) at `level` and `scale`.
    pub fn encode_complex(&self, re: &[f64], im: &[f64], level: usize, scale: f64) -> BResult<Vec<u64>> {
        self.encode_complex_with(&self.encoder, (re, im), level, scale, false)
    }

    /// [`Context::encode_complex`] with another slot count's encoder (bootstrapping's linear
    /// maps act on 2n slots when the parameters' n slots are sparse), over q_0 … q_level or,
    /// `extended`, over the key-switching basis q_0 … q_level, P (for products with ciphertexts
    /// in that basis: [`Context::mul_plain_sum_ext`]).
    pub fn encode_complex_with(
        &self,
        encoder: &Encoder,
        (re, im): (&[f64], &[f64]),
        level: usize,
        scale: f64,
        extended: bool,
    ) -> BResult<Vec<u64>> {
        let basis = if extended { self.ext_basis(level) } else { self.ring.q_basis(level) };
        self.encode_in_basis(&encoder.encode_complex_coeffs(re, im, scale), level, encoder.gap, &basis)
    }

    /// Rounds the scaled coefficients of Y^0 … Y^(2n−1) and transforms them at `level`.
    fn encode_from_coeffs(&self, coeffs: &[f64], level: usize) -> BResult<Vec<u64>> {
        self.encode_from_coeffs_gap(coeffs, level, self.encoder.gap)
    }

    /// [`Context::encode_from_coeffs`] for Y = X^gap.
    fn encode_from_coeffs_gap(&self, coeffs: &[f64], level: usize, gap: usize) -> BResult<Vec<u64>> {
        self.encode_in_basis(coeffs, level, gap, &self.ring.q_basis(level))
    }

    /// Rounds the coefficients (of Y = X^gap) and writes them over the primes `basis`, NTT
    /// domain; they must fit Q_level.
    fn encode_in_basis(&self, coeffs: &[f64], level: usize, gap: usize, basis: &[usize]) -> BResult<Vec<u64>> {
        let n = self.n();
        let max = coeffs.iter().fold(0.0f64, |m, c| m.max(c.abs()));
        let log_q = self.log_q(level);
        round_i128("encode", max, level, log_q)?;
        let mut out = vec![0u64; basis.len() * n];
        // The common case, |coefficients| < 2^52: exact in f64 and i64, reduced with a
        // floating-point quotient. Wider ones (products of scales) go through 128-bit integers.
        let narrow = max < (1u64 << 52) as f64;
        // Adding and removing 1.5·2^52 rounds to the nearest integer (exact below 2^51)
        // without a libm call per coefficient.
        const ROUNDER: f64 = 6755399441055744.0;
        let rounded: Vec<f64> = if max < (1u64 << 51) as f64 {
            coeffs.iter().map(|&c| (c + ROUNDER) - ROUNDER).collect()
        } else {
            coeffs.iter().map(|c| c.round()).collect()
        };
        let wide: Vec<i128> = if narrow { Vec::new() } else { rounded.iter().map(|&c| c as i128).collect() };
        out.par_chunks_mut(n).zip(basis.par_iter()).for_each(|(limb, &i)| {
            let m = self.q(i);
            if narrow && gap == 1 {
                crate::simd::reduce_integers(limb, &rounded, m.q);
            } else if narrow {
                let mut reduced = vec![0u64; rounded.len()];
                crate::simd::reduce_integers(&mut reduced, &rounded, m.q);
                for (k, r) in reduced.into_iter().enumerate() {
                    limb[k * gap] = r;
                }
            } else {
                for (k, &c) in wide.iter().enumerate() {
                    limb[k * gap] = m.from_i128(c);
                }
            }
            self.ring.ntt(limb, i);
        });
        Ok(out)
    }

    /// Decodes an NTT-domain message at `level` and `scale` into the slot values.
    pub fn decode(&self, poly: &[u64], level: usize, scale: f64) -> Vec<f64> {
        self.encoder.decode_coeffs(&self.decode_coefficients(poly, level, scale))
    }

    /// The 2n coefficients of Y^0 … Y^(2n−1) of an NTT-domain message, centred and divided by
    /// `scale`.
    pub fn decode_coefficients(&self, poly: &[u64], level: usize, scale: f64) -> Vec<f64> {
        let n = self.n();
        // The message is a small integer: the fewest primes whose product exceeds 2^64·Δ
        // (values up to 2^63 in magnitude) determine it exactly.
        let need = scale.log2() + 64.0;
        let mut t = 0;
        let mut bits = 0.0;
        while t <= level && bits < need {
            bits += (self.chain.q[t] as f64).log2();
            t += 1;
        }
        let mut limbs: Vec<Vec<u64>> = poly[..t * n].chunks(n).map(<[u64]>::to_vec).collect();
        limbs.par_iter_mut().enumerate().for_each(|(i, l)| self.ring.intt(l, i));
        let gap = self.encoder.gap;
        let ms: Vec<_> = (0..t).map(|i| *self.q(i)).collect();
        // Garner with centred mixed-radix digits: exact and free of cancellation.
        // prod_inv[k] = (q_0 ⋯ q_{k−1})^{-1} mod q_k.
        let prod_inv: Vec<u64> = (0..t)
            .map(|k| {
                let m = &ms[k];
                m.inv((0..k).fold(1u64, |a, j| m.mul(a, ms[j].q % m.q)))
            })
            .collect();
        (0..2 * self.encoder.slots)
            .into_par_iter()
            .map(|k| {
                let c = k * gap;
                let mut digits = [0i64; 64];
                for (idx, m) in ms.iter().enumerate() {
                    // v_idx = (x_idx − Σ_{j<idx} v_j Π_{l<j} q_l) / Π_{l<idx} q_l mod q_idx, centred.
                    let mut acc = limbs[idx][c];
                    let mut prod = 1u64;
                    for j in 0..idx {
                        acc = m.sub(acc, m.mul(m.from_i64(digits[j]), prod));
                        prod = m.mul(prod, ms[j].q % m.q);
                    }
                    digits[idx] = m.centre(m.mul(acc, prod_inv[idx]));
                }
                let mut x = 0.0f64;
                for idx in (0..t).rev() {
                    x = x * ms[idx].q as f64 + digits[idx] as f64;
                }
                x / scale
            })
            .collect()
    }

    /// Secret-key encryption of an encoded message at `level`; c1 is expanded from a fresh seed.
    pub fn encrypt_sk(
        &self,
        sk: &SecretKey,
        pt: &[u64],
        level: usize,
        rng: &mut impl rand::Rng,
    ) -> (Vec<u64>, Vec<u64>, [u8; 32]) {
        let n = self.n();
        let seed: [u8; 32] = rng.gen();
        let basis: Vec<usize> = (0..=level).collect();
        let a = self.uniform(&seed, 0, &basis);
        let e = gaussian(rng, n);
        let mut c0 = self.lift(&e, &basis);
        c0.par_chunks_mut(n).enumerate().for_each(|(i, limb)| {
            let m = self.q(i);
            let s = sk.limb(n, i);
            let al = &a[i * n..(i + 1) * n];
            let p = &pt[i * n..(i + 1) * n];
            for c in 0..n {
                limb[c] = m.add(m.sub(limb[c], m.mul(al[c], s[c])), p[c]);
            }
        });
        (c0, a, seed)
    }

    /// Public-key encryption with `pk = (−a·s + e, a)` at the top level.
    pub fn encrypt_pk(
        &self,
        pk: &(Vec<u64>, Vec<u64>),
        pt: &[u64],
        level: usize,
        rng: &mut impl rand::Rng,
    ) -> (Vec<u64>, Vec<u64>) {
        let n = self.n();
        let basis: Vec<usize> = (0..=level).collect();
        let v = self.lift(&ternary(rng, n, 0), &basis);
        let mut c0 = self.lift(&gaussian(rng, n), &basis);
        let mut c1 = self.lift(&gaussian(rng, n), &basis);
        let len = (level + 1) * n;
        mul_acc_poly(self, &mut c0, &v, &pk.0[..len]);
        mul_acc_poly(self, &mut c1, &v, &pk.1[..len]);
        add_into(self, &mut c0, pt);
        (c0, c1)
    }

    /// c0 + c1·s.
    pub fn decrypt(&self, sk: &SecretKey, c0: &[u64], c1: &[u64]) -> Vec<u64> {
        let mut m = c0.to_vec();
        mul_acc_poly(self, &mut m, c1, &sk.ntt[..c1.len()]);
        m
    }

    /// a + b.
    pub fn add(&self, a: &Ciphertext, b: &Ciphertext) -> (Vec<u64>, Vec<u64>) {
        let (mut c0, mut c1) = (a.c0.clone(), a.c1.clone());
        add_into(self, &mut c0, &b.c0);
        add_into(self, &mut c1, &b.c1);
        (c0, c1)
    }

    /// a − b.
    pub fn sub(&self, a: &Ciphertext, b: &Ciphertext) -> (Vec<u64>, Vec<u64>) {
        let (mut c0, mut c1) = (a.c0.clone(), a.c1.clone());
        sub_into(self, &mut c0, &b.c0);
        sub_into(self, &mut c1, &b.c1);
        (c0, c1)
    }

    /// −a.
    pub fn negate(&self, a: &Ciphertext) -> (Vec<u64>, Vec<u64>) {
        let neg = |p: &[u64]| {
            let mut out = vec![0u64; p.len()];
            sub_into(self, &mut out, p);
            out
        };
        (neg(&a.c0), neg(&a.c1))
    }

    /// a + p (or a − p).
    pub fn add_plain(&self, a: &Ciphertext, p: &[u64], subtract: bool) -> Vec<u64> {
        let mut c0 = a.c0.clone();
        if subtract {
            sub_into(self, &mut c0, p);
        } else {
            add_into(self, &mut c0, p);
        }
        c0
    }

    /// a ⊙ p.
    pub fn mul_plain(&self, a: &Ciphertext, p: &[u64]) -> (Vec<u64>, Vec<u64>) {
        (mul_poly(self, &a.c0, p), mul_poly(self, &a.c1, p))
    }

    /// Σ_t a_t ⊙ p_t for ciphertexts and plaintext polynomials at one level, in one pass per
    /// limb: blocks of coefficients accumulate every term while in cache, and the result is
    /// written once (no product or partial sum is materialised).
    pub fn mul_plain_sum(&self, terms: &[(&Ciphertext, &[u64])]) -> (Vec<u64>, Vec<u64>) {
        let parts: Vec<(&[u64], &[u64], &[u64])> =
            terms.iter().map(|(ct, p)| (ct.c0.as_slice(), ct.c1.as_slice(), *p)).collect();
        self.plain_sum_over(&parts, &self.ring.q_basis(terms[0].0.level()))
    }

    /// The blocked loop of [`Context::mul_plain_sum`] over parts (c0, c1, plaintext) whose
    /// limb k is prime `basis[k]`.
    fn plain_sum_over(&self, terms: &[(&[u64], &[u64], &[u64])], basis: &[usize]) -> (Vec<u64>, Vec<u64>) {
        const BLOCK: usize = 2048;
        let n = self.n();
        let len = basis.len() * n;
        let mut c0 = vec![0u64; len];
        let mut c1 = vec![0u64; len];
        c0.par_chunks_mut(n).zip(c1.par_chunks_mut(n)).zip(basis.par_iter()).enumerate().for_each(
            |(pos, ((o0, o1), &i))| {
                for start in (0..n).step_by(BLOCK) {
                    let r = pos * n + start..pos * n + (start + BLOCK).min(n);
                    let pairs0: Vec<(&[u64], &[u64])> =
                        terms.iter().map(|(x0, _, p)| (&x0[r.clone()], &p[r.clone()])).collect();
                    let pairs1: Vec<(&[u64], &[u64])> =
                        terms.iter().map(|(_, x1, p)| (&x1[r.clone()], &p[r.clone()])).collect();
                    self.ring.dot(&mut o0[start..start + r.len()], &pairs0, i, false);
                    self.ring.dot(&mut o1[start..start + r.len()], &pairs1, i, false);
                }
            },
        );
        (c0, c1)
    }

    /// a + k for an integer k (added to every slot).
    pub fn add_const(&self, a: &Ciphertext, k: i128) -> Vec<u64> {
        let mut c0 = a.c0.clone();
        self.add_const_assign(&mut c0, k);
        c0
    }

    /// a · k for an integer k.
    pub fn mul_const(&self, a: &Ciphertext, k: i128) -> (Vec<u64>, Vec<u64>) {
        let (mut c0, mut c1) = (a.c0.clone(), a.c1.clone());
        mul_const(self, &mut c0, k);
        mul_const(self, &mut c1, k);
        (c0, c1)
    }

    /// Rounds `c · scale` to an integer constant for `op`, refusing what would overflow.
    pub fn constant(&self, op: &'static str, c: f64, scale: f64, level: usize) -> BResult<i128> {
        round_i128(op, c * scale, level, self.log_q(level))
    }

    /// Divides one polynomial at `level` by q_level (rounding), giving `level − 1`.
    pub fn rescale_poly(&self, p: &[u64], level: usize) -> Vec<u64> {
        let n = self.n();
        let last = self.rescale_last_limb(p, level);
        let mut out = p[..level * n].to_vec();
        self.rescale_limbs(&mut out, &last, level);
        out
    }

    /// [`Context::rescale_poly`] in place: `p` keeps its buffer (no copy), shortened by one
    /// limb.
    pub fn rescale_in_place(&self, p: &mut Vec<u64>, level: usize) {
        let last = self.rescale_last_limb(p, level);
        p.truncate(level * self.n());
        self.rescale_limbs(p, &last, level);
    }

    /// Limb q_level of `p`, coefficient domain.
    fn rescale_last_limb(&self, p: &[u64], level: usize) -> Vec<u64> {
        let n = self.n();
        let mut last = p[level * n..(level + 1) * n].to_vec();
        self.ring.intt(&mut last, level);
        last
    }

    /// limbs ← (limbs − [last]) / q_level for limbs q_0 … q_(level−1), `last` being limb
    /// q_level in the coefficient domain.
    fn rescale_limbs(&self, limbs: &mut [u64], last: &[u64], level: usize) {
        let n = self.n();
        let ql = *self.q(level);
        limbs.par_chunks_mut(n).enumerate().for_each(|(i, limb)| {
            let m = self.q(i);
            // Centred residues of q_ℓ's limb modulo q_i: x or x − q_ℓ.
            let mut t = vec![0u64; n];
            crate::simd::centred_residues(&mut t, last, ql.q, m);
            self.ring.ntt(&mut t, i);
            crate::simd::shoup_limb(limb, &t, self.rescale_inv[level][i], m, LimbOp::SubMul);
        });
    }

    /// `a += b` limb-wise over a's limbs (b may have more).
    pub fn add_assign(&self, a: &mut [u64], b: &[u64]) {
        add_into(self, a, &b[..a.len()]);
    }

    /// `a −= b` limb-wise over a's limbs (b may have more).
    pub fn sub_assign(&self, a: &mut [u64], b: &[u64]) {
        sub_into(self, a, &b[..a.len()]);
    }

    /// `a *= k` limb-wise for a signed integer k.
    pub fn mul_const_assign(&self, a: &mut [u64], k: i128) {
        mul_const(self, a, k);
    }

    /// `a += k` limb-wise for a signed integer k (on c0, this adds k to every slot).
    pub fn add_const_assign(&self, a: &mut [u64], k: i128) {
        let n = self.n();
        a.par_chunks_mut(n).enumerate().for_each(|(i, x)| {
            let m = self.q(i);
            let w = m.from_i128(k);
            for u in x.iter_mut() {
                *u = m.add(*u, w);
            }
        });
    }

    /// `acc += k · a` limb-wise over acc's limbs (a may have more), in one pass.
    pub fn mul_const_add_assign(&self, acc: &mut [u64], a: &[u64], k: i128) {
        let n = self.n();
        acc.par_chunks_mut(n).zip(a.par_chunks(n)).enumerate().for_each(|(i, (x, y))| {
            let m = self.q(i);
            crate::simd::shoup_limb(x, y, m.from_i128(k), m, LimbOp::MulAdd);
        });
    }

    /// Keeps limbs q_0 … q_level.
    pub fn drop_poly(&self, p: &[u64], level: usize) -> Vec<u64> {
        p[..(level + 1) * self.n()].to_vec()
    }

    /// The key-switching decomposition of `d` (NTT domain at `level`): for each digit, d's
    /// residues on the digit's primes extended to q_0 … q_level and P, NTT domain.
    pub fn mod_up(&self, d: &[u64], level: usize) -> Digits<'_> {
        let n = self.n();
        let nq = level + 1;
        let k = self.chain.p.len();
        let basis = self.ext_basis(level);
        let mut coeff = d.to_vec();
        let qb: Vec<usize> = (0..nq).collect();
        self.ring.intt_all(&mut coeff, &qb);
        let parts: Vec<Vec<u64>> = self
            .digits_at(level)
            .iter()
            .map(|group| {
                let lo = group[0];
                let hi = group[group.len() - 1] + 1;
                // Centred, exact extension: the digit is d mod Q_j in (−Q_j/2, Q_j/2], the
                // smallest it can be, which keeps the key-switching noise d·e/P small. Each
                // limb is converted, then transformed while in cache, in place.
                let conversion = self.ring.conversion(&coeff[lo * n..hi * n], group, true);
                // Every limb is written below, so a kept buffer's old contents do no harm.
                let mut out = self.digit_buffer((nq + k) * n);
                out.par_chunks_mut(n).zip(basis.par_iter()).for_each(|(dst, &i)| {
                    if (lo..hi).contains(&i) {
                        dst.copy_from_slice(&d[i * n..(i + 1) * n]);
                    } else {
                        conversion.limb_into(i, dst);
                        self.ring.ntt(dst, i);
                    }
                });
                out
            })
            .collect();
        Digits { parts, ctx: self }
    }

    /// A buffer of `len` words for a decomposition: a kept one (contents arbitrary) if any,
    /// else a new one.
    fn digit_buffer(&self, len: usize) -> Vec<u64> {
        let kept = self.digit_buffers.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match kept {
            Some(mut buf) => {
                buf.resize(len, 0);
                buf
            }
            None => vec![0u64; len],
        }
    }

    /// Σ_j digit_j ⊙ key_j over q_0 … q_level and P (both parts of the key).
    ///
    /// Blocked like [`Context::mul_plain_sum`]: both accumulators of a block of
    /// [`KEY_BLOCK`] coefficients stay in L1 while every digit's products are added, so
    /// each digit limb and key limb is read from memory once and each output written once
    /// (one pass per digit and part before: the accumulators were streamed 2 × digits times).
    pub fn key_inner(&self, digits: &[Vec<u64>], key: &SwitchKey, level: usize) -> (Vec<u64>, Vec<u64>) {
        let n = self.n();
        let basis = self.ext_basis(level);
        let mut acc0 = vec![0u64; basis.len() * n];
        let mut acc1 = vec![0u64; basis.len() * n];
        acc0.par_chunks_mut(n).zip(acc1.par_chunks_mut(n)).zip(basis.par_iter()).enumerate().for_each(
            |(pos, ((a0, a1), &i))| {
                let kp = key.position(self, i);
                for start in (0..n).step_by(KEY_BLOCK) {
                    let end = (start + KEY_BLOCK).min(n);
                    let (d, k) = (pos * n + start..pos * n + end, kp * n + start..kp * n + end);
                    let pairs_b: Vec<(&[u64], &[u64])> =
                        digits.iter().zip(&key.b).map(|(x, y)| (&x[d.clone()], &y[k.clone()])).collect();
                    let pairs_a: Vec<(&[u64], &[u64])> =
                        digits.iter().zip(&key.a).map(|(x, y)| (&x[d.clone()], &y[k.clone()])).collect();
                    self.ring.dot(&mut a0[start..end], &pairs_b, i, false);
                    self.ring.dot(&mut a1[start..end], &pairs_a, i, false);
                }
            },
        );
        (acc0, acc1)
    }

    /// Divides a polynomial over q_0 … q_level and P by P (rounding), leaving q_0 … q_level.
    /// Works in place in `acc` (its P limbs are transformed where they are; the result is
    /// its first limbs), so nothing is copied.
    pub fn mod_down(&self, mut acc: Vec<u64>, level: usize) -> Vec<u64> {
        let n = self.n();
        let nq = level + 1;
        let special: Vec<usize> = self.ring.special().collect();
        let (out, p_part) = acc.split_at_mut(nq * n);
        self.ring.intt_all(p_part, &special);
        // Exact, centred conversion: the division by P then rounds to nearest (no bias of up
        // to k per coefficient, which s would multiply).
        let conversion = self.ring.conversion(p_part, &special, true);
        out.par_chunks_mut(n).enumerate().for_each_init(
            || vec![0u64; n],
            |c, (i, o)| {
                conversion.limb_into(i, c);
                self.ring.ntt(c, i);
                crate::simd::shoup_limb(o, c, self.p_inv[i], self.q(i), LimbOp::SubMul);
            },
        );
        acc.truncate(nq * n);
        acc.shrink_to_fit();
        acc
    }

    /// Key-switches `d` with `key`: (u0, u1) with u0 + u1·s ≈ d·s_in.
    pub fn key_switch(&self, d: &[u64], key: &SwitchKey, level: usize) -> (Vec<u64>, Vec<u64>) {
        let digits = self.mod_up(d, level);
        self.switch_decomposed(&digits, key, level)
    }

    /// Key-switches an already decomposed polynomial (see [`Context::mod_up`]).
    pub fn switch_decomposed(&self, digits: &[Vec<u64>], key: &SwitchKey, level: usize) -> (Vec<u64>, Vec<u64>) {
        let (a0, a1) = self.key_inner(digits, key, level);
        let (u0, u1) = rayon::join(|| self.mod_down(a0, level), || self.mod_down(a1, level));
        (u0, u1)
    }

    /// Σ_i a_i ⊗ b_i: the tensor products of pairs of ciphertexts (each pair at one level, all
    /// at the same level) summed before one relinearisation.
    pub fn tensor_sum(&self, pairs: &[(&Ciphertext, &Ciphertext)]) -> (Vec<u64>, Vec<u64>, Vec<u64>) {
        let len = pairs.first().map_or(0, |(a, _)| a.c0.len());
        let n = self.n();
        let (mut d0, mut d1, mut d2) = (vec![0u64; len], vec![0u64; len], vec![0u64; len]);
        d0.par_chunks_mut(n).zip(d1.par_chunks_mut(n)).zip(d2.par_chunks_mut(n)).enumerate().for_each(
            |(i, ((o0, o1), o2))| {
                let same: Vec<(&[u64], &[u64])> =
                    pairs.iter().map(|(a, b)| (&a.c0[i * n..(i + 1) * n], &b.c0[i * n..(i + 1) * n])).collect();
                self.ring.dot(o0, &same, i, false);
                let cross: Vec<(&[u64], &[u64])> = pairs
                    .iter()
                    .flat_map(|(a, b)| {
                        [
                            (&a.c0[i * n..(i + 1) * n], &b.c1[i * n..(i + 1) * n]),
                            (&a.c1[i * n..(i + 1) * n], &b.c0[i * n..(i + 1) * n]),
                        ]
                    })
                    .collect();
                self.ring.dot(o1, &cross, i, false);
                let last: Vec<(&[u64], &[u64])> =
                    pairs.iter().map(|(a, b)| (&a.c1[i * n..(i + 1) * n], &b.c1[i * n..(i + 1) * n])).collect();
                self.ring.dot(o2, &last, i, false);
            },
        );
        (d0, d1, d2)
    }

    /// Relinearises (d0, d1, d2) into a two-part ciphertext.
    pub fn relinearise(
        &self,
        d: (Vec<u64>, Vec<u64>, Vec<u64>),
        key: &SwitchKey,
        level: usize,
    ) -> (Vec<u64>, Vec<u64>) {
        let (mut d0, mut d1, d2) = d;
        let (u0, u1) = self.key_switch(&d2, key, level);
        add_into(self, &mut d0, &u0);
        add_into(self, &mut d1, &u1);
        (d0, d1)
    }

    /// Σ_k σ_k(ct_k) for rotations given by their switching key and Galois element (`None`:
    /// the term is added as it is), all at `level`, with **one** division by P: each term's
    /// key-switch output stays in the extended basis Q·P, is permuted by σ_k there (σ commutes
    /// with the division) and summed; ModDown runs once on the sum instead of once per term.
    pub fn rotate_sum(&self, terms: &[(&Ciphertext, Option<(&SwitchKey, u64)>)], level: usize) -> (Vec<u64>, Vec<u64>) {
        let n = self.n();
        let basis = self.ext_basis(level);
        let mut c0 = vec![0u64; (level + 1) * n];
        let mut c1 = vec![0u64; (level + 1) * n];
        let mut ext0 = vec![0u64; basis.len() * n];
        let mut ext1 = vec![0u64; basis.len() * n];
        let q_basis = self.ring.q_basis(level);
        let mut switched = false;
        for (ct, rotation) in terms {
            match rotation {
                None => {
                    add_into(self, &mut c0, &ct.c0);
                    add_into(self, &mut c1, &ct.c1);
                }
                Some((key, g)) => {
                    let (a0, a1) = self.key_inner(&self.mod_up(&ct.c1, level), key, level);
                    let perm = self.ring.galois_perm(*g);
                    rayon::join(
                        || add_permuted_into(self, &mut c0, &ct.c0, &perm, &q_basis),
                        || {
                            rayon::join(
                                || add_permuted_into(self, &mut ext0, &a0, &perm, &basis),
                                || add_permuted_into(self, &mut ext1, &a1, &perm, &basis),
                            )
                        },
                    );
                    switched = true;
                }
            }
        }
        if switched {
            let (u0, u1) = rayon::join(|| self.mod_down(ext0, level), || self.mod_down(ext1, level));
            rayon::join(|| add_into(self, &mut c0, &u0), || add_into(self, &mut c1, &u1));
        }
        (c0, c1)
    }

    /// `p` (NTT domain at `level`) times P, written over the key-switching basis q_0 … q_level,
    /// P: the form a key product has before ModDown (its P limbs are zero).
    pub fn times_p_ext(&self, p: &[u64], level: usize) -> Vec<u64> {
        let n = self.n();
        let k = self.chain.p.len();
        let mut out = vec![0u64; (level + 1 + k) * n];
        out[..(level + 1) * n].par_chunks_mut(n).zip(p.par_chunks(n)).enumerate().for_each(|(i, (o, x))| {
            o.copy_from_slice(x);
            crate::simd::shoup_limb(o, &[], self.p_mod[i], self.q(i), LimbOp::Mul);
        });
        out
    }

    /// Rotations of (c0, c1) at `level` kept in the key-switching basis and scaled by P
    /// (**double hoisting**, first half): one decomposition of c1 shared by all, each rotation
    /// its key product and automorphism, no ModDown. `None` is the ciphertext itself (times P).
    /// Products with plaintexts encoded over the same basis and sums stay exact in this form;
    /// [`Context::giant_step_into`] and one final [`Context::mod_down`] finish the work.
    pub fn hoisted_rotations_ext(
        &self,
        c0: &[u64],
        c1: &[u64],
        keys: &[Option<(&SwitchKey, u64)>],
        level: usize,
    ) -> Vec<ExtParts> {
        let digits = keys.iter().any(Option::is_some).then(|| self.mod_up(c1, level));
        let basis = self.ext_basis(level);
        let c0p = self.times_p_ext(c0, level);
        keys.iter()
            .map(|key| match key {
                None => (c0p.clone(), self.times_p_ext(c1, level)),
                Some((key, g)) => {
                    let digits = digits.as_ref().expect("decomposed when a key is given");
                    let (mut a0, a1) = self.key_inner(digits, key, level);
                    add_into_basis(self, &mut a0, &c0p, &basis);
                    rayon::join(|| self.ring.automorphism_ntt(&a0, *g), || self.ring.automorphism_ntt(&a1, *g))
                }
            })
            .collect()
    }

    /// Σ_t a_t ⊙ p_t for ciphertexts and plaintexts over the key-switching basis at `level`
    /// (see [`Context::mul_plain_sum`]).
    pub fn mul_plain_sum_ext(&self, terms: &[(&ExtParts, &[u64])], level: usize) -> (Vec<u64>, Vec<u64>) {
        let parts: Vec<(&[u64], &[u64], &[u64])> =
            terms.iter().map(|((c0, c1), p)| (c0.as_slice(), c1.as_slice(), *p)).collect();
        self.plain_sum_over(&parts, &self.ext_basis(level))
    }

    /// Adds σ_g(inner) to the accumulators (all over the key-switching basis at `level`, scaled
    /// by P), `inner` being a giant step's sum of baby products (**double hoisting**, second
    /// half): only its c1 is divided by P (it must be decomposed for the key switch); the key
    /// product, c0 and the automorphism stay in the extended basis. `None`: added as it is.
    pub fn giant_step_into(
        &self,
        acc: (&mut [u64], &mut [u64]),
        inner: (Vec<u64>, Vec<u64>),
        key: Option<(&SwitchKey, u64)>,
        level: usize,
    ) {
        let basis = self.ext_basis(level);
        let (acc0, acc1) = acc;
        let (inner0, inner1) = inner;
        match key {
            None => {
                rayon::join(
                    || add_into_basis(self, acc0, &inner0, &basis),
                    || add_into_basis(self, acc1, &inner1, &basis),
                );
            }
            Some((key, g)) => {
                let c1 = self.mod_down(inner1, level);
                let (mut e0, e1) = self.key_inner(&self.mod_up(&c1, level), key, level);
                add_into_basis(self, &mut e0, &inner0, &basis);
                let perm = self.ring.galois_perm(g);
                rayon::join(
                    || add_permuted_into(self, acc0, &e0, &perm, &basis),
                    || add_permuted_into(self, acc1, &e1, &perm, &basis),
                );
            }
        }
    }

    /// ModRaise: the level-0 polynomial `p` (NTT domain) read as its centred integer
    /// coefficients in (−q_0/2, q_0/2] and written over q_0 … q_level. A ciphertext raised this
    /// way decrypts to m + q_0·I for a small integer polynomial I.
    pub fn mod_raise(&self, p: &[u64], level: usize) -> Vec<u64> {
        let n = self.n();
        let mut c = p[..n].to_vec();
        self.ring.intt(&mut c, 0);
        let m = self.q(0);
        let centred: Vec<i64> = c.iter().map(|&x| m.centre(x)).collect();
        self.lift(&centred, &self.ring.q_basis(level))
    }

    /// `p · X^k` for 0 ≤ k < 2N (NTT domain over q_0 … q_level): X^(N/2) multiplies every slot
    /// by the imaginary unit, exactly and without a level.
    pub fn mul_monomial(&self, p: &[u64], k: usize) -> Vec<u64> {
        let n = self.n();
        let (k, sign) = if k >= n { (k - n, true) } else { (k, false) };
        let mut out = p.to_vec();
        out.par_chunks_mut(n).enumerate().for_each(|(i, limb)| {
            let m = self.q(i);
            let mut x = vec![0u64; n];
            x[k] = if sign { m.neg(1) } else { 1 };
            self.ring.ntt(&mut x, i);
            for (u, &w) in limb.iter_mut().zip(&x) {
                *u = m.mul(*u, w);
            }
        });
        out
    }

    /// Applies X → X^g after switching with a rotation key: `(σ(c0 + u0), σ(u1))`.
    pub fn finish_rotation(&self, c0: &[u64], u: (Vec<u64>, Vec<u64>), g: u64) -> (Vec<u64>, Vec<u64>) {
        let (mut u0, u1) = u;
        add_into(self, &mut u0, c0);
        rayon::join(|| self.ring.automorphism_ntt(&u0, g), || self.ring.automorphism_ntt(&u1, g))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::CkksParams;
    use rand::{Rng, SeedableRng};

    /// A random polynomial over q_0 … q_level (NTT domain: any residues will do).
    fn random_poly(ctx: &Context, level: usize, seed: u64) -> Vec<u64> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let n = ctx.n();
        (0..(level + 1) * n).map(|j| rng.gen_range(0..ctx.q(j / n).q)).collect()
    }

    #[test]
    fn in_place_rescales_and_sums_equal_their_copying_forms() {
        let ctx = Context::new(&CkksParams::insecure_for_tests(7, 5, 30)).unwrap();
        let top = ctx.max_level();
        let p = random_poly(&ctx, top, 1);
        let want = ctx.rescale_poly(&p, top);
        let mut got = p.clone();
        ctx.rescale_in_place(&mut got, top);
        assert_eq!(got, want);
        // acc += k·a over acc's limbs, a having more.
        let a = random_poly(&ctx, top, 2);
        let acc = random_poly(&ctx, top - 2, 3);
        for k in [-7i128, 3, 1 << 70] {
            let mut fused = acc.clone();
            ctx.mul_const_add_assign(&mut fused, &a, k);
            let mut ka = a[..acc.len()].to_vec();
            ctx.mul_const_assign(&mut ka, k);
            let mut want = acc.clone();
            ctx.add_assign(&mut want, &ka);
            assert_eq!(fused, want, "k = {k}");
        }
    }

    #[test]
    fn a_decomposition_in_reused_buffers_equals_a_fresh_one() {
        let ctx = Context::new(&CkksParams::insecure_for_tests(7, 6, 30)).unwrap();
        let top = ctx.max_level();
        let (high, low) = (random_poly(&ctx, top, 4), random_poly(&ctx, top - 3, 5));
        let fresh_high: Vec<Vec<u64>> = ctx.mod_up(&high, top).to_vec();
        ctx.digit_buffers.lock().unwrap().clear();
        let fresh_low: Vec<Vec<u64>> = ctx.mod_up(&low, top - 3).to_vec();
        ctx.digit_buffers.lock().unwrap().iter_mut().for_each(|b| b.fill(u64::MAX));
        // Dropped decompositions left buffers behind; the next ones reuse them, shorter and
        // longer than before, and must not see their old contents.
        assert!(!ctx.digit_buffers.lock().unwrap().is_empty());
        let reused_high = ctx.mod_up(&high, top);
        assert_eq!(&reused_high[..], &fresh_high[..]);
        drop(reused_high);
        let reused_low = ctx.mod_up(&low, top - 3);
        assert_eq!(&reused_low[..], &fresh_low[..]);
        drop(reused_low);
        assert!(ctx.digit_buffers.lock().unwrap().len() <= KEPT_DIGIT_BUFFERS);
    }
}
