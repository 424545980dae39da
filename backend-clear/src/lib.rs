//! # backend-clear
//!
//! `clear`: the cleartext reference backend.
//!
//! Slots are plain `f64`, but every CKKS rule is enforced exactly as a real backend would: a
//! modulus chain of NTT-friendly primes (or exact powers of two), levels that rescales consume,
//! scales that multiply and divide by the real q_ℓ, equal levels and scales for additions,
//! constants rounded to their encoding scale, overflow of Q_ℓ/2, keys for rotations and
//! bootstrapping. A plan that would fail on a real backend for any of these reasons fails here.
//! Optional Gaussian noise of configurable size models encryption, rescaling, key switching
//! and bootstrapping error. The server side ([`ClearServer`]) has no decrypt operation.
//!
//! The crate is also built as a run-time plugin (`libbackend_clear.so`, backend name `clear`).

#![warn(missing_docs)]

use std::collections::BTreeSet;
use std::sync::Mutex;

use rand::{rngs::StdRng, SeedableRng};
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};

use peregrine_backend::integrity::{seal, unseal};
use peregrine_backend::{
    bootstrap_allowed, normalize_rotation, rotation_key, BResult, Backend, BackendError, Capabilities, ChainRequest,
    Client, CtMeta, KeyRequest, Scheme,
};

peregrine_backend::export_plugin!(crate::ClearScheme);

/// Noise injected by the `clear` backend, as standard deviations in the scaled integer domain
/// (a noise of `e` perturbs a slot value by `e / scale`), like real CKKS error terms.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NoiseModel {
    /// Fresh encryption noise.
    pub fresh: f64,
    /// Rounding noise of a rescale.
    pub rescale: f64,
    /// Key-switching noise (relinearisation, rotation).
    pub key_switch: f64,
    /// Bootstrapping error relative to the bootstrap range (absolute, in message units).
    pub bootstrap_relative: f64,
    /// Encoding error of a plaintext: its coefficients are rounded to integers, which moves
    /// every slot by about √(N/12) at the plaintext's scale (0 when absent).
    #[serde(default)]
    pub encode: f64,
}

impl NoiseModel {
    /// Magnitudes of real CKKS noise per slot for ring dimension `n` with a ternary secret
    /// (heuristic canonical-embedding estimates): fresh ≈ 3.2·√(n·(1 + 4n/3)), rescale and
    /// key switching ≈ √(n·(1 + 2n/3)/12), bootstrap ≈ 2^-20 of its range, plaintext encoding
    /// ≈ √(n/12).
    pub fn ckks(ring_dimension: usize) -> Self {
        let n = ring_dimension as f64;
        NoiseModel {
            fresh: 3.2 * (n * (1.0 + 4.0 * n / 3.0)).sqrt(),
            rescale: (n * (1.0 + 2.0 * n / 3.0) / 12.0).sqrt(),
            key_switch: (n * (1.0 + 2.0 * n / 3.0) / 12.0).sqrt(),
            bootstrap_relative: (-20f64).exp2(),
            encode: (n / 12.0).sqrt(),
        }
    }
}

/// Bootstrapping emulation settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClearBootstrap {
    /// Level of a bootstrapped ciphertext.
    pub output_level: usize,
    /// Largest |value| accepted as input (default 1; the runtime sets it from calibration
    /// when it is left out, as for `ckks`).
    #[serde(default = "unit_range")]
    pub range: f64,
}

fn unit_range() -> f64 {
    1.0
}

/// Parameters of the `clear` backend.
///
/// `seed` makes the noise reproducible; the key that tells one client's ciphertexts from
/// another's is fresh at every key generation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClearParams {
    /// log2 of the ring dimension N; slots = N/2.
    pub log_ring_dimension: u32,
    /// log2 of the default scale Δ and bit size of q_1 … q_L.
    pub log_scale: u32,
    /// Bit size of q_0.
    pub first_modulus_bits: u32,
    /// Number of levels L (moduli q_1 … q_L).
    pub levels: usize,
    /// Bit sizes of q_1 … q_L, bottom to top, when they differ from `log_scale` (empty: all
    /// `log_scale`); one per level.
    pub level_bits: Vec<u32>,
    /// Use exact powers of two for the moduli (no scale drift) instead of NTT-friendly primes.
    pub exact_moduli: bool,
    /// Optional noise injection.
    pub noise: Option<NoiseModel>,
    /// Optional bootstrapping emulation.
    pub bootstrap: Option<ClearBootstrap>,
    /// Seed of the noise generator (and of the key id).
    pub seed: u64,
}

