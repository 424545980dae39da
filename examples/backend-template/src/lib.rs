//! # backend-template
//!
//! The smallest complete Peregrine backend, written to be copied when adding an FHE library
//! (the walk-through is `docs/backend-guide.md`).
//!
//! Slots are plain `f64` values: this is **not** encryption. Every place where a real library
//! would be called is marked `LIBRARY:`; everything else — the level and scale rules
//! ([`CtMeta`]), the rotation-key rule, key ids that keep two key generations apart, byte
//! formats that refuse corrupted input — is what a real backend keeps as it is.
//!
//! ```
//! use backend_template::{TemplateParams, TemplateScheme};
//! use peregrine_backend::{Backend, Client, KeyRequest, Scheme};
//!
//! let client = TemplateScheme::keygen(&TemplateParams::default(), &KeyRequest::rotations([1]))?;
//! let server = TemplateScheme::server(&client.evaluation_keys()?)?;
//! let ct = server.deserialize_ciphertext(&client.serialize_ciphertext(&client.encrypt_values(&[1.0, 2.0])?)?)?;
//! let sum = server.rotate(&server.add(&ct, &ct)?, 1)?;
//! assert_eq!(client.decrypt_values(&sum)?[..2], [4.0, 0.0]);
//! # Ok::<(), peregrine_backend::BackendError>(())
//! ```

#![warn(missing_docs)]

use std::collections::BTreeSet;
use std::hash::{BuildHasher, Hasher};

use peregrine_backend::{
    normalize_rotation, rotation_key, BResult, Backend, BackendError, Capabilities, Client, CtMeta, KeyRequest, Scheme,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

// The C entry point of the plugin (`libbackend_template.so`): one line.
peregrine_backend::export_plugin!(crate::TemplateScheme);

/// Parameters, read from the JSON a user passes with `--params` (unknown fields are refused).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TemplateParams {
    /// log2 of the number of slots.
    pub log_slots: u32,
    /// Number of levels L (rescales available to a fresh ciphertext).
    pub levels: usize,
    /// log2 of the default scale Δ, and of every modulus q_1 … q_L.
    pub log_scale: u32,
}

impl Default for TemplateParams {
    fn default() -> Self {
        TemplateParams { log_slots: 11, levels: 6, log_scale: 40 }
    }
}

impl TemplateParams {
    /// The parameters, or [`BackendError::InvalidParameters`] saying what is wrong.
    fn checked(&self) -> BResult<&Self> {
        let bad = |m: String| Err(BackendError::InvalidParameters(m));
        if !(1..=16).contains(&self.log_slots) {
            return bad(format!("log_slots must be 1..=16, got {}", self.log_slots));
        }
        if !(1..=60).contains(&self.levels) || !(10..=60).contains(&self.log_scale) {
            return bad(format!(
                "levels must be 1..=60 and log_scale 10..=60, got {} and {}",
                self.levels, self.log_scale
            ));
        }
        Ok(self)
    }

    fn slots(&self) -> usize {
        1 << self.log_slots
    }

    /// q_ℓ: 2^60 at level 0, Δ above it. LIBRARY: the library's modulus chain.
    fn modulus(&self, level: usize) -> f64 {
        if level == 0 {
            60f64.exp2()
        } else {
            (self.log_scale as f64).exp2()
        }
    }

    fn capabilities(&self) -> BResult<Capabilities> {
        self.checked()?;
        Ok(Capabilities {
            backend: TemplateScheme::NAME.into(),
            ring_dimension: 2 * self.slots(),
            slots: self.slots(),
            max_level: self.levels,
            log_scale: self.log_scale as f64,
            log_moduli: (0..=self.levels).map(|l| self.modulus(l).log2()).collect(),
            can_bootstrap: false,
            bootstrap_level: None,
            bootstrap_range: None,
            precision_bits: 52.0,
            security_bits: None,
            log_qp: None,
            costs: None,
        })
    }
}

/// A ciphertext: the slots, their level and scale, and the key generation they belong to.
/// LIBRARY: wrap the library's ciphertext here and keep the [`CtMeta`] beside it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TemplateCiphertext {
    key_id: u64,
    level: usize,
    scale: f64,
    slots: Vec<f64>,
}

/// A plaintext: encoded slots with their level and scale.
#[derive(Clone, Debug, PartialEq)]
pub struct TemplatePlaintext {
    slots: Vec<f64>,
    meta: CtMeta,
}

