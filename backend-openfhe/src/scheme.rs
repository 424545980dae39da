//! The OpenFHE scheme, client and server on top of [`crate::native`].

use std::collections::BTreeSet;
use std::sync::{Arc, Once};

use openfhe_sys::PfParams;
use peregrine_backend::BackendError;
use peregrine_backend::{
    bootstrap_allowed, normalize_rotation, rotation_key, BResult, Backend, Capabilities, Client, CtMeta, KeyRequest,
    Scheme,
};

use crate::framing::{self, KeyHeader};
use crate::native::{bootstrap_depth, Ctx, Info, RawCt};
use crate::params::SecretDist;
use crate::{OpenFheParams, OpenFheScheme};

/// A ciphertext with its (exact) scale. Its level is OpenFHE's tower count − 1, minus one
/// more when bootstrapping is enabled: OpenFHE's FIXEDMANUAL bootstrap spends one modulus on
/// its input before raising it, so that modulus is kept out of the levels the planner sees.
#[derive(Clone)]
pub struct OpenFheCiphertext {
    raw: RawCt,
    meta: CtMeta,
}

/// A plaintext: values, level and scale. It is encoded by OpenFHE when used, at the noise
/// degree of the ciphertext it meets (additions need it to match).
#[derive(Clone, Debug)]
pub struct OpenFhePlaintext {
    values: Arc<Vec<f64>>,
    meta: CtMeta,
}

peregrine_backend::has_meta!(OpenFheCiphertext, OpenFhePlaintext);

/// Shared facts of a client or server.
struct Shared {
    ctx: Ctx,
    params: OpenFheParams,
    caps: Capabilities,
    moduli: Vec<f64>,
    rotations: BTreeSet<i64>,
    bootstrap_keys: bool,
    /// Moduli kept below level 0 (1 with bootstrapping, else 0).
    reserved: usize,
    /// Identity of the key pair, copied into every ciphertext ([`framing::KeyHeader::key_id`]).
    key_id: String,
}

/// The client: secret key, encryption and decryption.
pub struct OpenFheClient(Shared);

/// The server: evaluation keys only; it cannot decrypt.
pub struct OpenFheServer(Shared);

fn warn_insecure(p: &OpenFheParams) {
    static ONCE: Once = Once::new();
    if p.insecure_test_only {
        ONCE.call_once(|| {
            eprintln!(
                "WARNING: OpenFHE backend running with INSECURE test parameters (N = 2^{}, no security level): for tests only, never for real data",
                p.log_ring_dimension
            )
        });
    }
}

/// Moduli kept below level 0: OpenFHE's FIXEDMANUAL bootstrap needs two moduli on its input.
/// With `bootstrap_range` > 1 a second one scales the input into [−1, 1] first.
fn reserved(p: &OpenFheParams) -> usize {
    match (p.bootstrap, p.bootstrap_range > 1.0) {
        (false, _) => 0,
        (true, false) => 1,
        (true, true) => 2,
    }
}

/// Bits of precision after an operation, an estimate fitted to measurements: at N = 2^12 and
/// Δ = 2^40, 21.5–25.9 bits (OpenFHE adds noise at decryption; key switching adds more).
/// Bootstrapping is less precise; its figure is measured separately (README).
fn precision_estimate(p: &OpenFheParams, ring_dim: usize) -> f64 {
    (p.log_scale as f64 - (ring_dim as f64).log2() / 2.0 - 10.0).min(30.0)
}

/// Capabilities of a built context (levels counted above the reserved modulus).
fn capabilities_of(
    p: &OpenFheParams,
    info: &Info,
    moduli: &[f64],
    can_bootstrap: bool,
    security: Option<u32>,
) -> BResult<Capabilities> {
    let (depth, boot) = model_depth(p)?;
    let r = reserved(p);
    Ok(Capabilities {
        backend: OpenFheScheme::NAME.into(),
        ring_dimension: info.ring_dim,
        slots: info.ring_dim / 2,
        max_level: info.towers - 1 - r,
        log_scale: p.log_scale as f64,
        log_moduli: moduli[r..].iter().map(|q| q.log2()).collect(),
        can_bootstrap,
        bootstrap_level: p.bootstrap.then(|| depth - boot - r),
        bootstrap_range: p.bootstrap.then_some(p.bootstrap_range),
        precision_bits: precision_estimate(p, info.ring_dim),
        security_bits: security,
        log_qp: None,
        costs: None,
    })
}

