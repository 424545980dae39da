//! Byte streams across a C boundary: a [`PgSink`](super::abi::PgSink) callback that writes into
//! any `std::io::Write`, keeping the first I/O error so the caller can report it.

use std::ffi::c_void;
use std::io::Write;

/// The `ctx` of [`write_sink`]: the destination and the first error it returned.
pub struct SinkTarget<'a> {
    out: &'a mut dyn Write,
    error: Option<std::io::Error>,
}

impl<'a> SinkTarget<'a> {
    /// Wraps `out`.
    pub fn new(out: &'a mut dyn Write) -> Self {
        SinkTarget { out, error: None }
    }
    /// The pointer to pass as the sink's `ctx` (valid while `self` is borrowed).
    pub fn as_ctx(&mut self) -> *mut c_void {
        self as *mut SinkTarget as *mut c_void
    }
    /// The I/O error the destination returned, if any (it takes precedence over the status of
    /// the call that fed the sink, which only says the sink refused).
    pub fn take_error(&mut self) -> Option<std::io::Error> {
        self.error.take()
    }
}

/// A sink callback writing each chunk to the [`SinkTarget`] behind `ctx`; returns 1 (abort) on
/// an I/O error.
///
/// # Safety
/// `ctx` must come from [`SinkTarget::as_ctx`] on a live target and `data` must point to `len`
/// readable bytes (or `len` be 0).
pub unsafe extern "C" fn write_sink(ctx: *mut c_void, data: *const u8, len: usize) -> i32 {
    // SAFETY: guaranteed by the caller (see above).
    let t = unsafe { &mut *(ctx as *mut SinkTarget) };
    let bytes = if len == 0 || data.is_null() { &[][..] } else { unsafe { std::slice::from_raw_parts(data, len) } };
    match t.out.write_all(bytes) {
        Ok(()) => 0,
        Err(e) => {
            t.error = Some(e);
            1
        }
    }
}
