//! `ckks` evaluation keys, client secret and ciphertext. The input is a file body (magic and
//! everything after it) whose checksum is appended here, so the fuzzer explores the structure
//! behind the checksum instead of the checksum itself; the first byte picks the reader.
#![no_main]
use std::sync::{Arc, OnceLock};

use backend_ckks::context::Context;
use backend_ckks::serial::{read_ciphertext, read_keys, read_secret};
use backend_ckks::CkksParams;
use libfuzzer_sys::fuzz_target;

fn context() -> &'static Arc<Context> {
    static CTX: OnceLock<Arc<Context>> = OnceLock::new();
    CTX.get_or_init(|| {
        let p = CkksParams { log_ring_dimension: 10, levels: 2, insecure_test_only: true, ..CkksParams::default() };
        backend_ckks::backend::context(&p).expect("test context")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else { return };
    let mut file = body.to_vec();
    file.extend_from_slice(blake3::hash(body).as_bytes());
    match which % 3 {
        0 => drop(read_keys(&file)),
        1 => drop(read_secret(&file)),
        _ => drop(read_ciphertext(context(), &file)),
    }
});
