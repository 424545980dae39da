//! A model's last activation moved to the client: the same function, the activation applied
//! after decryption, kept through the file format, refused where it would be wrong.

use ndarray::ArrayD;
use peregrine_model::ensemble::widen_ensemble;
use peregrine_model::format::{model_from_bytes, model_to_bytes};
use peregrine_model::ir::*;
use peregrine_model::reference::Reference;
use peregrine_model::testkit::*;
use peregrine_model::transform::client_output_activation;

fn run(model: &Model, x: &ArrayD<f32>) -> ArrayD<f64> {
    Reference::<f64>::new(model).run(&x.mapv(f64::from)).expect("the model runs")
}

#[test]
fn the_segmenters_sigmoid_moves_to_the_client_and_the_function_stays() {
    let model = tiny_segmenter(5, 20.0);
    let peeled = client_output_activation(&model).unwrap();
    assert_eq!(peeled.client_activation(), Some(&Activation::Sigmoid));
    assert_eq!(peeled.graph().output, "c2", "the sigmoid's input is the program's output");
    assert!(peeled.graph().nodes.iter().all(|n| n.name != "prob"), "no sigmoid left in the program");
    assert_eq!(peeled.output_shape(), model.output_shape());
    let x = uniform(&mut rng(9), &[3, 3, 13, 11], -1.0, 1.0);
    let (want, raw) = (run(&model, &x), run(&peeled, &x));
    let logits: Vec<f32> = raw.iter().map(|v| *v as f32).collect();
    let spread = logits.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(spread > 5.0, "the test needs logits well beyond the sigmoid's knee, largest |logit| {spread}");
    let got = peeled.finish_output(&logits);
    let err = got.iter().zip(want.iter()).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max);
    assert!(err < 1e-6, "program output + client sigmoid is off the original by {err}");
    // Moving it twice changes nothing; the file keeps it.
    let again = client_output_activation(&peeled).unwrap();
    assert_eq!(again.graph(), peeled.graph());
    let loaded = model_from_bytes(&model_to_bytes(&peeled).unwrap()).unwrap();
    assert_eq!(loaded.client_activation(), Some(&Activation::Sigmoid));
    assert_eq!(loaded.graph(), peeled.graph());
    // A model without one is written as before: no new key in its graph JSON.
    let plain = model_to_bytes(&model).unwrap();
    assert!(!String::from_utf8_lossy(&plain).contains("client_activation"));
}

#[test]
fn an_output_activation_read_elsewhere_or_linear_output_stays_in_the_program() {
    // A linear output: nothing to move.
    let cnn = tiny_poly_cnn(3);
    assert_eq!(client_output_activation(&cnn).unwrap().graph(), cnn.graph());
    // The sigmoid also feeds another node: it must stay.
    let (mut g, w) = tiny_segmenter(6, 10.0).into_parts();
    g.nodes.push(node("twice", Op::Add, &["prob", "prob"]));
    let model = Model::new(g, w).unwrap();
    assert_eq!(client_output_activation(&model).unwrap().graph(), model.graph());
}

#[test]
fn a_polynomial_client_activation_and_an_ensemble_of_peeled_models_are_refused() {
    let peeled = client_output_activation(&tiny_segmenter(7, 10.0)).unwrap();
    let (mut g, w) = peeled.clone().into_parts();
    g.client_activation = Some(Activation::Poly { coeffs: "c2.w".into(), input_scale: None, approximates: None });
    let e = Model::new(g, w).unwrap_err().to_string();
    assert!(e.contains("client-side output activation") && e.contains("polynomial"), "{e}");
    let (mut g, w) = peeled.clone().into_parts();
    g.client_activation = Some(Activation::Clip { min: 1.0, max: 0.0 });
    assert!(Model::new(g, w).is_err(), "a client clip with min > max is refused");
    let e = widen_ensemble(&[peeled.clone(), peeled]).unwrap_err().to_string();
    assert!(e.contains("ensemble member 1") && e.contains("client applies"), "{e}");
}