fn model_depth(p: &OpenFheParams) -> BResult<(usize, usize)> {
    let boot = if p.bootstrap {
        bootstrap_depth(p.level_budget[0], p.level_budget[1], p.secret == SecretDist::SparseEncapsulated)?
    } else {
        0
    };
    Ok((p.levels + boot, boot))
}

fn raw_params(p: &OpenFheParams, depth: usize, with_bootstrap: bool) -> PfParams {
    PfParams {
        ring_dim: p.ring_dimension() as u32,
        mult_depth: depth as u32,
        scale_bits: p.log_scale,
        first_mod_bits: p.first_modulus_bits,
        num_large_digits: p.large_digits,
        secure: (!p.insecure_test_only) as i32,
        sparse_secret: i32::from(p.secret == SecretDist::SparseEncapsulated),
        bootstrap: with_bootstrap as i32,
        level_budget_enc: p.level_budget[0],
        level_budget_dec: p.level_budget[1],
        slots: 0,
    }
}

/// Builds a context and its capabilities (bootstrapping precomputations only if `setup`).
fn build(p: &OpenFheParams, setup: bool) -> BResult<(Ctx, Capabilities, Vec<f64>)> {
    p.validate()?;
    let (depth, _) = model_depth(p)?;
    let ctx = Ctx::new(&raw_params(p, depth, setup && p.bootstrap)).map_err(|e| match e {
        BackendError::InvalidParameters(m) if m.contains("HE standards") => BackendError::InvalidParameters(format!(
            "insecure parameters: N = 2^{} cannot hold {} levels of {} bits (+ q_0 of {} bits) at 128-bit security \
             (HE standard); use fewer levels, a smaller scale, or a larger ring. OpenFHE says: {m}",
            p.log_ring_dimension, depth, p.log_scale, p.first_modulus_bits
        )),
        e => e,
    })?;
    let info = ctx.info()?;
    if info.ring_dim != p.ring_dimension() {
        return Err(BackendError::InvalidParameters(format!(
            "OpenFHE chose ring dimension {} instead of the requested {}",
            info.ring_dim,
            p.ring_dimension()
        )));
    }
    let security = p.check_security(info.ring_dim, info.log_qp)?;
    warn_insecure(p);
    let moduli = ctx.moduli(info.towers)?;
    let caps = capabilities_of(p, &info, &moduli, p.bootstrap, security)?;
    Ok((ctx, caps, moduli))
}

impl Scheme for OpenFheScheme {
    const NAME: &'static str = "openfhe";
    const DESCRIPTION: &'static str = "OpenFHE CKKS with bootstrapping (FIXEDMANUAL, HYBRID, 128-bit checked)";
    type Params = OpenFheParams;
    type Client = OpenFheClient;
    type Server = OpenFheServer;

    fn capabilities(params: &OpenFheParams) -> BResult<Capabilities> {
        Ok(build(params, false)?.1)
    }

    fn keygen(params: &OpenFheParams, request: &KeyRequest) -> BResult<OpenFheClient> {
        if request.bootstrap && !params.bootstrap {
            return Err(BackendError::InvalidParameters(
                "bootstrapping keys requested but the parameters have bootstrap = false".into(),
            ));
        }
        let (mut ctx, caps, moduli) = build(params, request.bootstrap)?;
        let slots = caps.slots;
        let rotations: BTreeSet<i64> =
            request.rotations.iter().map(|&s| normalize_rotation(s, slots)).filter(|&s| s != 0).collect();
        let steps: Vec<i32> = rotations.iter().map(|&s| s as i32).collect();
        ctx.keygen(&steps, request.bootstrap)?;
        let reserved = reserved(params);
        Ok(OpenFheClient(Shared {
            ctx,
            params: params.clone(),
            caps,
            moduli,
            rotations,
            bootstrap_keys: request.bootstrap,
            reserved,
            key_id: framing::new_key_id(),
        }))
    }

