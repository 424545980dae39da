//! The `ckks` backend behind Peregrine's [`Scheme`] / [`Client`] / [`Backend`] interface.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

use rand::Rng;
use rayon::prelude::*;

use peregrine_backend::{
    meta_accessors, rotation_key, BResult, Backend, BackendError, Capabilities, ChainRequest, Client, CtMeta, HasMeta,
    KeyRequest, Scheme,
};

use crate::bootstrap::{BootPlan, Bootstrapper};
use crate::context::{gaussian, os_rng, os_seed, ternary, Context};
use crate::eval::{Ciphertext, Plaintext};
use crate::keys::{
    galois_element, galois_inverse, EncapsulationKeys, EvaluationKeys, RotationKey, SecretKey, SwitchKey,
};
use crate::params::CkksParams;
use crate::serial;

/// Tunes glibc's allocator for CKKS workloads: buffers of tens of MiB are allocated and freed
/// for every operation; by default glibc maps and unmaps each (a page fault per 4 KiB on
/// every use). Raising the mmap and trim thresholds keeps them in the heap. Called once when
/// the first context is built; harmless elsewhere (a no-op off glibc).
pub fn tune_allocator() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: mallopt only changes allocator thresholds; it is safe to call at any time.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
            libc::mallopt(libc::M_TOP_PAD, 64 << 20);
        }
    });
}

/// The smallest scale (bits) [`CkksScheme::sized_for_levels`] trades for cheaper key switching:
/// about 17 bits of precision after a rotation at N = 2^16 (measured by the `measure` example),
/// enough for the logits of a 39-level ResNet-20 to agree with the cleartext ones to ~1e-4.
pub const SIZED_MIN_LOG_SCALE: u32 = 33;

/// The smallest scale (bits) [`CkksScheme::with_chain`] goes down to: about 7 bits above a
/// rescale's rounding error at N = 2^15 (2^12.9).
pub const TOWER_MIN_LOG_SCALE: u32 = 20;

/// The shared context of `params`, built once per process and parameter set.
pub fn context(params: &CkksParams) -> BResult<Arc<Context>> {
    tune_allocator();
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<Context>>>> = OnceLock::new();
    let key = serde_json::to_string(params).expect("parameters serialise");
    let cache = CACHE.get_or_init(Default::default);
    if let Some(c) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return Ok(c.clone());
    }
    let ctx = Arc::new(Context::new(params)?);
    if ctx.chain.security_bits.is_none() {
        eprintln!(
            "WARNING: ckks parameters N = 2^{}, log2(Q·P) = {:.0} are NOT 128-bit secure (insecure_test_only): use them for tests only",
            params.log_ring_dimension, ctx.chain.log_qp
        );
    }
    cache.lock().unwrap_or_else(|p| p.into_inner()).insert(key, ctx.clone());
    Ok(ctx)
}

/// What these parameters offer.
pub fn capabilities_of(ctx: &Context) -> Capabilities {
    let n = ctx.n() as f64;
    // The client encrypts with its secret key (fresh noise ≈ 3.2·√N in the canonical
    // embedding); a rescale's rounding, ≈ √(N(1 + 2N/3)/12) for a ternary secret, dominates.
    let noise = (3.2 * n.sqrt()).max((n * (1.0 + 2.0 * n / 3.0) / 12.0).sqrt());
    Capabilities {
        backend: CkksScheme::NAME.into(),
        ring_dimension: ctx.n(),
        slots: ctx.chain.slots,
        max_level: ctx.max_level(),
        log_scale: ctx.params.log_scale as f64,
        log_moduli: ctx.chain.q[..=ctx.max_level()].iter().map(|&q| (q as f64).log2()).collect(),
        can_bootstrap: ctx.params.bootstrap.is_some(),
        bootstrap_level: ctx.params.bootstrap.as_ref().map(|_| ctx.max_level()),
        bootstrap_range: ctx.params.bootstrap.as_ref().map(|b| b.range),
        precision_bits: (ctx.params.log_scale as f64 - noise.log2()).max(0.0),
        security_bits: ctx.chain.security_bits,
        log_qp: Some(ctx.chain.log_qp),
        costs: Some(crate::cost::cached(ctx)),
    }
}

/// Parameters with bootstrapping for a computation of `levels` levels: q_0 as small as the
/// range allows (precision), then for 5–7 key-switching digits (or the given count) the most
/// computation levels up to `levels` that stay 128-bit secure. The most levels win (each
/// level fewer between bootstraps can add a bootstrap, which costs far more than the
/// computation it serves); among equals, the least key-switching work (digits × primes).
fn sized_for_bootstrapping(
    params: &CkksParams,
    b: &crate::params::BootstrapParams,
    levels: usize,
) -> Option<CkksParams> {
    let first_modulus_bits = params.log_scale + (b.min_log_ratio() + b.range.log2().max(0.0)).ceil() as u32;
    let options: Vec<usize> = if params.digits > 0 { vec![params.digits] } else { vec![5, 6, 7] };
    options
        .into_iter()
        .filter_map(|digits| {
            (1..=levels.max(1)).rev().find_map(|l| {
                let p = CkksParams { levels: l, digits, first_modulus_bits, ..params.clone() };
                let chain = p.chain().ok()?;
                let work = digits * (chain.q.len() + chain.p.len());
                Some(((std::cmp::Reverse(l), work), p))
            })
        })
        .min_by_key(|(key, _)| *key)
        .map(|(_, p)| p)
}

/// `ckks`: the scheme.
#[derive(Debug, Clone, Copy, Default)]
pub struct CkksScheme;

