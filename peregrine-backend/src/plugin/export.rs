//! Exposes any [`Scheme`] through the plugin ABI. Use via [`export_plugin!`](crate::export_plugin).
//!
//! Every entry point catches panics, so no unwinding ever crosses the C boundary, and checks
//! its pointers for null.

use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;

use super::abi::*;
use crate::{Backend, Client, KeyRequest, Scheme};

type Ct<S> = <<S as Scheme>::Server as Backend>::Ciphertext;
type Pt<S> = <<S as Scheme>::Server as Backend>::Plaintext;

fn set_err(err: ErrOut, msg: String) {
    if !err.is_null() {
        let c = CString::new(msg.replace('\0', " ")).unwrap_or_default();
        // SAFETY: caller passed a writable out-pointer.
        unsafe { *err = c.into_raw() };
    }
}

fn guard(err: ErrOut, f: impl FnOnce() -> Result<(), String>) -> i32 {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => STATUS_OK,
        Ok(Err(m)) => {
            set_err(err, m);
            STATUS_ERROR
        }
        Err(p) => {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_err(err, format!("plugin panicked: {what}"));
            STATUS_PANIC
        }
    }
}

unsafe fn obj<'a, T>(p: CHandle, what: &str) -> Result<&'a T, String> {
    if p.is_null() {
        return Err(format!("null {what} handle"));
    }
    Ok(&*(p as *const T))
}

unsafe fn put<T>(out: *mut Handle, v: T) -> Result<(), String> {
    if out.is_null() {
        return Err("null output pointer".into());
    }
    *out = Box::into_raw(Box::new(v)) as Handle;
    Ok(())
}

unsafe fn put_json<T: serde::Serialize>(out: *mut *mut c_char, v: &T) -> Result<(), String> {
    if out.is_null() {
        return Err("null output pointer".into());
    }
    let s = serde_json::to_string(v).map_err(|e| e.to_string())?;
    *out = CString::new(s).map_err(|e| e.to_string())?.into_raw();
    Ok(())
}

unsafe fn put_bytes(out: *mut PgBytes, v: Vec<u8>) -> Result<(), String> {
    if out.is_null() {
        return Err("null output pointer".into());
    }
    let b = v.into_boxed_slice();
    let len = b.len();
    *out = PgBytes { data: Box::into_raw(b) as *mut u8, len };
    Ok(())
}

unsafe fn text<'a>(p: *const c_char, what: &str) -> Result<&'a str, String> {
    if p.is_null() {
        return Err(format!("null {what}"));
    }
    CStr::from_ptr(p).to_str().map_err(|_| format!("{what} is not UTF-8"))
}

unsafe fn slice<'a, T>(p: *const T, len: usize) -> Result<&'a [T], String> {
    if len == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err("null buffer".into());
    }
    Ok(std::slice::from_raw_parts(p, len))
}

fn params<S: Scheme>(json: &str) -> Result<S::Params, String> {
    if json.trim().is_empty() {
        return Ok(S::Params::default());
    }
    serde_json::from_str(json).map_err(|e| format!("invalid {} parameters: {e}", S::NAME))
}