impl peregrine_backend::HasMeta for TemplateCiphertext {
    fn meta(&self) -> CtMeta {
        CtMeta::new(self.level, self.scale)
    }
}
peregrine_backend::has_meta!(TemplatePlaintext);

/// What the client holds and what the server gets (the same here; a real library's secret key
/// stays with the client and only its evaluation keys travel).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Keys {
    params: TemplateParams,
    key_id: u64,
    rotations: BTreeSet<i64>,
}

/// Keys and the capabilities of their (checked) parameters: the state of client and server.
struct State {
    keys: Keys,
    caps: Capabilities,
}

impl State {
    fn new(keys: Keys) -> BResult<Self> {
        let caps = keys.params.capabilities()?;
        Ok(State { keys, caps })
    }
}

/// Bytes this crate writes start with a label, so foreign and corrupted input is refused.
#[derive(Serialize, Deserialize)]
struct Labelled<T> {
    kind: String,
    #[serde(flatten)]
    body: T,
}

const CIPHERTEXT: &str = "peregrine-template-ciphertext-v1";
const EVALUATION_KEYS: &str = "peregrine-template-evaluation-keys-v1";
const SECRET: &str = "peregrine-template-secret-v1";

fn write<T: Serialize>(what: &'static str, kind: &str, body: &T) -> BResult<Vec<u8>> {
    serde_json::to_vec(&Labelled { kind: kind.into(), body })
        .map_err(|e| BackendError::Serialize { what, detail: e.to_string() })
}

fn read<T: DeserializeOwned>(what: &'static str, kind: &str, bytes: &[u8]) -> BResult<T> {
    let err = |detail: String| BackendError::Deserialize { what, detail };
    let l: Labelled<T> = serde_json::from_slice(bytes).map_err(|e| err(e.to_string()))?;
    if l.kind != kind {
        return Err(err(format!("labelled '{}', expected '{kind}'", l.kind)));
    }
    Ok(l.body)
}

impl State {
    fn encode(&self, values: &[f64], level: usize, scale: f64) -> BResult<TemplatePlaintext> {
        let meta = CtMeta::encode(values, level, scale, &self.caps)?;
        let mut slots = values.to_vec();
        slots.resize(self.caps.slots, 0.0);
        Ok(TemplatePlaintext { slots, meta })
    }

    fn own(&self, op: &'static str, ct: &TemplateCiphertext) -> BResult<()> {
        self.keys.own(op, ct)
    }

    fn ciphertext(&self, slots: Vec<f64>, meta: CtMeta) -> TemplateCiphertext {
        TemplateCiphertext { key_id: self.keys.key_id, level: meta.level, scale: meta.scale, slots }
    }

    fn serialize(&self, ct: &TemplateCiphertext) -> BResult<Vec<u8>> {
        self.own("serialize", ct)?;
        write("template ciphertext", CIPHERTEXT, ct)
    }

    fn deserialize(&self, bytes: &[u8]) -> BResult<TemplateCiphertext> {
        let ct: TemplateCiphertext = read("template ciphertext", CIPHERTEXT, bytes)?;
        self.own("deserialize", &ct)?;
        if ct.slots.len() != self.caps.slots || ct.level > self.caps.max_level || !(ct.scale >= 1.0) {
            return Err(BackendError::Deserialize {
                what: "template ciphertext",
                detail: format!("{} slots at level {} and scale {}", ct.slots.len(), ct.level, ct.scale),
            });
        }
        Ok(ct)
    }
}

impl Keys {
    fn new(params: &TemplateParams, request: &KeyRequest) -> BResult<Self> {
        if request.bootstrap {
            return Err(BackendError::InvalidParameters("the template backend cannot bootstrap".into()));
        }
        let slots = params.checked()?.slots();
        // LIBRARY: generate the secret key, relinearisation and rotation keys here. The id only
        // has to differ between key generations: std's randomly seeded hasher gives one.
        let key_id = std::collections::hash_map::RandomState::new().build_hasher().finish();
        let rotations = request.rotations.iter().map(|&r| normalize_rotation(r, slots)).filter(|&r| r != 0).collect();
        Ok(Keys { params: params.clone(), key_id, rotations })
    }

    /// `ct` belongs to these keys (else [`BackendError::WrongKey`] naming `op`).
    fn own(&self, op: &'static str, ct: &TemplateCiphertext) -> BResult<()> {
        if ct.key_id != self.key_id {
            return Err(BackendError::WrongKey { op });
        }
        Ok(())
    }
}

