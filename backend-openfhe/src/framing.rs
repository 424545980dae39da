//! The bytes around OpenFHE's own serialisations in the files this backend writes: a header
//! (parameters, rotation steps, bootstrapping, key-pair identity) and a BLAKE3 digest, so a
//! truncated, bit-flipped, spliced or swapped file is refused by name before OpenFHE parses it.
//!
//! - evaluation keys (streamed, gigabytes at N = 2^16):
//!   `PGOFEK04 | u32 n | JSON header (n bytes) | OpenFHE keys | PGOFEKND | u64 bytes before the marker | digest of those bytes`;
//! - client state: `seal(PGOFSK02 | u32 n | JSON header | OpenFHE secret key and context)`;
//! - ciphertext: `seal(PGOFCT02 | key id (16 bytes) | scale (f64) | OpenFHE ciphertext)`.
//!
//! `seal` is [`peregrine_backend::integrity::seal`]: the body followed by its BLAKE3 digest.
//! This module does not call OpenFHE, so it is built and tested with or without an install.

use std::io::Write;

use peregrine_backend::integrity::{seal, unseal, DIGEST_BYTES};
use peregrine_backend::{BResult, BackendError};
use serde::{Deserialize, Serialize};

use crate::OpenFheParams;

/// Ciphertext file magic (version 2: sealed, bound to a key pair).
pub const CT_MAGIC: &[u8; 8] = b"PGOFCT02";
/// Evaluation-key file magic (version 4: digest in the end marker, key-pair identity).
pub const KEYS_MAGIC: &[u8; 8] = b"PGOFEK04";
/// Client-state file magic (version 2: sealed).
pub const SECRET_MAGIC: &[u8; 8] = b"PGOFSK02";
/// Ends evaluation keys; followed by the count of bytes before it and their digest.
const KEYS_END: &[u8; 8] = b"PGOFEKND";
/// Bytes after the evaluation keys' body: marker, count, digest.
pub const KEYS_TRAILER: usize = 8 + 8 + DIGEST_BYTES;

const WHAT_KEYS: &str = "OpenFHE evaluation keys";
const WHAT_SECRET: &str = "OpenFHE client state";
const WHAT_CT: &str = "OpenFHE ciphertext";

/// What the server needs besides OpenFHE's keys, written in front of them (and of the client
/// state).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyHeader {
    /// The parameters the context was built with.
    pub params: OpenFheParams,
    /// Rotation steps the keys hold.
    pub rotations: Vec<i64>,
    /// Whether bootstrapping keys are included.
    pub bootstrap: bool,
    /// Random identity of the key pair (32 hex digits), copied into every ciphertext: a
    /// ciphertext of another key pair is refused instead of decrypting to noise.
    pub key_id: String,
}

/// A fresh random key-pair identity.
pub fn new_key_id() -> String {
    rand::random::<[u8; 16]>().iter().map(|b| format!("{b:02x}")).collect()
}