impl Default for ClearParams {
    fn default() -> Self {
        ClearParams {
            log_ring_dimension: 16,
            log_scale: 40,
            first_modulus_bits: 60,
            levels: 24,
            level_bits: Vec::new(),
            exact_moduli: false,
            noise: None,
            bootstrap: None,
            seed: 0x5eed,
        }
    }
}

impl ClearParams {
    fn check(&self) -> BResult<()> {
        let bad = |m: String| Err(BackendError::InvalidParameters(m));
        if !(2..=17).contains(&self.log_ring_dimension) {
            return bad(format!("log_ring_dimension must be 2..=17, got {}", self.log_ring_dimension));
        }
        if !(10..=60).contains(&self.log_scale) || !(10..=61).contains(&self.first_modulus_bits) {
            return bad("log_scale must be 10..=60 and first_modulus_bits 10..=61".into());
        }
        if self.levels == 0 || self.levels > 100 {
            return bad(format!("levels must be 1..=100, got {}", self.levels));
        }
        if !self.level_bits.is_empty() && self.level_bits.len() != self.levels {
            return bad(format!(
                "level_bits lists {} moduli but levels is {}: give one bit size per level",
                self.level_bits.len(),
                self.levels
            ));
        }
        if let Some(b) = self.level_bits.iter().find(|b| !(10..=61).contains(*b)) {
            return bad(format!("level_bits must be 10..=61 each, got {b}"));
        }
        if let Some(b) = &self.bootstrap {
            if b.output_level > self.levels || !(b.range > 0.0) {
                return bad(format!(
                    "bootstrap output level {} must be <= levels {} and its range positive",
                    b.output_level, self.levels
                ));
            }
        }
        if let Some(n) = &self.noise {
            if [n.fresh, n.rescale, n.key_switch, n.bootstrap_relative, n.encode]
                .iter()
                .any(|v| !(*v >= 0.0) || !v.is_finite())
            {
                return bad("noise standard deviations must be finite and non-negative".into());
            }
        }
        Ok(())
    }

    /// The modulus chain q_0 … q_L as f64 values.
    pub fn moduli(&self) -> Vec<f64> {
        let two_n = 1u64 << (self.log_ring_dimension + 1);
        let bits: Vec<u32> =
            if self.level_bits.is_empty() { vec![self.log_scale; self.levels] } else { self.level_bits.clone() };
        if self.exact_moduli {
            let mut q = vec![(self.first_modulus_bits as f64).exp2()];
            q.extend(bits.iter().map(|&b| (b as f64).exp2()));
            return q;
        }
        let mut used = BTreeSet::new();
        let mut q = vec![ntt_prime_near(self.first_modulus_bits, two_n, &mut used) as f64];
        for b in bits {
            q.push(ntt_prime_near(b, two_n, &mut used) as f64);
        }
        q
    }
}

fn mul_mod(a: u64, b: u64, m: u64) -> u64 {
    ((a as u128 * b as u128) % m as u128) as u64
}
fn pow_mod(mut a: u64, mut e: u64, m: u64) -> u64 {
    let mut r = 1;
    a %= m;
    while e > 0 {
        if e & 1 == 1 {
            r = mul_mod(r, a, m);
        }
        a = mul_mod(a, a, m);
        e >>= 1;
    }
    r
}
/// Deterministic Miller–Rabin for 64-bit integers.
fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    for p in [2u64, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37] {
        if n % p == 0 {
            return n == p;
        }
    }
    let (mut d, mut s) = (n - 1, 0);
    while d % 2 == 0 {
        d /= 2;
        s += 1;
    }
    'witness: for a in [2u64, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37] {
        let mut x = pow_mod(a, d, n);
        if x == 1 || x == n - 1 {
            continue;
        }
        for _ in 1..s {
            x = mul_mod(x, x, n);
            if x == n - 1 {
                continue 'witness;
            }
        }
        return false;
    }
    true
}

