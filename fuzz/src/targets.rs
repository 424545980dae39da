//! The fuzz targets: each feeds bytes to one family of readers and says how the readers answered
//! (an outcome class: `ok`, or the error with its numbers blanked), never panicking or
//! allocating without bound if the readers are right.
//!
//! Files whose readers check a checksum first (`ckks`, `clear`, `tfhe` keys and ciphertexts) are
//! fuzzed as their *bodies*: the target appends the checksum, so mutations reach the structure
//! behind it. Where one target covers several readers, the first byte picks the reader.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use backend_ckks::context::Context;
use backend_ckks::{CkksParams, CkksScheme};
use backend_clear::{ClearClient, ClearParams, ClearScheme, ClearServer};
use backend_tfhe::lwe::{Lwe, LweClient, LweParams};
use peregrine_backend::integrity::{seal, DIGEST_BYTES};
use peregrine_backend::plugin::abi::{check_table, PluginVTable};
use peregrine_backend::{Backend, Capabilities, Client, KeyRequest, Scheme};
use peregrine_model::testkit::{input_spec, tiny_poly_cnn, tiny_square_resnet};

/// One fuzz target.
pub struct Target {
    /// Name (as given to `peregrine-fuzz`).
    pub name: &'static str,
    /// What it feeds.
    pub about: &'static str,
    /// Runs the readers on one input; returns the outcome class.
    pub run: fn(&[u8]) -> String,
    /// Real files to start from.
    pub seeds: fn() -> Vec<Vec<u8>>,
}

/// Every target.
pub fn all() -> Vec<Target> {
    vec![
        Target {
            name: "model_file",
            about: "peregrine_model::format::model_from_bytes (safetensors header, graph JSON, tensor digests, weights)",
            run: model_file,
            seeds: model_seeds,
        },
        Target {
            name: "ckks_files",
            about: "backend_ckks::serial::{read_keys, read_secret, read_ciphertext} behind their checksum",
            run: ckks_files,
            seeds: ckks_seeds,
        },
        Target {
            name: "clear_files",
            about: "the clear backend's evaluation keys, client state and ciphertexts behind their checksum",
            run: clear_files,
            seeds: clear_seeds,
        },
        Target {
            name: "tfhe_files",
            about: "backend_tfhe::lwe::{LweClient, Lwe}::from_bytes (TFHE-rs keys and ciphertexts through bincode) behind their checksum",
            run: tfhe_files,
            seeds: tfhe_seeds,
        },
        Target {
            name: "openfhe_framing",
            about: "backend_openfhe::framing::{open_keys, open_client_state, open_ciphertext} (header, key id, digests; OpenFHE's own parser needs an install)",
            run: openfhe_framing,
            seeds: openfhe_seeds,
        },
        Target {
            name: "session_files",
            about: "a session directory's session.json, inputs.json and ciphertext packs (unpacked, each ciphertext read by ckks)",
            run: session_files,
            seeds: session_seeds,
        },
        Target {
            name: "plugin_table",
            about: "the plugin loader's checks of a function table's bytes, and the JSON a plugin answers with",
            run: plugin_table,
            seeds: plugin_seeds,
        },
        Target {
            name: "onnx_file",
            about: "peregrine_model::onnx::import_onnx_bytes (protobuf decoding, operators, attributes, tensors, shapes)",
            run: onnx_file,
            seeds: onnx_seeds,
        },
        Target { name: "cifar_batch", about: "peregrine_data::parse_cifar10 (decompressed records)", run: cifar_batch, seeds: cifar_seeds },
        Target {
            name: "image_file",
            about: "peregrine_data::decode_image (PNG and JPEG headers, limits, decoding, resizing)",
            run: image_file,
            seeds: image_seeds,
        },
    ]
}

/// Heap a target's readers may take for one input beyond the common limit, and why: the
/// `protobuf` crate reserves up to 10^7 elements of a packed repeated field (80 MB of int64)
/// before it checks the field's length against the input, then refuses it; a bounded,
/// transient allocation whatever the file, which ONNX import cannot avoid short of writing
/// its own decoder.
pub fn heap_allowance(name: &str) -> usize {
    match name {
        "onnx_file" => 80 << 20,
        _ => 0,
    }
}

