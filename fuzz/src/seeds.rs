//! Writes the seed corpora of the fuzz targets from real files: a small model, `ckks` keys,
//! secret and ciphertext at N = 2^10 (bodies without their checksum, prefixed by the target's
//! selector byte), and CIFAR-10 records.
use backend_ckks::{CkksParams, CkksScheme};
use peregrine_backend::{Backend, Client, KeyRequest, Scheme};

fn write(dir: &str, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(format!("{dir}/{name}"), bytes).unwrap();
}

fn main() {
    let model = peregrine_model::testkit::tiny_poly_cnn(0);
    write("corpus/model_file", "tiny_poly_cnn", &peregrine_model::format::model_to_bytes(&model).unwrap());
    let p = CkksParams { log_ring_dimension: 10, levels: 2, insecure_test_only: true, ..CkksParams::default() };
    let request = KeyRequest { rotations: [1, 3].into_iter().collect(), ..Default::default() };
    let client = CkksScheme::keygen(&p, &request).unwrap();
    let server = client.local_server().unwrap().unwrap();
    let body = |b: Vec<u8>, which: u8| -> Vec<u8> {
        let mut out = vec![which];
        out.extend_from_slice(&b[..b.len() - 32]);
        out
    };
    write("corpus/ckks_files", "keys", &body(client.evaluation_keys().unwrap(), 0));
    write("corpus/ckks_files", "secret", &body(client.save_secret().unwrap(), 1));
    let ct = server.serialize_ciphertext(&client.encrypt_values(&[0.5, -1.0, 2.0]).unwrap()).unwrap();
    write("corpus/ckks_files", "ciphertext", &body(ct, 2));
    let mut records = Vec::new();
    for i in 0..3u8 {
        records.push(i);
        records.extend((0..3072u32).map(|k| (k as u8).wrapping_mul(i + 1)));
    }
    write("corpus/cifar_batch", "three_records", &records);
}