/// The prime q ≡ 1 (mod 2N) closest to 2^bits not yet used, alternating above and below.
fn ntt_prime_near(bits: u32, two_n: u64, used: &mut BTreeSet<u64>) -> u64 {
    let centre = 1u64 << bits;
    for k in 0u64.. {
        for c in [centre.checked_add(k * two_n + 1), (centre + 1).checked_sub((k + 1) * two_n)].into_iter().flatten() {
            if c > 2 && is_prime(c) && used.insert(c) {
                return c;
            }
        }
    }
    unreachable!("primes are dense enough")
}

/// A `clear` ciphertext: slot values with CKKS level and scale bookkeeping.
#[derive(Clone, Debug, PartialEq)]
pub struct ClearCiphertext {
    values: Vec<f64>,
    meta: CtMeta,
    key_id: u64,
}

/// A `clear` plaintext.
#[derive(Clone, Debug, PartialEq)]
pub struct ClearPlaintext {
    values: Vec<f64>,
    meta: CtMeta,
}

peregrine_backend::has_meta!(ClearCiphertext, ClearPlaintext);

impl ClearPlaintext {
    /// The encoded values (all slots).
    pub fn values(&self) -> &[f64] {
        &self.values
    }
}

#[derive(Serialize, Deserialize)]
struct EvalKeys {
    kind: String,
    params: ClearParams,
    key_id: u64,
    rotations: BTreeSet<i64>,
    bootstrap: bool,
}

const EVK_KIND: &str = "peregrine-clear-evaluation-keys-v2";
const CT_MAGIC: &[u8; 8] = b"PGCLCT02";

/// State shared by client and server: parameters, moduli, keys present, noise generator.
struct Context {
    params: ClearParams,
    moduli: Vec<f64>,
    log_q_prefix: Vec<f64>,
    key_id: u64,
    rotations: BTreeSet<i64>,
    bootstrap: bool,
    rng: Mutex<StdRng>,
}

impl Context {
    fn new(params: ClearParams, key_id: u64, rotations: BTreeSet<i64>, bootstrap: bool) -> BResult<Self> {
        params.check()?;
        let moduli = params.moduli();
        let mut acc = 0.0;
        let log_q_prefix = moduli
            .iter()
            .map(|q| {
                acc += q.log2();
                acc
            })
            .collect();
        let slots = 1usize << (params.log_ring_dimension - 1);
        let rotations = rotations.into_iter().map(|r| normalize_rotation(r, slots)).collect();
        let rng = Mutex::new(StdRng::seed_from_u64(params.seed));
        Ok(Context { params, moduli, log_q_prefix, key_id, rotations, bootstrap, rng })
    }

    fn slots(&self) -> usize {
        1usize << (self.params.log_ring_dimension - 1)
    }

    fn capabilities(&self) -> Capabilities {
        let noise_bits = match &self.params.noise {
            None => 52.0,
            Some(n) => (self.params.log_scale as f64 - n.rescale.max(n.key_switch).max(1.0).log2()).min(52.0),
        };
        Capabilities {
            backend: ClearScheme::NAME.into(),
            ring_dimension: 1 << self.params.log_ring_dimension,
            slots: self.slots(),
            max_level: self.params.levels,
            log_scale: self.params.log_scale as f64,
            log_moduli: self.moduli.iter().map(|q| q.log2()).collect(),
            can_bootstrap: self.params.bootstrap.is_some() && self.bootstrap,
            bootstrap_level: self.params.bootstrap.as_ref().map(|b| b.output_level),
            bootstrap_range: self.params.bootstrap.as_ref().map(|b| b.range),
            precision_bits: noise_bits,
            security_bits: None,
            log_qp: None,
            costs: None,
        }
    }

    fn noise(&self, std_scaled: f64, scale: f64, values: &mut [f64]) {
        // Deviations are checked finite and non-negative with the parameters, scales ≥ 1.
        if std_scaled <= 0.0 {
            return;
        }
        let Ok(dist) = Normal::new(0.0, std_scaled / scale) else { return };
        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        for v in values.iter_mut() {
            *v += dist.sample(&mut *rng);
        }
    }

