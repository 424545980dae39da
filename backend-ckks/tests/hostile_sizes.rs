//! Bounded allocation: a 1 KiB file whose header claims a large ring or huge lengths is refused
//! before anything large is allocated (peak heap growth measured by this binary's allocator).

use backend_ckks::serial::{read_keys, read_secret, KEYS_MAGIC, SECRET_MAGIC};
use backend_ckks::{CkksParams, CkksScheme};
use peregrine_backend::{Backend, Client, Scheme};
use peregrine_model::testkit::PeakAllocator;

#[global_allocator]
static ALLOC: PeakAllocator = PeakAllocator;

/// Heap growth above the starting level while `f` runs.
fn peak_growth(f: impl FnOnce()) -> usize {
    PeakAllocator::peak_growth(f).1
}

/// `magic`, a parameter block naming `params`, then `filler` up to 1 KiB, with a valid
/// checksum: only the claimed sizes are hostile.
fn hostile(magic: &[u8; 8], params: &str, filler: &[u8]) -> Vec<u8> {
    let mut body = magic.to_vec();
    body.extend_from_slice(&(params.len() as u32).to_le_bytes());
    body.extend_from_slice(params.as_bytes());
    while body.len() < 1024 - 32 {
        body.extend_from_slice(filler);
    }
    body.truncate(1024 - 32);
    let sum = *blake3::hash(&body).as_bytes();
    body.extend_from_slice(&sum);
    body
}

#[test]
fn one_kib_hostile_files_are_refused_under_64_mib() {
    const LIMIT: usize = 64 << 20;
    let big =
        serde_json::to_string(&CkksParams { log_ring_dimension: 17, levels: 40, ..CkksParams::default() }).unwrap();
    let huge_count = [0xffu8; 8];
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("keys naming N = 2^17", hostile(KEYS_MAGIC, &big, &huge_count)),
        ("secret naming N = 2^17", hostile(SECRET_MAGIC, &big, &huge_count)),
        ("keys with a 4 GiB parameter block", {
            let mut b = KEYS_MAGIC.to_vec();
            b.extend_from_slice(&u32::MAX.to_le_bytes());
            b.resize(1024 - 32, 7);
            let sum = *blake3::hash(&b).as_bytes();
            b.extend_from_slice(&sum);
            b
        }),
    ];
    for (what, bytes) in &cases {
        let mut msg = String::new();
        let grew = peak_growth(|| {
            msg = match (read_keys(bytes), read_secret(bytes)) {
                (Err(a), Err(b)) => format!("{a} / {b}"),
                _ => "accepted".into(),
            }
        });
        eprintln!("{what}: heap peak +{} KiB, {msg}", grew >> 10);
        assert!(!msg.contains("accepted"), "{what}");
        assert!(grew < LIMIT, "{what}: {grew} bytes");
    }
    // A ciphertext claiming more limbs than it holds, read by a real server.
    let small = CkksParams { log_ring_dimension: 10, levels: 2, insecure_test_only: true, ..CkksParams::default() };
    let client = CkksScheme::keygen(&small, &Default::default()).unwrap();
    let server = client.local_server().unwrap().unwrap();
    let ct = server.serialize_ciphertext(&client.encrypt_values(&[1.0]).unwrap()).unwrap();
    for cut in [64usize, 512, 1024] {
        let mut b = ct[..cut.min(ct.len())].to_vec();
        let sum = *blake3::hash(&b).as_bytes();
        b.extend_from_slice(&sum);
        let grew = peak_growth(|| assert!(server.deserialize_ciphertext(&b).is_err(), "cut {cut}"));
        assert!(grew < LIMIT, "ciphertext cut at {cut}: {grew} bytes");
    }
}