/// The client: secret key, public key, and the evaluation keys it generated.
pub struct CkksClient {
    ctx: Arc<Context>,
    sk: SecretKey,
    pk: (Vec<u64>, Vec<u64>),
    key_id: u64,
    keys: Option<Arc<EvaluationKeys>>,
    caps: Capabilities,
}

/// The server: evaluation keys only.
pub struct CkksServer {
    pub(crate) ctx: Arc<Context>,
    pub(crate) keys: Arc<EvaluationKeys>,
    /// The rotation steps callers can use (keys below the slot count; sparse-slot
    /// bootstrapping's own steps may reach N/2).
    steps: BTreeSet<i64>,
    caps: Capabilities,
    /// Bootstrapping's encoded plaintexts, built at the first bootstrap.
    boot: OnceLock<Arc<Bootstrapper>>,
}

impl std::fmt::Debug for CkksServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CkksServer({:?}, {} rotation keys)", self.ctx, self.keys.rotations.len())
    }
}

fn public_key(ctx: &Context, sk: &SecretKey, rng: &mut impl Rng) -> (Vec<u64>, Vec<u64>) {
    let n = ctx.n();
    let basis: Vec<usize> = (0..=ctx.top_level()).collect();
    let a = ctx.uniform(&os_seed(), 0, &basis);
    let mut b = ctx.lift(&gaussian(rng, n), &basis);
    b.par_chunks_mut(n).enumerate().for_each(|(i, limb)| {
        let m = ctx.q(i);
        let s = sk.limb(n, i);
        for c in 0..n {
            limb[c] = m.sub(limb[c], m.mul(a[i * n + c], s[c]));
        }
    });
    (b, a)
}

impl CkksClient {
    /// Generates a secret key and the evaluation keys `request` asks for (a relinearisation key
    /// always; a rotation key per requested step; `conjugation` adds X → X^-1).
    pub fn generate(ctx: Arc<Context>, request: &KeyRequest, conjugation: bool) -> BResult<Self> {
        let boot_plan = if request.bootstrap {
            if ctx.params.bootstrap.is_none() {
                return Err(BackendError::BootstrapUnsupported);
            }
            Some(BootPlan::new(&ctx)?)
        } else {
            None
        };
        let mut rng = os_rng();
        let sk = SecretKey::generate(&ctx, &mut rng);
        let key_id: u64 = rng.gen();
        let seed = os_seed();
        let top = ctx.top_level();
        let n = ctx.n();
        let two_n = 2 * n as u64;
        // s² for relinearisation.
        let mut s2 = vec![0u64; sk.ntt.len()];
        s2.par_chunks_mut(n).enumerate().for_each(|(i, o)| {
            ctx.ring.mul_acc(o, sk.limb(n, i), sk.limb(n, i), i);
        });
        let relin_level = boot_plan.as_ref().map_or(top, |p| p.eval_level);
        let relin = Some(SwitchKey::generate(&ctx, &sk.ntt, &s2, relin_level, seed, 0, &mut rng));
        let slots = ctx.chain.slots;
        // Each rotation key serves the levels the plan uses it at (smaller keys at low levels).
        let mut steps: BTreeMap<i64, usize> = BTreeMap::new();
        for &s in &request.rotations {
            let norm = s.rem_euclid(slots as i64);
            if norm == 0 {
                continue;
            }
            let level = request
                .rotation_levels
                .get(&s)
                .or(request.rotation_levels.get(&norm))
                .copied()
                .unwrap_or(ctx.max_level());
            let e = steps.entry(norm).or_default();
            *e = (*e).max(level.min(top));
        }
        if let Some(plan) = &boot_plan {
            for (s, level) in plan.rotations() {
                let e = steps.entry(s).or_default();
                *e = (*e).max(level);
            }
        }
        let rotation = |galois: u64, stream: u64, level: usize, rng: &mut rand_chacha::ChaCha20Rng| {
            // The key switches s to σ_g⁻¹(s), so that σ_g is applied after the key switch.
            let target = ctx.ring.automorphism_ntt(&sk.ntt, galois_inverse(galois, two_n));
            RotationKey { galois, key: SwitchKey::generate(&ctx, &target, &sk.ntt, level, seed, stream, rng) }
        };
        let mut rotations = BTreeMap::new();
        for (k, (&step, &level)) in steps.iter().enumerate() {
            let g = galois_element(step, ctx.n() / 2, two_n);
            rotations.insert(step, rotation(g, 2 + k as u64, level, &mut rng));
        }
        let conjugation_level =
            boot_plan.as_ref().map(|p| p.eval_level).into_iter().chain(conjugation.then_some(top)).max();
        let conjugation = conjugation_level.map(|level| rotation(two_n - 1, 1, level, &mut rng));
        // Encapsulation: a sparse secret s' known only through these two keys.
        let encapsulation = boot_plan.as_ref().map(|plan| {
            let sparse = SecretKey::from_coeffs(&ctx, ternary(&mut rng, n, plan.params.secret_hamming_weight));
            EncapsulationKeys {
                to_sparse: SwitchKey::generate(&ctx, &sparse.ntt, &sk.ntt, 0, seed, 1 << 40, &mut rng),
                from_sparse: SwitchKey::generate(&ctx, &sk.ntt, &sparse.ntt, top, seed, (1 << 40) + 1, &mut rng),
            }
        });
        let keys = EvaluationKeys { key_id, relin, rotations, conjugation, encapsulation };
        let pk = public_key(&ctx, &sk, &mut rng);
        let caps = capabilities_of(&ctx);
        Ok(CkksClient { ctx, sk, pk, key_id, keys: Some(Arc::new(keys)), caps })
    }

    /// The parameter context.
    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// The secret key (crate-internal: tests look inside a bootstrap with it).
    #[cfg(test)]
    pub(crate) fn secret(&self) -> &SecretKey {
        &self.sk
    }