    /// The modulus rule of `clear`'s emulation: |v|·scale < Q_level/2 (the rest of the CKKS
    /// rules are [`CtMeta`]'s).
    fn fits(&self, op: &'static str, values: &[f64], meta: CtMeta) -> BResult<()> {
        let max = values.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        if !max.is_finite() {
            return Err(BackendError::OutOfRange { op, detail: "non-finite value".into() });
        }
        let log_mag = (max * meta.scale).log2();
        let log_half = self.log_q_prefix[meta.level] - 1.0;
        if max > 0.0 && log_mag >= log_half {
            return Err(BackendError::Overflow {
                op,
                log_magnitude: log_mag,
                log_half_modulus: log_half,
                level: meta.level,
            });
        }
        Ok(())
    }

    /// A result of `op`: its values fit the modulus and its scale is meaningful.
    fn check(&self, op: &'static str, ct: ClearCiphertext) -> BResult<ClearCiphertext> {
        self.same_key(op, &ct)?;
        self.fits(op, &ct.values, ct.meta)?;
        if ct.meta.scale < 2.0 {
            return Err(BackendError::ScaleUnderflow { op, log_scale: ct.meta.scale.log2(), min: 1.0 });
        }
        Ok(ct)
    }

    fn same_key(&self, op: &'static str, a: &ClearCiphertext) -> BResult<()> {
        if a.key_id != self.key_id {
            return Err(BackendError::WrongKey { op });
        }
        Ok(())
    }

    fn encode(&self, values: &[f64], level: usize, scale: f64) -> BResult<ClearPlaintext> {
        let meta = CtMeta::encode(values, level, scale, &self.capabilities())?;
        let mut v = values.to_vec();
        v.resize(self.slots(), 0.0);
        if let Some(n) = &self.params.noise {
            self.noise(n.encode, scale, &mut v);
        }
        self.fits("encode", &v, meta)?;
        Ok(ClearPlaintext { values: v, meta })
    }

    fn serialize(&self, ct: &ClearCiphertext) -> Vec<u8> {
        let mut out = Vec::with_capacity(36 + 8 * ct.values.len());
        out.extend_from_slice(CT_MAGIC);
        out.extend_from_slice(&ct.key_id.to_le_bytes());
        out.extend_from_slice(&(ct.meta.level as u32).to_le_bytes());
        out.extend_from_slice(&ct.meta.scale.to_le_bytes());
        out.extend_from_slice(&(ct.values.len() as u32).to_le_bytes());
        for v in &ct.values {
            out.extend_from_slice(&v.to_le_bytes());
        }
        seal(out)
    }

    fn deserialize(&self, bytes: &[u8]) -> BResult<ClearCiphertext> {
        let err = |d: String| BackendError::Deserialize { what: "clear ciphertext", detail: d };
        if bytes.get(..8).is_some_and(|m| m != CT_MAGIC) {
            return Err(err("not a clear ciphertext (bad magic)".into()));
        }
        let bytes = unseal(bytes, "clear ciphertext")?;
        if bytes.len() < 32 || &bytes[..8] != CT_MAGIC {
            return Err(err("not a clear ciphertext (bad magic or too short)".into()));
        }
        let word = |at: usize| -> [u8; 8] { bytes[at..at + 8].try_into().unwrap_or_default() };
        let half = |at: usize| -> [u8; 4] { bytes[at..at + 4].try_into().unwrap_or_default() };
        let key_id = u64::from_le_bytes(word(8));
        let level = u32::from_le_bytes(half(16)) as usize;
        let scale = f64::from_le_bytes(word(20));
        let len = u32::from_le_bytes(half(28)) as usize;
        if len != self.slots() || bytes.len() != 32 + 8 * len {
            return Err(err(format!(
                "{} bytes for {len} slots; this context has {} slots (truncated or foreign ciphertext)",
                bytes.len(),
                self.slots()
            )));
        }
        if level > self.params.levels || !(scale >= 1.0) || !scale.is_finite() {
            return Err(err(format!("level {level} or scale {scale} out of range")));
        }
        let values =
            bytes[32..].chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap_or_default())).collect();
        let ct = ClearCiphertext { values, meta: CtMeta::new(level, scale), key_id };
        self.same_key("deserialize", &ct)?;
        Ok(ct)
    }
}

