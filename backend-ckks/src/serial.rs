//! Versioned binary formats: ciphertexts, evaluation keys and the client's secret.
//!
//! Every format starts with an 8-byte magic (format and version), names the parameter set by
//! its BLAKE3 digest (so bytes made under other parameters are refused by name) and ends with a
//! BLAKE3 checksum of everything before it (so truncated or corrupted bytes are refused).
//! Seeded ("a") parts travel as their 32-byte seed. Evaluation keys are written as a stream
//! and read from a memory-mapped file on the server.

use std::io::Write;
use std::sync::Arc;

use peregrine_backend::{BResult, BackendError, CtMeta};

use crate::context::Context;
use crate::eval::Ciphertext;
use crate::keys::{EncapsulationKeys, EvaluationKeys, RotationKey, SecretKey, SwitchKey};
use crate::params::CkksParams;

/// Magic of a serialised ciphertext (format version 1).
pub const CIPHERTEXT_MAGIC: &[u8; 8] = b"PGCKCT01";
/// Magic of serialised evaluation keys (format version 2: with bootstrapping's keys).
pub const KEYS_MAGIC: &[u8; 8] = b"PGCKEK02";
/// Magic of a saved client secret (format version 1).
pub const SECRET_MAGIC: &[u8; 8] = b"PGCKSK01";
const CHECKSUM: usize = 32;

fn de(what: &'static str, detail: impl Into<String>) -> BackendError {
    BackendError::Deserialize { what, detail: detail.into() }
}

/// A writer that hashes what passes through it.
struct Hashing<'a> {
    out: &'a mut dyn Write,
    hasher: blake3::Hasher,
}

impl Hashing<'_> {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.hasher.update(bytes);
        self.out.write_all(bytes)
    }
    fn limbs(&mut self, v: &[u64]) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(1 << 16);
        for chunk in v.chunks(8192) {
            buf.clear();
            for x in chunk {
                buf.extend_from_slice(&x.to_le_bytes());
            }
            self.put(&buf)?;
        }
        Ok(())
    }
}

/// A reader over a checked byte slice.
struct Reader<'a> {
    what: &'static str,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Checks magic and checksum of `bytes`.
    fn open(what: &'static str, bytes: &'a [u8], magic: &[u8; 8]) -> BResult<Self> {
        if bytes.len() < 8 + CHECKSUM {
            return Err(de(what, format!("{} bytes is too short", bytes.len())));
        }
        if &bytes[..8] != magic {
            return Err(de(
                what,
                format!("not a Peregrine CKKS {what} (magic {:?})", String::from_utf8_lossy(&bytes[..8])),
            ));
        }
        let (body, sum) = bytes.split_at(bytes.len() - CHECKSUM);
        if blake3::hash(body).as_bytes() != sum {
            return Err(de(what, "checksum mismatch: the bytes are truncated or corrupted"));
        }
        Ok(Reader { what, bytes: body, pos: 8 })
    }
    fn take(&mut self, n: usize) -> BResult<&'a [u8]> {
        if self.bytes.len() - self.pos < n {
            return Err(de(self.what, "unexpected end of data"));
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> BResult<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> BResult<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> BResult<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn f64(&mut self) -> BResult<f64> {
        Ok(f64::from_bits(self.u64()?))
    }
    fn seed(&mut self) -> BResult<[u8; 32]> {
        Ok(self.take(32)?.try_into().expect("32 bytes"))
    }
    /// `limbs` limbs of N residues, each checked against its prime.
    fn limbs(&mut self, ctx: &Context, basis: &[usize]) -> BResult<Vec<u64>> {
        let n = ctx.n();
        let raw = self.take(basis.len() * n * 8)?;
        let mut out = Vec::with_capacity(basis.len() * n);
        for (pos, &i) in basis.iter().enumerate() {
            let q = ctx.ring.moduli[i].q;
            for c in raw[pos * n * 8..(pos + 1) * n * 8].chunks_exact(8) {
                let x = u64::from_le_bytes(c.try_into().expect("8 bytes"));
                if x >= q {
                    return Err(de(self.what, "a residue is not reduced modulo its prime"));
                }
                out.push(x);
            }
        }
        Ok(out)
    }
    fn finish(&self) -> BResult<()> {
        if self.pos != self.bytes.len() {
            return Err(de(self.what, format!("{} trailing bytes", self.bytes.len() - self.pos)));
        }
        Ok(())
    }
    fn digest(&mut self, ctx: Option<&Context>) -> BResult<[u8; 32]> {
        let d: [u8; 32] = self.take(32)?.try_into().expect("32 bytes");
        if let Some(ctx) = ctx {
            if d != ctx.digest {
                return Err(de(
                    self.what,
                    format!(
                        "made under other CKKS parameters (parameter digest {} here, {} in the data)",
                        hex(&ctx.digest[..8]),
                        hex(&d[..8])
                    ),
                ));
            }
        }
        Ok(d)
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Serialises a ciphertext.
pub fn write_ciphertext(ctx: &Context, ct: &Ciphertext) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + 2 * ct.c0.len() * 8 + 128);
    let mut w = Hashing { out: &mut out, hasher: blake3::Hasher::new() };
    let io = (|| -> std::io::Result<()> {
        w.put(CIPHERTEXT_MAGIC)?;
        w.put(&ctx.digest)?;
        w.put(&ct.key_id.to_le_bytes())?;
        w.put(&(ct.meta.level as u32).to_le_bytes())?;
        w.put(&ct.meta.scale.to_bits().to_le_bytes())?;
        w.limbs(&ct.c0)?;
        match ct.seed {
            Some(seed) => {
                w.put(&[1])?;
                w.put(&seed)
            }
            None => {
                w.put(&[0])?;
                w.limbs(&ct.c1)
            }
        }
    })();
    io.expect("writing to a Vec cannot fail");
    let sum = *w.hasher.finalize().as_bytes();
    out.extend_from_slice(&sum);
    out
}

