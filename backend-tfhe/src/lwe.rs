//! Quantised integers under TFHE: the layer every emulated slot is built on.
//!
//! A TFHE-rs parameter set gives `p` bits (message + carry) under one padding bit: a lookup
//! table has `2^p` boxes of width Δ = 2^(63−p) on the torus. This layer stores a signed integer
//! `v` as the torus value `v·Δ'` in two's complement, with a finer step `Δ' = Δ / 2^k` for `k`
//! *extra accumulator bits*: integer-weighted sums then add up to `p + k` bits of precision,
//! and a programmable bootstrap reads the top `p` bits — box `round(v / 2^k)` — and writes any
//! function of it back at step Δ'. With `k = 0` the bootstrap input is exact. With `k > 0` a
//! sum within noise of a box boundary may land in the neighbouring box (one unit of the `p`-bit
//! input), the approximate rounding of a wide accumulator read through a narrow table.
//!
//! **Noise is accounted for in code.** Every ciphertext carries the standard deviation of its
//! noise relative to a fresh (or freshly bootstrapped) one; a weighted sum scales it by
//! `sqrt(Σ (w_i·σ_i)²)`, and a sum beyond the bound is refused with an error that says what to
//! change. The bound is the set's published 2-norm (under which TFHE-rs guarantees its failure
//! probability, 2^-128, for reading the box exactly) when `k = 0`; with `k > 0`, where the
//! neighbouring box is accepted, twice that (an error of two boxes then needs noise beyond Δ,
//! twice the guaranteed margin, at the same failure probability).

use bincode::Options;

use tfhe::core_crypto::prelude::{
    lwe_ciphertext_add_assign, lwe_ciphertext_cleartext_mul_assign, lwe_ciphertext_plaintext_add_assign, Cleartext,
    Plaintext,
};
use tfhe::shortint::parameters::v1_6::{
    V1_6_PARAM_MESSAGE_1_CARRY_3_KS_PBS_GAUSSIAN_2M128, V1_6_PARAM_MESSAGE_1_CARRY_4_KS_PBS_GAUSSIAN_2M128,
    V1_6_PARAM_MESSAGE_1_CARRY_5_KS_PBS_GAUSSIAN_2M128, V1_6_PARAM_MESSAGE_1_CARRY_6_KS_PBS_GAUSSIAN_2M128,
    V1_6_PARAM_MESSAGE_1_CARRY_7_KS_PBS_GAUSSIAN_2M128,
};
use tfhe::shortint::parameters::{CarryModulus, ClassicPBSParameters, MessageModulus};
use tfhe::shortint::server_key::LookupTableOwned;
use tfhe::shortint::{Ciphertext, ClientKey, ServerKey};

/// Errors of the LWE layer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LweError {
    /// A value outside the representable signed range.
    #[error("value {value} does not fit in {bits} signed bits [{}, {}); quantise with a smaller scale", -(1i64 << (bits - 1)), 1i64 << (bits - 1))]
    OutOfRange {
        /// The value.
        value: i64,
        /// Bits of precision p.
        bits: u32,
    },
    /// A weighted sum whose noise would exceed what the next bootstrap tolerates.
    #[error("weighted sum too noisy: its noise is {norm:.2}× a fresh ciphertext's, the parameter set guarantees correct bootstrapping up to {bound}×; use smaller integer weights (a coarser weight scale), split the sum with a bootstrap in between, or a parameter set with a larger bound")]
    NoiseBudget {
        /// Noise of the sum, relative to a fresh ciphertext.
        norm: f64,
        /// The parameter set's bound.
        bound: f64,
    },
    /// No published TFHE-rs set for this precision.
    #[error("precision must be 4 to 8 bits (TFHE-rs 128-bit sets), got {0}")]
    Bits(u32),
    /// Too many extra accumulator bits.
    #[error("extra accumulator bits must be 0 to 12, got {0}")]
    ExtraBits(u32),
    /// A weighted sum of nothing.
    #[error("a weighted sum needs at least one term")]
    EmptySum,
    /// A plan quantised for other bits than the keys'.
    #[error("the plan was quantised for {plan_bits} bits (+{plan_extra} accumulator bits), the keys are for {key_bits} (+{key_extra})")]
    PlanMismatch {
        /// The plan's bits.
        plan_bits: u32,
        /// The plan's extra accumulator bits.
        plan_extra: u32,
        /// The keys' bits.
        key_bits: u32,
        /// The keys' extra accumulator bits.
        key_extra: u32,
    },
    /// An input of the wrong length.
    #[error("the plan takes {expected} encrypted inputs, got {got}")]
    InputCount {
        /// Inputs the plan takes.
        expected: usize,
        /// Inputs given.
        got: usize,
    },
    /// Keys or ciphertexts could not be serialised.
    #[error("serialising {what}: {detail}")]
    Serialize {
        /// What.
        what: &'static str,
        /// Why.
        detail: String,
    },
    /// Bytes that are not what they should be.
    #[error("corrupted or foreign {what}: {detail}")]
    Corrupted {
        /// What was being read.
        what: &'static str,
        /// Why it was refused.
        detail: String,
    },
}