    /// The generated evaluation keys (None for a client loaded from a saved secret).
    pub fn keys(&self) -> Option<&Arc<EvaluationKeys>> {
        self.keys.as_ref()
    }

    /// Public-key encryption (anyone holding the public key can encrypt for this client).
    pub fn encrypt_public(&self, pt: &Plaintext) -> BResult<Ciphertext> {
        let (c0, c1) = self.ctx.encrypt_pk(&self.pk, &pt.poly, pt.meta.level, &mut os_rng());
        Ok(Ciphertext { c0, c1, meta: pt.meta, key_id: self.key_id, seed: None })
    }

    fn check(&self, op: &'static str, ct: &Ciphertext) -> BResult<()> {
        if ct.key_id != self.key_id {
            return Err(BackendError::WrongKey { op });
        }
        Ok(())
    }
}

fn encode(ctx: &Context, caps: &Capabilities, values: &[f64], level: usize, scale: f64) -> BResult<Plaintext> {
    let meta = CtMeta::encode(values, level, scale, caps)?;
    Ok(Plaintext { poly: ctx.encode(values, level, scale)?, meta })
}

impl Client for CkksClient {
    type Backend = CkksServer;
    fn capabilities(&self) -> Capabilities {
        self.caps.clone()
    }
    fn encode(&self, values: &[f64], level: usize, scale: f64) -> BResult<Plaintext> {
        encode(&self.ctx, &self.caps, values, level, scale)
    }
    fn encrypt(&self, pt: &Plaintext) -> BResult<Ciphertext> {
        let (c0, c1, seed) = self.ctx.encrypt_sk(&self.sk, &pt.poly, pt.meta.level, &mut os_rng());
        Ok(Ciphertext { c0, c1, meta: pt.meta, key_id: self.key_id, seed: Some(seed) })
    }
    fn decrypt(&self, ct: &Ciphertext) -> BResult<Plaintext> {
        self.check("decrypt", ct)?;
        Ok(Plaintext { poly: self.ctx.decrypt(&self.sk, &ct.c0, &ct.c1), meta: ct.meta })
    }
    fn decode(&self, pt: &Plaintext) -> BResult<Vec<f64>> {
        Ok(self.ctx.decode(&pt.poly, pt.meta.level, pt.meta.scale))
    }
    fn evaluation_keys(&self) -> BResult<Vec<u8>> {
        let mut out = Vec::new();
        self.write_evaluation_keys(&mut out)?;
        Ok(out)
    }
    fn write_evaluation_keys(&self, out: &mut dyn std::io::Write) -> BResult<()> {
        let keys = self.keys.as_ref().ok_or(BackendError::Unsupported {
            backend: "ckks".into(),
            what: "give evaluation keys from a client loaded from its secret (they stay with the server)",
        })?;
        serial::write_keys(&self.ctx, keys, out).map_err(|e| BackendError::io("writing evaluation keys", &e))
    }
    fn serialize_ciphertext(&self, ct: &Ciphertext) -> BResult<Vec<u8>> {
        Ok(serial::write_ciphertext(&self.ctx, ct))
    }
    fn deserialize_ciphertext(&self, bytes: &[u8]) -> BResult<Ciphertext> {
        serial::read_ciphertext(&self.ctx, bytes)
    }
    fn save_secret(&self) -> BResult<Vec<u8>> {
        Ok(serial::write_secret(&self.ctx, self.key_id, &self.sk))
    }
    fn local_server(&self) -> BResult<Option<CkksServer>> {
        Ok(self.keys.as_ref().map(|keys| CkksServer::new(self.ctx.clone(), keys.clone())))
    }
}

impl CkksServer {
    /// A server for `keys` under `ctx`.
    pub fn new(ctx: Arc<Context>, keys: Arc<EvaluationKeys>) -> Self {
        let steps = keys.rotations.keys().copied().filter(|&s| s < ctx.chain.slots as i64).collect();
        let caps = capabilities_of(&ctx);
        CkksServer { ctx, keys, steps, caps, boot: OnceLock::new() }
    }

    /// The parameter context.
    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// The evaluation keys.
    pub fn keys(&self) -> &EvaluationKeys {
        &self.keys
    }

    /// Bootstrapping's plan and encoded plaintexts (built once, at the first call).
    pub fn bootstrapper(&self) -> BResult<Arc<Bootstrapper>> {
        if let Some(b) = self.boot.get() {
            return Ok(b.clone());
        }
        let b = Arc::new(Bootstrapper::new(&self.ctx)?);
        Ok(self.boot.get_or_init(|| b).clone())
    }

    fn check(&self, op: &'static str, ct: &Ciphertext) -> BResult<()> {
        if ct.key_id != self.keys.key_id {
            return Err(BackendError::WrongKey { op });
        }
        Ok(())
    }

    /// The key of normalised step `s` (present), if it serves `level`.
    pub(crate) fn rotation(&self, s: i64, level: usize) -> BResult<&RotationKey> {
        let rk = self.keys.rotations.get(&s).ok_or(BackendError::MissingRotationKey(s))?;
        if level > rk.key.max_level {
            return Err(BackendError::OutOfRange {
                op: "rotate",
                detail: format!(
                    "the rotation key for step {s} was generated for levels up to {}, the ciphertext is at level {level}",
                    rk.key.max_level
                ),
            });
        }
        Ok(rk)
    }

