//! The 128-bit security bound of RLWE parameters, shared by every CKKS backend.
//!
//! The bound is the largest log2(Q·P) (the whole modulus, key-switching primes included) for a
//! ring dimension N at 128-bit classical security with a uniform ternary secret: the
//! HomomorphicEncryption.org standard table for N ≤ 2^15, and OpenFHE's extension of it with
//! the same estimator for N = 2^16 and 2^17.

use crate::error::BackendError;
use crate::BResult;

/// `(N, largest log2(Q·P))` at 128-bit security, uniform ternary secret.
pub const MAX_LOG_QP_128: [(usize, f64); 8] = [
    (1 << 10, 27.0),
    (1 << 11, 54.0),
    (1 << 12, 109.0),
    (1 << 13, 218.0),
    (1 << 14, 438.0),
    (1 << 15, 881.0),
    (1 << 16, 1747.0),
    (1 << 17, 3523.0),
];

/// The largest log2(Q·P) allowed at 128-bit security for ring dimension `n` (None: not tabulated).
pub fn max_log_qp_128(n: usize) -> Option<f64> {
    MAX_LOG_QP_128.iter().find(|(d, _)| *d == n).map(|(_, b)| *b)
}

/// Checks that a modulus of `log_qp` bits is 128-bit secure at ring dimension `ring_dim`;
/// returns the security level (128) or an error saying what to change.
pub fn check_128(ring_dim: usize, log_qp: f64) -> BResult<u32> {
    let Some(max) = max_log_qp_128(ring_dim) else {
        return Err(BackendError::InvalidParameters(format!(
            "no 128-bit security bound is tabulated for N = {ring_dim}"
        )));
    };
    if log_qp > max {
        return Err(BackendError::InvalidParameters(format!(
            "insecure parameters: log2(Q·P) = {log_qp:.1} exceeds {max} allowed for N = {ring_dim} at 128-bit security \
             (HE standard); use fewer levels, a smaller scale, or a larger ring"
        )));
    }
    Ok(128)
}
