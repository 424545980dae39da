//! The plugin C ABI, version [`ABI_VERSION`] (2 added `client_save_secret` and `client_load`; 3 added
//! `rotate_many`, `client_write_evaluation_keys`, `server_from_file` and `client_local_server`). Mirrors `include/peregrine_plugin.h` exactly.
//!
//! A plugin is a shared library exporting `const PeregrineVTable *peregrine_plugin_entry(void)`.
//! Every fallible function returns a status (0 = success) and on failure stores a
//! NUL-terminated UTF-8 message in `*err`, to be released with `string_free`. Handles
//! (client, server, ciphertext, plaintext) are opaque; plugins must allow them to be used from
//! several threads at once for reads, as the Rust `Send + Sync` bounds require.

use std::ffi::{c_char, c_void};

/// ABI version implemented by this build. Bumped on any incompatible change.
pub const ABI_VERSION: u32 = 3;
/// Name of the exported entry function (NUL-terminated).
pub const ENTRY_SYMBOL: &[u8] = b"peregrine_plugin_entry\0";

/// Status: success.
pub const STATUS_OK: i32 = 0;
/// Status: the operation failed; `*err` holds the message.
pub const STATUS_ERROR: i32 = 1;
/// Status: the plugin caught a panic or exception; `*err` holds the message.
pub const STATUS_PANIC: i32 = 2;

/// An owned byte buffer allocated by the plugin; release it with `bytes_free`.
#[repr(C)]
#[derive(Debug)]
pub struct PgBytes {
    /// Start of the buffer (may be null when `len` is 0).
    pub data: *mut u8,
    /// Length in bytes.
    pub len: usize,
}

/// Opaque handle.
pub type Handle = *mut c_void;
/// Opaque read-only handle.
pub type CHandle = *const c_void;
/// Error message out-parameter.
pub type ErrOut = *mut *mut c_char;

/// Receives a chunk of a byte stream; returns 0 to continue, anything else to abort.
pub type PgSink = unsafe extern "C" fn(ctx: *mut c_void, data: *const u8, len: usize) -> i32;

/// Binary ciphertext operation `out = f(a, b)`.
pub type BinaryFn = unsafe extern "C" fn(server: CHandle, a: CHandle, b: CHandle, out: *mut Handle, err: ErrOut) -> i32;
/// Unary ciphertext operation `out = f(a)`.
pub type UnaryFn = unsafe extern "C" fn(server: CHandle, a: CHandle, out: *mut Handle, err: ErrOut) -> i32;

/// The function table a plugin exports. Field order and types are the ABI.
#[repr(C)]
pub struct PluginVTable {
    /// Must equal [`ABI_VERSION`].
    pub abi_version: u32,
    /// `sizeof(PeregrineVTable)` as compiled into the plugin.
    pub struct_size: u32,
    /// Backend name, NUL-terminated, static.
    pub name: *const c_char,
    /// One-line description, NUL-terminated, static.
    pub description: *const c_char,

    /// Releases an error or JSON string returned by the plugin.
    pub string_free: unsafe extern "C" fn(s: *mut c_char),
    /// Releases a byte buffer returned by the plugin.
    pub bytes_free: unsafe extern "C" fn(b: PgBytes),

    /// Capabilities (JSON) for parameters (JSON), without generating keys.
    pub capabilities: unsafe extern "C" fn(params_json: *const c_char, out_json: *mut *mut c_char, err: ErrOut) -> i32,

