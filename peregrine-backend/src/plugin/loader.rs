//! Opens a plugin library and presents it as an ordinary [`Backend`] / [`Client`] pair.

use std::collections::BTreeSet;
use std::ffi::{c_char, CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::abi::*;
use crate::error::{BackendError, PluginError};
use crate::{BResult, Backend, Capabilities, Client, KeyRequest};

/// A loaded plugin library. Handles made from it keep it loaded.
pub struct Plugin {
    vt: *const PluginVTable,
    path: PathBuf,
    name: String,
    description: String,
    // Dropped last: every handle holds an `Arc<Plugin>`.
    _lib: libloading::Library,
}

// SAFETY: the vtable is immutable and the ABI requires thread-safe plugins.
unsafe impl Send for Plugin {}
unsafe impl Sync for Plugin {}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin").field("name", &self.name).field("path", &self.path).finish()
    }
}

/// File name suffix of shared libraries on this platform.
pub const LIB_SUFFIX: &str = std::env::consts::DLL_SUFFIX;

impl Plugin {
    /// Loads the plugin at `path`, checking that it is one and speaks this ABI version.
    pub fn load(path: impl AsRef<Path>) -> Result<Arc<Plugin>, PluginError> {
        let path = path.as_ref();
        let shown = || path.display().to_string();
        if !path.exists() {
            return Err(PluginError::NotFound(shown()));
        }
        // SAFETY: loading a library runs its initialisers; plugins are trusted code by design.
        let lib = unsafe { libloading::Library::new(path) }
            .map_err(|e| PluginError::NotLoadable { path: shown(), detail: e.to_string() })?;
        // SAFETY: the symbol's type is fixed by the ABI.
        let entry: libloading::Symbol<unsafe extern "C" fn() -> *const PluginVTable> =
            unsafe { lib.get(ENTRY_SYMBOL) }.map_err(|_| PluginError::NotAPlugin(shown()))?;
        // SAFETY: calling the entry point is the ABI contract.
        let vt = unsafe { entry() };
        if vt.is_null() {
            return Err(PluginError::NoTable(shown()));
        }
        // SAFETY: the first two fields are stable across ABI versions.
        let (version, size) = unsafe { ((*vt).abi_version, (*vt).struct_size) };
        if version != ABI_VERSION {
            return Err(PluginError::AbiMismatch { path: shown(), found: version, expected: ABI_VERSION });
        }
        if size as usize != std::mem::size_of::<PluginVTable>() {
            return Err(PluginError::TableSize {
                path: shown(),
                found: size,
                expected: std::mem::size_of::<PluginVTable>(),
            });
        }
        // SAFETY: the plugin declared a table of this build's size at `vt`; its bytes are read
        // as bytes (no pointer in it is used before every one is known to be non-null).
        let raw = unsafe { std::slice::from_raw_parts(vt.cast::<u8>(), std::mem::size_of::<PluginVTable>()) };
        if let Err(TableDefect::NullEntry(entry)) = check_table(raw) {
            return Err(PluginError::NullEntry { path: shown(), entry });
        }
        // SAFETY: version and size match, so the strings are valid NUL-terminated statics.
        let (name, description) = unsafe {
            (
                CStr::from_ptr((*vt).name).to_string_lossy().into_owned(),
                CStr::from_ptr((*vt).description).to_string_lossy().into_owned(),
            )
        };
        Ok(Arc::new(Plugin { vt, path: path.to_path_buf(), name, description, _lib: lib }))
    }

