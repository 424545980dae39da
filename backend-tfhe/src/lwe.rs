//! Quantised integers under TFHE: the layer every emulated slot is built on.
//!
//! A value is a signed integer `v` in `[−2^(p−1), 2^(p−1))`, stored as the shortint message
//! `m = v + 2^(p−1)` in `[0, 2^p)` of a TFHE-rs parameter set whose message and carry bits
//! together give `p` bits (one more bit on top is TFHE's padding). Linear operations
//! (integer-weighted sums plus a constant) work directly on the LWE ciphertexts and keep the
//! offset straight; a programmable bootstrap applies any function `f` of the `2^p` possible
//! inputs through a lookup table and resets the noise.
//!
//! **Noise is accounted for in code.** Every ciphertext carries the standard deviation of its
//! noise relative to a fresh (or freshly bootstrapped) one; a weighted sum scales it by
//! `sqrt(Σ (w_i·σ_i)²)`, and a sum whose result would exceed the parameter set's published
//! 2-norm bound (the bound under which TFHE-rs guarantees its failure probability for the next
//! bootstrap) is refused with an error that says what to change.

use std::fmt;

use tfhe::core_crypto::prelude::{lwe_ciphertext_add_assign, lwe_ciphertext_cleartext_mul_assign, lwe_ciphertext_plaintext_add_assign, Cleartext, Plaintext};
use tfhe::shortint::parameters::{ClassicPBSParameters, PARAM_MESSAGE_2_CARRY_2_KS_PBS_GAUSSIAN_2M128, PARAM_MESSAGE_3_CARRY_3_KS_PBS_GAUSSIAN_2M128};
use tfhe::shortint::server_key::LookupTableOwned;
use tfhe::shortint::{Ciphertext, ClientKey, ServerKey};

/// Errors of the LWE layer.
#[derive(Debug, Clone, PartialEq)]
pub enum LweError {
    /// A value outside the representable signed range.
    OutOfRange {
        /// The value.
        value: i64,
        /// Bits of precision p.
        bits: u32,
    },
    /// A weighted sum whose noise would exceed what the next bootstrap tolerates.
    NoiseBudget {
        /// Noise of the sum, relative to a fresh ciphertext.
        norm: f64,
        /// The parameter set's bound.
        bound: f64,
    },
    /// An operation mixing two different parameter sets, or an empty sum.
    Invalid(String),
}

impl fmt::Display for LweError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LweError::OutOfRange { value, bits } => write!(
                f,
                "value {value} does not fit in {bits} signed bits [{}, {}); quantise with a smaller scale",
                -(1i64 << (bits - 1)),
                1i64 << (bits - 1)
            ),
            LweError::NoiseBudget { norm, bound } => write!(
                f,
                "weighted sum too noisy: its noise is {norm:.2}× a fresh ciphertext's, the parameter set guarantees correct bootstrapping up to {bound}×; use smaller integer weights (a coarser weight scale), split the sum with a bootstrap in between, or a parameter set with a larger bound"
            ),
            LweError::Invalid(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for LweError {}

/// Result of the LWE layer.
pub type LweResult<T> = Result<T, LweError>;

/// A TFHE-rs parameter set (128-bit security, failure probability ≤ 2^-128 per bootstrap).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LweParams {
    /// Bits p of the signed integers (message + carry bits of the set).
    pub bits: u32,
    /// The TFHE-rs name of the set.
    pub name: &'static str,
    /// Largest noise, relative to a fresh ciphertext, at a bootstrap's input (the set's 2-norm).
    pub noise_bound: f64,
    /// The set.
    pub set: ClassicPBSParameters,
}

impl LweParams {
    /// The published set for `bits` = 4 or 6 bits of precision.
    pub fn with_bits(bits: u32) -> LweResult<Self> {
        match bits {
            4 => Ok(LweParams {
                bits,
                name: "PARAM_MESSAGE_2_CARRY_2_KS_PBS_GAUSSIAN_2M128",
                noise_bound: PARAM_MESSAGE_2_CARRY_2_KS_PBS_GAUSSIAN_2M128.max_noise_level.get() as f64,
                set: PARAM_MESSAGE_2_CARRY_2_KS_PBS_GAUSSIAN_2M128,
            }),
            6 => Ok(LweParams {
                bits,
                name: "PARAM_MESSAGE_3_CARRY_3_KS_PBS_GAUSSIAN_2M128",
                noise_bound: PARAM_MESSAGE_3_CARRY_3_KS_PBS_GAUSSIAN_2M128.max_noise_level.get() as f64,
                set: PARAM_MESSAGE_3_CARRY_3_KS_PBS_GAUSSIAN_2M128,
            }),
            _ => Err(LweError::Invalid(format!("precision must be 4 or 6 bits (TFHE-rs 128-bit sets), got {bits}"))),
        }
    }
    /// Offset 2^(p−1) between the signed value and the stored message.
    pub fn offset(&self) -> i64 {
        1i64 << (self.bits - 1)
    }
    /// Smallest and largest representable value.
    pub fn range(&self) -> (i64, i64) {
        (-self.offset(), self.offset() - 1)
    }
    /// Δ: the torus step of one message unit (one padding bit above the p message bits).
    fn delta(&self) -> u64 {
        1u64 << (63 - self.bits)
    }
}

