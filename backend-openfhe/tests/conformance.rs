//! OpenFHE passes the backend conformance suite on a small INSECURE test ring (N = 2^12,
//! Δ = 2^40), primitives held to 18 bits (measured 21.5–25.9, see `primitives.rs`). Without
//! OpenFHE at build time the test is reported as ignored, never silently passed.

#![cfg_attr(not(openfhe), allow(unused))]

use backend_openfhe::{OpenFheParams, OpenFheScheme};
use peregrine_backend::conformance;

#[test]
#[cfg_attr(not(openfhe), ignore = "OpenFHE was not found when this was built")]
fn openfhe_passes_the_conformance_suite() {
    conformance::run::<OpenFheScheme>(&OpenFheParams::insecure_for_tests(12, 6), 18.0).assert_passed();
}