/// Result of the LWE layer.
pub type LweResult<T> = Result<T, LweError>;

/// A TFHE-rs parameter set (128-bit security, failure probability ≤ 2^-128 per bootstrap).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LweParams {
    /// Bits p of a bootstrap's input (message + carry bits of the set).
    pub bits: u32,
    /// Extra accumulator bits k below the bootstrap's resolution.
    pub extra_bits: u32,
    /// The TFHE-rs name of the set.
    pub name: &'static str,
    /// Largest noise, relative to a fresh ciphertext, at a bootstrap's input (the set's 2-norm).
    pub noise_bound: f64,
    /// The set.
    pub set: ClassicPBSParameters,
}

impl LweParams {
    /// Precisions with a published set: 4 to 8 bits.
    pub const BITS: std::ops::RangeInclusive<u32> = 4..=8;

    /// The published set for `bits` (4 to 8) of precision.
    ///
    /// These are TFHE-rs's `PARAM_MESSAGE_1_CARRY_{bits−1}` sets (128-bit security, failure
    /// probability 2^-128 per bootstrap, Gaussian noise, keyswitch before bootstrap). They are
    /// made for what a network needs: a lookup table over the *whole* `bits`-bit space after
    /// long sums, so their noise 2-norm bound is 2^(bits−1) − 1 (15 at 4 bits, 63 at 6 bits,
    /// 255 at 8 bits), where the `MESSAGE_k_CARRY_k` sets of the same precision allow 5 to 9.
    /// The price is the ring: N = 2048 at 4 bits, 4096 at 5, 8192 at 6, 16384 at 7, 65536 at 8.
    pub fn with_bits(bits: u32) -> LweResult<Self> {
        Self::with_accumulator(bits, 0)
    }