    /// Maps the file instead of reading it: at N = 2^16 the keys are gigabytes, and mapped
    /// pages can be dropped by the kernel once OpenFHE has built its own copy.
    fn server_from_file(path: &std::path::Path) -> BResult<OpenFheServer> {
        let what = |e: std::io::Error| BackendError::io(format!("reading evaluation keys {}", path.display()), &e);
        let file = std::fs::File::open(path).map_err(what)?;
        // SAFETY: the mapping is only read, while this function runs; a concurrent writer of the
        // key file could change the bytes under us, which OpenFHE's parser then rejects.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(what)?;
        Self::server(&map)
    }

    fn load_client(secret: &[u8]) -> BResult<OpenFheClient> {
        let (header, body) = framing::open_client_state(secret)?;
        header.params.validate()?;
        warn_insecure(&header.params);
        let ctx = Ctx::load_client(body)?;
        let shared = shared_from(ctx, header, "OpenFHE client state")?;
        Ok(OpenFheClient(shared))
    }

    fn server(evaluation_keys: &[u8]) -> BResult<OpenFheServer> {
        let (header, body) = framing::open_keys(evaluation_keys)?;
        header.params.validate()?;
        warn_insecure(&header.params);
        let p = &header.params;
        let ctx = Ctx::server(body, header.bootstrap, p.level_budget[0], p.level_budget[1])?;
        let have: BTreeSet<i64> = ctx.rotation_steps()?.into_iter().map(i64::from).collect();
        if let Some(m) = header.rotations.iter().find(|s| !have.contains(s)) {
            return Err(BackendError::Deserialize {
                what: "OpenFHE evaluation keys",
                detail: format!("the header lists rotation step {m} but the keys do not contain it"),
            });
        }
        Ok(OpenFheServer(shared_from(ctx, header, "OpenFHE evaluation keys")?))
    }
}

/// Checks a context read from a file against its header and derives the shared facts.
fn shared_from(ctx: Ctx, header: KeyHeader, what: &'static str) -> BResult<Shared> {
    let p = &header.params;
    let info = ctx.info()?;
    let (depth, _) = model_depth(p)?;
    if info.ring_dim != p.ring_dimension() || info.towers != depth + 1 {
        return Err(BackendError::Deserialize {
            what,
            detail: format!(
                "the context (N = {}, {} moduli) does not match the header (N = {}, {} moduli)",
                info.ring_dim,
                info.towers,
                p.ring_dimension(),
                depth + 1
            ),
        });
    }
    let security = p.check_security(info.ring_dim, info.log_qp)?;
    let moduli = ctx.moduli(info.towers)?;
    let caps = capabilities_of(p, &info, &moduli, header.bootstrap, security)?;
    Ok(Shared {
        ctx,
        reserved: reserved(p),
        params: header.params,
        caps,
        moduli,
        rotations: header.rotations.into_iter().collect(),
        bootstrap_keys: header.bootstrap,
        key_id: header.key_id,
    })
}

impl Shared {
    fn header(&self) -> KeyHeader {
        KeyHeader {
            params: self.params.clone(),
            rotations: self.rotations.iter().copied().collect(),
            bootstrap: self.bootstrap_keys,
            key_id: self.key_id.clone(),
        }
    }
    fn wrap(&self, raw: RawCt, scale: f64) -> OpenFheCiphertext {
        let (towers_above_q0, _) = raw.info();
        OpenFheCiphertext { raw, meta: CtMeta::new(towers_above_q0.saturating_sub(self.reserved), scale) }
    }