/// Releases a string made by this plugin.
///
/// # Safety
/// `s` must be null or a string returned by this plugin and not released before.
pub unsafe extern "C" fn string_free(s: *mut c_char) {
    if !s.is_null() {
        drop(CString::from_raw(s));
    }
}
/// Releases a buffer made by this plugin.
///
/// # Safety
/// `b` must be a buffer returned by this plugin and not released before.
pub unsafe extern "C" fn bytes_free(b: PgBytes) {
    if !b.data.is_null() {
        drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(b.data, b.len)));
    }
}
unsafe extern "C" fn capabilities<S: Scheme>(p: *const c_char, out: *mut *mut c_char, err: ErrOut) -> i32 {
    guard(err, || {
        let caps = S::capabilities(&params::<S>(text(p, "parameters")?)?).map_err(|e| e.to_string())?;
        put_json(out, &caps)
    })
}
unsafe extern "C" fn client_new<S: Scheme>(p: *const c_char, r: *const c_char, out: *mut Handle, err: ErrOut) -> i32 {
    guard(err, || {
        let params = params::<S>(text(p, "parameters")?)?;
        let req: KeyRequest =
            serde_json::from_str(text(r, "key request")?).map_err(|e| format!("invalid key request: {e}"))?;
        put(out, S::keygen(&params, &req).map_err(|e| e.to_string())?)
    })
}
unsafe extern "C" fn client_free<S: Scheme>(c: Handle) {
    if !c.is_null() {
        let _ = catch_unwind(AssertUnwindSafe(|| drop(Box::from_raw(c as *mut S::Client))));
    }
}
unsafe extern "C" fn client_capabilities<S: Scheme>(c: CHandle, out: *mut *mut c_char, err: ErrOut) -> i32 {
    guard(err, || put_json(out, &obj::<S::Client>(c, "client")?.capabilities()))
}
unsafe extern "C" fn client_evaluation_keys<S: Scheme>(c: CHandle, out: *mut PgBytes, err: ErrOut) -> i32 {
    guard(err, || put_bytes(out, obj::<S::Client>(c, "client")?.evaluation_keys().map_err(|e| e.to_string())?))
}
unsafe extern "C" fn client_encode<S: Scheme>(
    c: CHandle,
    v: *const f64,
    n: usize,
    level: u32,
    scale: f64,
    out: *mut Handle,
    err: ErrOut,
) -> i32 {
    guard(err, || {
        let pt =
            obj::<S::Client>(c, "client")?.encode(slice(v, n)?, level as usize, scale).map_err(|e| e.to_string())?;
        put(out, pt)
    })
}
unsafe extern "C" fn client_encrypt<S: Scheme>(c: CHandle, pt: CHandle, out: *mut Handle, err: ErrOut) -> i32 {
    guard(err, || {
        let ct = obj::<S::Client>(c, "client")?.encrypt(obj::<Pt<S>>(pt, "plaintext")?).map_err(|e| e.to_string())?;
        put(out, ct)
    })
}
unsafe extern "C" fn client_decrypt<S: Scheme>(c: CHandle, ct: CHandle, out: *mut Handle, err: ErrOut) -> i32 {
    guard(err, || {
        let pt = obj::<S::Client>(c, "client")?.decrypt(obj::<Ct<S>>(ct, "ciphertext")?).map_err(|e| e.to_string())?;
        put(out, pt)
    })
}
unsafe extern "C" fn client_decode<S: Scheme>(
    c: CHandle,
    pt: CHandle,
    out: *mut f64,
    cap: usize,
    out_len: *mut usize,
    err: ErrOut,
) -> i32 {
    guard(err, || {
        let v = obj::<S::Client>(c, "client")?.decode(obj::<Pt<S>>(pt, "plaintext")?).map_err(|e| e.to_string())?;
        if out_len.is_null() || (out.is_null() && !v.is_empty()) {
            return Err("null output pointer".into());
        }
        if v.len() > cap {
            return Err(format!("decode needs room for {} values, got {cap}", v.len()));
        }
        std::ptr::copy_nonoverlapping(v.as_ptr(), out, v.len());
        *out_len = v.len();
        Ok(())
    })
}
unsafe extern "C" fn client_serialize_ct<S: Scheme>(c: CHandle, ct: CHandle, out: *mut PgBytes, err: ErrOut) -> i32 {
    guard(err, || {
        let b = obj::<S::Client>(c, "client")?
            .serialize_ciphertext(obj::<Ct<S>>(ct, "ciphertext")?)
            .map_err(|e| e.to_string())?;
        put_bytes(out, b)
    })
}
unsafe extern "C" fn client_deserialize_ct<S: Scheme>(
    c: CHandle,
    data: *const u8,
    len: usize,
    out: *mut Handle,
    err: ErrOut,
) -> i32 {
    guard(err, || {
        let ct = obj::<S::Client>(c, "client")?.deserialize_ciphertext(slice(data, len)?).map_err(|e| e.to_string())?;
        put(out, ct)
    })
}
unsafe extern "C" fn server_new<S: Scheme>(k: *const u8, len: usize, out: *mut Handle, err: ErrOut) -> i32 {
    guard(err, || put(out, S::server(slice(k, len)?).map_err(|e| e.to_string())?))
}
unsafe extern "C" fn server_free<S: Scheme>(s: Handle) {
    if !s.is_null() {
        let _ = catch_unwind(AssertUnwindSafe(|| drop(Box::from_raw(s as *mut S::Server))));
    }
}
unsafe extern "C" fn server_capabilities<S: Scheme>(s: CHandle, out: *mut *mut c_char, err: ErrOut) -> i32 {
    guard(err, || put_json(out, &obj::<S::Server>(s, "server")?.capabilities()))
}
unsafe extern "C" fn server_rotation_steps<S: Scheme>(s: CHandle, out: *mut *mut c_char, err: ErrOut) -> i32 {
    guard(err, || put_json(out, &obj::<S::Server>(s, "server")?.rotation_steps()))
}
unsafe extern "C" fn server_modulus<S: Scheme>(s: CHandle, level: u32, out: *mut f64, err: ErrOut) -> i32 {
    guard(err, || {
        if out.is_null() {
            return Err("null output pointer".into());
        }
        *out = obj::<S::Server>(s, "server")?.modulus(level as usize);
        Ok(())
    })
}
unsafe extern "C" fn ct_free<S: Scheme>(c: Handle) {
    if !c.is_null() {
        let _ = catch_unwind(AssertUnwindSafe(|| drop(Box::from_raw(c as *mut Ct<S>))));
    }
}
unsafe extern "C" fn ct_clone<S: Scheme>(c: CHandle) -> Handle {
    if c.is_null() {
        return std::ptr::null_mut();
    }
    catch_unwind(AssertUnwindSafe(|| Box::into_raw(Box::new((*(c as *const Ct<S>)).clone())) as Handle))
        .unwrap_or(std::ptr::null_mut())
}
unsafe extern "C" fn pt_free<S: Scheme>(p: Handle) {
    if !p.is_null() {
        let _ = catch_unwind(AssertUnwindSafe(|| drop(Box::from_raw(p as *mut Pt<S>))));
    }
}
unsafe extern "C" fn pt_clone<S: Scheme>(p: CHandle) -> Handle {
    if p.is_null() {
        return std::ptr::null_mut();
    }
    catch_unwind(AssertUnwindSafe(|| Box::into_raw(Box::new((*(p as *const Pt<S>)).clone())) as Handle))
        .unwrap_or(std::ptr::null_mut())
}
unsafe extern "C" fn ct_info<S: Scheme>(s: CHandle, c: CHandle, level: *mut u32, scale: *mut f64) -> i32 {
    guard(std::ptr::null_mut(), || {
        let (s, c) = (obj::<S::Server>(s, "server")?, obj::<Ct<S>>(c, "ciphertext")?);
        if level.is_null() || scale.is_null() {
            return Err("null output pointer".into());
        }
        *level = s.level(c) as u32;
        *scale = s.scale(c);
        Ok(())
    })
}
unsafe extern "C" fn pt_info<S: Scheme>(s: CHandle, p: CHandle, level: *mut u32, scale: *mut f64) -> i32 {
    guard(std::ptr::null_mut(), || {
        let (s, p) = (obj::<S::Server>(s, "server")?, obj::<Pt<S>>(p, "plaintext")?);
        if level.is_null() || scale.is_null() {
            return Err("null output pointer".into());
        }
        *level = s.plaintext_level(p) as u32;
        *scale = s.plaintext_scale(p);
        Ok(())
    })
}
unsafe extern "C" fn encode<S: Scheme>(
    s: CHandle,
    v: *const f64,
    n: usize,
    level: u32,
    scale: f64,
    out: *mut Handle,
    err: ErrOut,
) -> i32 {
    guard(err, || {
        let pt =
            obj::<S::Server>(s, "server")?.encode(slice(v, n)?, level as usize, scale).map_err(|e| e.to_string())?;
        put(out, pt)
    })
}