    /// The set for `bits` with `extra_bits` (0 to 12) of accumulator precision below it.
    pub fn with_accumulator(bits: u32, extra_bits: u32) -> LweResult<Self> {
        if extra_bits > 12 {
            return Err(LweError::ExtraBits(extra_bits));
        }
        let (name, set) = match bits {
            4 => ("PARAM_MESSAGE_1_CARRY_3_KS_PBS_GAUSSIAN_2M128", V1_6_PARAM_MESSAGE_1_CARRY_3_KS_PBS_GAUSSIAN_2M128),
            5 => ("PARAM_MESSAGE_1_CARRY_4_KS_PBS_GAUSSIAN_2M128", V1_6_PARAM_MESSAGE_1_CARRY_4_KS_PBS_GAUSSIAN_2M128),
            6 => ("PARAM_MESSAGE_1_CARRY_5_KS_PBS_GAUSSIAN_2M128", V1_6_PARAM_MESSAGE_1_CARRY_5_KS_PBS_GAUSSIAN_2M128),
            7 => ("PARAM_MESSAGE_1_CARRY_6_KS_PBS_GAUSSIAN_2M128", V1_6_PARAM_MESSAGE_1_CARRY_6_KS_PBS_GAUSSIAN_2M128),
            8 => ("PARAM_MESSAGE_1_CARRY_7_KS_PBS_GAUSSIAN_2M128", V1_6_PARAM_MESSAGE_1_CARRY_7_KS_PBS_GAUSSIAN_2M128),
            _ => return Err(LweError::Bits(bits)),
        };
        let stored_bits = (set.message_modulus.0 * set.carry_modulus.0).trailing_zeros();
        debug_assert_eq!(stored_bits, bits);
        let published = set.max_noise_level.get() as f64;
        Ok(LweParams {
            bits,
            extra_bits,
            name,
            noise_bound: if extra_bits == 0 { published } else { 2.0 * published },
            set,
        })
    }
    /// Ring dimension N of the bootstrapping key (the main cost of one bootstrap).
    pub fn polynomial_size(&self) -> usize {
        self.set.polynomial_size.0
    }
    /// Dimension n of the LWE ciphertexts that are bootstrapped.
    pub fn lwe_dimension(&self) -> usize {
        self.set.lwe_dimension.0
    }
    /// Offset 2^(p−1) boxes that centres signed bootstrap inputs in the table.
    pub fn offset(&self) -> i64 {
        1i64 << (self.bits - 1)
    }
    /// Smallest and largest value a ciphertext can hold: `[−2^(p−1+k), 2^(p−1+k))`.
    pub fn range(&self) -> (i64, i64) {
        let h = 1i64 << (self.bits - 1 + self.extra_bits);
        (-h, h - 1)
    }
    /// Signed inputs of a lookup table: the boxes `−2^(p−1) … 2^(p−1) − 1`.
    pub fn table_range(&self) -> (i64, i64) {
        (-self.offset(), self.offset() - 1)
    }
    /// The two bytes that name these parameters in front of serialised keys.
    fn tag(&self) -> Vec<u8> {
        vec![self.bits as u8, self.extra_bits as u8]
    }
    /// Refuses keys whose moduli are not this set's.
    fn owns(&self, message: MessageModulus, carry: CarryModulus, what: &'static str) -> LweResult<()> {
        if message != self.set.message_modulus || carry != self.set.carry_modulus {
            return Err(LweError::Corrupted { what, detail: format!("it does not belong to {}", self.name) });
        }
        Ok(())
    }
    /// Δ: the torus width of one box (one padding bit above the p bits).
    fn delta(&self) -> u64 {
        1u64 << (63 - self.bits)
    }
    /// Δ' = Δ / 2^k: the torus step of one unit.
    fn unit(&self) -> u64 {
        1u64 << (63 - self.bits - self.extra_bits)
    }
}

/// The serialisation of keys and ciphertexts: bincode with a 64 GiB ceiling.
fn wire() -> impl bincode::Options {
    use bincode::Options;
    bincode::DefaultOptions::new().with_fixint_encoding().with_limit(1 << 36)
}

/// Reading `len` bytes: bincode may read no more than the bytes there are, so a corrupted
/// length field is an error rather than an allocation of any size.
fn wire_reading(len: usize) -> impl bincode::Options {
    use bincode::Options;
    bincode::DefaultOptions::new().with_fixint_encoding().with_limit(len as u64)
}

/// `prefix` followed by `value` on the wire, then a BLAKE3 digest of both.
fn write_wire<T: serde::Serialize>(mut prefix: Vec<u8>, value: &T, what: &'static str) -> LweResult<Vec<u8>> {
    wire().serialize_into(&mut prefix, value).map_err(|e| LweError::Serialize { what, detail: e.to_string() })?;
    let digest = blake3::hash(&prefix);
    prefix.extend_from_slice(digest.as_bytes());
    Ok(prefix)
}

/// The bytes before the digest [`write_wire`] appends, once it matches.
fn checked<'a>(bytes: &'a [u8], what: &'static str) -> LweResult<&'a [u8]> {
    let bad = |detail: &str| LweError::Corrupted { what, detail: detail.into() };
    let split = bytes.len().checked_sub(32).ok_or_else(|| bad("shorter than its checksum (truncated file)"))?;
    let (body, digest) = bytes.split_at(split);
    if blake3::hash(body).as_bytes() != digest {
        return Err(bad("checksum mismatch: the file is truncated, corrupted or was altered"));
    }
    Ok(body)
}