/// The target called `name`.
pub fn by_name(name: &str) -> Option<Target> {
    all().into_iter().find(|t| t.name == name)
}

/// `ok`, or the error's message up to its first quote, digits blanked, cut to 60 characters:
/// inputs that differ only in a number or a quoted fragment land in the same class.
fn class<T, E: std::fmt::Display>(r: Result<T, E>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => {
            // Up to the first quoted fragment: the quote is input, not the reader's answer.
            let text = e.to_string();
            let head = text.split(['`', '"', '\'']).next().unwrap_or_default();
            format!("err: {}", blank_numbers(head).chars().take(60).collect::<String>())
        }
    }
}

/// `text` with every run of digits replaced by one `#`.
pub fn blank_numbers(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if !c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('#') {
            out.push('#');
        }
    }
    out
}

/// The first byte (the reader to use) and the rest.
fn pick(data: &[u8]) -> Option<(u8, &[u8])> {
    data.split_first().map(|(&w, rest)| (w, rest))
}

/// `which` followed by `file` without its trailing checksum.
fn body(which: u8, file: &[u8]) -> Vec<u8> {
    let mut out = vec![which];
    out.extend_from_slice(&file[..file.len().saturating_sub(DIGEST_BYTES)]);
    out
}

// ---- model file ----

fn model_file(data: &[u8]) -> String {
    class(peregrine_model::format::model_from_bytes(data))
}

fn model_seeds() -> Vec<Vec<u8>> {
    [tiny_poly_cnn(0), tiny_square_resnet(1)]
        .iter()
        .map(|m| peregrine_model::format::model_to_bytes(m).expect("a test model serialises"))
        .collect()
}

fn onnx_file(data: &[u8]) -> String {
    class(peregrine_model::onnx::import_onnx_bytes(data, &Default::default()))
}

fn onnx_seeds() -> Vec<Vec<u8>> {
    // Valid models only (seeds must import); refusals are one mutation away (an operator name).
    ["Relu", "Identity", "HardSwish", "Sigmoid", "LeakyRelu", "HardSigmoid"]
        .iter()
        .map(|op| peregrine_model::testkit::tiny_onnx(op))
        .collect()
}

// ---- ckks ----

fn ckks_params() -> CkksParams {
    CkksParams { log_ring_dimension: 10, levels: 2, insecure_test_only: true, ..CkksParams::default() }
}

fn ckks_context() -> &'static Arc<Context> {
    static CTX: OnceLock<Arc<Context>> = OnceLock::new();
    CTX.get_or_init(|| backend_ckks::backend::context(&ckks_params()).expect("test context"))
}

fn ckks_files(data: &[u8]) -> String {
    use backend_ckks::serial::{read_ciphertext, read_keys, read_secret};
    let Some((which, rest)) = pick(data) else { return "empty".into() };
    let mut file = rest.to_vec();
    file.extend_from_slice(blake3::hash(rest).as_bytes());
    match which % 3 {
        0 => class(read_keys(&file)),
        1 => class(read_secret(&file)),
        _ => class(read_ciphertext(ckks_context(), &file)),
    }
}

/// Keys, secret and a ciphertext at N = 2^10 (insecure, test size).
fn ckks_real_files() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let request = KeyRequest { rotations: [1, 3].into_iter().collect(), ..Default::default() };
    let client = CkksScheme::keygen(&ckks_params(), &request).expect("test keys");
    let server = client.local_server().expect("local server").expect("ckks has one");
    let ct = client.encrypt_values(&[0.5, -1.0, 2.0]).expect("encrypts");
    let ct = server.serialize_ciphertext(&ct).expect("serialises");
    (client.evaluation_keys().expect("keys"), client.save_secret().expect("secret"), ct)
}

fn ckks_seeds() -> Vec<Vec<u8>> {
    let (keys, secret, ct) = ckks_real_files();
    vec![body(0, &keys), body(1, &secret), body(2, &ct)]
}

// ---- clear ----

fn clear_params() -> ClearParams {
    ClearParams { log_ring_dimension: 5, log_scale: 30, first_modulus_bits: 40, levels: 3, ..ClearParams::default() }
}