macro_rules! binary_ct {
    ($($name:ident => $method:ident),*) => {$(
        unsafe extern "C" fn $name<S: Scheme>(s: CHandle, a: CHandle, b: CHandle, out: *mut Handle, err: ErrOut) -> i32 {
            guard(err, || {
                let r = obj::<S::Server>(s, "server")?
                    .$method(obj::<Ct<S>>(a, "ciphertext")?, obj::<Ct<S>>(b, "ciphertext")?)
                    .map_err(|e| e.to_string())?;
                put(out, r)
            })
        }
    )*};
}
macro_rules! binary_pt {
    ($($name:ident => $method:ident),*) => {$(
        unsafe extern "C" fn $name<S: Scheme>(s: CHandle, a: CHandle, b: CHandle, out: *mut Handle, err: ErrOut) -> i32 {
            guard(err, || {
                let r = obj::<S::Server>(s, "server")?
                    .$method(obj::<Ct<S>>(a, "ciphertext")?, obj::<Pt<S>>(b, "plaintext")?)
                    .map_err(|e| e.to_string())?;
                put(out, r)
            })
        }
    )*};
}
macro_rules! unary_ct {
    ($($name:ident => $method:ident),*) => {$(
        unsafe extern "C" fn $name<S: Scheme>(s: CHandle, a: CHandle, out: *mut Handle, err: ErrOut) -> i32 {
            guard(err, || {
                let r = obj::<S::Server>(s, "server")?.$method(obj::<Ct<S>>(a, "ciphertext")?).map_err(|e| e.to_string())?;
                put(out, r)
            })
        }
    )*};
}
macro_rules! with_arg {
    ($($name:ident => $method:ident($ty:ty) as |$v:ident| $conv:expr),*) => {$(
        unsafe extern "C" fn $name<S: Scheme>(s: CHandle, a: CHandle, $v: $ty, out: *mut Handle, err: ErrOut) -> i32 {
            guard(err, || {
                let r = obj::<S::Server>(s, "server")?.$method(obj::<Ct<S>>(a, "ciphertext")?, $conv).map_err(|e| e.to_string())?;
                put(out, r)
            })
        }
    )*};
}
binary_ct!(add => add, sub => sub, mul => mul);
binary_pt!(add_plain => add_plain, sub_plain => sub_plain, mul_plain => mul_plain);
unary_ct!(negate => negate, square => square, rescale => rescale, bootstrap => bootstrap);
with_arg!(
    add_scalar => add_scalar(f64) as |c| c,
    mul_integer => mul_integer(i64) as |k| k,
    drop_to_level => drop_to_level(u32) as |l| l as usize,
    rotate => rotate(i64) as |k| k
);
unsafe extern "C" fn mul_scalar<S: Scheme>(
    s: CHandle,
    a: CHandle,
    c: f64,
    scale: f64,
    out: *mut Handle,
    err: ErrOut,
) -> i32 {
    guard(err, || {
        let r = obj::<S::Server>(s, "server")?
            .mul_scalar(obj::<Ct<S>>(a, "ciphertext")?, c, scale)
            .map_err(|e| e.to_string())?;
        put(out, r)
    })
}
unsafe extern "C" fn eval_poly<S: Scheme>(
    s: CHandle,
    a: CHandle,
    coeffs: *const f64,
    n: usize,
    out: *mut Handle,
    err: ErrOut,
) -> i32 {
    guard(err, || {
        let r = obj::<S::Server>(s, "server")?
            .eval_poly(obj::<Ct<S>>(a, "ciphertext")?, slice(coeffs, n)?)
            .map_err(|e| e.to_string())?;
        put(out, r)
    })
}
unsafe extern "C" fn serialize_ct<S: Scheme>(s: CHandle, c: CHandle, out: *mut PgBytes, err: ErrOut) -> i32 {
    guard(err, || {
        let b = obj::<S::Server>(s, "server")?
            .serialize_ciphertext(obj::<Ct<S>>(c, "ciphertext")?)
            .map_err(|e| e.to_string())?;
        put_bytes(out, b)
    })
}
unsafe extern "C" fn client_save_secret<S: Scheme>(c: CHandle, out: *mut PgBytes, err: ErrOut) -> i32 {
    guard(err, || put_bytes(out, obj::<S::Client>(c, "client")?.save_secret().map_err(|e| e.to_string())?))
}
unsafe extern "C" fn client_load<S: Scheme>(d: *const u8, len: usize, out: *mut Handle, err: ErrOut) -> i32 {
    guard(err, || put(out, S::load_client(slice(d, len)?).map_err(|e| e.to_string())?))
}
unsafe extern "C" fn rotate_many<S: Scheme>(
    s: CHandle,
    a: CHandle,
    steps: *const i64,
    n: usize,
    out: *mut Handle,
    err: ErrOut,
) -> i32 {
    guard(err, || {
        let steps = slice(steps, n)?;
        if n > 0 && out.is_null() {
            return Err("null output pointer".into());
        }
        let r = obj::<S::Server>(s, "server")?
            .rotate_many(obj::<Ct<S>>(a, "ciphertext")?, steps)
            .map_err(|e| e.to_string())?;
        if r.len() != n {
            return Err(format!("rotate_many returned {} ciphertexts for {n} steps", r.len()));
        }
        for (i, ct) in r.into_iter().enumerate() {
            put(out.add(i), ct)?;
        }
        Ok(())
    })
}