/// One encrypted signed integer and its noise relative to a fresh ciphertext.
#[derive(Clone)]
pub struct Lwe {
    ct: Ciphertext,
    noise: f64,
}

impl Lwe {
    /// Noise standard deviation relative to a fresh ciphertext.
    pub fn noise(&self) -> f64 {
        self.noise
    }
}

/// The client: secret keys, encryption and decryption.
pub struct LweClient {
    params: LweParams,
    key: ClientKey,
}

/// The server: bootstrapping and key-switching keys only.
pub struct LweServer {
    params: LweParams,
    key: ServerKey,
}

/// A lookup table: a function of the signed value, ready for bootstrapping.
pub struct Lut {
    table: LookupTableOwned,
    /// Inputs whose output had to be clamped into the range (the function left it).
    pub clamped: usize,
}

impl LweClient {
    /// Generates secret keys for `params`.
    pub fn new(params: LweParams) -> Self {
        LweClient { params, key: ClientKey::new(params.set) }
    }
    /// The parameters.
    pub fn params(&self) -> &LweParams {
        &self.params
    }
    /// Generates the server's evaluation keys (bootstrapping and key switching).
    pub fn server(&self) -> LweServer {
        LweServer { params: self.params, key: ServerKey::new(&self.key) }
    }
    /// Encrypts a signed integer.
    pub fn encrypt(&self, v: i64) -> LweResult<Lwe> {
        let (lo, hi) = self.params.range();
        if v < lo || v > hi {
            return Err(LweError::OutOfRange { value: v, bits: self.params.bits });
        }
        Ok(Lwe { ct: self.key.unchecked_encrypt((v + self.params.offset()) as u64), noise: 1.0 })
    }
    /// Decrypts a signed integer (sums that overflowed the range wrap around).
    pub fn decrypt(&self, ct: &Lwe) -> i64 {
        let m = self.key.decrypt_message_and_carry(&ct.ct) as i64;
        m - self.params.offset()
    }
}

impl LweServer {
    /// The parameters.
    pub fn params(&self) -> &LweParams {
        &self.params
    }
    /// `Σ w_i·x_i + bias` without bootstrapping. Refused when the noise would exceed the bound;
    /// a result outside the signed range wraps around (the caller's quantisation prevents it).
    pub fn weighted_sum(&self, terms: &[(&Lwe, i64)], bias: i64) -> LweResult<Lwe> {
        let Some((first, _)) = terms.first() else {
            return Err(LweError::Invalid("a weighted sum needs at least one term".into()));
        };
        let norm = terms.iter().map(|(x, w)| (*w as f64 * x.noise).powi(2)).sum::<f64>().sqrt();
        if norm > self.params.noise_bound {
            return Err(LweError::NoiseBudget { norm, bound: self.params.noise_bound });
        }
        let mut acc = first.ct.clone();
        acc.ct.as_mut().fill(0);
        let mut weight_sum = 0i64;
        for (x, w) in terms {
            if *w == 0 {
                continue;
            }
            let mut t = x.ct.ct.clone();
            lwe_ciphertext_cleartext_mul_assign(&mut t, Cleartext(*w as u64));
            lwe_ciphertext_add_assign(&mut acc.ct, &t);
            weight_sum += w;
        }
        // Each term carries the offset o once per unit of weight; keep exactly one.
        let o = self.params.offset();
        let constant = bias + o - o * weight_sum;
        lwe_ciphertext_plaintext_add_assign(&mut acc.ct, Plaintext((constant as u64).wrapping_mul(self.params.delta())));
        Ok(Lwe { ct: acc, noise: norm.max(f64::MIN_POSITIVE) })
    }
    /// A lookup table applying `f` to every representable value; outputs outside the range are
    /// clamped to it and counted in [`Lut::clamped`].
    pub fn lut(&self, f: impl Fn(i64) -> i64) -> Lut {
        let (lo, hi) = self.params.range();
        let o = self.params.offset();
        let clamped = (lo..=hi).filter(|&v| !(lo..=hi).contains(&f(v))).count();
        let table = self.key.generate_lookup_table(|m| (f(m as i64 - o).clamp(lo, hi) + o) as u64);
        Lut { table, clamped }
    }
    /// One programmable bootstrap (key switch, blind rotation, sample extraction): `f(x)` with
    /// fresh noise.
    pub fn bootstrap(&self, x: &Lwe, lut: &Lut) -> Lwe {
        Lwe { ct: self.key.apply_lookup_table(&x.ct, &lut.table), noise: 1.0 }
    }
}
