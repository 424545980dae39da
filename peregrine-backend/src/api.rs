//! The FHE backend interface: a CKKS-shaped SIMD API that every backend implements.
//!
//! It is split the way the protocol is split:
//! - [`Scheme`] creates both sides from parameters: [`Scheme::keygen`] gives the client,
//!   [`Scheme::server`] rebuilds an evaluator from serialised evaluation keys alone;
//! - [`Client`] holds the secret key: encode, encrypt, decrypt, decode;
//! - [`Backend`] is the server side: it evaluates on ciphertexts with evaluation keys only and
//!   has no way to decrypt.
//!
//! Levels count down: a fresh ciphertext is at [`Capabilities::max_level`], each rescale
//! consumes one, level 0 cannot be rescaled. Scales are explicit `f64` values; every operation
//! checks the CKKS rules (equal levels for binary operations, equal scales for additions, a
//! rotation key for every rotation) and reports a [`BackendError`] instead of panicking.

use std::collections::{BTreeMap, BTreeSet};

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::error::BackendError;

/// Result of a backend operation.
pub type BResult<T> = std::result::Result<T, BackendError>;

/// A modulus chain a planner asks for, level by level q_1 … q_L (bottom to top): 1 where a
/// product of a ciphertext at scale Δ is rescaled (a prime of about log2 Δ bits), 2 where a
/// square left at Δ² is rescaled together with the next linear layer's product ("tower
/// reuse": a prime of log2 Δ plus the plaintext scale's bits, which the backend chooses).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChainRequest {
    /// 1 or 2 per level q_1 … q_L: the power of Δ of what is rescaled there.
    pub level_factors: Vec<u32>,
    /// Keep the parameters' ring dimension (the user chose it, e.g. a larger ring for more
    /// precision) instead of taking the smallest secure one.
    #[serde(default)]
    pub keep_ring: bool,
    /// Smallest log2 ring dimension to consider (0: any): asked for when the smallest secure
    /// ring leaves too little precision (a larger ring allows a larger Δ).
    #[serde(default)]
    pub min_log_ring: u32,
    /// Smallest plaintext scale (bits) the products rescaled at each level need, q_1 … q_L
    /// (missing or 0: no requirement). Encoding rounds a plaintext's coefficients to integers;
    /// a layer whose diagonals are sparse and small (a classifier after global pooling) has
    /// coefficients far below 1 at the default scale, and rounding drops its weights.
    #[serde(default)]
    pub min_plaintext_bits: Vec<u32>,
}

impl ChainRequest {
    /// Bits of each prime q_1 … q_L for scale 2^log_scale when two-product levels use
    /// plaintexts at 2^pt_bits: log_scale for a factor of 1 (its plaintexts are at q_ℓ),
    /// log_scale + pt_bits for 2 — each raised to the level's [`Self::min_plaintext_bits`].
    pub fn level_bits(&self, log_scale: u32, pt_bits: u32) -> Vec<u32> {
        self.level_factors
            .iter()
            .enumerate()
            .map(|(i, &f)| {
                let need = self.min_plaintext_bits.get(i).copied().unwrap_or(0);
                if f >= 2 {
                    log_scale + pt_bits.max(need)
                } else {
                    log_scale.max(need)
                }
            })
            .collect()
    }

    /// The plaintext scale (bits) for tower-reuse products at scale 2^log_scale: 4 bits below
    /// Δ. Encoding rounds a plaintext's coefficients, which moves each slot by ≈ √(N/12)
    /// (2^5.7 at N = 2^15), so a weight keeps log2 s − 5.7 bits and a sum of ~150 products
    /// log2 s − 9.3; a rescale leaves log2 Δ − 12.9. The two balance 3.6 bits apart; at a
    /// fixed prime size (log2 Δ + log2 s) this split gives the most precision per layer.
    pub fn plaintext_bits(log_scale: u32) -> u32 {
        log_scale.saturating_sub(4).max(12)
    }
}