    fn vt(&self) -> &PluginVTable {
        // SAFETY: valid while the library is loaded, i.e. while `self` lives.
        unsafe { &*self.vt }
    }
    /// The backend's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The backend's description.
    pub fn description(&self) -> &str {
        &self.description
    }
    /// Where it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn call(&self, f: impl FnOnce(ErrOut) -> i32) -> BResult<()> {
        let mut err: *mut c_char = std::ptr::null_mut();
        let status = f(&mut err);
        if status == STATUS_OK {
            return Ok(());
        }
        let message = if err.is_null() {
            format!("plugin '{}' failed with status {status} and no message", self.name)
        } else {
            // SAFETY: the plugin returned a NUL-terminated string it owns; we free it with its allocator.
            let m = unsafe { CStr::from_ptr(err) }.to_string_lossy().into_owned();
            unsafe { (self.vt().string_free)(err) };
            m
        };
        Err(BackendError::Plugin { plugin: self.name.clone(), message })
    }

    fn take_string(&self, s: *mut c_char) -> String {
        if s.is_null() {
            return String::new();
        }
        // SAFETY: plugin-owned NUL-terminated string.
        let out = unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned();
        unsafe { (self.vt().string_free)(s) };
        out
    }

    fn take_bytes(&self, b: PgBytes) -> Vec<u8> {
        let out =
            if b.data.is_null() { Vec::new() } else { unsafe { std::slice::from_raw_parts(b.data, b.len) }.to_vec() };
        unsafe { (self.vt().bytes_free)(b) };
        out
    }

    fn json<T: serde::de::DeserializeOwned>(&self, s: String, what: &'static str) -> BResult<T> {
        serde_json::from_str(&s)
            .map_err(|e| BackendError::Deserialize { what, detail: format!("from plugin '{}': {e}", self.name) })
    }

    /// Capabilities for parameters given as JSON (empty = the plugin's defaults).
    pub fn capabilities(&self, params_json: &str) -> BResult<Capabilities> {
        let p = cstring(params_json, "parameters")?;
        let mut out: *mut c_char = std::ptr::null_mut();
        self.call(|e| unsafe { (self.vt().capabilities)(p.as_ptr(), &mut out, e) })?;
        self.json(self.take_string(out), "capabilities")
    }

    /// Generates keys and returns the client.
    pub fn keygen(self: &Arc<Self>, params_json: &str, request: &KeyRequest) -> BResult<PluginClient> {
        let p = cstring(params_json, "parameters")?;
        let r = serde_json::to_string(request)
            .map_err(|e| BackendError::Serialize { what: "key request", detail: e.to_string() })?;
        let r = cstring(&r, "key request")?;
        let mut h = std::ptr::null_mut();
        self.call(|e| unsafe { (self.vt().client_new)(p.as_ptr(), r.as_ptr(), &mut h, e) })?;
        let mut client = PluginClient { plugin: self.clone(), handle: h, slots: 0 };
        client.slots = client.capabilities_checked()?.slots;
        Ok(client)
    }

    /// Rebuilds a client from its saved secret state ([`Client::save_secret`]).
    pub fn load_client(self: &Arc<Self>, secret: &[u8]) -> BResult<PluginClient> {
        let mut h = std::ptr::null_mut();
        self.call(|e| unsafe { (self.vt().client_load)(secret.as_ptr(), secret.len(), &mut h, e) })?;
        let mut client = PluginClient { plugin: self.clone(), handle: h, slots: 0 };
        client.slots = client.capabilities_checked()?.slots;
        Ok(client)
    }

    /// Builds a server from serialised evaluation keys.
    pub fn server(self: &Arc<Self>, evaluation_keys: &[u8]) -> BResult<PluginServer> {
        let mut h = std::ptr::null_mut();
        self.call(|e| unsafe { (self.vt().server_new)(evaluation_keys.as_ptr(), evaluation_keys.len(), &mut h, e) })?;
        Ok(PluginServer { plugin: self.clone(), handle: h })
    }

    /// Builds a server from an evaluation-key file, letting the plugin read it its own way.
    pub fn server_from_file(self: &Arc<Self>, path: &Path) -> BResult<PluginServer> {
        let text = path.to_str().ok_or_else(|| BackendError::OutOfRange {
            op: "server_from_file",
            detail: format!("key file path {} is not UTF-8", path.display()),
        })?;
        let p = cstring(text, "key file path")?;
        let mut h = std::ptr::null_mut();
        self.call(|e| unsafe { (self.vt().server_from_file)(p.as_ptr(), &mut h, e) })?;
        Ok(PluginServer { plugin: self.clone(), handle: h })
    }

    fn ct(self: &Arc<Self>, h: Handle) -> PluginCiphertext {
        PluginCiphertext { plugin: self.clone(), handle: h }
    }
    fn pt(self: &Arc<Self>, h: Handle) -> PluginPlaintext {
        PluginPlaintext { plugin: self.clone(), handle: h }
    }
}

