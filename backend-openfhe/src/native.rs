//! Safe owners of the shim's handles. Every call checks its status and turns the shim's
//! message into a [`BackendError`].

use std::ffi::{c_char, CStr};
use std::ptr;

use openfhe_sys as sys;
use peregrine_backend::BackendError;

type R<T> = Result<T, BackendError>;

fn take_err(e: *mut c_char) -> String {
    if e.is_null() {
        return "OpenFHE call failed without a message".into();
    }
    // SAFETY: the shim returned a NUL-terminated string it allocated; we release it once.
    let s = unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned();
    unsafe { sys::pf_string_free(e) };
    s
}

fn call(op: &str, f: impl FnOnce(*mut *mut c_char) -> i32) -> R<()> {
    let mut e: *mut c_char = ptr::null_mut();
    if f(&mut e) == 0 {
        Ok(())
    } else {
        Err(BackendError::Library(format!("{op}: {}", take_err(e))))
    }
}

fn bytes(b: sys::PfBytes) -> Vec<u8> {
    // SAFETY: the shim filled `b` with `len` readable bytes; we copy and release them.
    let v = if b.data.is_null() { Vec::new() } else { unsafe { std::slice::from_raw_parts(b.data, b.len) }.to_vec() };
    unsafe { sys::pf_bytes_free(b) };
    v
}

/// An OpenFHE crypto context, with the secret key (client) or without (server).
pub struct Ctx(*mut sys::PfContext);

// SAFETY: the context is only mutated by `keygen` (which takes `&mut self`); evaluation reads
// it, and OpenFHE's evaluation functions are safe to call concurrently on a shared context.
unsafe impl Send for Ctx {}
unsafe impl Sync for Ctx {}

impl Drop for Ctx {
    fn drop(&mut self) {
        // SAFETY: owned handle, released once.
        unsafe { sys::pf_context_free(self.0) }
    }
}

/// An OpenFHE ciphertext.
pub struct RawCt(*mut sys::PfCiphertext);

// SAFETY: ciphertexts are immutable after creation; every operation makes a new one.
unsafe impl Send for RawCt {}
unsafe impl Sync for RawCt {}

impl Drop for RawCt {
    fn drop(&mut self) {
        // SAFETY: owned handle, released once.
        unsafe { sys::pf_ct_free(self.0) }
    }
}

impl Clone for RawCt {
    fn clone(&self) -> Self {
        // SAFETY: valid handle; a null result means out of memory, which Rust treats as fatal too.
        let p = unsafe { sys::pf_ct_clone(self.0) };
        assert!(!p.is_null(), "OpenFHE ciphertext clone failed (out of memory)");
        RawCt(p)
    }
}

impl RawCt {
    /// Level (moduli above q_0) and OpenFHE's noise-scale degree.
    pub fn info(&self) -> (usize, u32) {
        let (mut l, mut d) = (0u32, 0u32);
        // SAFETY: valid handle and out-pointers.
        unsafe { sys::pf_ct_info(self.0, &mut l, &mut d) };
        (l as usize, d)
    }
    /// OpenFHE's binary serialisation.
    pub fn serialize(&self) -> R<Vec<u8>> {
        let mut b = sys::PfBytes { data: ptr::null_mut(), len: 0 };
        call("serialise ciphertext", |e| unsafe { sys::pf_serialize_ct(self.0, &mut b, e) })?;
        Ok(bytes(b))
    }
}

/// Static facts about a context.
pub struct Info {
    /// Ring dimension N.
    pub ring_dim: usize,
    /// Number of ciphertext moduli.
    pub towers: usize,
    /// log2 of Q·P.
    pub log_qp: f64,
}

/// Depth consumed by OpenFHE's bootstrapping for a level budget and secret distribution.
pub fn bootstrap_depth(enc: u32, dec: u32, sparse: bool) -> R<usize> {
    let mut d = 0u32;
    call("bootstrap depth", |e| unsafe { sys::pf_bootstrap_depth(enc, dec, sparse as i32, &mut d, e) })?;
    Ok(d as usize)
}

macro_rules! unary {
    ($name:ident, $f:ident, $op:literal) => {
        /// One shim operation on a ciphertext.
        pub fn $name(&self, a: &RawCt) -> R<RawCt> {
            let mut out = ptr::null_mut();
            call($op, |e| unsafe { sys::$f(self.0, a.0, &mut out, e) })?;
            Ok(RawCt(out))
        }
    };
}
macro_rules! binary {
    ($name:ident, $f:ident, $op:literal) => {
        /// One shim operation on two ciphertexts.
        pub fn $name(&self, a: &RawCt, b: &RawCt) -> R<RawCt> {
            let mut out = ptr::null_mut();
            call($op, |e| unsafe { sys::$f(self.0, a.0, b.0, &mut out, e) })?;
            Ok(RawCt(out))
        }
    };
}