/// The parameter set and value of bytes written as `[bits, extra bits, value]`.
fn read_tagged<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &'static str) -> LweResult<(LweParams, T)> {
    let bad = |detail: String| LweError::Corrupted { what, detail };
    let [bits, extra, rest @ ..] = checked(bytes, what)? else { return Err(bad("too short".into())) };
    let params = LweParams::with_accumulator(*bits as u32, *extra as u32).map_err(|e| bad(e.to_string()))?;
    Ok((params, wire_reading(rest.len()).deserialize(rest).map_err(|e| bad(e.to_string()))?))
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
    /// Encrypts a signed integer in [`LweParams::range`].
    pub fn encrypt(&self, v: i64) -> LweResult<Lwe> {
        let (lo, hi) = self.params.range();
        if v < lo || v > hi {
            return Err(LweError::OutOfRange { value: v, bits: self.params.bits + self.params.extra_bits });
        }
        let mut ct = self.key.unchecked_encrypt(0);
        lwe_ciphertext_plaintext_add_assign(&mut ct.ct, Plaintext((v as u64).wrapping_mul(self.params.unit())));
        Ok(Lwe { ct, noise: 1.0 })
    }
    /// Decrypts a signed integer (sums that left the range wrap around modulo 2^(p+1+k)).
    pub fn decrypt(&self, ct: &Lwe) -> i64 {
        let raw = self.key.decrypt_no_decode(&ct.ct).0 as i64;
        let unit = self.params.unit() as i64;
        // Round to the nearest unit (two's complement torus value).
        raw.wrapping_add(unit / 2).div_euclid(unit)
    }
}

impl LweClient {
    /// The secret client state (parameters and secret keys), to keep on the client between
    /// processes; read back with [`LweClient::from_bytes`]. Never send it to a server.
    pub fn to_bytes(&self) -> LweResult<Vec<u8>> {
        write_wire(self.params.tag(), &self.key, "the client key")
    }
    /// Rebuilds a client from [`LweClient::to_bytes`]; refuses keys of another parameter set.
    pub fn from_bytes(bytes: &[u8]) -> LweResult<Self> {
        let (params, key): (_, ClientKey) = read_tagged(bytes, "TFHE client key")?;
        let p = key.parameters();
        params.owns(p.message_modulus(), p.carry_modulus(), "TFHE client key")?;
        Ok(LweClient { params, key })
    }
}