/// The 16 bytes of a key id (its hex digits parsed), or an error naming `what`.
fn key_id_bytes(id: &str, what: &'static str) -> BResult<[u8; 16]> {
    let bad = || BackendError::Deserialize { what, detail: format!("key id {id:?} is not 32 hex digits") };
    if id.len() != 32 || !id.is_ascii() {
        return Err(bad());
    }
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&id[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// Refuses a file written by an earlier version of this backend, naming it.
fn refuse_old(bytes: &[u8], family: &[u8; 7], current: &[u8; 8], what: &'static str) -> BResult<()> {
    if bytes.len() >= 8 && bytes[..7] == family[..] && bytes[..8] != current[..] {
        return Err(BackendError::Deserialize {
            what,
            detail: format!(
                "format {:?} was written by another version of Peregrine (this one reads {:?}): generate the keys again",
                String::from_utf8_lossy(&bytes[..8]),
                String::from_utf8_lossy(current)
            ),
        });
    }
    Ok(())
}

/// Joins `magic | u32 header length | JSON header | body`.
fn join_header(magic: &[u8; 8], header: &KeyHeader, body: &[u8]) -> BResult<Vec<u8>> {
    let h = serde_json::to_vec(header)
        .map_err(|e| BackendError::Serialize { what: "OpenFHE key header", detail: e.to_string() })?;
    let mut out = Vec::with_capacity(12 + h.len() + body.len() + DIGEST_BYTES);
    out.extend_from_slice(magic);
    out.extend_from_slice(&(h.len() as u32).to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(body);
    Ok(out)
}

/// Splits `magic | u32 header length | JSON header | body`, checking the key id's form.
fn split_header<'a>(bytes: &'a [u8], magic: &[u8; 8], what: &'static str) -> BResult<(KeyHeader, &'a [u8])> {
    let bad = |d: String| BackendError::Deserialize { what, detail: d };
    if bytes.len() < 12 || &bytes[..8] != magic {
        return Err(bad("missing the Peregrine OpenFHE header (not an `openfhe` file of this kind?)".into()));
    }
    let hlen = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")) as usize;
    let body = &bytes[12..];
    if hlen > body.len() {
        return Err(bad(format!("truncated header (it claims {hlen} bytes, {} remain)", body.len())));
    }
    let header: KeyHeader = serde_json::from_slice(&body[..hlen]).map_err(|e| bad(format!("header: {e}")))?;
    key_id_bytes(&header.key_id, what)?;
    Ok((header, &body[hlen..]))
}

/// The client state file: header and OpenFHE's serialised secret context, sealed.
pub fn client_state(header: &KeyHeader, body: &[u8]) -> BResult<Vec<u8>> {
    Ok(seal(join_header(SECRET_MAGIC, header, body)?))
}

/// The header and OpenFHE bytes of a client state file, after checking its digest.
pub fn open_client_state(bytes: &[u8]) -> BResult<(KeyHeader, &[u8])> {
    refuse_old(bytes, b"PGOFSK0", SECRET_MAGIC, WHAT_SECRET)?;
    split_header(unseal(bytes, WHAT_SECRET)?, SECRET_MAGIC, WHAT_SECRET)
}

/// A ciphertext file: key id, scale and OpenFHE's bytes, sealed.
pub fn ciphertext(key_id: &str, scale: f64, raw: &[u8]) -> BResult<Vec<u8>> {
    let id = key_id_bytes(key_id, WHAT_CT)?;
    let mut out = Vec::with_capacity(32 + raw.len() + DIGEST_BYTES);
    out.extend_from_slice(CT_MAGIC);
    out.extend_from_slice(&id);
    out.extend_from_slice(&scale.to_le_bytes());
    out.extend_from_slice(raw);
    Ok(seal(out))
}

/// The scale and OpenFHE bytes of a ciphertext file, after checking its digest, that it
/// belongs to the key pair `key_id` and that its scale is a positive finite number.
pub fn open_ciphertext<'a>(bytes: &'a [u8], key_id: &str) -> BResult<(f64, &'a [u8])> {
    let bad = |d: &str| BackendError::Deserialize { what: WHAT_CT, detail: d.into() };
    refuse_old(bytes, b"PGOFCT0", CT_MAGIC, WHAT_CT)?;
    if bytes.len() < 8 || &bytes[..8] != CT_MAGIC {
        return Err(bad("missing the Peregrine OpenFHE ciphertext header"));
    }
    let body = unseal(bytes, WHAT_CT)?;
    if body.len() < 32 {
        return Err(bad("truncated header"));
    }
    if body[8..24] != key_id_bytes(key_id, WHAT_CT)? {
        return Err(bad("encrypted under a different key pair than these keys (mixed-up session files?)"));
    }
    let scale = f64::from_le_bytes(body[24..32].try_into().expect("8 bytes"));
    if !(scale > 1.0 && scale.is_finite()) {
        return Err(bad("the scale in the header is not a positive finite number"));
    }
    Ok((scale, &body[32..]))
}

/// Writes evaluation keys: the header at once, the body through [`std::io::Write`], the end
/// marker with count and digest at [`KeysWriter::finish`].
pub struct KeysWriter<'a> {
    out: &'a mut dyn Write,
    count: u64,
    hasher: blake3::Hasher,
}

impl<'a> KeysWriter<'a> {
    /// Starts the file with `header`.
    pub fn new(out: &'a mut dyn Write, header: &KeyHeader) -> BResult<Self> {
        let mut w = KeysWriter { out, count: 0, hasher: blake3::Hasher::new() };
        let h = join_header(KEYS_MAGIC, header, &[])?;
        w.write_all(&h).map_err(|e| BackendError::io("writing evaluation keys", &e))?;
        Ok(w)
    }

    /// Ends the file: marker, count of the bytes before it, their digest.
    pub fn finish(self) -> BResult<()> {
        let KeysWriter { out, count, hasher } = self;
        let end = keys_trailer(count, &hasher.finalize());
        out.write_all(&end).and_then(|_| out.flush()).map_err(|e| BackendError::io("writing evaluation keys", &e))
    }
}

impl Write for KeysWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// The end of an evaluation-key file whose `count` bytes before it hash to `digest`.
fn keys_trailer(count: u64, digest: &blake3::Hash) -> Vec<u8> {
    let mut end = Vec::with_capacity(KEYS_TRAILER);
    end.extend_from_slice(KEYS_END);
    end.extend_from_slice(&count.to_le_bytes());
    end.extend_from_slice(digest.as_bytes());
    end
}

/// `body` (header and OpenFHE keys, already in memory) completed into an evaluation-key file.
pub fn seal_keys(mut body: Vec<u8>) -> Vec<u8> {
    let end = keys_trailer(body.len() as u64, &blake3::hash(&body));
    body.extend_from_slice(&end);
    body
}

