//! Cost of the TFHE-rs parameter sets the backend offers: key generation, evaluation-key size
//! and seconds per programmable bootstrap on one thread.
//!
//! `cargo run --release -p backend-tfhe --example bootstrap_cost -- 4 5 6 7`

use std::time::Instant;

use backend_tfhe::lwe::{LweClient, LweParams};

fn main() {
    let bits: Vec<u32> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let bits = if bits.is_empty() { vec![4, 5, 6] } else { bits };
    println!(
        "bits  set                                             N      n     bound  keygen_s  key_MiB  bootstrap_ms"
    );
    for b in bits {
        let params = match LweParams::with_bits(b) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("{e}");
                continue;
            }
        };
        let t = Instant::now();
        let client = LweClient::new(params);
        let server = client.server();
        let keygen = t.elapsed().as_secs_f64();
        let key = server.key_bytes().unwrap_or(0) as f64 / (1u64 << 20) as f64;
        let x = client.encrypt(3).expect("in range");
        let lut = server.lut(|v| v.max(0));
        server.time_bootstrap(&x, &lut, 1);
        let per = server.time_bootstrap(&x, &lut, if b >= 7 { 5 } else { 20 });
        println!(
            "{b:<5} {:<47} {:<6} {:<5} {:<6} {keygen:<9.2} {key:<8.1} {:.1}",
            params.name,
            params.polynomial_size(),
            params.lwe_dimension(),
            params.noise_bound,
            per * 1e3
        );
    }
}
