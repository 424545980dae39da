//! The template passes the backend conformance suite: one line.

#[test]
fn template_passes_the_conformance_suite() {
    peregrine_backend::conformance::run::<backend_template::TemplateScheme>(&Default::default(), 40.0).assert_passed();
}