/// What a backend instance offers, reported before or after key generation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Backend name (e.g. `clear`, `openfhe`).
    pub backend: String,
    /// Ring dimension N (slots = N/2 for CKKS), informational for non-CKKS backends.
    pub ring_dimension: usize,
    /// Number of SIMD slots per ciphertext.
    pub slots: usize,
    /// Level of a fresh ciphertext (number of rescales available).
    pub max_level: usize,
    /// log2 of the default scale Δ.
    pub log_scale: f64,
    /// log2 of each RNS modulus q_0 … q_L (q_ℓ is removed by a rescale at level ℓ).
    pub log_moduli: Vec<f64>,
    /// Whether `bootstrap` is available.
    pub can_bootstrap: bool,
    /// Level of a ciphertext right after bootstrapping (if it can bootstrap).
    pub bootstrap_level: Option<usize>,
    /// Largest |value| the bootstrap accepts.
    pub bootstrap_range: Option<f64>,
    /// Typical precision of a result in bits (−log2 of the relative error), as measured.
    pub precision_bits: f64,
    /// Security level in bits per the HE standard; `None` for insecure test parameters.
    pub security_bits: Option<u32>,
    /// log2(Q·P): every ciphertext prime and key-switching prime, the figure the HE standard
    /// bounds (absent when the backend does not report it).
    #[serde(default)]
    pub log_qp: Option<f64>,
    /// What operations cost, by level, for the planner to weigh placements and parameters by
    /// time rather than by counts (absent: the planner counts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub costs: Option<OpCosts>,
}

/// A backend's cost model: the work of each operation at each level, in one unit (for `ckks`,
/// one number-theoretic transform of one RNS limb), and the unit's measured seconds on this
/// machine. Plans are compared in units, so the planner's choices do not depend on timing noise.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OpCosts {
    /// One key switch (rotation or relinearisation) at level ℓ, ℓ = 0..=max_level.
    pub key_switch: Vec<f64>,
    /// One rotation among several of the same ciphertext (hoisted: the decomposition shared).
    pub hoisted_rotation: Vec<f64>,
    /// One ciphertext × ciphertext tensor product (without its relinearisation).
    pub tensor: Vec<f64>,
    /// One ciphertext × plaintext product.
    pub ct_pt: Vec<f64>,
    /// One rescale from level ℓ.
    pub rescale: Vec<f64>,
    /// One bootstrap of a ciphertext with these parameters' slots (0 without bootstrapping).
    pub bootstrap: f64,
    /// Seconds of one unit on this machine (measured once per process; 0 if not measured).
    pub unit_seconds: f64,
    /// What the unit is and how the figures were obtained.
    pub basis: String,
}

impl OpCosts {
    fn at(v: &[f64], level: usize) -> f64 {
        v.get(level).or(v.last()).copied().unwrap_or(0.0)
    }
    /// Units of one key switch at `level` (the top level's figure above it).
    pub fn key_switch_at(&self, level: usize) -> f64 {
        Self::at(&self.key_switch, level)
    }
    /// Units of one hoisted rotation at `level`.
    pub fn hoisted_rotation_at(&self, level: usize) -> f64 {
        Self::at(&self.hoisted_rotation, level)
    }
    /// Units of one ciphertext × ciphertext product with its relinearisation at `level`.
    pub fn ct_ct_at(&self, level: usize) -> f64 {
        Self::at(&self.tensor, level) + self.key_switch_at(level)
    }
    /// Units of one ciphertext × plaintext product at `level`.
    pub fn ct_pt_at(&self, level: usize) -> f64 {
        Self::at(&self.ct_pt, level)
    }
    /// Units of one rescale from `level`.
    pub fn rescale_at(&self, level: usize) -> f64 {
        Self::at(&self.rescale, level)
    }
    /// `units` in seconds on this machine (`None` if the unit was not measured).
    pub fn seconds(&self, units: f64) -> Option<f64> {
        (self.unit_seconds > 0.0).then_some(units * self.unit_seconds)
    }
}

impl Capabilities {
    /// The default scale Δ = 2^log_scale.
    pub fn default_scale(&self) -> f64 {
        self.log_scale.exp2()
    }
    /// A one-line human summary.
    pub fn summary(&self) -> String {
        format!(
            "N=2^{} slots={} levels={} scale=2^{:.0} bootstrap={} precision≈{:.0} bits security={}",
            (self.ring_dimension.max(1) as f64).log2().round(),
            self.slots,
            self.max_level,
            self.log_scale,
            if self.can_bootstrap { "yes" } else { "no" },
            self.precision_bits,
            match self.security_bits {
                Some(b) => format!("{b}-bit"),
                None => "NONE (not secure: tests and reference only)".into(),
            }
        )
    }
}

/// Which evaluation keys the client must generate for the server.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRequest {
    /// Rotation steps (left rotations; negative = right), normalised modulo the slot count.
    pub rotations: BTreeSet<i64>,
    /// Whether to generate bootstrapping keys.
    pub bootstrap: bool,
    /// The highest level each rotation key must serve (steps not listed: every level). A
    /// backend may generate smaller keys for low levels; others ignore it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rotation_levels: BTreeMap<i64, usize>,
}