    fn encode(&self, values: &[f64], level: usize, scale: f64) -> BResult<OpenFhePlaintext> {
        let meta = CtMeta::encode(values, level, scale, &self.caps)?;
        Ok(OpenFhePlaintext { values: Arc::new(values.to_vec()), meta })
    }

    fn serialize(&self, ct: &OpenFheCiphertext) -> BResult<Vec<u8>> {
        framing::ciphertext(&self.key_id, ct.meta.scale, &ct.raw.serialize()?)
    }

    fn deserialize(&self, bytes: &[u8]) -> BResult<OpenFheCiphertext> {
        let (scale, raw) = framing::open_ciphertext(bytes, &self.key_id)?;
        let raw = self.ctx.deserialize(raw)?;
        if raw.info().0 < self.reserved {
            return Err(BackendError::Deserialize {
                what: "OpenFHE ciphertext",
                detail: "the ciphertext sits below the lowest usable level".into(),
            });
        }
        Ok(self.wrap(raw, scale))
    }
}

impl Client for OpenFheClient {
    type Backend = OpenFheServer;

    fn capabilities(&self) -> Capabilities {
        self.0.caps.clone()
    }
    fn encode(&self, values: &[f64], level: usize, scale: f64) -> BResult<OpenFhePlaintext> {
        self.0.encode(values, level, scale)
    }
    fn encrypt(&self, pt: &OpenFhePlaintext) -> BResult<OpenFheCiphertext> {
        let raw = self.0.ctx.encrypt(&pt.values, pt.meta.level + self.0.reserved, pt.meta.scale)?;
        Ok(self.0.wrap(raw, pt.meta.scale))
    }
    fn decrypt(&self, ct: &OpenFheCiphertext) -> BResult<OpenFhePlaintext> {
        let v = self.0.ctx.decrypt(&ct.raw, ct.meta.scale, self.0.caps.slots)?;
        Ok(OpenFhePlaintext { values: Arc::new(v), meta: ct.meta })
    }
    fn decode(&self, pt: &OpenFhePlaintext) -> BResult<Vec<f64>> {
        let mut v = pt.values.as_ref().clone();
        v.resize(self.0.caps.slots, 0.0);
        Ok(v)
    }
    fn evaluation_keys(&self) -> BResult<Vec<u8>> {
        let mut out = Vec::new();
        self.write_evaluation_keys(&mut out)?;
        Ok(out)
    }
    fn write_evaluation_keys(&self, out: &mut dyn std::io::Write) -> BResult<()> {
        let mut out = framing::KeysWriter::new(out, &self.0.header())?;
        self.0.ctx.evaluation_keys_into(&mut out).map_err(|e| {
            BackendError::Library(format!(
                "{e} (evaluation keys can only be exported by the client that generated them; use the saved key file)"
            ))
        })?;
        out.finish()
    }
    fn local_server(&self) -> BResult<Option<OpenFheServer>> {
        self.server_in_process().map(Some)
    }
    fn save_secret(&self) -> BResult<Vec<u8>> {
        let mut secret = self.0.ctx.save_client()?;
        let file = framing::client_state(&self.0.header(), &secret);
        peregrine_backend::integrity::wipe(&mut secret);
        file
    }
    fn serialize_ciphertext(&self, ct: &OpenFheCiphertext) -> BResult<Vec<u8>> {
        self.0.serialize(ct)
    }
    fn deserialize_ciphertext(&self, bytes: &[u8]) -> BResult<OpenFheCiphertext> {
        self.0.deserialize(bytes)
    }
}

impl OpenFheClient {
    /// A server in this process sharing the client's evaluation keys in memory, without
    /// serialising them. It holds no secret key. Meant for benchmarks at N = 2^16, whose key
    /// files do not yet fit in this machine's memory twice; real deployments use
    /// [`Client::evaluation_keys`] and [`Scheme::server`].
    pub fn server_in_process(&self) -> BResult<OpenFheServer> {
        let c = &self.0;
        Ok(OpenFheServer(Shared {
            ctx: c.ctx.server_from_client()?,
            params: c.params.clone(),
            caps: c.caps.clone(),
            moduli: c.moduli.clone(),
            rotations: c.rotations.clone(),
            bootstrap_keys: c.bootstrap_keys,
            reserved: c.reserved,
            key_id: c.key_id.clone(),
        }))
    }
}