impl Lwe {
    /// Serialises the ciphertext (with its noise estimate).
    pub fn to_bytes(&self) -> LweResult<Vec<u8>> {
        write_wire(self.noise.to_le_bytes().to_vec(), &self.ct, "a ciphertext")
    }
    /// Reads a ciphertext written by [`Lwe::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> LweResult<Self> {
        let bad = |detail: String| LweError::Corrupted { what: "TFHE ciphertext", detail };
        let (noise, rest) =
            checked(bytes, "TFHE ciphertext")?.split_first_chunk::<8>().ok_or_else(|| bad("too short".into()))?;
        let noise = f64::from_le_bytes(*noise);
        if !(noise >= 0.0 && noise.is_finite()) {
            return Err(bad(format!("noise estimate {noise}")));
        }
        let ct: Ciphertext = wire_reading(rest.len()).deserialize(rest).map_err(|e| bad(e.to_string()))?;
        Ok(Lwe { ct, noise })
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
            return Err(LweError::EmptySum);
        };
        let norm = terms.iter().map(|(x, w)| (*w as f64 * x.noise).powi(2)).sum::<f64>().sqrt();
        if norm > self.params.noise_bound {
            return Err(LweError::NoiseBudget { norm, bound: self.params.noise_bound });
        }
        let mut acc = first.ct.clone();
        acc.ct.as_mut().fill(0);
        for (x, w) in terms {
            if *w == 0 {
                continue;
            }
            let mut t = x.ct.ct.clone();
            lwe_ciphertext_cleartext_mul_assign(&mut t, Cleartext(*w as u64));
            lwe_ciphertext_add_assign(&mut acc.ct, &t);
        }
        lwe_ciphertext_plaintext_add_assign(&mut acc.ct, Plaintext((bias as u64).wrapping_mul(self.params.unit())));
        Ok(Lwe { ct: acc, noise: norm.max(f64::MIN_POSITIVE) })
    }
    /// A noiseless (trivial) encryption of a known constant, clamped into the range: what a
    /// sum with no encrypted terms becomes, without a bootstrap.
    pub fn constant(&self, v: i64) -> Lwe {
        let (lo, hi) = self.params.range();
        let mut ct = self.key.unchecked_create_trivial(0);
        lwe_ciphertext_plaintext_add_assign(
            &mut ct.ct,
            Plaintext((v.clamp(lo, hi) as u64).wrapping_mul(self.params.unit())),
        );
        Lwe { ct, noise: 0.0 }
    }
    /// A lookup table applying `f` to every box `round(v / 2^k)` in [`LweParams::table_range`];
    /// outputs outside [`LweParams::range`] are clamped to it and counted in [`Lut::clamped`].
    pub fn lut(&self, f: impl Fn(i64) -> i64) -> Lut {
        let (lo, hi) = self.params.range();
        let (tlo, thi) = self.params.table_range();
        let clamped = (tlo..=thi).filter(|&v| !(lo..=hi).contains(&f(v))).count();
        // Start from TFHE-rs's table (right size and modulus), then write the torus values.
        let mut table = self.key.generate_lookup_table(|_| 0);
        let mut body = table.acc.get_mut_body();
        let acc = body.as_mut();
        let boxes = 1usize << self.params.bits;
        let box_size = acc.len() / boxes;
        let unit = self.params.unit();
        for (i, chunk) in acc.chunks_mut(box_size).enumerate() {
            let v = f(i as i64 + tlo).clamp(lo, hi);
            chunk.fill((v as u64).wrapping_mul(unit));
        }
        // Centre the boxes (inputs round to the nearest box), as TFHE-rs does.
        let half = box_size / 2;
        for a in acc[..half].iter_mut() {
            *a = a.wrapping_neg();
        }
        acc.rotate_left(half);
        table.degree = tfhe::shortint::ciphertext::Degree::new((boxes - 1) as u64);
        Lut { table, clamped }
    }
    /// Size in bytes of the serialised evaluation keys (bootstrapping and key-switching keys).
    pub fn key_bytes(&self) -> LweResult<u64> {
        wire()
            .serialized_size(&self.key)
            .map(|n| 2 + n + 32)
            .map_err(|e| LweError::Serialize { what: "the server key", detail: e.to_string() })
    }
    /// Serialises the evaluation keys (what a client sends to a server; no secret key).
    pub fn to_bytes(&self) -> LweResult<Vec<u8>> {
        write_wire(self.params.tag(), &self.key, "the server key")
    }
    /// Rebuilds a server from [`LweServer::to_bytes`]; refuses keys of another parameter set.
    pub fn from_bytes(bytes: &[u8]) -> LweResult<Self> {
        let (params, key): (_, ServerKey) = read_tagged(bytes, "TFHE server key")?;
        params.owns(key.message_modulus, key.carry_modulus, "TFHE server key")?;
        Ok(LweServer { params, key })
    }
    /// Seconds per bootstrap on the calling thread: the mean of `runs` bootstraps of `x`
    /// through `lut`.
    pub fn time_bootstrap(&self, x: &Lwe, lut: &Lut, runs: usize) -> f64 {
        let t = std::time::Instant::now();
        for _ in 0..runs.max(1) {
            std::hint::black_box(self.bootstrap(x, lut));
        }
        t.elapsed().as_secs_f64() / runs.max(1) as f64
    }
    /// With extra bits (k > 0), half a unit added before every bootstrap. Box boundaries then
    /// fall halfway between two integers instead of on one: an integer at `(b − ½)·2^k` would
    /// otherwise sit exactly on the boundary and read either box with equal odds, while with the
    /// shift every integer is at least half a unit inside its box (`round` with halves up, as
    /// [`crate::quant::apply_table`] computes it). When the bootstrap's noise is well below half a
    /// unit (k ≤ 2 on these sets) the read is exact; see `examples/misreads.rs`.
    pub fn half_unit_shift(&self) -> u64 {
        if self.params.extra_bits == 0 {
            0
        } else {
            self.params.unit() / 2
        }
    }
    /// One programmable bootstrap (key switch, blind rotation, sample extraction): `f(x)` with
    /// fresh noise.
    pub fn bootstrap(&self, x: &Lwe, lut: &Lut) -> Lwe {
        // Shift signed inputs into the table's positive half: box round(v / 2^k) + 2^(p−1).
        let mut shifted = x.ct.clone();
        let o = (self.params.offset() as u64).wrapping_mul(self.params.delta()).wrapping_add(self.half_unit_shift());
        lwe_ciphertext_plaintext_add_assign(&mut shifted.ct, Plaintext(o));
        Lwe { ct: self.key.apply_lookup_table(&shifted, &lut.table), noise: 1.0 }
    }
}