    /// Generates keys: parameters and key request as JSON; returns a client handle.
    pub client_new: unsafe extern "C" fn(
        params_json: *const c_char,
        request_json: *const c_char,
        out: *mut Handle,
        err: ErrOut,
    ) -> i32,
    /// Releases a client.
    pub client_free: unsafe extern "C" fn(client: Handle),
    /// Capabilities of a client (JSON).
    pub client_capabilities: unsafe extern "C" fn(client: CHandle, out_json: *mut *mut c_char, err: ErrOut) -> i32,
    /// Serialised evaluation keys.
    pub client_evaluation_keys: unsafe extern "C" fn(client: CHandle, out: *mut PgBytes, err: ErrOut) -> i32,
    /// Encodes `len` values at `level` and `scale` into a plaintext.
    pub client_encode: unsafe extern "C" fn(
        client: CHandle,
        values: *const f64,
        len: usize,
        level: u32,
        scale: f64,
        out: *mut Handle,
        err: ErrOut,
    ) -> i32,
    /// Encrypts a plaintext.
    pub client_encrypt: unsafe extern "C" fn(client: CHandle, pt: CHandle, out: *mut Handle, err: ErrOut) -> i32,
    /// Decrypts a ciphertext into a plaintext.
    pub client_decrypt: unsafe extern "C" fn(client: CHandle, ct: CHandle, out: *mut Handle, err: ErrOut) -> i32,
    /// Decodes a plaintext into `out` (capacity `cap`), storing the count in `out_len`.
    pub client_decode: unsafe extern "C" fn(
        client: CHandle,
        pt: CHandle,
        out: *mut f64,
        cap: usize,
        out_len: *mut usize,
        err: ErrOut,
    ) -> i32,
    /// Serialises a ciphertext (client side).
    pub client_serialize_ct: unsafe extern "C" fn(client: CHandle, ct: CHandle, out: *mut PgBytes, err: ErrOut) -> i32,
    /// Reads a ciphertext (client side).
    pub client_deserialize_ct:
        unsafe extern "C" fn(client: CHandle, data: *const u8, len: usize, out: *mut Handle, err: ErrOut) -> i32,

    /// Builds an evaluator from serialised evaluation keys.
    pub server_new: unsafe extern "C" fn(keys: *const u8, len: usize, out: *mut Handle, err: ErrOut) -> i32,
    /// Releases a server.
    pub server_free: unsafe extern "C" fn(server: Handle),
    /// Capabilities of a server (JSON).
    pub server_capabilities: unsafe extern "C" fn(server: CHandle, out_json: *mut *mut c_char, err: ErrOut) -> i32,
    /// Rotation steps with keys (JSON array of integers).
    pub server_rotation_steps: unsafe extern "C" fn(server: CHandle, out_json: *mut *mut c_char, err: ErrOut) -> i32,
    /// The modulus q_level.
    pub server_modulus: unsafe extern "C" fn(server: CHandle, level: u32, out: *mut f64, err: ErrOut) -> i32,

    /// Releases a ciphertext.
    pub ct_free: unsafe extern "C" fn(ct: Handle),
    /// Copies a ciphertext (null only if out of memory).
    pub ct_clone: unsafe extern "C" fn(ct: CHandle) -> Handle,
    /// Level and scale of a ciphertext.
    pub ct_info: unsafe extern "C" fn(server: CHandle, ct: CHandle, level: *mut u32, scale: *mut f64) -> i32,
    /// Releases a plaintext.
    pub pt_free: unsafe extern "C" fn(pt: Handle),
    /// Copies a plaintext (null only if out of memory).
    pub pt_clone: unsafe extern "C" fn(pt: CHandle) -> Handle,
    /// Level and scale of a plaintext.
    pub pt_info: unsafe extern "C" fn(server: CHandle, pt: CHandle, level: *mut u32, scale: *mut f64) -> i32,