/// The `clear` scheme (parameters, key generation, server reconstruction).
pub struct ClearScheme;

const CLEAR_SECRET_KIND: &str = "peregrine-clear-client-v2";

/// What [`Client::save_secret`] writes for `clear` (JSON).
#[derive(Serialize, Deserialize)]
struct ClearSecret {
    kind: String,
    params: ClearParams,
    key_id: u64,
    rotations: BTreeSet<i64>,
    bootstrap: bool,
}

/// `clear` client: encodes, "encrypts" (adds fresh noise), decrypts and decodes.
pub struct ClearClient {
    ctx: Context,
}

/// `clear` server: evaluates with the rules of CKKS; has no decrypt operation.
pub struct ClearServer {
    ctx: Context,
}

impl Scheme for ClearScheme {
    const NAME: &'static str = "clear";
    const DESCRIPTION: &'static str =
        "cleartext reference: f64 slots under exact CKKS level/scale rules, optional noise (NOT encryption)";
    type Params = ClearParams;
    type Client = ClearClient;
    type Server = ClearServer;

    fn capabilities(params: &ClearParams) -> BResult<Capabilities> {
        Ok(Context::new(params.clone(), 0, BTreeSet::new(), true)?.capabilities())
    }

    fn keygen(params: &ClearParams, request: &KeyRequest) -> BResult<ClearClient> {
        if request.bootstrap && params.bootstrap.is_none() {
            return Err(BackendError::InvalidParameters(
                "bootstrapping keys requested but the parameters have no bootstrap settings".into(),
            ));
        }
        // A fresh key id: ciphertexts of two key generations never mix.
        let key_id = rand::random::<u64>();
        Ok(ClearClient { ctx: Context::new(params.clone(), key_id, request.rotations.clone(), request.bootstrap)? })
    }

    /// The reference backend's bootstrap costs no modulus: any positive finite range is
    /// taken as it is.
    fn with_bootstrap_range(params: &ClearParams, range: f64) -> Option<ClearParams> {
        let b = params.bootstrap.as_ref()?;
        (range.is_finite() && range > 0.0)
            .then(|| ClearParams { bootstrap: Some(ClearBootstrap { range, ..b.clone() }), ..params.clone() })
    }

    fn with_chain(params: &ClearParams, request: &ChainRequest) -> Option<ClearParams> {
        // The chain as asked at the given scale (two-product moduli Δ times a plaintext scale
        // 2^4 below it, at most 60 bits), q_0 12 bits above Δ: the reference backend has no
        // security bound to meet.
        let widest = *request.level_factors.iter().max()?;
        if widest == 0 || params.bootstrap.is_some() {
            return None;
        }
        // The largest scale (from 2^32 for two-product levels) whose primes stay within 60 bits
        // once each level's plaintexts have the bits they need.
        let top = params.log_scale.min(if widest >= 2 { 32 } else { 60 });
        let log_scale = (10..=top)
            .rev()
            .find(|&s| request.level_bits(s, ChainRequest::plaintext_bits(s)).iter().all(|&b| b <= 60))?;
        Some(ClearParams {
            log_scale,
            levels: request.level_factors.len(),
            level_bits: request.level_bits(log_scale, ChainRequest::plaintext_bits(log_scale)),
            first_modulus_bits: (log_scale + 12).min(61),
            ..params.clone()
        })
    }

    fn load_client(secret: &[u8]) -> BResult<ClearClient> {
        let s: ClearSecret = serde_json::from_slice(unseal(secret, "clear client state")?)
            .map_err(|e| BackendError::Deserialize { what: "clear client state", detail: e.to_string() })?;
        if s.kind != CLEAR_SECRET_KIND {
            return Err(BackendError::Deserialize { what: "clear client state", detail: format!("kind '{}'", s.kind) });
        }
        Ok(ClearClient { ctx: Context::new(s.params, s.key_id, s.rotations, s.bootstrap)? })
    }