fn cstring(s: &str, what: &'static str) -> BResult<CString> {
    CString::new(s).map_err(|_| BackendError::Serialize { what, detail: "contains a NUL byte".into() })
}

/// Lists plugin libraries (`*.so` / `*.dylib` / `*.dll`) in the given directories and tries to
/// load each; returns each path with its plugin or the error it gave.
pub fn discover(dirs: &[PathBuf]) -> Vec<(PathBuf, Result<Arc<Plugin>, PluginError>)> {
    let mut found = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(LIB_SUFFIX)))
            .collect();
        paths.sort();
        for p in paths {
            let r = Plugin::load(&p);
            found.push((p, r));
        }
    }
    found
}

/// A ciphertext living in a plugin.
pub struct PluginCiphertext {
    plugin: Arc<Plugin>,
    handle: Handle,
}
/// A plaintext living in a plugin.
pub struct PluginPlaintext {
    plugin: Arc<Plugin>,
    handle: Handle,
}
// SAFETY: the ABI requires handles to be usable across threads.
unsafe impl Send for PluginCiphertext {}
unsafe impl Sync for PluginCiphertext {}
unsafe impl Send for PluginPlaintext {}
unsafe impl Sync for PluginPlaintext {}

impl Clone for PluginCiphertext {
    fn clone(&self) -> Self {
        let h = unsafe { (self.plugin.vt().ct_clone)(self.handle) };
        assert!(!h.is_null(), "plugin '{}' could not copy a ciphertext (out of memory)", self.plugin.name);
        PluginCiphertext { plugin: self.plugin.clone(), handle: h }
    }
}
impl Drop for PluginCiphertext {
    fn drop(&mut self) {
        unsafe { (self.plugin.vt().ct_free)(self.handle) }
    }
}
impl Clone for PluginPlaintext {
    fn clone(&self) -> Self {
        let h = unsafe { (self.plugin.vt().pt_clone)(self.handle) };
        assert!(!h.is_null(), "plugin '{}' could not copy a plaintext (out of memory)", self.plugin.name);
        PluginPlaintext { plugin: self.plugin.clone(), handle: h }
    }
}
impl Drop for PluginPlaintext {
    fn drop(&mut self) {
        unsafe { (self.plugin.vt().pt_free)(self.handle) }
    }
}

/// The client side of a plugin backend.
pub struct PluginClient {
    plugin: Arc<Plugin>,
    handle: Handle,
    slots: usize,
}
/// The server side of a plugin backend.
pub struct PluginServer {
    plugin: Arc<Plugin>,
    handle: Handle,
}
unsafe impl Send for PluginClient {}
unsafe impl Sync for PluginClient {}
unsafe impl Send for PluginServer {}
unsafe impl Sync for PluginServer {}

impl Drop for PluginClient {
    fn drop(&mut self) {
        if !self.handle.is_null() {
            unsafe { (self.plugin.vt().client_free)(self.handle) }
        }
    }
}
impl Drop for PluginServer {
    fn drop(&mut self) {
        unsafe { (self.plugin.vt().server_free)(self.handle) }
    }
}

impl PluginClient {
    fn capabilities_checked(&self) -> BResult<Capabilities> {
        let mut out = std::ptr::null_mut();
        self.plugin.call(|e| unsafe { (self.plugin.vt().client_capabilities)(self.handle, &mut out, e) })?;
        self.plugin.json(self.plugin.take_string(out), "capabilities")
    }
    /// The plugin this client comes from.
    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.plugin
    }
}

impl Client for PluginClient {
    type Backend = PluginServer;

