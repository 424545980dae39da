//! Prints the capabilities (levels, moduli, bootstrap level, security) of OpenFHE parameters
//! given as JSON, or says why they are refused. No keys are generated.
//!
//! `cargo run --release -p backend-openfhe --example capabilities -- '{"levels": 6, "level_budget": [2, 2]}'`

#![cfg_attr(not(openfhe), allow(unused, unreachable_code))]

use backend_openfhe::{OpenFheParams, OpenFheScheme};
use peregrine_backend::Scheme;

fn main() {
    if !backend_openfhe::AVAILABLE {
        eprintln!("{}", openfhe_sys_reason());
        std::process::exit(1);
    }
    for arg in std::env::args().skip(1) {
        let p: OpenFheParams = match serde_json::from_str(&arg) {
            Ok(p) => p,
            Err(e) => {
                println!("{arg}: invalid JSON parameters: {e}");
                continue;
            }
        };
        match OpenFheScheme::capabilities(&p) {
            Ok(c) => println!(
                "{arg}: max_level {} bootstrap_level {:?} log2(Q) {:.0} security {:?}\n    {}",
                c.max_level,
                c.bootstrap_level,
                c.log_moduli.iter().sum::<f64>(),
                c.security_bits,
                c.summary()
            ),
            Err(e) => println!("{arg}: refused: {e}"),
        }
    }
}

fn openfhe_sys_reason() -> &'static str {
    "OpenFHE was not found when this was built; install it and set OPENFHE_ROOT, then rebuild"
}