impl Ctx {
    /// Builds a context (and bootstrapping precomputations when asked); no keys yet.
    pub fn new(p: &sys::PfParams) -> R<Ctx> {
        let mut out = ptr::null_mut();
        call("create crypto context", |e| unsafe { sys::pf_context_new(p, &mut out, e) })
            .map_err(|e| BackendError::InvalidParameters(e.to_string()))?;
        Ok(Ctx(out))
    }
    /// A server context from serialised evaluation keys.
    pub fn server(keys: &[u8], bootstrap: bool, enc: u32, dec: u32) -> R<Ctx> {
        let mut out = ptr::null_mut();
        call("read evaluation keys", |e| unsafe {
            sys::pf_server_new(keys.as_ptr(), keys.len(), bootstrap as i32, enc, dec, 0, &mut out, e)
        })
        .map_err(|e| BackendError::Deserialize { what: "OpenFHE evaluation keys", detail: e.to_string() })?;
        Ok(Ctx(out))
    }
    /// The client's key pair and context, serialised.
    pub fn save_client(&self) -> R<Vec<u8>> {
        let mut b = sys::PfBytes { data: ptr::null_mut(), len: 0 };
        call("save client", |e| unsafe { sys::pf_save_client(self.0, &mut b, e) })?;
        Ok(bytes(b))
    }
    /// A client context from [`Ctx::save_client`].
    pub fn load_client(data: &[u8]) -> R<Ctx> {
        let mut out = ptr::null_mut();
        call("load client", |e| unsafe { sys::pf_load_client(data.as_ptr(), data.len(), &mut out, e) })
            .map_err(|e| BackendError::Deserialize { what: "OpenFHE client state", detail: e.to_string() })?;
        Ok(Ctx(out))
    }
    /// A server context sharing this client's keys in memory (no secret key).
    pub fn server_from_client(&self) -> R<Ctx> {
        let mut out = ptr::null_mut();
        call("server from client", |e| unsafe { sys::pf_server_from_client(self.0, &mut out, e) })?;
        Ok(Ctx(out))
    }
    /// Ring dimension, towers, log2(QP).
    pub fn info(&self) -> R<Info> {
        let (mut n, mut t, mut b) = (0u32, 0u32, 0f64);
        call("context info", |e| unsafe { sys::pf_context_info(self.0, &mut n, &mut t, &mut b, e) })?;
        Ok(Info { ring_dim: n as usize, towers: t as usize, log_qp: b })
    }
    /// The ciphertext moduli q_0 … q_L.
    pub fn moduli(&self, towers: usize) -> R<Vec<f64>> {
        let mut v = vec![0f64; towers];
        call("moduli", |e| unsafe { sys::pf_context_moduli(self.0, v.as_mut_ptr(), v.len(), e) })?;
        Ok(v)
    }
    /// Secret, relinearisation, rotation and (optionally) bootstrapping keys.
    pub fn keygen(&mut self, steps: &[i32], bootstrap: bool) -> R<()> {
        call("key generation", |e| unsafe { sys::pf_keygen(self.0, steps.as_ptr(), steps.len(), bootstrap as i32, e) })
    }
    /// Whether this context holds a secret key.
    pub fn has_secret_key(&self) -> bool {
        unsafe { sys::pf_has_secret_key(self.0) != 0 }
    }
    /// The context and evaluation keys, serialised (never the secret key), appended to `out`
    /// as OpenFHE writes them (the keys are never held twice on the C++ side).
    pub fn evaluation_keys_into(&self, out: &mut dyn std::io::Write) -> R<()> {
        use peregrine_backend::plugin::sink::{write_sink, SinkTarget};
        let mut t = SinkTarget::new(out);
        let ctx = t.as_ctx();
        let r =
            call("serialise evaluation keys", |e| unsafe { sys::pf_serialize_eval_keys(self.0, write_sink, ctx, e) });
        match t.take_error() {
            Some(e) => Err(BackendError::io("writing evaluation keys", &e)),
            None => r,
        }
    }
    /// Rotation steps with keys (in 0..N/2).
    pub fn rotation_steps(&self) -> R<Vec<i32>> {
        let mut n = 0usize;
        call("rotation keys", |e| unsafe { sys::pf_rotation_indices(self.0, ptr::null_mut(), 0, &mut n, e) })?;
        let mut v = vec![0i32; n];
        call("rotation keys", |e| unsafe { sys::pf_rotation_indices(self.0, v.as_mut_ptr(), v.len(), &mut n, e) })?;
        v.truncate(n);
        Ok(v)
    }
    /// Encrypts `v` at `level` and true scale `scale`.
    pub fn encrypt(&self, v: &[f64], level: usize, scale: f64) -> R<RawCt> {
        let mut out = ptr::null_mut();
        call("encrypt", |e| unsafe { sys::pf_encrypt(self.0, v.as_ptr(), v.len(), level as u32, scale, &mut out, e) })?;
        Ok(RawCt(out))
    }
    /// Decrypts a ciphertext whose true scale is `scale`.
    pub fn decrypt(&self, ct: &RawCt, scale: f64, slots: usize) -> R<Vec<f64>> {
        let mut v = vec![0f64; slots];
        let mut n = 0usize;
        call("decrypt", |e| unsafe { sys::pf_decrypt(self.0, ct.0, scale, v.as_mut_ptr(), v.len(), &mut n, e) })?;
        v.truncate(n);
        Ok(v)
    }
    /// Reads a serialised ciphertext of this context's parameters.
    pub fn deserialize(&self, b: &[u8]) -> R<RawCt> {
        let mut out = ptr::null_mut();
        call("read ciphertext", |e| unsafe { sys::pf_deserialize_ct(self.0, b.as_ptr(), b.len(), &mut out, e) })
            .map_err(|e| BackendError::Deserialize { what: "OpenFHE ciphertext", detail: e.to_string() })?;
        Ok(RawCt(out))
    }