    fn capabilities(&self) -> Capabilities {
        self.capabilities_checked().expect("plugin capabilities were readable at key generation")
    }
    fn encode(&self, values: &[f64], level: usize, scale: f64) -> BResult<PluginPlaintext> {
        let mut h = std::ptr::null_mut();
        self.plugin.call(|e| unsafe {
            (self.plugin.vt().client_encode)(self.handle, values.as_ptr(), values.len(), level as u32, scale, &mut h, e)
        })?;
        Ok(self.plugin.pt(h))
    }
    fn encrypt(&self, pt: &PluginPlaintext) -> BResult<PluginCiphertext> {
        let mut h = std::ptr::null_mut();
        self.plugin.call(|e| unsafe { (self.plugin.vt().client_encrypt)(self.handle, pt.handle, &mut h, e) })?;
        Ok(self.plugin.ct(h))
    }
    fn decrypt(&self, ct: &PluginCiphertext) -> BResult<PluginPlaintext> {
        let mut h = std::ptr::null_mut();
        self.plugin.call(|e| unsafe { (self.plugin.vt().client_decrypt)(self.handle, ct.handle, &mut h, e) })?;
        Ok(self.plugin.pt(h))
    }
    fn decode(&self, pt: &PluginPlaintext) -> BResult<Vec<f64>> {
        let mut out = vec![0.0; self.slots];
        let mut len = 0usize;
        self.plugin.call(|e| unsafe {
            (self.plugin.vt().client_decode)(self.handle, pt.handle, out.as_mut_ptr(), out.len(), &mut len, e)
        })?;
        out.truncate(len);
        Ok(out)
    }
    fn evaluation_keys(&self) -> BResult<Vec<u8>> {
        let mut b = PgBytes { data: std::ptr::null_mut(), len: 0 };
        self.plugin.call(|e| unsafe { (self.plugin.vt().client_evaluation_keys)(self.handle, &mut b, e) })?;
        Ok(self.plugin.take_bytes(b))
    }
    fn write_evaluation_keys(&self, out: &mut dyn std::io::Write) -> BResult<()> {
        let mut t = super::sink::SinkTarget::new(out);
        let ctx = t.as_ctx();
        let r = self.plugin.call(|e| unsafe {
            (self.plugin.vt().client_write_evaluation_keys)(self.handle, super::sink::write_sink, ctx, e)
        });
        if let Some(e) = t.take_error() {
            return Err(BackendError::io("writing evaluation keys", &e));
        }
        r
    }
    fn local_server(&self) -> BResult<Option<PluginServer>> {
        let mut h = std::ptr::null_mut();
        self.plugin.call(|e| unsafe { (self.plugin.vt().client_local_server)(self.handle, &mut h, e) })?;
        Ok((!h.is_null()).then(|| PluginServer { plugin: self.plugin.clone(), handle: h }))
    }
    fn save_secret(&self) -> BResult<Vec<u8>> {
        let mut b = PgBytes { data: std::ptr::null_mut(), len: 0 };
        self.plugin.call(|e| unsafe { (self.plugin.vt().client_save_secret)(self.handle, &mut b, e) })?;
        Ok(self.plugin.take_bytes(b))
    }
    fn serialize_ciphertext(&self, ct: &PluginCiphertext) -> BResult<Vec<u8>> {
        let mut b = PgBytes { data: std::ptr::null_mut(), len: 0 };
        self.plugin.call(|e| unsafe { (self.plugin.vt().client_serialize_ct)(self.handle, ct.handle, &mut b, e) })?;
        Ok(self.plugin.take_bytes(b))
    }
    fn deserialize_ciphertext(&self, bytes: &[u8]) -> BResult<PluginCiphertext> {
        let mut h = std::ptr::null_mut();
        self.plugin.call(|e| unsafe {
            (self.plugin.vt().client_deserialize_ct)(self.handle, bytes.as_ptr(), bytes.len(), &mut h, e)
        })?;
        Ok(self.plugin.ct(h))
    }
}