    /// Encodes on the server side.
    pub encode: unsafe extern "C" fn(
        server: CHandle,
        values: *const f64,
        len: usize,
        level: u32,
        scale: f64,
        out: *mut Handle,
        err: ErrOut,
    ) -> i32,
    /// a + b.
    pub add: BinaryFn,
    /// a − b.
    pub sub: BinaryFn,
    /// a · b with relinearisation.
    pub mul: BinaryFn,
    /// a + plaintext.
    pub add_plain: BinaryFn,
    /// a − plaintext.
    pub sub_plain: BinaryFn,
    /// a · plaintext.
    pub mul_plain: BinaryFn,
    /// −a.
    pub negate: UnaryFn,
    /// a².
    pub square: UnaryFn,
    /// Rescale by q_level.
    pub rescale: UnaryFn,
    /// Bootstrap.
    pub bootstrap: UnaryFn,
    /// a + c.
    pub add_scalar: unsafe extern "C" fn(server: CHandle, a: CHandle, c: f64, out: *mut Handle, err: ErrOut) -> i32,
    /// a · c with c encoded at `scale`.
    pub mul_scalar:
        unsafe extern "C" fn(server: CHandle, a: CHandle, c: f64, scale: f64, out: *mut Handle, err: ErrOut) -> i32,
    /// a · k for an integer k.
    pub mul_integer: unsafe extern "C" fn(server: CHandle, a: CHandle, k: i64, out: *mut Handle, err: ErrOut) -> i32,
    /// Drop to `level`.
    pub drop_to_level:
        unsafe extern "C" fn(server: CHandle, a: CHandle, level: u32, out: *mut Handle, err: ErrOut) -> i32,
    /// Rotate left by `step`.
    pub rotate: unsafe extern "C" fn(server: CHandle, a: CHandle, step: i64, out: *mut Handle, err: ErrOut) -> i32,
    /// Σ coeffs[k]·a^k.
    pub eval_poly: unsafe extern "C" fn(
        server: CHandle,
        a: CHandle,
        coeffs: *const f64,
        n: usize,
        out: *mut Handle,
        err: ErrOut,
    ) -> i32,
    /// Serialises a ciphertext (server side).
    pub serialize_ct: unsafe extern "C" fn(server: CHandle, ct: CHandle, out: *mut PgBytes, err: ErrOut) -> i32,
    /// Reads a ciphertext (server side).
    pub deserialize_ct:
        unsafe extern "C" fn(server: CHandle, data: *const u8, len: usize, out: *mut Handle, err: ErrOut) -> i32,
    /// The client's secret state (ABI 2).
    pub client_save_secret: unsafe extern "C" fn(client: CHandle, out: *mut PgBytes, err: ErrOut) -> i32,
    /// A client from its saved secret state (ABI 2).
    pub client_load: unsafe extern "C" fn(data: *const u8, len: usize, out: *mut Handle, err: ErrOut) -> i32,
    /// Hoisted rotations of `a` by each of `n` steps into `out[0..n]` (ABI 3).
    pub rotate_many: unsafe extern "C" fn(
        server: CHandle,
        a: CHandle,
        steps: *const i64,
        n: usize,
        out: *mut Handle,
        err: ErrOut,
    ) -> i32,
    /// Streams the evaluation keys (the bytes of `client_evaluation_keys`) to `sink` (ABI 3).
    pub client_write_evaluation_keys:
        unsafe extern "C" fn(client: CHandle, sink: PgSink, sink_ctx: *mut c_void, err: ErrOut) -> i32,
    /// A server from an evaluation-key file; `path` is NUL-terminated UTF-8 (ABI 3).
    pub server_from_file: unsafe extern "C" fn(path: *const c_char, out: *mut Handle, err: ErrOut) -> i32,
    /// A server sharing the client's evaluation keys in memory, or `*out = NULL` when the
    /// backend has none (ABI 3).
    pub client_local_server: unsafe extern "C" fn(client: CHandle, out: *mut Handle, err: ErrOut) -> i32,
}

// SAFETY: the table is immutable after construction; its pointers refer to static data and
// functions of the plugin, which are valid from any thread.
unsafe impl Sync for PluginVTable {}
unsafe impl Send for PluginVTable {}