    /// Rotations of `a` by key steps (in 0..N/2, 0 = none), one decomposition of c1 shared.
    pub(crate) fn rotate_many_keyed(&self, a: &Ciphertext, steps: &[i64]) -> BResult<Vec<Ciphertext>> {
        let l = a.level();
        let digits = if steps.iter().filter(|&&s| s != 0).count() > 1 { Some(self.ctx.mod_up(&a.c1, l)) } else { None };
        steps
            .iter()
            .map(|&s| {
                if s == 0 {
                    return Ok(a.clone());
                }
                let rk = self.rotation(s, l)?;
                let u = match &digits {
                    Some(d) => self.ctx.switch_decomposed(d, &rk.key, l),
                    None => self.ctx.key_switch(&a.c1, &rk.key, l),
                };
                Ok(self.make(self.ctx.finish_rotation(&a.c0, u, rk.galois), a.meta))
            })
            .collect()
    }

    /// Σ rot(ct, step) over terms of one level and scale, steps as key steps (0 = none),
    /// with one ModDown.
    pub(crate) fn rotate_sum_keyed(&self, terms: &[(&Ciphertext, i64)]) -> BResult<Ciphertext> {
        let Some(((a, _), rest)) = terms.split_first() else {
            return Err(BackendError::OutOfRange { op: "rotate_sum", detail: "no terms".into() });
        };
        for (b, _) in rest {
            self.check("rotate_sum", b)?;
            a.meta.add("rotate_sum", b.meta)?;
        }
        let l = a.level();
        let parts = terms
            .iter()
            .map(|&(ct, s)| Ok((ct, if s == 0 { None } else { Some(self.rotation(s, l)?) })))
            .collect::<BResult<Vec<_>>>()?;
        let parts: Vec<_> = parts.iter().map(|(ct, rk)| (*ct, rk.map(|rk| (&rk.key, rk.galois)))).collect();
        Ok(self.make(self.ctx.rotate_sum(&parts, l), a.meta))
    }

    /// `a` at `level`: itself if it is there already (no copy), else its lower limbs.
    pub(crate) fn at_level<'a>(&self, a: &'a Ciphertext, level: usize) -> BResult<std::borrow::Cow<'a, Ciphertext>> {
        Ok(if a.level() == level {
            std::borrow::Cow::Borrowed(a)
        } else {
            std::borrow::Cow::Owned(self.drop_to_level(a, level)?)
        })
    }

    /// [`Backend::rescale`] reusing a's buffers (no copy).
    pub(crate) fn rescale_owned(&self, mut a: Ciphertext) -> BResult<Ciphertext> {
        self.check("rescale", &a)?;
        let l = a.level();
        a.meta = a.meta.rescale(self.modulus(l))?;
        let (c0, c1) = (&mut a.c0, &mut a.c1);
        rayon::join(|| self.ctx.rescale_in_place(c0, l), || self.ctx.rescale_in_place(c1, l));
        Ok(a)
    }

    /// Σ_i a_i·b_i with one relinearisation (every product at one level and one scale).
    pub(crate) fn mul_sum(&self, pairs: &[(&Ciphertext, &Ciphertext)]) -> BResult<Ciphertext> {
        let Some(((a, b), rest)) = pairs.split_first() else {
            return Err(BackendError::OutOfRange { op: "mul_sum", detail: "no products".into() });
        };
        self.check("mul", a)?;
        self.check("mul", b)?;
        let meta = a.meta.mul("mul", b.meta)?;
        for (x, y) in rest {
            self.check("mul", x)?;
            self.check("mul", y)?;
            meta.add("mul_sum", x.meta.mul("mul", y.meta)?)?;
        }
        let key = self.keys.relin.as_ref().ok_or(BackendError::Unsupported {
            backend: "ckks".into(),
            what: "multiply ciphertexts without a relinearisation key",
        })?;
        Ok(self.make(self.ctx.relinearise(self.ctx.tensor_sum(pairs), key, a.level()), meta))
    }

    /// `a −= b` in place (same level and scale).
    pub(crate) fn sub_assign(&self, a: &mut Ciphertext, b: &Ciphertext) -> BResult<()> {
        self.combine_assign("sub", a, b, true)
    }

    /// `a += b` in place (same level and scale).
    pub(crate) fn add_assign(&self, a: &mut Ciphertext, b: &Ciphertext) -> BResult<()> {
        self.combine_assign("add", a, b, false)
    }

    /// `a ± b` in place, after the same checks as [`Backend::add`].
    fn combine_assign(&self, op: &'static str, a: &mut Ciphertext, b: &Ciphertext, subtract: bool) -> BResult<()> {
        self.check(op, a)?;
        self.check(op, b)?;
        a.meta = a.meta.add(op, b.meta)?;
        for (x, y) in [(&mut a.c0, &b.c0), (&mut a.c1, &b.c1)] {
            if subtract {
                self.ctx.sub_assign(x, y);
            } else {
                self.ctx.add_assign(x, y);
            }
        }
        Ok(())
    }

    /// `a += c` in place for a constant c at a's scale.
    pub(crate) fn add_scalar_assign(&self, a: &mut Ciphertext, c: f64) -> BResult<()> {
        self.check("add_scalar", a)?;
        a.meta = a.meta.add_scalar(c)?;
        let k = self.ctx.constant("add_scalar", c, a.meta.scale, a.level())?;
        self.ctx.add_const_assign(&mut a.c0, k);
        Ok(())
    }

    /// c · a read at `level` (a's limbs above it ignored), c encoded at `scale`, added to `acc`
    /// (same level and resulting scale) in one pass, or made a new ciphertext when `acc` is
    /// `None`.
    pub(crate) fn mul_scalar_add_at(
        &self,
        acc: Option<Ciphertext>,
        a: &Ciphertext,
        level: usize,
        c: f64,
        scale: f64,
    ) -> BResult<Ciphertext> {
        self.check("mul_scalar", a)?;
        let meta = a.meta.drop_to(level)?.mul_scalar(c, scale)?;
        let k = self.ctx.constant("mul_scalar", c, scale, level)?;
        let len = (level + 1) * self.ctx.n();
        match acc {
            None => {
                let (mut c0, mut c1) = (a.c0[..len].to_vec(), a.c1[..len].to_vec());
                self.ctx.mul_const_assign(&mut c0, k);
                self.ctx.mul_const_assign(&mut c1, k);
                Ok(self.make((c0, c1), meta))
            }
            Some(mut acc) => {
                self.check("mul_scalar", &acc)?;
                acc.meta = acc.meta.add("mul_scalar", meta)?;
                let (a0, a1) = (&mut acc.c0, &mut acc.c1);
                rayon::join(
                    || self.ctx.mul_const_add_assign(a0, &a.c0, k),
                    || self.ctx.mul_const_add_assign(a1, &a.c1, k),
                );
                Ok(acc)
            }
        }
    }

    pub(crate) fn make(&self, (c0, c1): (Vec<u64>, Vec<u64>), meta: CtMeta) -> Ciphertext {
        Ciphertext { c0, c1, meta, key_id: self.keys.key_id, seed: None }
    }

    /// Complex conjugation of the slots (needs the conjugation key).
    pub fn conjugate(&self, a: &Ciphertext) -> BResult<Ciphertext> {
        self.check("conjugate", a)?;
        let rk = self
            .keys
            .conjugation
            .as_ref()
            .ok_or(BackendError::Unsupported { backend: "ckks".into(), what: "conjugate without a conjugation key" })?;
        let l = a.level();
        let u = self.ctx.key_switch(&a.c1, &rk.key, l);
        Ok(self.make(self.ctx.finish_rotation(&a.c0, u, rk.galois), a.meta))
    }
}