impl KeyRequest {
    /// A request for the given rotation steps, without bootstrapping.
    pub fn rotations(steps: impl IntoIterator<Item = i64>) -> Self {
        KeyRequest { rotations: steps.into_iter().collect(), bootstrap: false, rotation_levels: BTreeMap::new() }
    }
}

/// Normalises a rotation step into `0..slots`.
pub fn normalize_rotation(step: i64, slots: usize) -> i64 {
    step.rem_euclid(slots as i64)
}

/// Server-side evaluation on ciphertexts. Holds evaluation keys only; cannot decrypt.
pub trait Backend: Send + Sync {
    /// A ciphertext of `slots` values at some level and scale.
    type Ciphertext: Clone + Send + Sync;
    /// An encoded (unencrypted) vector at some level and scale.
    type Plaintext: Clone + Send + Sync;

    /// Parameters and abilities of this instance.
    fn capabilities(&self) -> Capabilities;
    /// Rotation steps for which keys are available (normalised into `0..slots`).
    fn rotation_steps(&self) -> BTreeSet<i64>;
    /// The modulus q_level removed by rescaling a ciphertext at `level` (level ≥ 1).
    fn modulus(&self, level: usize) -> f64;

    /// Level of a ciphertext.
    fn level(&self, ct: &Self::Ciphertext) -> usize;
    /// Scale of a ciphertext.
    fn scale(&self, ct: &Self::Ciphertext) -> f64;
    /// Level of a plaintext.
    fn plaintext_level(&self, pt: &Self::Plaintext) -> usize;
    /// Scale of a plaintext.
    fn plaintext_scale(&self, pt: &Self::Plaintext) -> f64;

    /// Encodes up to `slots` values (the rest are zero) at `level` and `scale`.
    fn encode(&self, values: &[f64], level: usize, scale: f64) -> BResult<Self::Plaintext>;