    fn server(evaluation_keys: &[u8]) -> BResult<ClearServer> {
        let evk: EvalKeys = serde_json::from_slice(unseal(evaluation_keys, "clear evaluation keys")?)
            .map_err(|e| BackendError::Deserialize { what: "clear evaluation keys", detail: e.to_string() })?;
        if evk.kind != EVK_KIND {
            return Err(BackendError::Deserialize {
                what: "clear evaluation keys",
                detail: format!("kind '{}' is not '{EVK_KIND}'", evk.kind),
            });
        }
        Ok(ClearServer { ctx: Context::new(evk.params, evk.key_id, evk.rotations, evk.bootstrap)? })
    }
}

impl Client for ClearClient {
    type Backend = ClearServer;

    fn save_secret(&self) -> BResult<Vec<u8>> {
        let c = &self.ctx;
        serde_json::to_vec(&ClearSecret {
            kind: CLEAR_SECRET_KIND.into(),
            params: c.params.clone(),
            key_id: c.key_id,
            rotations: c.rotations.clone(),
            bootstrap: c.bootstrap,
        })
        .map(seal)
        .map_err(|e| BackendError::Serialize { what: "clear client state", detail: e.to_string() })
    }

    fn capabilities(&self) -> Capabilities {
        self.ctx.capabilities()
    }
    fn encode(&self, values: &[f64], level: usize, scale: f64) -> BResult<ClearPlaintext> {
        self.ctx.encode(values, level, scale)
    }
    fn encrypt(&self, pt: &ClearPlaintext) -> BResult<ClearCiphertext> {
        let mut values = pt.values.clone();
        if let Some(n) = &self.ctx.params.noise {
            self.ctx.noise(n.fresh, pt.meta.scale, &mut values);
        }
        self.ctx.check("encrypt", ClearCiphertext { values, meta: pt.meta, key_id: self.ctx.key_id })
    }
    fn decrypt(&self, ct: &ClearCiphertext) -> BResult<ClearPlaintext> {
        self.ctx.same_key("decrypt", ct)?;
        Ok(ClearPlaintext { values: ct.values.clone(), meta: ct.meta })
    }
    fn decode(&self, pt: &ClearPlaintext) -> BResult<Vec<f64>> {
        Ok(pt.values.clone())
    }
    fn evaluation_keys(&self) -> BResult<Vec<u8>> {
        let evk = EvalKeys {
            kind: EVK_KIND.into(),
            params: self.ctx.params.clone(),
            key_id: self.ctx.key_id,
            rotations: self.ctx.rotations.clone(),
            bootstrap: self.ctx.bootstrap,
        };
        serde_json::to_vec(&evk)
            .map(seal)
            .map_err(|e| BackendError::Serialize { what: "clear evaluation keys", detail: e.to_string() })
    }
    fn serialize_ciphertext(&self, ct: &ClearCiphertext) -> BResult<Vec<u8>> {
        Ok(self.ctx.serialize(ct))
    }
    fn deserialize_ciphertext(&self, bytes: &[u8]) -> BResult<ClearCiphertext> {
        self.ctx.deserialize(bytes)
    }
}

impl ClearServer {
    fn zip(&self, a: &ClearCiphertext, b: &[f64], f: impl Fn(f64, f64) -> f64) -> Vec<f64> {
        a.values.iter().zip(b).map(|(x, y)| f(*x, *y)).collect()
    }
    fn key_switch_noise(&self, values: &mut [f64], scale: f64) {
        if let Some(n) = &self.ctx.params.noise {
            self.ctx.noise(n.key_switch, scale, values);
        }
    }
    fn binary(
        &self,
        op: &'static str,
        a: &ClearCiphertext,
        b: &ClearCiphertext,
        sign: f64,
    ) -> BResult<ClearCiphertext> {
        self.ctx.same_key(op, b)?;
        self.plain(op, a, &ClearPlaintext { values: b.values.clone(), meta: b.meta }, sign)
    }
    fn plain(&self, op: &'static str, a: &ClearCiphertext, p: &ClearPlaintext, sign: f64) -> BResult<ClearCiphertext> {
        self.ctx.same_key(op, a)?;
        let meta = a.meta.add(op, p.meta)?;
        let values = self.zip(a, &p.values, |x, y| x + sign * y);
        self.ctx.check(op, ClearCiphertext { values, meta, key_id: a.key_id })
    }
}