impl Backend for CkksServer {
    type Ciphertext = Ciphertext;
    type Plaintext = Plaintext;
    meta_accessors!();

    fn capabilities(&self) -> Capabilities {
        self.caps.clone()
    }
    fn rotation_steps(&self) -> BTreeSet<i64> {
        self.steps.clone()
    }
    fn modulus(&self, level: usize) -> f64 {
        self.ctx.chain.q.get(level).map_or(f64::NAN, |&q| q as f64)
    }
    fn encode(&self, values: &[f64], level: usize, scale: f64) -> BResult<Plaintext> {
        encode(&self.ctx, &self.caps, values, level, scale)
    }
    fn add(&self, a: &Ciphertext, b: &Ciphertext) -> BResult<Ciphertext> {
        self.check("add", a)?;
        self.check("add", b)?;
        let meta = a.meta.add("add", b.meta)?;
        Ok(self.make(self.ctx.add(a, b), meta))
    }
    fn sub(&self, a: &Ciphertext, b: &Ciphertext) -> BResult<Ciphertext> {
        self.check("sub", a)?;
        self.check("sub", b)?;
        let meta = a.meta.add("sub", b.meta)?;
        Ok(self.make(self.ctx.sub(a, b), meta))
    }
    fn negate(&self, a: &Ciphertext) -> BResult<Ciphertext> {
        self.check("negate", a)?;
        Ok(self.make(self.ctx.negate(a), a.meta))
    }
    fn add_plain(&self, a: &Ciphertext, p: &Plaintext) -> BResult<Ciphertext> {
        self.check("add_plain", a)?;
        let meta = a.meta.add("add_plain", p.meta())?;
        Ok(self.make((self.ctx.add_plain(a, &p.poly, false), a.c1.clone()), meta))
    }
    fn sub_plain(&self, a: &Ciphertext, p: &Plaintext) -> BResult<Ciphertext> {
        self.check("sub_plain", a)?;
        let meta = a.meta.add("sub_plain", p.meta())?;
        Ok(self.make((self.ctx.add_plain(a, &p.poly, true), a.c1.clone()), meta))
    }
    fn mul_plain(&self, a: &Ciphertext, p: &Plaintext) -> BResult<Ciphertext> {
        self.check("mul_plain", a)?;
        let meta = a.meta.mul("mul_plain", p.meta())?;
        Ok(self.make(self.ctx.mul_plain(a, &p.poly), meta))
    }
    fn mul_plain_sum(&self, terms: &[(&Ciphertext, &Plaintext)]) -> BResult<Ciphertext> {
        let Some(((a, p), rest)) = terms.split_first() else {
            return Err(BackendError::OutOfRange { op: "mul_plain_sum", detail: "no terms".into() });
        };
        self.check("mul_plain_sum", a)?;
        let meta = a.meta.mul("mul_plain_sum", p.meta())?;
        for (b, q) in rest {
            self.check("mul_plain_sum", b)?;
            meta.add("mul_plain_sum", b.meta.mul("mul_plain_sum", q.meta())?)?;
        }
        let pairs: Vec<(&Ciphertext, &[u64])> = terms.iter().map(|(c, p)| (*c, p.poly.as_slice())).collect();
        Ok(self.make(self.ctx.mul_plain_sum(&pairs), meta))
    }
    fn add_scalar(&self, a: &Ciphertext, c: f64) -> BResult<Ciphertext> {
        self.check("add_scalar", a)?;
        let meta = a.meta.add_scalar(c)?;
        let k = self.ctx.constant("add_scalar", c, a.meta.scale, a.level())?;
        Ok(self.make((self.ctx.add_const(a, k), a.c1.clone()), meta))
    }
    fn mul_scalar(&self, a: &Ciphertext, c: f64, scale: f64) -> BResult<Ciphertext> {
        self.check("mul_scalar", a)?;
        let meta = a.meta.mul_scalar(c, scale)?;
        let k = self.ctx.constant("mul_scalar", c, scale, a.level())?;
        Ok(self.make(self.ctx.mul_const(a, k), meta))
    }
    fn mul_integer(&self, a: &Ciphertext, k: i64) -> BResult<Ciphertext> {
        self.check("mul_integer", a)?;
        Ok(self.make(self.ctx.mul_const(a, k as i128), a.meta))
    }
    fn mul(&self, a: &Ciphertext, b: &Ciphertext) -> BResult<Ciphertext> {
        self.mul_sum(&[(a, b)])
    }
    fn rescale(&self, a: &Ciphertext) -> BResult<Ciphertext> {
        self.check("rescale", a)?;
        let l = a.level();
        let meta = a.meta.rescale(self.modulus(l))?;
        let (c0, c1) = rayon::join(|| self.ctx.rescale_poly(&a.c0, l), || self.ctx.rescale_poly(&a.c1, l));
        Ok(self.make((c0, c1), meta))
    }
    fn drop_to_level(&self, a: &Ciphertext, level: usize) -> BResult<Ciphertext> {
        self.check("drop_to_level", a)?;
        let meta = a.meta.drop_to(level)?;
        Ok(self.make((self.ctx.drop_poly(&a.c0, level), self.ctx.drop_poly(&a.c1, level)), meta))
    }
    fn rotate(&self, a: &Ciphertext, step: i64) -> BResult<Ciphertext> {
        self.check("rotate", a)?;
        let s = rotation_key(step, self.caps.slots, &self.steps)?;
        if s == 0 {
            return Ok(a.clone());
        }
        let rk = self.rotation(s, a.level())?;
        let l = a.level();
        let u = self.ctx.key_switch(&a.c1, &rk.key, l);
        Ok(self.make(self.ctx.finish_rotation(&a.c0, u, rk.galois), a.meta))
    }
    fn rotate_many(&self, a: &Ciphertext, steps: &[i64]) -> BResult<Vec<Ciphertext>> {
        self.check("rotate_many", a)?;
        // Hoisting: one decomposition of c1 serves every rotation.
        let norm: Vec<i64> =
            steps.iter().map(|&s| rotation_key(s, self.caps.slots, &self.steps)).collect::<BResult<_>>()?;
        self.rotate_many_keyed(a, &norm)
    }
    fn rotate_sum(&self, terms: &[(&Ciphertext, i64)]) -> BResult<Ciphertext> {
        if let Some((a, _)) = terms.first() {
            self.check("rotate_sum", a)?;
        }
        let keyed = terms
            .iter()
            .map(|&(ct, step)| Ok((ct, rotation_key(step, self.caps.slots, &self.steps)?)))
            .collect::<BResult<Vec<_>>>()?;
        self.rotate_sum_keyed(&keyed)
    }
    fn bootstrap(&self, a: &Ciphertext) -> BResult<Ciphertext> {
        self.checked_bootstrap(a, 1)
    }
    /// Multiplies the input by g = ⌊R / range⌋ (R: the parameters' bootstrap range) before
    /// ModRaise and divides by g in the last SlotsToCoeffs map: a tensor known to stay within
    /// a smaller range gets about log2(g) more bits from the same parameters.
    fn bootstrap_within(&self, a: &Ciphertext, range: f64) -> BResult<Ciphertext> {
        if !(range.is_finite() && range > 0.0) {
            return Err(BackendError::OutOfRange {
                op: "bootstrap",
                detail: format!("a bootstrap range must be positive and finite, got {range}"),
            });
        }
        let full = self.ctx.params.bootstrap.as_ref().map_or(1.0, |b| b.range);
        let gain = (full / range).floor().clamp(1.0, MAX_RANGE_GAIN as f64) as u64;
        self.checked_bootstrap(a, gain)
    }
    fn serialize_ciphertext(&self, ct: &Ciphertext) -> BResult<Vec<u8>> {
        Ok(serial::write_ciphertext(&self.ctx, ct))
    }
    fn deserialize_ciphertext(&self, bytes: &[u8]) -> BResult<Ciphertext> {
        let ct = serial::read_ciphertext(&self.ctx, bytes)?;
        self.check("deserialize_ciphertext", &ct)?;
        Ok(ct)
    }
}