    /// a + b (equal levels and scales).
    fn add(&self, a: &Self::Ciphertext, b: &Self::Ciphertext) -> BResult<Self::Ciphertext>;
    /// a − b (equal levels and scales).
    fn sub(&self, a: &Self::Ciphertext, b: &Self::Ciphertext) -> BResult<Self::Ciphertext>;
    /// −a.
    fn negate(&self, a: &Self::Ciphertext) -> BResult<Self::Ciphertext>;
    /// a + p (equal levels and scales).
    fn add_plain(&self, a: &Self::Ciphertext, p: &Self::Plaintext) -> BResult<Self::Ciphertext>;
    /// a − p (equal levels and scales).
    fn sub_plain(&self, a: &Self::Ciphertext, p: &Self::Plaintext) -> BResult<Self::Ciphertext>;
    /// a · p slot-wise (equal levels); the result's scale is the product of scales.
    fn mul_plain(&self, a: &Self::Ciphertext, p: &Self::Plaintext) -> BResult<Self::Ciphertext>;
    /// Σ_i a_i · p_i slot-wise (one level; every product must come out at the same scale).
    /// Backends may fuse it into one pass; the default multiplies and adds.
    fn mul_plain_sum(&self, terms: &[(&Self::Ciphertext, &Self::Plaintext)]) -> BResult<Self::Ciphertext> {
        let Some(((a, p), rest)) = terms.split_first() else {
            return Err(BackendError::OutOfRange { op: "mul_plain_sum", detail: "no terms".into() });
        };
        let mut acc = self.mul_plain(a, p)?;
        for (a, p) in rest {
            acc = self.add(&acc, &self.mul_plain(a, p)?)?;
        }
        Ok(acc)
    }
    /// a + c in every slot (c encoded at a's scale; no level used).
    fn add_scalar(&self, a: &Self::Ciphertext, c: f64) -> BResult<Self::Ciphertext>;
    /// a · c, with c encoded at `scale` (round(c·scale)); the result's scale is scale(a)·scale.
    fn mul_scalar(&self, a: &Self::Ciphertext, c: f64, scale: f64) -> BResult<Self::Ciphertext>;
    /// a · k for an integer k; the scale is unchanged.
    fn mul_integer(&self, a: &Self::Ciphertext, k: i64) -> BResult<Self::Ciphertext>;
    /// a · b with relinearisation (equal levels); the result's scale is the product.
    fn mul(&self, a: &Self::Ciphertext, b: &Self::Ciphertext) -> BResult<Self::Ciphertext>;
    /// a² with relinearisation.
    fn square(&self, a: &Self::Ciphertext) -> BResult<Self::Ciphertext> {
        self.mul(a, a)
    }
    /// Divides by q_level and moves to level − 1 (needs level ≥ 1).
    fn rescale(&self, a: &Self::Ciphertext) -> BResult<Self::Ciphertext>;
    /// Moves to a lower `level` without changing the scale.
    fn drop_to_level(&self, a: &Self::Ciphertext, level: usize) -> BResult<Self::Ciphertext>;
    /// Left rotation by `step` slots (`out[i] = a[i + step]`); needs a key for that step.
    fn rotate(&self, a: &Self::Ciphertext, step: i64) -> BResult<Self::Ciphertext>;
    /// Several rotations of one ciphertext; backends with hoisting override this.
    fn rotate_many(&self, a: &Self::Ciphertext, steps: &[i64]) -> BResult<Vec<Self::Ciphertext>> {
        steps.iter().map(|&s| self.rotate(a, s)).collect()
    }
    /// Σ_k rot(a_k, step_k): rotations of several ciphertexts (equal levels and scales),
    /// summed. Backends may share work across the terms (`ckks` sums the key-switch outputs
    /// in the extended basis and divides by P once); the default rotates and adds.
    fn rotate_sum(&self, terms: &[(&Self::Ciphertext, i64)]) -> BResult<Self::Ciphertext> {
        let Some(((a, step), rest)) = terms.split_first() else {
            return Err(BackendError::OutOfRange { op: "rotate_sum", detail: "no terms".into() });
        };
        let mut acc = self.rotate(a, *step)?;
        for (a, step) in rest {
            acc = self.add(&acc, &self.rotate(a, *step)?)?;
        }
        Ok(acc)
    }
    /// Refreshes a ciphertext to [`Capabilities::bootstrap_level`] (if the backend can).
    fn bootstrap(&self, _a: &Self::Ciphertext) -> BResult<Self::Ciphertext> {
        Err(BackendError::BootstrapUnsupported)
    }
    /// [`Backend::bootstrap`] of a ciphertext whose values are known to stay within `range`
    /// (at most [`Capabilities::bootstrap_range`]; the planner measures it on calibration
    /// images). A backend may turn the headroom into precision; the default ignores it.
    fn bootstrap_within(&self, a: &Self::Ciphertext, _range: f64) -> BResult<Self::Ciphertext> {
        self.bootstrap(a)
    }

    /// Evaluates `Σ coeffs[k] · a^k` in every slot.
    ///
    /// The default builds the powers by repeated squaring and products of powers of two
    /// (depth ⌈log2 d⌉), then multiplies each power by its coefficient and rescales into a
    /// common level and scale (one more level): ⌈log2 d⌉ + 1 levels in all. The result is at
    /// the default scale. Backends with a better evaluator override it.
    fn eval_poly(&self, a: &Self::Ciphertext, coeffs: &[f64]) -> BResult<Self::Ciphertext> {
        default_eval_poly(self, a, coeffs)
    }

    /// Serialises a ciphertext.
    fn serialize_ciphertext(&self, ct: &Self::Ciphertext) -> BResult<Vec<u8>>;
    /// Reads a ciphertext written by [`Backend::serialize_ciphertext`] or the client.
    fn deserialize_ciphertext(&self, bytes: &[u8]) -> BResult<Self::Ciphertext>;
}

/// Levels consumed by [`Backend::eval_poly`]'s default for a polynomial of `degree`.
pub fn poly_depth(degree: usize) -> usize {
    if degree <= 1 {
        1
    } else {
        (usize::BITS - (degree - 1).leading_zeros()) as usize + 1
    }
}