/// The pointer fields of [`PluginVTable`] after its two `u32` header fields, in order (the
/// names a null entry is reported by).
pub const TABLE_POINTERS: [&str; 51] = [
    "name",
    "description",
    "string_free",
    "bytes_free",
    "capabilities",
    "client_new",
    "client_free",
    "client_capabilities",
    "client_evaluation_keys",
    "client_encode",
    "client_encrypt",
    "client_decrypt",
    "client_decode",
    "client_serialize_ct",
    "client_deserialize_ct",
    "server_new",
    "server_free",
    "server_capabilities",
    "server_rotation_steps",
    "server_modulus",
    "ct_free",
    "ct_clone",
    "ct_info",
    "pt_free",
    "pt_clone",
    "pt_info",
    "encode",
    "add",
    "sub",
    "mul",
    "add_plain",
    "sub_plain",
    "mul_plain",
    "negate",
    "square",
    "rescale",
    "bootstrap",
    "add_scalar",
    "mul_scalar",
    "mul_integer",
    "drop_to_level",
    "rotate",
    "eval_poly",
    "serialize_ct",
    "deserialize_ct",
    "client_save_secret",
    "client_load",
    "rotate_many",
    "client_write_evaluation_keys",
    "server_from_file",
    "client_local_server",
];

/// Offset of the first pointer field of [`PluginVTable`].
const TABLE_HEADER: usize = 8;

/// What is wrong with a plugin's function table, found by [`check_table`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableDefect {
    /// Fewer bytes than the two header fields.
    Truncated(usize),
    /// Another ABI version.
    Version(u32),
    /// Another table size.
    Size(u32),
    /// A pointer field (named) is null: a plugin built from an incomplete table.
    NullEntry(&'static str),
}

/// Checks the raw bytes of a function table (as the plugin laid them out) before any of its
/// pointers is used: header, version, size, and every pointer non-null. A Rust function
/// pointer may not be null, so a C plugin that leaves an entry empty must be refused here.
pub fn check_table(raw: &[u8]) -> Result<(), TableDefect> {
    let word = |at: usize| -> Option<u32> { raw.get(at..at + 4).map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]])) };
    let (Some(version), Some(size)) = (word(0), word(4)) else { return Err(TableDefect::Truncated(raw.len())) };
    if version != ABI_VERSION {
        return Err(TableDefect::Version(version));
    }
    if size as usize != std::mem::size_of::<PluginVTable>() || raw.len() < size as usize {
        return Err(TableDefect::Size(size));
    }
    let ptr = std::mem::size_of::<usize>();
    for (k, name) in TABLE_POINTERS.iter().enumerate() {
        let at = TABLE_HEADER + k * ptr;
        let bytes = &raw[at..at + ptr];
        if bytes.iter().all(|&b| b == 0) {
            return Err(TableDefect::NullEntry(name));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pointer_names_cover_the_table() {
        let ptr = std::mem::size_of::<usize>();
        assert_eq!(TABLE_HEADER + TABLE_POINTERS.len() * ptr, std::mem::size_of::<PluginVTable>());
        assert_eq!(std::mem::offset_of!(PluginVTable, name), TABLE_HEADER);
        assert_eq!(std::mem::offset_of!(PluginVTable, client_local_server), TABLE_HEADER + 50 * ptr);
        assert_eq!(std::mem::offset_of!(PluginVTable, encode), TABLE_HEADER + 26 * ptr);
    }

    #[test]
    fn null_entries_truncation_and_versions_are_named() {
        let size = std::mem::size_of::<PluginVTable>();
        let mut raw = vec![1u8; size];
        raw[0..4].copy_from_slice(&ABI_VERSION.to_ne_bytes());
        raw[4..8].copy_from_slice(&(size as u32).to_ne_bytes());
        assert_eq!(check_table(&raw), Ok(()));
        let ptr = std::mem::size_of::<usize>();
        let mut holed = raw.clone();
        holed[TABLE_HEADER + 29 * ptr..TABLE_HEADER + 30 * ptr].fill(0);
        assert_eq!(check_table(&holed), Err(TableDefect::NullEntry("mul")));
        assert_eq!(check_table(&raw[..5]), Err(TableDefect::Truncated(5)));
        assert_eq!(check_table(&raw[..size - 1]), Err(TableDefect::Size(size as u32)));
        let mut old = raw.clone();
        old[0..4].copy_from_slice(&2u32.to_ne_bytes());
        assert_eq!(check_table(&old), Err(TableDefect::Version(2)));
    }
}