impl OpenFheServer {
    /// Whether the underlying OpenFHE context holds a secret key (never, for a server built
    /// from evaluation keys; tests assert it).
    pub fn holds_secret_key(&self) -> bool {
        self.0.ctx.has_secret_key()
    }
    fn check_rotation(&self, step: i64) -> BResult<i64> {
        rotation_key(step, self.0.caps.slots, &self.0.rotations)
    }
    fn wrap(&self, raw: RawCt, scale: f64) -> OpenFheCiphertext {
        self.0.wrap(raw, scale)
    }
}

impl Backend for OpenFheServer {
    type Ciphertext = OpenFheCiphertext;
    type Plaintext = OpenFhePlaintext;

    fn capabilities(&self) -> Capabilities {
        self.0.caps.clone()
    }
    fn rotation_steps(&self) -> BTreeSet<i64> {
        self.0.rotations.clone()
    }
    fn modulus(&self, level: usize) -> f64 {
        self.0.moduli[(level + self.0.reserved).min(self.0.moduli.len() - 1)]
    }
    peregrine_backend::meta_accessors!();
    fn encode(&self, values: &[f64], level: usize, scale: f64) -> BResult<OpenFhePlaintext> {
        self.0.encode(values, level, scale)
    }
    fn add(&self, a: &OpenFheCiphertext, b: &OpenFheCiphertext) -> BResult<OpenFheCiphertext> {
        let m = a.meta.add("add", b.meta)?;
        Ok(self.wrap(self.0.ctx.add(&a.raw, &b.raw)?, m.scale))
    }
    fn sub(&self, a: &OpenFheCiphertext, b: &OpenFheCiphertext) -> BResult<OpenFheCiphertext> {
        let m = a.meta.add("sub", b.meta)?;
        Ok(self.wrap(self.0.ctx.sub(&a.raw, &b.raw)?, m.scale))
    }
    fn negate(&self, a: &OpenFheCiphertext) -> BResult<OpenFheCiphertext> {
        Ok(self.wrap(self.0.ctx.negate(&a.raw)?, a.meta.scale))
    }
    fn add_plain(&self, a: &OpenFheCiphertext, p: &OpenFhePlaintext) -> BResult<OpenFheCiphertext> {
        let m = a.meta.add("add_plain", p.meta)?;
        Ok(self.wrap(self.0.ctx.add_plain(&a.raw, &p.values, m.scale, false)?, m.scale))
    }
    fn sub_plain(&self, a: &OpenFheCiphertext, p: &OpenFhePlaintext) -> BResult<OpenFheCiphertext> {
        let m = a.meta.add("sub_plain", p.meta)?;
        Ok(self.wrap(self.0.ctx.add_plain(&a.raw, &p.values, m.scale, true)?, m.scale))
    }
    fn mul_plain(&self, a: &OpenFheCiphertext, p: &OpenFhePlaintext) -> BResult<OpenFheCiphertext> {
        let m = a.meta.mul("mul_plain", p.meta)?;
        Ok(self.wrap(self.0.ctx.mul_plain(&a.raw, &p.values, p.meta.scale)?, m.scale))
    }
    fn add_scalar(&self, a: &OpenFheCiphertext, c: f64) -> BResult<OpenFheCiphertext> {
        let m = a.meta.add_scalar(c)?;
        Ok(self.wrap(self.0.ctx.add_scalar(&a.raw, c, m.scale)?, m.scale))
    }
    fn mul_scalar(&self, a: &OpenFheCiphertext, c: f64, scale: f64) -> BResult<OpenFheCiphertext> {
        let m = a.meta.mul_scalar(c, scale)?;
        Ok(self.wrap(self.0.ctx.mul_scalar(&a.raw, c, scale)?, m.scale))
    }
    fn mul_integer(&self, a: &OpenFheCiphertext, k: i64) -> BResult<OpenFheCiphertext> {
        Ok(self.wrap(self.0.ctx.mul_integer(&a.raw, k)?, a.meta.scale))
    }
    fn mul(&self, a: &OpenFheCiphertext, b: &OpenFheCiphertext) -> BResult<OpenFheCiphertext> {
        let m = a.meta.mul("mul", b.meta)?;
        Ok(self.wrap(self.0.ctx.mul(&a.raw, &b.raw)?, m.scale))
    }
    fn square(&self, a: &OpenFheCiphertext) -> BResult<OpenFheCiphertext> {
        let m = a.meta.mul("square", a.meta)?;
        Ok(self.wrap(self.0.ctx.square(&a.raw)?, m.scale))
    }
    fn rescale(&self, a: &OpenFheCiphertext) -> BResult<OpenFheCiphertext> {
        let m = a.meta.rescale(self.modulus(a.meta.level))?;
        Ok(self.wrap(self.0.ctx.rescale(&a.raw)?, m.scale))
    }
    fn drop_to_level(&self, a: &OpenFheCiphertext, level: usize) -> BResult<OpenFheCiphertext> {
        let m = a.meta.drop_to(level)?;
        if level == a.meta.level {
            return Ok(a.clone());
        }
        Ok(self.wrap(self.0.ctx.drop_to_level(&a.raw, level + self.0.reserved)?, m.scale))
    }
    fn rotate(&self, a: &OpenFheCiphertext, step: i64) -> BResult<OpenFheCiphertext> {
        let s = self.check_rotation(step)?;
        if s == 0 {
            return Ok(a.clone());
        }
        Ok(self.wrap(self.0.ctx.rotate(&a.raw, s as i32)?, a.meta.scale))
    }
    fn rotate_many(&self, a: &OpenFheCiphertext, steps: &[i64]) -> BResult<Vec<OpenFheCiphertext>> {
        let s: Vec<i32> = steps.iter().map(|&x| self.check_rotation(x).map(|v| v as i32)).collect::<BResult<_>>()?;
        Ok(self.0.ctx.rotate_many(&a.raw, &s)?.into_iter().map(|r| self.wrap(r, a.meta.scale)).collect())
    }
    fn bootstrap(&self, a: &OpenFheCiphertext) -> BResult<OpenFheCiphertext> {
        bootstrap_allowed(self.0.params.bootstrap, self.0.bootstrap_keys)?;
        // OpenFHE reads the message m = value·scale at its own scale Δ = 2^log_scale, refreshes
        // m/Δ (which must lie in [−1, 1]) and returns it at scale Δ: the integer message, hence
        // the caller's scale, is kept.
        let range = self.0.params.bootstrap_range;
        if range <= 1.0 {
            return Ok(self.wrap(self.0.ctx.bootstrap(&a.raw)?, a.meta.scale));
        }
        // Wider inputs: multiply by 1/R on the second reserved modulus, bootstrap, multiply by
        // the integer R (no level). The bootstrap error grows by R.
        let r = range.ceil() as i64;
        let base = self.0.reserved;
        let low = self.0.ctx.drop_to_level(&a.raw, base)?;
        let q = self.0.moduli[base];
        let shrunk = self.0.ctx.rescale(&self.0.ctx.mul_scalar(&low, 1.0 / r as f64, q)?)?;
        let out = self.0.ctx.mul_integer(&self.0.ctx.bootstrap(&shrunk)?, r)?;
        let scale = a.meta.scale * ((q / r as f64).round() * r as f64 / q);
        Ok(self.wrap(out, scale))
    }
    fn serialize_ciphertext(&self, ct: &OpenFheCiphertext) -> BResult<Vec<u8>> {
        self.0.serialize(ct)
    }
    fn deserialize_ciphertext(&self, bytes: &[u8]) -> BResult<OpenFheCiphertext> {
        self.0.deserialize(bytes)
    }
}