/// Rounds `c` to its integer encoding at `scale`, as CKKS does for constants.
fn round_to_scale(c: f64, scale: f64) -> f64 {
    (c * scale).round() / scale
}

impl Backend for ClearServer {
    type Ciphertext = ClearCiphertext;
    type Plaintext = ClearPlaintext;

    fn capabilities(&self) -> Capabilities {
        self.ctx.capabilities()
    }
    fn rotation_steps(&self) -> BTreeSet<i64> {
        self.ctx.rotations.clone()
    }
    fn modulus(&self, level: usize) -> f64 {
        self.ctx.moduli[level.min(self.ctx.moduli.len() - 1)]
    }
    peregrine_backend::meta_accessors!();
    fn encode(&self, values: &[f64], level: usize, scale: f64) -> BResult<ClearPlaintext> {
        self.ctx.encode(values, level, scale)
    }
    fn add(&self, a: &ClearCiphertext, b: &ClearCiphertext) -> BResult<ClearCiphertext> {
        self.binary("add", a, b, 1.0)
    }
    fn sub(&self, a: &ClearCiphertext, b: &ClearCiphertext) -> BResult<ClearCiphertext> {
        self.binary("sub", a, b, -1.0)
    }
    fn negate(&self, a: &ClearCiphertext) -> BResult<ClearCiphertext> {
        self.ctx.same_key("negate", a)?;
        Ok(ClearCiphertext { values: a.values.iter().map(|v| -v).collect(), ..a.clone() })
    }
    fn add_plain(&self, a: &ClearCiphertext, p: &ClearPlaintext) -> BResult<ClearCiphertext> {
        self.plain("add_plain", a, p, 1.0)
    }
    fn sub_plain(&self, a: &ClearCiphertext, p: &ClearPlaintext) -> BResult<ClearCiphertext> {
        self.plain("sub_plain", a, p, -1.0)
    }
    fn mul_plain(&self, a: &ClearCiphertext, p: &ClearPlaintext) -> BResult<ClearCiphertext> {
        self.ctx.same_key("mul_plain", a)?;
        let meta = a.meta.mul("mul_plain", p.meta)?;
        let values = self.zip(a, &p.values, |x, y| x * y);
        self.ctx.check("mul_plain", ClearCiphertext { values, meta, key_id: a.key_id })
    }
    fn add_scalar(&self, a: &ClearCiphertext, c: f64) -> BResult<ClearCiphertext> {
        self.ctx.same_key("add_scalar", a)?;
        let meta = a.meta.add_scalar(c)?;
        let c = round_to_scale(c, a.meta.scale);
        self.ctx.check(
            "add_scalar",
            ClearCiphertext { values: a.values.iter().map(|v| v + c).collect(), meta, key_id: a.key_id },
        )
    }
    fn mul_scalar(&self, a: &ClearCiphertext, c: f64, scale: f64) -> BResult<ClearCiphertext> {
        self.ctx.same_key("mul_scalar", a)?;
        let meta = a.meta.mul_scalar(c, scale)?;
        let c = round_to_scale(c, scale);
        self.ctx.check(
            "mul_scalar",
            ClearCiphertext { values: a.values.iter().map(|v| v * c).collect(), meta, key_id: a.key_id },
        )
    }
    fn mul_integer(&self, a: &ClearCiphertext, k: i64) -> BResult<ClearCiphertext> {
        self.ctx.same_key("mul_integer", a)?;
        self.ctx.check(
            "mul_integer",
            ClearCiphertext { values: a.values.iter().map(|v| v * k as f64).collect(), ..a.clone() },
        )
    }
    fn mul(&self, a: &ClearCiphertext, b: &ClearCiphertext) -> BResult<ClearCiphertext> {
        self.ctx.same_key("mul", a)?;
        self.ctx.same_key("mul", b)?;
        let meta = a.meta.mul("mul", b.meta)?;
        let mut values = self.zip(a, &b.values, |x, y| x * y);
        self.key_switch_noise(&mut values, meta.scale);
        self.ctx.check("mul", ClearCiphertext { values, meta, key_id: a.key_id })
    }
    fn rescale(&self, a: &ClearCiphertext) -> BResult<ClearCiphertext> {
        self.ctx.same_key("rescale", a)?;
        let meta = a.meta.rescale(self.modulus(a.meta.level))?;
        let mut values = a.values.clone();
        if let Some(n) = &self.ctx.params.noise {
            self.ctx.noise(n.rescale, meta.scale, &mut values);
        }
        self.ctx.check("rescale", ClearCiphertext { values, meta, key_id: a.key_id })
    }
    fn drop_to_level(&self, a: &ClearCiphertext, level: usize) -> BResult<ClearCiphertext> {
        self.ctx.same_key("drop_to_level", a)?;
        Ok(ClearCiphertext { meta: a.meta.drop_to(level)?, ..a.clone() })
    }
    fn rotate(&self, a: &ClearCiphertext, step: i64) -> BResult<ClearCiphertext> {
        self.ctx.same_key("rotate", a)?;
        let slots = self.ctx.slots();
        let k = rotation_key(step, slots, &self.ctx.rotations)? as usize;
        if k == 0 {
            return Ok(a.clone());
        }
        let mut values: Vec<f64> = (0..slots).map(|i| a.values[(i + k) % slots]).collect();
        self.key_switch_noise(&mut values, a.meta.scale);
        Ok(ClearCiphertext { values, ..a.clone() })
    }
    fn bootstrap(&self, a: &ClearCiphertext) -> BResult<ClearCiphertext> {
        self.bootstrap_gained(a, 1.0)
    }
    /// As `ckks`: an input known to stay within a range g times below the parameters' is
    /// multiplied by the integer g before the bootstrap and divided after, so the bootstrap's
    /// error (proportional to the range) is g times smaller.
    fn bootstrap_within(&self, a: &ClearCiphertext, range: f64) -> BResult<ClearCiphertext> {
        if !(range.is_finite() && range > 0.0) {
            return Err(BackendError::OutOfRange {
                op: "bootstrap",
                detail: format!("a bootstrap range must be positive and finite, got {range}"),
            });
        }
        let full = self.ctx.params.bootstrap.as_ref().map_or(1.0, |b| b.range);
        self.bootstrap_gained(a, (full / range).floor().clamp(1.0, MAX_RANGE_GAIN))
    }
    fn serialize_ciphertext(&self, ct: &ClearCiphertext) -> BResult<Vec<u8>> {
        Ok(self.ctx.serialize(ct))
    }
    fn deserialize_ciphertext(&self, bytes: &[u8]) -> BResult<ClearCiphertext> {
        self.ctx.deserialize(bytes)
    }
}