/// The scheme: parameters, key generation, a server from evaluation keys.
pub struct TemplateScheme;

/// The client: encodes, encrypts, decrypts, decodes; holds the (here, pretend) secret key.
pub struct TemplateClient {
    state: State,
}

/// The server: evaluates on ciphertexts with the evaluation keys only.
pub struct TemplateServer {
    state: State,
}

impl Scheme for TemplateScheme {
    const NAME: &'static str = "template";
    const DESCRIPTION: &'static str =
        "template for new backends: plain f64 slots under the CKKS rules (NOT encryption)";
    type Params = TemplateParams;
    type Client = TemplateClient;
    type Server = TemplateServer;

    fn capabilities(params: &TemplateParams) -> BResult<Capabilities> {
        params.capabilities()
    }
    fn keygen(params: &TemplateParams, request: &KeyRequest) -> BResult<TemplateClient> {
        Ok(TemplateClient { state: State::new(Keys::new(params, request)?)? })
    }
    fn server(evaluation_keys: &[u8]) -> BResult<TemplateServer> {
        Ok(TemplateServer { state: State::new(read("template evaluation keys", EVALUATION_KEYS, evaluation_keys)?)? })
    }
    fn load_client(secret: &[u8]) -> BResult<TemplateClient> {
        Ok(TemplateClient { state: State::new(read("template secret", SECRET, secret)?)? })
    }
}

impl Client for TemplateClient {
    type Backend = TemplateServer;

    fn capabilities(&self) -> Capabilities {
        self.state.caps.clone()
    }
    fn encode(&self, values: &[f64], level: usize, scale: f64) -> BResult<TemplatePlaintext> {
        self.state.encode(values, level, scale)
    }
    fn encrypt(&self, pt: &TemplatePlaintext) -> BResult<TemplateCiphertext> {
        // LIBRARY: encrypt under the secret key.
        Ok(self.state.ciphertext(pt.slots.clone(), pt.meta))
    }
    fn decrypt(&self, ct: &TemplateCiphertext) -> BResult<TemplatePlaintext> {
        // LIBRARY: decrypt with the secret key.
        self.state.own("decrypt", ct)?;
        Ok(TemplatePlaintext { slots: ct.slots.clone(), meta: CtMeta::new(ct.level, ct.scale) })
    }
    fn decode(&self, pt: &TemplatePlaintext) -> BResult<Vec<f64>> {
        Ok(pt.slots.clone())
    }
    fn evaluation_keys(&self) -> BResult<Vec<u8>> {
        write("template evaluation keys", EVALUATION_KEYS, &self.state.keys)
    }
    fn save_secret(&self) -> BResult<Vec<u8>> {
        write("template secret", SECRET, &self.state.keys)
    }
    fn serialize_ciphertext(&self, ct: &TemplateCiphertext) -> BResult<Vec<u8>> {
        self.state.serialize(ct)
    }
    fn deserialize_ciphertext(&self, bytes: &[u8]) -> BResult<TemplateCiphertext> {
        self.state.deserialize(bytes)
    }
}

impl TemplateServer {
    /// Slot-wise `f(a, b)` with the metadata `meta` already checked by [`CtMeta`].
    fn slotwise(
        &self,
        op: &'static str,
        a: &TemplateCiphertext,
        b: &[f64],
        meta: CtMeta,
        f: impl Fn(f64, f64) -> f64,
    ) -> BResult<TemplateCiphertext> {
        self.state.own(op, a)?;
        Ok(self.state.ciphertext(a.slots.iter().zip(b).map(|(x, y)| f(*x, *y)).collect(), meta))
    }

    /// Slot-wise `f(a)`, keeping `a`'s level and scale.
    fn map(&self, op: &'static str, a: &TemplateCiphertext, f: impl Fn(f64) -> f64) -> BResult<TemplateCiphertext> {
        self.state.own(op, a)?;
        Ok(TemplateCiphertext { slots: a.slots.iter().map(|v| f(*v)).collect(), ..a.clone() })
    }

    fn meta(ct: &TemplateCiphertext) -> CtMeta {
        CtMeta::new(ct.level, ct.scale)
    }
}

impl Backend for TemplateServer {
    type Ciphertext = TemplateCiphertext;
    type Plaintext = TemplatePlaintext;