/// Reads a ciphertext made under `ctx`'s parameters.
pub fn read_ciphertext(ctx: &Context, bytes: &[u8]) -> BResult<Ciphertext> {
    let mut r = Reader::open("ciphertext", bytes, CIPHERTEXT_MAGIC)?;
    r.digest(Some(ctx))?;
    let key_id = r.u64()?;
    let level = r.u32()? as usize;
    let scale = r.f64()?;
    if level > ctx.top_level() {
        return Err(de("ciphertext", format!("level {level} above the top level {}", ctx.top_level())));
    }
    if !(scale >= 1.0 && scale.is_finite()) {
        return Err(de("ciphertext", format!("invalid scale {scale}")));
    }
    let basis: Vec<usize> = (0..=level).collect();
    let c0 = r.limbs(ctx, &basis)?;
    let (c1, seed) = match r.u8()? {
        1 => {
            let seed = r.seed()?;
            (ctx.uniform(&seed, 0, &basis), Some(seed))
        }
        0 => (r.limbs(ctx, &basis)?, None),
        x => return Err(de("ciphertext", format!("unknown c1 encoding {x}"))),
    };
    r.finish()?;
    Ok(Ciphertext { c0, c1, meta: CtMeta::new(level, scale), key_id, seed })
}

fn write_switch_key(w: &mut Hashing<'_>, key: &SwitchKey) -> std::io::Result<()> {
    w.put(&(key.max_level as u32).to_le_bytes())?;
    w.put(&key.stream.to_le_bytes())?;
    w.put(&key.seed)?;
    w.put(&(key.digits() as u32).to_le_bytes())?;
    for b in &key.b {
        w.limbs(b)?;
    }
    Ok(())
}

fn read_switch_key(r: &mut Reader<'_>, ctx: &Context) -> BResult<SwitchKey> {
    let max_level = r.u32()? as usize;
    if max_level > ctx.top_level() {
        return Err(de("evaluation keys", format!("key level {max_level} above the top level")));
    }
    let stream = r.u64()?;
    let seed = r.seed()?;
    let digits = r.u32()? as usize;
    if digits != ctx.digits_at(max_level).len() {
        return Err(de(
            "evaluation keys",
            format!("{digits} digits, the parameters give {}", ctx.digits_at(max_level).len()),
        ));
    }
    let basis = ctx.ext_basis(max_level);
    let mut b = Vec::with_capacity(digits);
    for _ in 0..digits {
        b.push(r.limbs(ctx, &basis)?);
    }
    let a = (0..digits).map(|j| SwitchKey::expand_a(ctx, &seed, stream, j, max_level)).collect();
    Ok(SwitchKey { max_level, seed, stream, b, a })
}

/// Streams the evaluation keys (and the parameters they belong to) to `out`.
pub fn write_keys(ctx: &Context, keys: &EvaluationKeys, out: &mut dyn Write) -> std::io::Result<()> {
    let mut w = Hashing { out, hasher: blake3::Hasher::new() };
    w.put(KEYS_MAGIC)?;
    let params = serde_json::to_vec(&ctx.params).expect("parameters serialise");
    w.put(&(params.len() as u32).to_le_bytes())?;
    w.put(&params)?;
    w.put(&ctx.digest)?;
    w.put(&keys.key_id.to_le_bytes())?;
    match &keys.relin {
        Some(k) => {
            w.put(&[1])?;
            write_switch_key(&mut w, k)?;
        }
        None => w.put(&[0])?,
    }
    w.put(&(keys.rotations.len() as u32).to_le_bytes())?;
    for (step, rk) in &keys.rotations {
        w.put(&step.to_le_bytes())?;
        w.put(&rk.galois.to_le_bytes())?;
        write_switch_key(&mut w, &rk.key)?;
    }
    match &keys.conjugation {
        Some(rk) => {
            w.put(&[1])?;
            w.put(&rk.galois.to_le_bytes())?;
            write_switch_key(&mut w, &rk.key)?;
        }
        None => w.put(&[0])?,
    }
    match &keys.encapsulation {
        Some(e) => {
            w.put(&[1])?;
            write_switch_key(&mut w, &e.to_sparse)?;
            write_switch_key(&mut w, &e.from_sparse)?;
        }
        None => w.put(&[0])?,
    }
    let sum = *w.hasher.finalize().as_bytes();
    w.out.write_all(&sum)
}