/// The default polynomial evaluation (see [`Backend::eval_poly`]).
pub fn default_eval_poly<B: Backend + ?Sized>(b: &B, a: &B::Ciphertext, coeffs: &[f64]) -> BResult<B::Ciphertext> {
    let degree = coeffs.iter().rposition(|c| *c != 0.0).unwrap_or(0);
    let need = poly_depth(degree);
    let have = b.level(a);
    if have < need {
        return Err(BackendError::LevelsExhausted { op: "eval_poly", needed: need, have });
    }
    if coeffs.iter().any(|c| !c.is_finite()) {
        return Err(BackendError::OutOfRange { op: "eval_poly", detail: "non-finite coefficient".into() });
    }
    let delta = b.capabilities().default_scale();
    let powers = power_basis(b, a, degree.max(1))?;
    let target = (1..=degree.max(1)).map(|k| b.level(powers[k].as_ref().expect("built"))).min().expect("non-empty") - 1;
    let q = b.modulus(target + 1);
    let mut acc: Option<B::Ciphertext> = None;
    for k in 1..=degree.max(1) {
        let c = coeffs.get(k).copied().unwrap_or(0.0);
        if c == 0.0 && !(k == 1 && degree == 0) {
            continue;
        }
        let t = b.drop_to_level(powers[k].as_ref().expect("built"), target + 1)?;
        // Encode c so that after the rescale the term sits exactly at scale Δ.
        let s = delta * q / b.scale(&t);
        let term = b.rescale(&b.mul_scalar(&t, c, s)?)?;
        acc = Some(match acc {
            None => term,
            Some(x) => b.add(&x, &term)?,
        });
    }
    let acc = acc.expect("at least one term");
    if coeffs.first().copied().unwrap_or(0.0) != 0.0 {
        b.add_scalar(&acc, coeffs[0])
    } else {
        Ok(acc)
    }
}

/// `powers[k] = a^k` for k = 1..=degree (index 0 unused), each freshly rescaled, built by
/// squaring and products of powers of two: a^k sits ⌈log2 k⌉ levels below `a`.
pub fn power_basis<B: Backend + ?Sized>(
    b: &B,
    a: &B::Ciphertext,
    degree: usize,
) -> BResult<Vec<Option<B::Ciphertext>>> {
    let mut powers: Vec<Option<B::Ciphertext>> = vec![None; degree.max(1) + 1];
    powers[1] = Some(a.clone());
    for k in 2..=degree {
        let hi = 1usize << (usize::BITS - 1 - k.leading_zeros());
        let lo = k - hi;
        let p = if lo == 0 {
            b.square(powers[hi / 2].as_ref().expect("built"))?
        } else {
            let (x, y) = (powers[hi].as_ref().expect("built"), powers[lo].as_ref().expect("built"));
            let l = b.level(x).min(b.level(y));
            b.mul(&b.drop_to_level(x, l)?, &b.drop_to_level(y, l)?)?
        };
        powers[k] = Some(b.rescale(&p)?);
    }
    Ok(powers)
}

/// Client side: holds the secret key.
pub trait Client: Send + Sync {
    /// The server-side backend this client's ciphertexts belong to.
    type Backend: Backend;

    /// Parameters and abilities.
    fn capabilities(&self) -> Capabilities;
    /// Encodes up to `slots` values at `level` and `scale`.
    fn encode(&self, values: &[f64], level: usize, scale: f64) -> BResult<<Self::Backend as Backend>::Plaintext>;
    /// Encrypts a plaintext.
    fn encrypt(&self, pt: &<Self::Backend as Backend>::Plaintext) -> BResult<<Self::Backend as Backend>::Ciphertext>;
    /// Decrypts a ciphertext into a plaintext.
    fn decrypt(&self, ct: &<Self::Backend as Backend>::Ciphertext) -> BResult<<Self::Backend as Backend>::Plaintext>;
    /// Decodes a plaintext into its `slots` values.
    fn decode(&self, pt: &<Self::Backend as Backend>::Plaintext) -> BResult<Vec<f64>>;
    /// Serialised evaluation keys (relinearisation, requested rotations, bootstrapping) — never the secret key.
    fn evaluation_keys(&self) -> BResult<Vec<u8>>;
    /// Serialises a ciphertext for the server.
    fn serialize_ciphertext(&self, ct: &<Self::Backend as Backend>::Ciphertext) -> BResult<Vec<u8>>;
    /// Reads a ciphertext returned by the server.
    fn deserialize_ciphertext(&self, bytes: &[u8]) -> BResult<<Self::Backend as Backend>::Ciphertext>;

    /// The client's secret state (secret key, public key, parameters), to keep on the client
    /// side between processes; read back with [`Scheme::load_client`]. Never send it to a server.
    fn save_secret(&self) -> BResult<Vec<u8>> {
        Err(BackendError::Unsupported { backend: self.capabilities().backend, what: "save its client state" })
    }

