//! Integrity of files a backend writes: a BLAKE3 digest of the body appended to it, checked
//! before anything in the body is parsed, so a truncated, bit-flipped or spliced file is refused
//! with a clear error instead of being half-read.

use crate::error::BackendError;

/// Length of the trailer [`seal`] appends.
pub const DIGEST_BYTES: usize = 32;

/// `body` followed by its BLAKE3 digest.
pub fn seal(mut body: Vec<u8>) -> Vec<u8> {
    let digest = blake3::hash(&body);
    body.extend_from_slice(digest.as_bytes());
    body
}

/// The body of bytes written by [`seal`], after checking the digest; `what` names the file's
/// kind in the error.
pub fn unseal<'a>(bytes: &'a [u8], what: &'static str) -> Result<&'a [u8], BackendError> {
    let Some(split) = bytes.len().checked_sub(DIGEST_BYTES) else {
        return Err(BackendError::Deserialize {
            what,
            detail: format!("{} bytes is shorter than its {DIGEST_BYTES}-byte checksum (truncated file)", bytes.len()),
        });
    };
    let (body, digest) = bytes.split_at(split);
    if blake3::hash(body).as_bytes() != digest {
        return Err(BackendError::Deserialize {
            what,
            detail: "checksum mismatch: the file is truncated, corrupted or was altered".into(),
        });
    }
    Ok(body)
}

/// Overwrites `buf` with zeros in a way the optimiser may not remove (volatile writes, then a
/// fence): for secret keys and their serialised bytes, before their memory is freed.
pub fn wipe<T: Copy + Default>(buf: &mut [T]) {
    for x in buf.iter_mut() {
        // SAFETY: `x` is a valid, aligned, exclusive reference to a `Copy` value.
        unsafe { std::ptr::write_volatile(x, T::default()) };
    }
    std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wipe_zeroes_every_element() {
        let mut key = vec![7u64, u64::MAX, 1];
        wipe(&mut key);
        assert_eq!(key, [0, 0, 0]);
        let mut bytes = b"secret".to_vec();
        wipe(&mut bytes);
        assert!(bytes.iter().all(|&b| b == 0));
    }

    #[test]
    fn sealed_bytes_round_trip_and_every_single_change_is_refused() {
        let sealed = seal(b"{\"kind\": \"keys\"}".to_vec());
        assert_eq!(unseal(&sealed, "keys").unwrap(), b"{\"kind\": \"keys\"}");
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x10;
            let e = unseal(&bad, "keys").unwrap_err().to_string();
            assert!(e.contains("checksum mismatch"), "{e}");
        }
        for cut in [0, 1, 31, sealed.len() - 1] {
            assert!(unseal(&sealed[..cut], "keys").is_err());
        }
        assert!(unseal(&sealed[..31], "keys").unwrap_err().to_string().contains("truncated"));
    }
}