/// Opens a format that starts with its parameters, their digest and a key id.
fn open_with_params<'a>(
    what: &'static str,
    bytes: &'a [u8],
    magic: &[u8; 8],
) -> BResult<(Reader<'a>, Arc<Context>, u64)> {
    let mut r = Reader::open(what, bytes, magic)?;
    let len = r.u32()? as usize;
    let params: CkksParams = serde_json::from_slice(r.take(len)?).map_err(|e| de(what, format!("parameters: {e}")))?;
    // Every file holds at least N bytes (the secret's N coefficients; N residues per limb
    // elsewhere): a short file naming a large ring is refused before its tables are built.
    let n = 1usize.checked_shl(params.log_ring_dimension).unwrap_or(usize::MAX);
    if bytes.len() < n {
        return Err(de(
            what,
            format!(
                "{} bytes cannot hold data for N = 2^{} (at least {n} bytes): truncated or not made with these parameters",
                bytes.len(),
                params.log_ring_dimension
            ),
        ));
    }
    let ctx = crate::backend::context(&params)?;
    r.digest(Some(&ctx))?;
    let key_id = r.u64()?;
    Ok((r, ctx, key_id))
}

/// Reads evaluation keys: the parameters they name, and the keys.
pub fn read_keys(bytes: &[u8]) -> BResult<(Arc<Context>, EvaluationKeys)> {
    let (mut r, ctx, key_id) = open_with_params("evaluation keys", bytes, KEYS_MAGIC)?;
    let relin = match r.u8()? {
        1 => Some(read_switch_key(&mut r, &ctx)?),
        _ => None,
    };
    let count = r.u32()? as usize;
    let mut rotations = std::collections::BTreeMap::new();
    for _ in 0..count {
        let step = r.u64()? as i64;
        if step <= 0 || step >= (ctx.n() / 2) as i64 {
            return Err(de("evaluation keys", format!("rotation key for step {step}, outside 1..N/2")));
        }
        let galois = r.u64()?;
        let expected = crate::keys::galois_element(step, ctx.n() / 2, 2 * ctx.n() as u64);
        if galois != expected {
            return Err(de("evaluation keys", format!("rotation key for step {step} has Galois element {galois}")));
        }
        rotations.insert(step, RotationKey { galois, key: read_switch_key(&mut r, &ctx)? });
    }
    let conjugation = match r.u8()? {
        1 => {
            let galois = r.u64()?;
            Some(RotationKey { galois, key: read_switch_key(&mut r, &ctx)? })
        }
        _ => None,
    };
    let encapsulation = match r.u8()? {
        1 => {
            let to_sparse = read_switch_key(&mut r, &ctx)?;
            let from_sparse = read_switch_key(&mut r, &ctx)?;
            Some(EncapsulationKeys { to_sparse, from_sparse })
        }
        _ => None,
    };
    r.finish()?;
    Ok((ctx, EvaluationKeys { key_id, relin, rotations, conjugation, encapsulation }))
}

/// Serialises the client's secret (parameters, key id, ternary coefficients).
pub fn write_secret(ctx: &Context, key_id: u64, sk: &SecretKey) -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = Hashing { out: &mut out, hasher: blake3::Hasher::new() };
    let params = serde_json::to_vec(&ctx.params).expect("parameters serialise");
    let coeffs: Vec<u8> = sk.coeffs.iter().map(|&c| (c + 1) as u8).collect();
    let io = (|| -> std::io::Result<()> {
        w.put(SECRET_MAGIC)?;
        w.put(&(params.len() as u32).to_le_bytes())?;
        w.put(&params)?;
        w.put(&ctx.digest)?;
        w.put(&key_id.to_le_bytes())?;
        w.put(&coeffs)
    })();
    io.expect("writing to a Vec cannot fail");
    let sum = *w.hasher.finalize().as_bytes();
    out.extend_from_slice(&sum);
    out
}

/// Reads a saved secret: its context, key id and key.
pub fn read_secret(bytes: &[u8]) -> BResult<(Arc<Context>, u64, SecretKey)> {
    let (mut r, ctx, key_id) = open_with_params("client secret", bytes, SECRET_MAGIC)?;
    let raw = r.take(ctx.n())?;
    if raw.iter().any(|&c| c > 2) {
        return Err(de("client secret", "a secret coefficient is not ternary"));
    }
    r.finish()?;
    let coeffs = raw.iter().map(|&c| c as i64 - 1).collect();
    Ok((ctx.clone(), key_id, SecretKey::from_coeffs(&ctx, coeffs)))
}