fn clear_pair() -> &'static (ClearClient, ClearServer) {
    static PAIR: OnceLock<(ClearClient, ClearServer)> = OnceLock::new();
    PAIR.get_or_init(|| {
        let client = ClearScheme::keygen(&clear_params(), &KeyRequest::rotations([1, 2])).expect("clear keys");
        let server = ClearScheme::server(&client.evaluation_keys().expect("keys")).expect("server");
        (client, server)
    })
}

fn clear_files(data: &[u8]) -> String {
    let Some((which, rest)) = pick(data) else { return "empty".into() };
    let file = seal(rest.to_vec());
    match which % 3 {
        0 => class(ClearScheme::server(&file)),
        1 => class(ClearScheme::load_client(&file)),
        _ => class(clear_pair().1.deserialize_ciphertext(&file)),
    }
}

fn clear_seeds() -> Vec<Vec<u8>> {
    let (client, server) = clear_pair();
    let ct = server.serialize_ciphertext(&client.encrypt_values(&[0.25, -3.0]).expect("encrypts")).expect("bytes");
    vec![
        body(0, &client.evaluation_keys().expect("keys")),
        body(1, &client.save_secret().expect("secret")),
        body(2, &ct),
    ]
}

// ---- tfhe ----

fn tfhe_files(data: &[u8]) -> String {
    let Some((which, rest)) = pick(data) else { return "empty".into() };
    let mut file = rest.to_vec();
    file.extend_from_slice(blake3::hash(rest).as_bytes());
    match which % 2 {
        0 => class(LweClient::from_bytes(&file)),
        _ => class(Lwe::from_bytes(&file)),
    }
}

fn tfhe_seeds() -> Vec<Vec<u8>> {
    let client = LweClient::new(LweParams::with_bits(4).expect("4-bit parameters"));
    let ct = client.encrypt(3).expect("encrypts").to_bytes().expect("bytes");
    vec![body(0, &client.to_bytes().expect("client key")), body(1, &ct)]
}

// ---- openfhe framing ----

/// The key id every `openfhe_framing` seed and input is checked against.
const FUZZ_KEY_ID: &str = "00112233445566778899aabbccddeeff";

fn openfhe_framing(data: &[u8]) -> String {
    use backend_openfhe::framing::{open_ciphertext, open_client_state, open_keys, seal_keys};
    let Some((which, rest)) = pick(data) else { return "empty".into() };
    match which % 3 {
        // The body with its end marker, count and digest re-appended.
        0 => class(open_keys(&seal_keys(rest.to_vec()))),
        1 => class(open_client_state(&seal(rest.to_vec()))),
        _ => class(open_ciphertext(&seal(rest.to_vec()), FUZZ_KEY_ID)),
    }
}

fn openfhe_seeds() -> Vec<Vec<u8>> {
    use backend_openfhe::framing::{ciphertext, client_state, KeyHeader, KeysWriter, KEYS_TRAILER};
    use std::io::Write;
    let header = KeyHeader {
        params: backend_openfhe::OpenFheParams::default(),
        rotations: vec![1, 2, -4],
        bootstrap: true,
        key_id: FUZZ_KEY_ID.into(),
    };
    let mut keys = Vec::new();
    let mut w = KeysWriter::new(&mut keys, &header).expect("header");
    w.write_all(b"OpenFHE evaluation keys stand-in").expect("in memory");
    w.finish().expect("in memory");
    // (`body` drops only a checksum; the keys end with a longer trailer.)
    let keys_body = vec![0].into_iter().chain(keys[..keys.len() - KEYS_TRAILER].iter().copied()).collect();
    vec![
        keys_body,
        body(1, &client_state(&header, b"OpenFHE client stand-in").expect("state")),
        body(2, &ciphertext(FUZZ_KEY_ID, 2f64.powi(40), b"OpenFHE ciphertext stand-in").expect("ciphertext")),
    ]
}

// ---- session directory ----