/// The largest integer a bootstrap input is multiplied by for a small range (beyond it the
/// input's own noise, multiplied alike, dominates anyway).
pub const MAX_RANGE_GAIN: u64 = 1 << 16;

impl CkksServer {
    /// [`Backend::bootstrap`] with the input multiplied by `gain` first (see
    /// [`CkksServer::run_bootstrap`]).
    fn checked_bootstrap(&self, a: &Ciphertext, gain: u64) -> BResult<Ciphertext> {
        self.check("bootstrap", a)?;
        peregrine_backend::bootstrap_allowed(self.ctx.params.bootstrap.is_some(), self.keys.encapsulation.is_some())?;
        if a.level() != 0 {
            return Err(BackendError::OutOfRange {
                op: "bootstrap",
                detail: format!(
                    "the input must be at level 0 (drop it there first: its levels above would be wasted), it is at level {}",
                    a.level()
                ),
            });
        }
        let boot = self.bootstrapper()?;
        self.run_bootstrap(a, &boot, gain)
    }
}

impl Scheme for CkksScheme {
    const NAME: &'static str = "ckks";
    const DESCRIPTION: &'static str =
        "Peregrine's own pure-Rust RNS-CKKS (tfhe-ntt NTTs, hybrid key switching, hoisted rotations)";
    type Params = CkksParams;
    type Client = CkksClient;
    type Server = CkksServer;