    /// Streams the evaluation keys of [`Client::evaluation_keys`] into `out`, for keys too large
    /// to hold twice in memory (N = 2^16 with bootstrapping: gigabytes). Same bytes.
    fn write_evaluation_keys(&self, out: &mut dyn std::io::Write) -> BResult<()> {
        out.write_all(&self.evaluation_keys()?).map_err(|e| BackendError::io("writing evaluation keys", &e))
    }

    /// A server in this process that shares this client's evaluation keys in memory instead of
    /// a serialised copy; it holds no secret key. `None` when the backend has no such shortcut
    /// (then serialise with [`Client::evaluation_keys`] and build it with [`Scheme::server`]).
    fn local_server(&self) -> BResult<Option<Self::Backend>> {
        Ok(None)
    }

    /// Encodes and encrypts `values` at a fresh level and the default scale.
    fn encrypt_values(&self, values: &[f64]) -> BResult<<Self::Backend as Backend>::Ciphertext> {
        let caps = self.capabilities();
        self.encrypt(&self.encode(values, caps.max_level, caps.default_scale())?)
    }
    /// Decrypts and decodes all slots.
    fn decrypt_values(&self, ct: &<Self::Backend as Backend>::Ciphertext) -> BResult<Vec<f64>> {
        self.decode(&self.decrypt(ct)?)
    }
}

/// A backend family: parameter type, key generation, and server reconstruction.
pub trait Scheme {
    /// Short name used on the command line and in plugin listings.
    const NAME: &'static str;
    /// One-line description.
    const DESCRIPTION: &'static str;
    /// Parameters (JSON-serialisable so plugins can receive them as text).
    type Params: Serialize + DeserializeOwned + Default + Clone;
    /// The client type.
    type Client: Client<Backend = Self::Server>;
    /// The server (evaluator) type.
    type Server: Backend;

    /// Capabilities of these parameters, without generating keys (used to plan first).
    fn capabilities(params: &Self::Params) -> BResult<Capabilities>;
    /// Generates a secret key and the requested evaluation keys.
    fn keygen(params: &Self::Params, request: &KeyRequest) -> BResult<Self::Client>;
    /// Builds an evaluator from serialised evaluation keys alone.
    fn server(evaluation_keys: &[u8]) -> BResult<Self::Server>;
    /// Builds an evaluator from an evaluation-key file written by [`Client::write_evaluation_keys`].
    /// Backends with very large keys override it to avoid reading the file into memory first.
    fn server_from_file(path: &std::path::Path) -> BResult<Self::Server> {
        let bytes = std::fs::read(path)
            .map_err(|e| BackendError::io(format!("reading evaluation keys {}", path.display()), &e))?;
        Self::server(&bytes)
    }
    /// Parameters like `params` but sized for a leveled computation of `levels` levels (the
    /// backend picks scale, ring and key switching to stay secure), or `None` if the backend
    /// does not size its parameters itself (the default).
    fn sized_for_levels(_params: &Self::Params, _levels: usize) -> Option<Self::Params> {
        None
    }
    /// Parameters like `params` with the modulus chain `request` asks for (the backend picks
    /// the ring, the scale Δ and the key-switching primes, smallest secure ring first, then the
    /// largest scale), or `None` if the backend keeps a uniform chain (the default).
    fn with_chain(_params: &Self::Params, _request: &ChainRequest) -> Option<Self::Params> {
        None
    }
    /// Parameters like `params` with only `slots` slots (a power of two), if the backend
    /// bootstraps such sparse ciphertexts more cheaply; `None` if it does not (the default).
    fn with_slots(_params: &Self::Params, _slots: usize) -> Option<Self::Params> {
        None
    }
    /// Parameters like `params` whose bootstrap accepts values up to `range` (the runtime
    /// calibrates it on images), the rest kept as far as security allows; `None` if the
    /// backend does not take a bootstrap range (the default).
    fn with_bootstrap_range(_params: &Self::Params, _range: f64) -> Option<Self::Params> {
        None
    }
    /// Other shapes of the bootstrap, as JSON objects merged into the parameters' `bootstrap`
    /// object, each a different trade-off between the levels it leaves and what it costs; the
    /// planner plans each and keeps the cheapest by [`Capabilities::costs`]. Empty (the
    /// default): one shape.
    fn bootstrap_alternatives() -> Vec<serde_json::Value> {
        Vec::new()
    }
    /// Rebuilds a client from [`Client::save_secret`] (e.g. in the process that decrypts).
    fn load_client(_secret: &[u8]) -> BResult<Self::Client> {
        Err(BackendError::Unsupported { backend: Self::NAME.into(), what: "load a saved client" })
    }
}
