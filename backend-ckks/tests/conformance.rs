//! `ckks` passes the backend conformance suite on a small insecure ring (tests only).

use backend_ckks::{CkksParams, CkksScheme};
use peregrine_backend::conformance;

#[test]
fn ckks_passes_the_conformance_suite() {
    let params = CkksParams::insecure_for_tests(11, 5, 40);
    conformance::run::<CkksScheme>(&params, 20.0).assert_passed();
}

#[test]
fn ckks_with_one_digit_and_sparse_slots_passes_too() {
    let params = CkksParams { digits: 1, slots: 256, ..CkksParams::insecure_for_tests(11, 4, 36) };
    conformance::run::<CkksScheme>(&params, 18.0).assert_passed();
}

#[test]
fn ckks_with_bootstrapping_passes_too() {
    let params = CkksParams {
        first_modulus_bits: 48,
        bootstrap: Some(backend_ckks::params::BootstrapParams::default()),
        ..CkksParams::insecure_for_tests(11, 4, 40)
    };
    conformance::run::<CkksScheme>(&params, 20.0).assert_passed();
}