/// The largest integer a bootstrap input is multiplied by for a small range (as `ckks`).
const MAX_RANGE_GAIN: f64 = 65_536.0;

impl ClearServer {
    /// The bootstrap emulation with the input multiplied by `gain` first: values beyond the
    /// parameters' range (after the gain) are refused, as a CKKS bootstrap would return
    /// garbage for them; the noise is the bootstrap's error at the parameters' range over `gain`.
    fn bootstrap_gained(&self, a: &ClearCiphertext, gain: f64) -> BResult<ClearCiphertext> {
        self.ctx.same_key("bootstrap", a)?;
        bootstrap_allowed(self.ctx.params.bootstrap.is_some(), self.ctx.bootstrap)?;
        let Some(b) = &self.ctx.params.bootstrap else {
            return Err(BackendError::BootstrapUnsupported);
        };
        let max = a.values.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        if max * gain > b.range {
            return Err(BackendError::OutOfRange {
                op: "bootstrap",
                detail: format!("|value| up to {max:.4} exceeds the bootstrap range {}", b.range / gain),
            });
        }
        let scale = (self.ctx.params.log_scale as f64).exp2();
        let mut values = a.values.clone();
        if let Some(n) = &self.ctx.params.noise {
            // Absolute error (range / gain) · 2^-bits, expressed in the scaled domain.
            self.ctx.noise(n.bootstrap_relative * b.range / gain * scale, scale, &mut values);
        }
        self.ctx
            .check("bootstrap", ClearCiphertext { values, meta: CtMeta::new(b.output_level, scale), key_id: a.key_id })
    }
}
