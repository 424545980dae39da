//! Raw declarations of Peregrine's C shim over OpenFHE CKKS (`cpp/shim.h`).
//!
//! The shim uses FIXEDMANUAL scaling and HYBRID key switching, catches every C++ exception and
//! returns it as a message. Scales are the caller's business: functions that need the caller's
//! scale of a ciphertext take it as an argument.
//!
//! When OpenFHE was not found at build time ([`AVAILABLE`] is `false`) no function is declared;
//! [`UNAVAILABLE_REASON`] says what to do. Use the safe wrapper in `backend-openfhe`.

#![warn(missing_docs)]

/// Whether this build found and linked OpenFHE.
pub const AVAILABLE: bool = cfg!(openfhe);

/// Why OpenFHE is unavailable in this build (and how to fix it).
pub const UNAVAILABLE_REASON: &str = "OpenFHE was not found when this was built; install it (https://github.com/openfheorg/openfhe-development, `make install`) and set OPENFHE_ROOT to its prefix (or put its CMake config on CMAKE_PREFIX_PATH), then rebuild";

/// Where the linked OpenFHE was found (empty when unavailable).
pub const ORIGIN: &str = match option_env!("PEREGRINE_OPENFHE_ORIGIN") {
    Some(s) => s,
    None => "",
};

#[cfg(openfhe)]
pub use ffi::*;

#[cfg(openfhe)]
#[allow(missing_docs)]
mod ffi {
    use std::ffi::{c_char, c_void};

    /// Opaque crypto context (with or without a secret key).
    #[repr(C)]
    pub struct PfContext {
        _private: [u8; 0],
    }
    /// Opaque ciphertext.
    #[repr(C)]
    pub struct PfCiphertext {
        _private: [u8; 0],
    }
    /// A byte buffer allocated by the shim; release with [`pf_bytes_free`].
    #[repr(C)]
    pub struct PfBytes {
        pub data: *mut u8,
        pub len: usize,
    }
    /// Context parameters (see `shim.h`).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default)]
    pub struct PfParams {
        pub ring_dim: u32,
        pub mult_depth: u32,
        pub scale_bits: u32,
        pub first_mod_bits: u32,
        pub num_large_digits: u32,
        pub secure: i32,
        pub sparse_secret: i32,
        pub bootstrap: i32,
        pub level_budget_enc: u32,
        pub level_budget_dec: u32,
        pub slots: u32,
    }

    /// Receives serialised bytes piece by piece; returns 0 to continue.
    pub type PfSink = unsafe extern "C" fn(ctx: *mut c_void, data: *const u8, len: usize) -> i32;

    type Err = *mut *mut c_char;
    type Ct = PfCiphertext;