impl PluginServer {
    fn unary(&self, f: UnaryFn, a: &PluginCiphertext) -> BResult<PluginCiphertext> {
        let mut h = std::ptr::null_mut();
        self.plugin.call(|e| unsafe { f(self.handle, a.handle, &mut h, e) })?;
        Ok(self.plugin.ct(h))
    }
    fn binary(&self, f: BinaryFn, a: &PluginCiphertext, b: Handle) -> BResult<PluginCiphertext> {
        let mut h = std::ptr::null_mut();
        self.plugin.call(|e| unsafe { f(self.handle, a.handle, b, &mut h, e) })?;
        Ok(self.plugin.ct(h))
    }
    fn info(&self, f: unsafe extern "C" fn(CHandle, CHandle, *mut u32, *mut f64) -> i32, h: Handle) -> (usize, f64) {
        let (mut l, mut s) = (0u32, 0.0f64);
        let st = unsafe { f(self.handle, h, &mut l, &mut s) };
        assert_eq!(st, STATUS_OK, "plugin '{}' could not report level/scale of a live handle", self.plugin.name);
        (l as usize, s)
    }
    /// The plugin this server comes from.
    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.plugin
    }
}

impl Backend for PluginServer {
    type Ciphertext = PluginCiphertext;
    type Plaintext = PluginPlaintext;