    fn capabilities(&self) -> Capabilities {
        self.state.caps.clone()
    }
    fn rotation_steps(&self) -> BTreeSet<i64> {
        self.state.keys.rotations.clone()
    }
    fn modulus(&self, level: usize) -> f64 {
        self.state.keys.params.modulus(level)
    }
    peregrine_backend::meta_accessors!();

    fn encode(&self, values: &[f64], level: usize, scale: f64) -> BResult<TemplatePlaintext> {
        self.state.encode(values, level, scale)
    }
    // LIBRARY: each operation below calls the library; CtMeta computes the result's level and
    // scale and refuses what CKKS forbids, with the same error as every other backend.
    fn add(&self, a: &TemplateCiphertext, b: &TemplateCiphertext) -> BResult<TemplateCiphertext> {
        self.state.own("add", b)?;
        self.slotwise("add", a, &b.slots, Self::meta(a).add("add", Self::meta(b))?, |x, y| x + y)
    }
    fn sub(&self, a: &TemplateCiphertext, b: &TemplateCiphertext) -> BResult<TemplateCiphertext> {
        self.state.own("sub", b)?;
        self.slotwise("sub", a, &b.slots, Self::meta(a).add("sub", Self::meta(b))?, |x, y| x - y)
    }
    fn negate(&self, a: &TemplateCiphertext) -> BResult<TemplateCiphertext> {
        self.map("negate", a, |v| -v)
    }
    fn add_plain(&self, a: &TemplateCiphertext, p: &TemplatePlaintext) -> BResult<TemplateCiphertext> {
        self.slotwise("add_plain", a, &p.slots, Self::meta(a).add("add_plain", p.meta)?, |x, y| x + y)
    }
    fn sub_plain(&self, a: &TemplateCiphertext, p: &TemplatePlaintext) -> BResult<TemplateCiphertext> {
        self.slotwise("sub_plain", a, &p.slots, Self::meta(a).add("sub_plain", p.meta)?, |x, y| x - y)
    }
    fn mul_plain(&self, a: &TemplateCiphertext, p: &TemplatePlaintext) -> BResult<TemplateCiphertext> {
        self.slotwise("mul_plain", a, &p.slots, Self::meta(a).mul("mul_plain", p.meta)?, |x, y| x * y)
    }
    fn add_scalar(&self, a: &TemplateCiphertext, c: f64) -> BResult<TemplateCiphertext> {
        Self::meta(a).add_scalar(c)?;
        self.map("add_scalar", a, |v| v + c)
    }
    fn mul_scalar(&self, a: &TemplateCiphertext, c: f64, scale: f64) -> BResult<TemplateCiphertext> {
        let meta = Self::meta(a).mul_scalar(c, scale)?;
        self.slotwise("mul_scalar", a, &a.slots, meta, |x, _| x * c)
    }
    fn mul_integer(&self, a: &TemplateCiphertext, k: i64) -> BResult<TemplateCiphertext> {
        self.map("mul_integer", a, |v| v * k as f64)
    }
    fn mul(&self, a: &TemplateCiphertext, b: &TemplateCiphertext) -> BResult<TemplateCiphertext> {
        self.state.own("mul", b)?;
        self.slotwise("mul", a, &b.slots, Self::meta(a).mul("mul", Self::meta(b))?, |x, y| x * y)
    }
    fn rescale(&self, a: &TemplateCiphertext) -> BResult<TemplateCiphertext> {
        let meta = Self::meta(a).rescale(self.modulus(a.level))?;
        self.slotwise("rescale", a, &a.slots, meta, |x, _| x)
    }
    fn drop_to_level(&self, a: &TemplateCiphertext, level: usize) -> BResult<TemplateCiphertext> {
        let meta = Self::meta(a).drop_to(level)?;
        self.slotwise("drop_to_level", a, &a.slots, meta, |x, _| x)
    }
    fn rotate(&self, a: &TemplateCiphertext, step: i64) -> BResult<TemplateCiphertext> {
        self.state.own("rotate", a)?;
        let k = rotation_key(step, a.slots.len(), &self.state.keys.rotations)? as usize;
        let mut slots = a.slots.clone();
        slots.rotate_left(k);
        Ok(TemplateCiphertext { slots, ..a.clone() })
    }
    fn serialize_ciphertext(&self, ct: &TemplateCiphertext) -> BResult<Vec<u8>> {
        self.state.serialize(ct)
    }
    fn deserialize_ciphertext(&self, bytes: &[u8]) -> BResult<TemplateCiphertext> {
        self.state.deserialize(bytes)
    }
}