    binary!(add, pf_add, "add");
    binary!(sub, pf_sub, "sub");
    binary!(mul, pf_mul, "mul");
    unary!(square, pf_square, "square");
    unary!(negate, pf_negate, "negate");
    unary!(rescale, pf_rescale, "rescale");
    unary!(bootstrap, pf_bootstrap, "bootstrap");

    /// a ± p, p holding `v` at a's true scale.
    pub fn add_plain(&self, a: &RawCt, v: &[f64], scale: f64, subtract: bool) -> R<RawCt> {
        let mut out = ptr::null_mut();
        call("add_plain", |e| unsafe {
            sys::pf_add_plain(self.0, a.0, v.as_ptr(), v.len(), scale, subtract as i32, &mut out, e)
        })?;
        Ok(RawCt(out))
    }
    /// a · p, p holding `v` at scale `pscale`.
    pub fn mul_plain(&self, a: &RawCt, v: &[f64], pscale: f64) -> R<RawCt> {
        let mut out = ptr::null_mut();
        call("mul_plain", |e| unsafe { sys::pf_mul_plain(self.0, a.0, v.as_ptr(), v.len(), pscale, &mut out, e) })?;
        Ok(RawCt(out))
    }
    /// a + k (a at true scale `scale`).
    pub fn add_scalar(&self, a: &RawCt, k: f64, scale: f64) -> R<RawCt> {
        let mut out = ptr::null_mut();
        call("add_scalar", |e| unsafe { sys::pf_add_scalar(self.0, a.0, k, scale, &mut out, e) })?;
        Ok(RawCt(out))
    }
    /// a · round(k·kscale).
    pub fn mul_scalar(&self, a: &RawCt, k: f64, kscale: f64) -> R<RawCt> {
        let mut out = ptr::null_mut();
        call("mul_scalar", |e| unsafe { sys::pf_mul_scalar(self.0, a.0, k, kscale, &mut out, e) })?;
        Ok(RawCt(out))
    }
    /// a · k.
    pub fn mul_integer(&self, a: &RawCt, k: i64) -> R<RawCt> {
        let mut out = ptr::null_mut();
        call("mul_integer", |e| unsafe { sys::pf_mul_integer(self.0, a.0, k, &mut out, e) })?;
        Ok(RawCt(out))
    }
    /// Drops to `level`.
    pub fn drop_to_level(&self, a: &RawCt, level: usize) -> R<RawCt> {
        let mut out = ptr::null_mut();
        call("drop_to_level", |e| unsafe { sys::pf_drop_to_level(self.0, a.0, level as u32, &mut out, e) })?;
        Ok(RawCt(out))
    }
    /// Left rotation by `step`.
    pub fn rotate(&self, a: &RawCt, step: i32) -> R<RawCt> {
        let mut out = ptr::null_mut();
        call("rotate", |e| unsafe { sys::pf_rotate(self.0, a.0, step, &mut out, e) })?;
        Ok(RawCt(out))
    }
    /// Hoisted rotations of one ciphertext.
    pub fn rotate_many(&self, a: &RawCt, steps: &[i32]) -> R<Vec<RawCt>> {
        let mut outs = vec![ptr::null_mut(); steps.len()];
        call("rotate_many", |e| unsafe {
            sys::pf_rotate_many(self.0, a.0, steps.as_ptr(), steps.len(), outs.as_mut_ptr(), e)
        })?;
        Ok(outs.into_iter().map(RawCt).collect())
    }
}