    fn capabilities(&self) -> Capabilities {
        let mut out = std::ptr::null_mut();
        self.plugin
            .call(|e| unsafe { (self.plugin.vt().server_capabilities)(self.handle, &mut out, e) })
            .and_then(|_| self.plugin.json(self.plugin.take_string(out), "capabilities"))
            .expect("plugin reports its capabilities")
    }
    fn rotation_steps(&self) -> BTreeSet<i64> {
        let mut out = std::ptr::null_mut();
        self.plugin
            .call(|e| unsafe { (self.plugin.vt().server_rotation_steps)(self.handle, &mut out, e) })
            .and_then(|_| self.plugin.json(self.plugin.take_string(out), "rotation steps"))
            .expect("plugin reports its rotation steps")
    }
    fn modulus(&self, level: usize) -> f64 {
        let mut q = 0.0;
        self.plugin
            .call(|e| unsafe { (self.plugin.vt().server_modulus)(self.handle, level as u32, &mut q, e) })
            .expect("plugin reports its moduli");
        q
    }
    fn level(&self, ct: &PluginCiphertext) -> usize {
        self.info(self.plugin.vt().ct_info, ct.handle).0
    }
    fn scale(&self, ct: &PluginCiphertext) -> f64 {
        self.info(self.plugin.vt().ct_info, ct.handle).1
    }
    fn plaintext_level(&self, pt: &PluginPlaintext) -> usize {
        self.info(self.plugin.vt().pt_info, pt.handle).0
    }
    fn plaintext_scale(&self, pt: &PluginPlaintext) -> f64 {
        self.info(self.plugin.vt().pt_info, pt.handle).1
    }
    fn encode(&self, values: &[f64], level: usize, scale: f64) -> BResult<PluginPlaintext> {
        let mut h = std::ptr::null_mut();
        self.plugin.call(|e| unsafe {
            (self.plugin.vt().encode)(self.handle, values.as_ptr(), values.len(), level as u32, scale, &mut h, e)
        })?;
        Ok(self.plugin.pt(h))
    }
    fn add(&self, a: &PluginCiphertext, b: &PluginCiphertext) -> BResult<PluginCiphertext> {
        self.binary(self.plugin.vt().add, a, b.handle)
    }
    fn sub(&self, a: &PluginCiphertext, b: &PluginCiphertext) -> BResult<PluginCiphertext> {
        self.binary(self.plugin.vt().sub, a, b.handle)
    }
    fn mul(&self, a: &PluginCiphertext, b: &PluginCiphertext) -> BResult<PluginCiphertext> {
        self.binary(self.plugin.vt().mul, a, b.handle)
    }
    fn add_plain(&self, a: &PluginCiphertext, p: &PluginPlaintext) -> BResult<PluginCiphertext> {
        self.binary(self.plugin.vt().add_plain, a, p.handle)
    }
    fn sub_plain(&self, a: &PluginCiphertext, p: &PluginPlaintext) -> BResult<PluginCiphertext> {
        self.binary(self.plugin.vt().sub_plain, a, p.handle)
    }
    fn mul_plain(&self, a: &PluginCiphertext, p: &PluginPlaintext) -> BResult<PluginCiphertext> {
        self.binary(self.plugin.vt().mul_plain, a, p.handle)
    }
    fn negate(&self, a: &PluginCiphertext) -> BResult<PluginCiphertext> {
        self.unary(self.plugin.vt().negate, a)
    }
    fn square(&self, a: &PluginCiphertext) -> BResult<PluginCiphertext> {
        self.unary(self.plugin.vt().square, a)
    }
    fn rescale(&self, a: &PluginCiphertext) -> BResult<PluginCiphertext> {
        self.unary(self.plugin.vt().rescale, a)
    }
    fn bootstrap(&self, a: &PluginCiphertext) -> BResult<PluginCiphertext> {
        self.unary(self.plugin.vt().bootstrap, a)
    }
    fn add_scalar(&self, a: &PluginCiphertext, c: f64) -> BResult<PluginCiphertext> {
        let mut h = std::ptr::null_mut();
        self.plugin.call(|e| unsafe { (self.plugin.vt().add_scalar)(self.handle, a.handle, c, &mut h, e) })?;
        Ok(self.plugin.ct(h))
    }
    fn mul_scalar(&self, a: &PluginCiphertext, c: f64, scale: f64) -> BResult<PluginCiphertext> {
        let mut h = std::ptr::null_mut();
        self.plugin.call(|e| unsafe { (self.plugin.vt().mul_scalar)(self.handle, a.handle, c, scale, &mut h, e) })?;
        Ok(self.plugin.ct(h))
    }
    fn mul_integer(&self, a: &PluginCiphertext, k: i64) -> BResult<PluginCiphertext> {
        let mut h = std::ptr::null_mut();
        self.plugin.call(|e| unsafe { (self.plugin.vt().mul_integer)(self.handle, a.handle, k, &mut h, e) })?;
        Ok(self.plugin.ct(h))
    }
    fn drop_to_level(&self, a: &PluginCiphertext, level: usize) -> BResult<PluginCiphertext> {
        let mut h = std::ptr::null_mut();
        self.plugin
            .call(|e| unsafe { (self.plugin.vt().drop_to_level)(self.handle, a.handle, level as u32, &mut h, e) })?;
        Ok(self.plugin.ct(h))
    }
    fn rotate(&self, a: &PluginCiphertext, step: i64) -> BResult<PluginCiphertext> {
        let mut h = std::ptr::null_mut();
        self.plugin.call(|e| unsafe { (self.plugin.vt().rotate)(self.handle, a.handle, step, &mut h, e) })?;
        Ok(self.plugin.ct(h))
    }
    fn rotate_many(&self, a: &PluginCiphertext, steps: &[i64]) -> BResult<Vec<PluginCiphertext>> {
        let mut hs: Vec<Handle> = vec![std::ptr::null_mut(); steps.len()];
        self.plugin.call(|e| unsafe {
            (self.plugin.vt().rotate_many)(self.handle, a.handle, steps.as_ptr(), steps.len(), hs.as_mut_ptr(), e)
        })?;
        Ok(hs.into_iter().map(|h| self.plugin.ct(h)).collect())
    }
    fn eval_poly(&self, a: &PluginCiphertext, coeffs: &[f64]) -> BResult<PluginCiphertext> {
        let mut h = std::ptr::null_mut();
        self.plugin.call(|e| unsafe {
            (self.plugin.vt().eval_poly)(self.handle, a.handle, coeffs.as_ptr(), coeffs.len(), &mut h, e)
        })?;
        Ok(self.plugin.ct(h))
    }
    fn serialize_ciphertext(&self, ct: &PluginCiphertext) -> BResult<Vec<u8>> {
        let mut b = PgBytes { data: std::ptr::null_mut(), len: 0 };
        self.plugin.call(|e| unsafe { (self.plugin.vt().serialize_ct)(self.handle, ct.handle, &mut b, e) })?;
        Ok(self.plugin.take_bytes(b))
    }
    fn deserialize_ciphertext(&self, bytes: &[u8]) -> BResult<PluginCiphertext> {
        let mut h = std::ptr::null_mut();
        self.plugin.call(|e| unsafe {
            (self.plugin.vt().deserialize_ct)(self.handle, bytes.as_ptr(), bytes.len(), &mut h, e)
        })?;
        Ok(self.plugin.ct(h))
    }
}