    fn capabilities(params: &CkksParams) -> BResult<Capabilities> {
        let ctx = context(params)?;
        Ok(capabilities_of(&ctx))
    }
    fn keygen(params: &CkksParams, request: &KeyRequest) -> BResult<CkksClient> {
        CkksClient::generate(context(params)?, request, false)
    }
    fn server(evaluation_keys: &[u8]) -> BResult<CkksServer> {
        let (ctx, keys) = serial::read_keys(evaluation_keys)?;
        Ok(CkksServer::new(ctx, Arc::new(keys)))
    }
    fn server_from_file(path: &std::path::Path) -> BResult<CkksServer> {
        let what = || format!("reading evaluation keys {}", path.display());
        let file = std::fs::File::open(path).map_err(|e| BackendError::io(what(), &e))?;
        // SAFETY: the mapping is read-only and only read while this function runs; the file is
        // not modified by this process (a concurrent writer would only corrupt the bytes,
        // which the checksum then refuses).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| BackendError::io(what(), &e))?;
        Self::server(&map[..])
    }
    fn sized_for_levels(params: &CkksParams, levels: usize) -> Option<CkksParams> {
        if let Some(b) = &params.bootstrap {
            return sized_for_bootstrapping(params, b, levels);
        }
        // The smallest ring that fits; in it, the secure (scale, digits) pair whose key
        // switching costs least — cost and key size both grow with digits × (limbs of Q·P) —
        // among scales from the requested one down to SIZED_MIN_LOG_SCALE; a smaller scale is
        // taken only when it costs at least a tenth less than the best larger one. An
        // explicit `digits` is kept.
        for log_n in params.log_ring_dimension..=17 {
            let mut best: Option<(usize, CkksParams)> = None;
            for log_scale in (SIZED_MIN_LOG_SCALE.min(params.log_scale)..=params.log_scale).rev() {
                let p = CkksParams { log_ring_dimension: log_n, levels: levels.max(1), log_scale, ..params.clone() };
                if let Ok(chain) = p.chain() {
                    let cost = chain.digits * (chain.q.len() + chain.p.len());
                    // A smaller scale must save at least a tenth of the cost to be taken.
                    if best.as_ref().is_none_or(|(c, _)| 10 * cost < 9 * *c) {
                        best = Some((cost, p));
                    }
                }
            }
            if let Some((_, p)) = best {
                return Some(p);
            }
        }
        None
    }
    fn with_chain(params: &CkksParams, request: &ChainRequest) -> Option<CkksParams> {
        // The smallest secure ring, and in it the largest scale whose widest prime fits in 60
        // bits, down to 2^20 (two-product primes: Δ times a plaintext scale 2^4 below it);
        // q_0 holds the result with 12 bits above Δ. Insecure test parameters, and a ring the
        // request says to keep, stay as they are.
        let widest = *request.level_factors.iter().max()?;
        if params.bootstrap.is_some() || widest == 0 {
            return None;
        }
        let rings = if params.insecure_test_only || request.keep_ring {
            params.log_ring_dimension..=params.log_ring_dimension
        } else {
            request.min_log_ring.max(10)..=17
        };
        for log_n in rings {
            for log_scale in (TOWER_MIN_LOG_SCALE..=params.log_scale).rev() {
                let level_bits = request.level_bits(log_scale, ChainRequest::plaintext_bits(log_scale));
                if level_bits.iter().any(|&b| b > 60) {
                    continue;
                }
                let p = CkksParams {
                    log_ring_dimension: log_n,
                    levels: request.level_factors.len(),
                    log_scale,
                    level_bits,
                    first_modulus_bits: (log_scale + 12).min(61),
                    slots: if params.slots <= (1 << (log_n - 1)) { params.slots } else { 0 },
                    ..params.clone()
                };
                if p.chain().is_ok() {
                    return Some(p);
                }
            }
        }
        None
    }
    fn with_slots(params: &CkksParams, slots: usize) -> Option<CkksParams> {
        let sparse = CkksParams { slots, ..params.clone() };
        sparse.chain().ok()?;
        match &sparse.bootstrap {
            Some(b) if (slots.trailing_zeros() as usize) < b.min_log_slots() => None,
            _ => Some(sparse),
        }
    }
    fn with_bootstrap_range(params: &CkksParams, range: f64) -> Option<CkksParams> {
        let b = params.bootstrap.as_ref()?;
        if !(range.is_finite() && range > 0.0) {
            return None;
        }
        let b = crate::params::BootstrapParams { range, ..b.clone() };
        let ranged = CkksParams { bootstrap: Some(b.clone()), ..params.clone() };
        // q_0 just large enough for the range; a larger q_0 may cost a computation level
        // (security), a smaller one frees bits.
        sized_for_bootstrapping(&ranged, &b, params.levels)
    }
    /// CoeffsToSlots in 3 maps of 60-bit primes with a degree-31 cosine: one level more left
    /// than the default (9 at N = 2^16, Δ = 2^40) for a bootstrap about a fifth dearer.
    fn bootstrap_alternatives() -> Vec<serde_json::Value> {
        vec![serde_json::json!({"cts_levels": 3, "cts_bits": 60, "cos_degree": 31})]
    }
    fn load_client(secret: &[u8]) -> BResult<CkksClient> {
        let (ctx, key_id, sk) = serial::read_secret(secret)?;
        let pk = public_key(&ctx, &sk, &mut os_rng());
        let caps = capabilities_of(&ctx);
        Ok(CkksClient { ctx, sk, pk, key_id, keys: None, caps })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_key_is_wiped_in_place_before_its_memory_is_freed() {
        let p = CkksParams { log_ring_dimension: 10, levels: 2, insecure_test_only: true, ..CkksParams::default() };
        let ctx = context(&p).unwrap();
        let mut sk = SecretKey::generate(&ctx, &mut rand::thread_rng());
        assert!(sk.coeffs.iter().any(|&c| c != 0) && sk.ntt.iter().any(|&r| r != 0));
        sk.wipe(); // what `Drop` does
        assert!(sk.coeffs.iter().all(|&c| c == 0) && sk.ntt.iter().all(|&r| r == 0));
    }

    #[test]
    fn summed_products_and_in_place_steps_decrypt_like_their_separate_forms() {
        let p = CkksParams { log_ring_dimension: 10, levels: 4, insecure_test_only: true, ..CkksParams::default() };
        let client = CkksScheme::keygen(&p, &KeyRequest::default()).unwrap();
        let server = client.local_server().unwrap().unwrap();
        let slots = client.capabilities().slots;
        let scale = client.capabilities().default_scale();
        // Random values of an odd length (the rest of the slots zero).
        let len = slots - 37;
        let vals = |seed: u64| -> Vec<f64> {
            (0..len).map(|i| (((i as u64 * 7919 + seed * 104_729) % 2001) as f64 / 1000.0) - 1.0).collect()
        };
        let (va, vb, vc, vd) = (vals(1), vals(2), vals(3), vals(4));
        let enc = |v: &[f64]| client.encrypt(&client.encode(v, 4, scale).unwrap()).unwrap();
        let (a, b, c, d) = (enc(&va), enc(&vb), enc(&vc), enc(&vd));
        let dec = |ct: &Ciphertext| client.decode(&client.decrypt(ct).unwrap()).unwrap();
        let max_err = |got: &[f64], want: &dyn Fn(usize) -> f64| -> f64 {
            (0..len).map(|i| (got[i] - want(i)).abs()).fold(0.0, f64::max)
        };
        // a·b + c·d with one relinearisation, against the exact values and the separate form.
        let summed = server.rescale_owned(server.mul_sum(&[(&a, &b), (&c, &d)]).unwrap()).unwrap();
        let separate =
            server.rescale(&server.add(&server.mul(&a, &b).unwrap(), &server.mul(&c, &d).unwrap()).unwrap()).unwrap();
        let exact = |i: usize| va[i] * vb[i] + vc[i] * vd[i];
        let (e_sum, e_sep) = (max_err(&dec(&summed), &exact), max_err(&dec(&separate), &exact));
        eprintln!("a·b + c·d: summed {e_sum:.2e}, separate {e_sep:.2e}");
        assert!(e_sum < 1e-6 && e_sep < 1e-6);
        // a·b − c and + 0.25 in place; k·a + k'·b read at a lower level.
        let mut p2 = server.rescale_owned(server.mul(&a, &b).unwrap()).unwrap();
        assert!(max_err(&dec(&p2), &|i| va[i] * vb[i]) < 1e-6);
        let c3 = server.drop_to_level(&c, 3).unwrap();
        let c3 = Ciphertext { meta: CtMeta { scale: p2.meta.scale, ..c3.meta }, ..c3 };
        server.sub_assign(&mut p2, &c3).unwrap();
        server.add_scalar_assign(&mut p2, 0.25).unwrap();
        // c3's scale was relabelled: its values read as c·Δ/Δ' with Δ' the product's scale.
        let ratio = scale / p2.meta.scale;
        assert!(max_err(&dec(&p2), &|i| va[i] * vb[i] - vc[i] * ratio + 0.25) < 1e-6);
        let lin = server.mul_scalar_add_at(None, &a, 2, 0.5, scale).unwrap();
        let lin = server.mul_scalar_add_at(Some(lin), &b, 2, -1.5, scale).unwrap();
        assert_eq!(lin.level(), 2);
        let lin = server.rescale_owned(lin).unwrap();
        assert!(max_err(&dec(&lin), &|i| 0.5 * va[i] - 1.5 * vb[i]) < 1e-6);
        // Mismatched levels or scales are refused, not computed.
        assert!(server.mul_sum(&[(&a, &b), (&c3, &c3)]).is_err());
        assert!(server.mul_sum(&[]).is_err());
    }

    fn cost(p: &CkksParams) -> (usize, crate::params::Chain) {
        let chain = p.chain().expect("secure");
        (chain.digits * (chain.q.len() + chain.p.len()), chain)
    }

    #[test]
    fn sized_parameters_are_secure_and_trade_scale_only_for_cheaper_key_switching() {
        let base = CkksParams { log_scale: 36, ..CkksParams::default() };
        for levels in [8, 19, 30, 39] {
            let p = CkksScheme::sized_for_levels(&base, levels).expect("fits N = 2^16");
            let (c, chain) = cost(&p);
            eprintln!(
                "{levels} levels: 2^{} scale, {} digits, {} special, log QP {:.0}, cost {c}",
                p.log_scale,
                chain.digits,
                chain.p.len(),
                chain.log_qp
            );
            assert_eq!(p.log_ring_dimension, 16);
            assert_eq!(chain.security_bits, Some(128));
            assert_eq!(chain.q.len(), levels + 1);
            assert!(p.log_scale >= SIZED_MIN_LOG_SCALE && p.log_scale <= 36);
            // Every larger secure scale costs more than 0.9× the chosen cost... or the chosen is the largest.
            let largest = (p.log_scale + 1..=36).filter_map(|s| {
                let q = CkksParams { log_scale: s, levels, ..base.clone() };
                q.chain().ok().map(|_| cost(&q).0)
            });
            for larger in largest {
                assert!(10 * c < 9 * larger, "gave up scale for a saving under 10 %: {c} vs {larger}");
            }
        }
        // Too deep for 2^16 at any allowed scale: the ring grows.
        let p = CkksScheme::sized_for_levels(&base, 52).expect("fits N = 2^17");
        assert_eq!(p.log_ring_dimension, 17);
    }
}