    extern "C" {
        pub fn pf_string_free(s: *mut c_char);
        pub fn pf_bytes_free(b: PfBytes);
        pub fn pf_bootstrap_depth(enc: u32, dec: u32, sparse: i32, out: *mut u32, err: Err) -> i32;
        pub fn pf_context_new(p: *const PfParams, out: *mut *mut PfContext, err: Err) -> i32;
        pub fn pf_context_free(c: *mut PfContext);
        pub fn pf_context_info(
            c: *const PfContext,
            ring_dim: *mut u32,
            towers: *mut u32,
            log_qp: *mut f64,
            err: Err,
        ) -> i32;
        pub fn pf_context_moduli(c: *const PfContext, out: *mut f64, cap: usize, err: Err) -> i32;
        pub fn pf_keygen(c: *mut PfContext, steps: *const i32, n: usize, bootstrap: i32, err: Err) -> i32;
        pub fn pf_has_secret_key(c: *const PfContext) -> i32;
        pub fn pf_serialize_eval_keys(c: *const PfContext, sink: PfSink, sink_ctx: *mut c_void, err: Err) -> i32;
        pub fn pf_server_new(
            data: *const u8,
            len: usize,
            bootstrap: i32,
            enc: u32,
            dec: u32,
            slots: u32,
            out: *mut *mut PfContext,
            err: Err,
        ) -> i32;
        pub fn pf_save_client(c: *const PfContext, out: *mut PfBytes, err: Err) -> i32;
        pub fn pf_load_client(data: *const u8, len: usize, out: *mut *mut PfContext, err: Err) -> i32;
        pub fn pf_server_from_client(c: *const PfContext, out: *mut *mut PfContext, err: Err) -> i32;
        pub fn pf_rotation_indices(c: *const PfContext, out: *mut i32, cap: usize, n: *mut usize, err: Err) -> i32;
        pub fn pf_encrypt(
            c: *const PfContext,
            v: *const f64,
            n: usize,
            level: u32,
            scale: f64,
            out: *mut *mut Ct,
            err: Err,
        ) -> i32;
        pub fn pf_decrypt(
            c: *const PfContext,
            ct: *const Ct,
            scale: f64,
            out: *mut f64,
            cap: usize,
            out_len: *mut usize,
            err: Err,
        ) -> i32;
        pub fn pf_ct_free(ct: *mut Ct);
        pub fn pf_ct_clone(ct: *const Ct) -> *mut Ct;
        pub fn pf_ct_info(ct: *const Ct, level: *mut u32, deg: *mut u32) -> i32;
        pub fn pf_add(c: *const PfContext, a: *const Ct, b: *const Ct, out: *mut *mut Ct, err: Err) -> i32;
        pub fn pf_sub(c: *const PfContext, a: *const Ct, b: *const Ct, out: *mut *mut Ct, err: Err) -> i32;
        pub fn pf_mul(c: *const PfContext, a: *const Ct, b: *const Ct, out: *mut *mut Ct, err: Err) -> i32;
        pub fn pf_square(c: *const PfContext, a: *const Ct, out: *mut *mut Ct, err: Err) -> i32;
        pub fn pf_negate(c: *const PfContext, a: *const Ct, out: *mut *mut Ct, err: Err) -> i32;
        pub fn pf_add_plain(
            c: *const PfContext,
            a: *const Ct,
            v: *const f64,
            n: usize,
            scale: f64,
            subtract: i32,
            out: *mut *mut Ct,
            err: Err,
        ) -> i32;
        pub fn pf_mul_plain(
            c: *const PfContext,
            a: *const Ct,
            v: *const f64,
            n: usize,
            pscale: f64,
            out: *mut *mut Ct,
            err: Err,
        ) -> i32;
        pub fn pf_add_scalar(c: *const PfContext, a: *const Ct, k: f64, scale: f64, out: *mut *mut Ct, err: Err)
            -> i32;
        pub fn pf_mul_scalar(
            c: *const PfContext,
            a: *const Ct,
            k: f64,
            kscale: f64,
            out: *mut *mut Ct,
            err: Err,
        ) -> i32;
        pub fn pf_mul_integer(c: *const PfContext, a: *const Ct, k: i64, out: *mut *mut Ct, err: Err) -> i32;
        pub fn pf_rescale(c: *const PfContext, a: *const Ct, out: *mut *mut Ct, err: Err) -> i32;
        pub fn pf_drop_to_level(c: *const PfContext, a: *const Ct, level: u32, out: *mut *mut Ct, err: Err) -> i32;
        pub fn pf_rotate(c: *const PfContext, a: *const Ct, step: i32, out: *mut *mut Ct, err: Err) -> i32;
        pub fn pf_rotate_many(
            c: *const PfContext,
            a: *const Ct,
            steps: *const i32,
            n: usize,
            outs: *mut *mut Ct,
            err: Err,
        ) -> i32;
        pub fn pf_bootstrap(c: *const PfContext, a: *const Ct, out: *mut *mut Ct, err: Err) -> i32;
        pub fn pf_serialize_ct(ct: *const Ct, out: *mut PfBytes, err: Err) -> i32;
        pub fn pf_deserialize_ct(c: *const PfContext, data: *const u8, len: usize, out: *mut *mut Ct, err: Err) -> i32;
    }
}