/// `std::io::Write` over a C sink.
struct SinkWriter {
    sink: PgSink,
    ctx: *mut std::ffi::c_void,
}
impl std::io::Write for SinkWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // SAFETY: the caller of `client_write_evaluation_keys` vouches for `sink` and `ctx`.
        match unsafe { (self.sink)(self.ctx, buf.as_ptr(), buf.len()) } {
            0 => Ok(buf.len()),
            code => Err(std::io::Error::other(format!("the key sink refused the data (code {code})"))),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
unsafe extern "C" fn client_write_evaluation_keys<S: Scheme>(
    c: CHandle,
    sink: PgSink,
    ctx: *mut std::ffi::c_void,
    err: ErrOut,
) -> i32 {
    guard(err, || {
        let mut w = SinkWriter { sink, ctx };
        obj::<S::Client>(c, "client")?.write_evaluation_keys(&mut w).map_err(|e| e.to_string())
    })
}
unsafe extern "C" fn server_from_file<S: Scheme>(path: *const c_char, out: *mut Handle, err: ErrOut) -> i32 {
    guard(err, || {
        if path.is_null() {
            return Err("null path".into());
        }
        let p = CStr::from_ptr(path).to_str().map_err(|_| "key file path is not UTF-8".to_string())?;
        put(out, S::server_from_file(std::path::Path::new(p)).map_err(|e| e.to_string())?)
    })
}
unsafe extern "C" fn client_local_server<S: Scheme>(c: CHandle, out: *mut Handle, err: ErrOut) -> i32 {
    guard(err, || {
        if out.is_null() {
            return Err("null output pointer".into());
        }
        match obj::<S::Client>(c, "client")?.local_server().map_err(|e| e.to_string())? {
            Some(server) => put(out, server),
            None => {
                *out = std::ptr::null_mut();
                Ok(())
            }
        }
    })
}
unsafe extern "C" fn deserialize_ct<S: Scheme>(
    s: CHandle,
    d: *const u8,
    len: usize,
    out: *mut Handle,
    err: ErrOut,
) -> i32 {
    guard(err, || {
        let ct = obj::<S::Server>(s, "server")?.deserialize_ciphertext(slice(d, len)?).map_err(|e| e.to_string())?;
        put(out, ct)
    })
}

/// Builds the function table for scheme `S` (the strings are leaked once, they live forever).
pub fn vtable<S: Scheme + 'static>(cell: &'static OnceLock<PluginVTable>) -> &'static PluginVTable {
    cell.get_or_init(|| PluginVTable {
        abi_version: ABI_VERSION,
        struct_size: std::mem::size_of::<PluginVTable>() as u32,
        name: CString::new(S::NAME).expect("name without NUL").into_raw(),
        description: CString::new(S::DESCRIPTION).expect("description without NUL").into_raw(),
        string_free,
        bytes_free,
        capabilities: capabilities::<S>,
        client_new: client_new::<S>,
        client_free: client_free::<S>,
        client_capabilities: client_capabilities::<S>,
        client_evaluation_keys: client_evaluation_keys::<S>,
        client_encode: client_encode::<S>,
        client_encrypt: client_encrypt::<S>,
        client_decrypt: client_decrypt::<S>,
        client_decode: client_decode::<S>,
        client_serialize_ct: client_serialize_ct::<S>,
        client_deserialize_ct: client_deserialize_ct::<S>,
        server_new: server_new::<S>,
        server_free: server_free::<S>,
        server_capabilities: server_capabilities::<S>,
        server_rotation_steps: server_rotation_steps::<S>,
        server_modulus: server_modulus::<S>,
        ct_free: ct_free::<S>,
        ct_clone: ct_clone::<S>,
        ct_info: ct_info::<S>,
        pt_free: pt_free::<S>,
        pt_clone: pt_clone::<S>,
        pt_info: pt_info::<S>,
        encode: encode::<S>,
        add: add::<S>,
        sub: sub::<S>,
        mul: mul::<S>,
        add_plain: add_plain::<S>,
        sub_plain: sub_plain::<S>,
        mul_plain: mul_plain::<S>,
        negate: negate::<S>,
        square: square::<S>,
        rescale: rescale::<S>,
        bootstrap: bootstrap::<S>,
        add_scalar: add_scalar::<S>,
        mul_scalar: mul_scalar::<S>,
        mul_integer: mul_integer::<S>,
        drop_to_level: drop_to_level::<S>,
        rotate: rotate::<S>,
        eval_poly: eval_poly::<S>,
        serialize_ct: serialize_ct::<S>,
        deserialize_ct: deserialize_ct::<S>,
        client_save_secret: client_save_secret::<S>,
        client_load: client_load::<S>,
        rotate_many: rotate_many::<S>,
        client_write_evaluation_keys: client_write_evaluation_keys::<S>,
        server_from_file: server_from_file::<S>,
        client_local_server: client_local_server::<S>,
    })
}

/// Turns a [`Scheme`] into a loadable plugin: exports `peregrine_plugin_entry`.
///
/// Put it in a crate built with `crate-type = ["cdylib", "rlib"]`:
/// ```text
/// peregrine_backend::export_plugin!(crate::MyScheme);
/// ```
/// The entry point gets a module of its own, which nothing else in the crate calls: a program
/// that links several backend crates as libraries (each with its entry point) does not pull
/// any of them in, so their identical symbol names do not collide.
#[macro_export]
macro_rules! export_plugin {
    ($scheme:ty) => {
        /// The plugin entry point, alone in its module (see `peregrine_backend::export_plugin!`).
        #[doc(hidden)]
        pub mod __peregrine_plugin_entry {
            #[allow(unused_imports)]
            use super::*;
            /// Plugin entry point: returns this library's Peregrine function table.
            #[no_mangle]
            pub extern "C" fn peregrine_plugin_entry() -> *const $crate::plugin::abi::PluginVTable {
                static CELL: ::std::sync::OnceLock<$crate::plugin::abi::PluginVTable> = ::std::sync::OnceLock::new();
                $crate::plugin::export::vtable::<$scheme>(&CELL) as *const _
            }
        }
    };
}