/// The header and OpenFHE bytes of an evaluation-key file, refused unless its end marker is
/// there, counts exactly the bytes before it and carries their digest.
pub fn open_keys(bytes: &[u8]) -> BResult<(KeyHeader, &[u8])> {
    let bad = |d: &str| BackendError::Deserialize { what: WHAT_KEYS, detail: d.into() };
    refuse_old(bytes, b"PGOFEK0", KEYS_MAGIC, WHAT_KEYS)?;
    let Some(body_len) = bytes.len().checked_sub(KEYS_TRAILER) else {
        return Err(bad("truncated (no end marker)"));
    };
    let (body, end) = bytes.split_at(body_len);
    let counted = u64::from_le_bytes(end[8..16].try_into().expect("8 bytes"));
    if &end[..8] != KEYS_END || counted != body_len as u64 {
        return Err(bad("truncated or corrupted (the end marker is missing or counts other bytes)"));
    }
    if blake3::hash(body).as_bytes()[..] != end[16..] {
        return Err(bad("checksum mismatch: the file is corrupted or was altered"));
    }
    split_header(body, KEYS_MAGIC, WHAT_KEYS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> KeyHeader {
        KeyHeader {
            params: OpenFheParams::default(),
            rotations: vec![1, -3, 64],
            bootstrap: true,
            key_id: new_key_id(),
        }
    }

    fn keys_file(h: &KeyHeader, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = KeysWriter::new(&mut out, h).unwrap();
        w.write_all(body).unwrap();
        w.finish().unwrap();
        out
    }

    /// Every single-byte change and every cut of `file` is refused by `open`, with an error
    /// naming `what`.
    fn every_change_refused(file: &[u8], what: &str, open: impl Fn(&[u8]) -> BResult<()>) {
        open(file).unwrap();
        for i in 0..file.len() {
            let mut bad = file.to_vec();
            bad[i] ^= 0x01;
            let e = open(&bad).expect_err(&format!("flipped byte {i} of {} accepted", file.len())).to_string();
            assert!(e.contains(what), "{e}");
        }
        for cut in [0, 1, 8, 12, file.len() / 2, file.len() - 1] {
            let e = open(&file[..cut]).expect_err("cut file accepted").to_string();
            assert!(e.contains(what), "{e}");
        }
    }

    #[test]
    fn key_ids_are_random_hex_and_malformed_ones_refused() {
        let (a, b) = (new_key_id(), new_key_id());
        assert_ne!(a, b);
        assert_eq!(key_id_bytes(&a, "k").unwrap().len(), 16);
        for bad in ["", "00", &"g".repeat(32), &"é".repeat(16)] {
            assert!(key_id_bytes(bad, "k").unwrap_err().to_string().contains("32 hex digits"));
        }
    }

    #[test]
    fn evaluation_keys_round_trip_and_any_change_is_refused() {
        let h = header();
        let body: Vec<u8> = (0..301u32).map(|i| (i * 7 % 251) as u8).collect();
        let file = keys_file(&h, &body);
        let (got, raw) = open_keys(&file).unwrap();
        assert_eq!((got, raw), (h.clone(), &body[..]));
        every_change_refused(&file, WHAT_KEYS, |b| open_keys(b).map(|_| ()));
        // Bytes appended after the trailer: the marker no longer sits at the end.
        let mut longer = file.clone();
        longer.push(0);
        assert!(open_keys(&longer).unwrap_err().to_string().contains("end marker"));
        // Earlier formats are named as such.
        let mut old = file.clone();
        old[..8].copy_from_slice(b"PGOFEK03");
        assert!(open_keys(&old).unwrap_err().to_string().contains("another version"));
    }

    #[test]
    fn client_state_round_trips_and_any_change_is_refused() {
        let h = header();
        let file = client_state(&h, b"secret key bytes").unwrap();
        let (got, raw) = open_client_state(&file).unwrap();
        assert_eq!((got, raw), (h, &b"secret key bytes"[..]));
        every_change_refused(&file, WHAT_SECRET, |b| open_client_state(b).map(|_| ()));
    }

    #[test]
    fn ciphertexts_round_trip_and_changed_or_foreign_ones_are_refused() {
        let h = header();
        let file = ciphertext(&h.key_id, 2f64.powi(40), b"openfhe ciphertext").unwrap();
        let (scale, raw) = open_ciphertext(&file, &h.key_id).unwrap();
        assert_eq!((scale, raw), (2f64.powi(40), &b"openfhe ciphertext"[..]));
        every_change_refused(&file, WHAT_CT, |b| open_ciphertext(b, &h.key_id).map(|_| ()));
        // Another key pair's ciphertext, intact: refused as such.
        let e = open_ciphertext(&file, &new_key_id()).unwrap_err().to_string();
        assert!(e.contains("different key pair"), "{e}");
        // A non-finite scale is refused even with a valid digest.
        let nan = ciphertext(&h.key_id, f64::NAN, b"x").unwrap();
        assert!(open_ciphertext(&nan, &h.key_id).unwrap_err().to_string().contains("scale"));
        let mut old = file.clone();
        old[..8].copy_from_slice(b"PGOFCT01");
        assert!(open_ciphertext(&old, &h.key_id).unwrap_err().to_string().contains("another version"));
    }

    #[test]
    fn a_header_claiming_more_bytes_than_the_file_holds_is_refused() {
        let h = header();
        let mut raw = join_header(SECRET_MAGIC, &h, b"").unwrap();
        raw[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        let e = open_client_state(&seal(raw)).unwrap_err().to_string();
        assert!(e.contains("truncated header"), "{e}");
    }
}
