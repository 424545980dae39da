//! `clear` passes the backend conformance suite: CKKS rules on f64 slots, held to 30 bits
//! (constants are rounded at their encoding scale, 2^40 here).

use backend_clear::{ClearParams, ClearScheme};
use peregrine_backend::conformance;

#[test]
fn clear_passes_the_conformance_suite() {
    let params = ClearParams { log_ring_dimension: 12, levels: 6, ..ClearParams::default() };
    conformance::run::<ClearScheme>(&params, 30.0).assert_passed();
}

#[test]
fn clear_with_bootstrapping_passes_it_too() {
    use backend_clear::ClearBootstrap;
    let params = ClearParams {
        log_ring_dimension: 11,
        levels: 6,
        bootstrap: Some(ClearBootstrap { output_level: 4, range: 2.0 }),
        ..ClearParams::default()
    };
    let report = conformance::run::<ClearScheme>(&params, 30.0);
    report.assert_passed();
    assert!(report.skipped().is_empty(), "bootstrapping must have been checked: {report}");
}

#[test]
fn the_suite_fails_a_backend_that_misses_its_stated_precision() {
    // `clear` rounds constants at their scale (2^40): 80 bits cannot be met.
    let params = ClearParams { log_ring_dimension: 12, levels: 6, ..ClearParams::default() };
    let report = conformance::run::<ClearScheme>(&params, 80.0);
    let failed: Vec<&str> = report.failures().iter().map(|c| c.name).collect();
    assert!(failed.contains(&"primitives"), "{report}");
}