fn session_files(data: &[u8]) -> String {
    use peregrine_runtime::session::{parse_inputs, parse_session, unpack};
    let Some((which, rest)) = pick(data) else { return "empty".into() };
    let path = Path::new("session-under-test");
    match which % 3 {
        0 => class(parse_session(rest, path)),
        1 => class(parse_inputs(rest, path)),
        _ => class(unpack(rest, path).map_err(|e| e.to_string()).and_then(|parts| {
            let server_side = parts.iter().map(|p| backend_ckks::serial::read_ciphertext(ckks_context(), p));
            server_side.map(|r| r.map_err(|e| e.to_string())).collect::<Result<Vec<_>, _>>()
        })),
    }
}

fn session_seeds() -> Vec<Vec<u8>> {
    use peregrine_runtime::session::{pack, InputsFile};
    let target = peregrine_runtime::Target {
        model: "models/resnet20-sft2.safetensors".into(),
        backend: "ckks".into(),
        params: r#"{"log_ring_dimension": 15}"#.into(),
        plugin_dirs: vec!["plugins".into()],
        max_rotation_keys: Some(24),
        calibration: None,
    };
    let inputs = InputsFile { data: "test_batch.bin.gz".into(), images: vec![(0, 3), (1, 8)] };
    let (_, _, ct) = ckks_real_files();
    let mut seeds = vec![
        [vec![0], serde_json::to_vec_pretty(&target).expect("json")].concat(),
        [vec![1], serde_json::to_vec_pretty(&inputs).expect("json")].concat(),
    ];
    seeds.push([vec![2], pack(&[ct.clone(), ct])].concat());
    seeds
}

// ---- plugin function table ----

fn plugin_table(data: &[u8]) -> String {
    let Some((which, rest)) = pick(data) else { return "empty".into() };
    match which % 3 {
        0 => class(check_table(rest).map_err(|d| format!("{d:?}"))),
        1 => class(serde_json::from_slice::<Capabilities>(rest)),
        _ => class(serde_json::from_slice::<Vec<i64>>(rest)),
    }
}

fn plugin_seeds() -> Vec<Vec<u8>> {
    static CELL: OnceLock<PluginVTable> = OnceLock::new();
    let vt: &PluginVTable = peregrine_backend::plugin::export::vtable::<ClearScheme>(&CELL);
    // SAFETY: a table is plain data; its bytes are copied, none of its pointers is followed.
    let raw = unsafe {
        std::slice::from_raw_parts((vt as *const PluginVTable).cast::<u8>(), std::mem::size_of::<PluginVTable>())
    };
    let caps = clear_pair().0.capabilities();
    vec![
        [vec![0], raw.to_vec()].concat(),
        [vec![1], serde_json::to_vec(&caps).expect("json")].concat(),
        [vec![2], b"[1, -3, 16, 1024]".to_vec()].concat(),
    ]
}

// ---- CIFAR-10 and images ----

fn cifar_batch(data: &[u8]) -> String {
    class(peregrine_data::parse_cifar10(data, Some(4)))
}

fn cifar_seeds() -> Vec<Vec<u8>> {
    let mut records = Vec::new();
    for i in 0..3u8 {
        records.push(i);
        records.extend((0..3072u32).map(|k| (k as u8).wrapping_mul(i + 1)));
    }
    vec![records]
}

fn image_file(data: &[u8]) -> String {
    static SPEC: OnceLock<peregrine_model::ir::InputSpec> = OnceLock::new();
    class(peregrine_data::decode_image(data, "fuzzed image", SPEC.get_or_init(|| input_spec([3, 8, 8]))))
}

fn image_seeds() -> Vec<Vec<u8>> {
    let img = image::RgbImage::from_fn(7, 5, |x, y| image::Rgb([(x * 30) as u8, (y * 50) as u8, 128]));
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).expect("png in memory");
    let mut jpeg = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut jpeg), image::ImageFormat::Jpeg).expect("jpeg in memory");
    vec![png, jpeg]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_seed_is_read_as_a_valid_file() {
        for t in all() {
            let seeds = (t.seeds)();
            assert!(!seeds.is_empty(), "{}", t.name);
            for (i, s) in seeds.iter().enumerate() {
                assert_eq!((t.run)(s), "ok", "{} seed {i}", t.name);
            }
        }
    }
}
