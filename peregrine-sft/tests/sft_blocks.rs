//! Hermite coefficients against their closed form, PolyAct-RN gradients against finite
//! differences, running-max statistics, batch-norm folding, and the zero-epoch conversion.

use std::path::PathBuf;

use peregrine_data::{load_cifar10, preprocess};
use peregrine_model::import::import_cifar_resnet;
use peregrine_model::reference::Reference;
use peregrine_sft::convert::{convert, fold_batch_norms};
use peregrine_sft::hermite::*;
use peregrine_sft::polyact::*;

fn shared(rel: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared").join(rel);
    assert!(p.exists(), "shared asset {} is missing: these tests need ../shared beside the workspace", p.display());
    p
}

#[test]
fn hermite_polynomials_follow_the_recurrence() {
    let t = hermite_table(4);
    assert_eq!(t[2], vec![-1.0, 0.0, 1.0]);
    assert_eq!(t[3], vec![0.0, -3.0, 0.0, 1.0]);
    assert_eq!(t[4], vec![3.0, 0.0, -6.0, 0.0, 1.0]);
}

#[test]
fn relu_coefficients_by_integration_match_the_closed_form() {
    let num = hermite_coefficients(relu, 8);
    let exact = relu_hermite_coefficients(8);
    for (k, (a, b)) in num.iter().zip(&exact).enumerate() {
        assert!((a - b).abs() < 1e-9, "c_{k}: numerical {a} vs closed form {b}");
    }
    // Odd coefficients beyond 1 vanish; c_2 = φ(0)/2.
    assert!(exact[3].abs() < 1e-15 && exact[5].abs() < 1e-15);
    assert!((exact[2] - 0.5 / (2.0 * std::f64::consts::PI).sqrt()).abs() < 1e-15);
    // The truncation error in L²(N(0,1)) shrinks with the degree.
    let err = |d: usize| {
        let p = hermite_polynomial(relu, d);
        gaussian_expectation(|x| (relu(x) - p.iter().rev().fold(0.0, |a, c| a * x + c)).powi(2))
    };
    assert!(err(8) < err(4) && err(4) < err(2), "{} {} {}", err(2), err(4), err(8));
    // SiLU and GELU expansions are finite and close on [-3, 3] at degree 8.
    for f in [silu as fn(f64) -> f64, gelu] {
        let p = hermite_polynomial(f, 8);
        let worst = (-30..=30)
            .map(|i| i as f64 / 10.0)
            .map(|x| (f(x) - p.iter().rev().fold(0.0, |a, c| a * x + c)).abs())
            .fold(0.0, f64::max);
        assert!(worst < 0.1, "max error {worst} on [-3, 3]");
    }
}

#[test]
fn polyact_gradients_match_finite_differences() {
    let mut l = PolyActRn::new(hermite_polynomial(relu, 4), 2, DEFAULT_BOUND);
    l.observe(0, 6.0);
    l.observe(1, 1.5);
    let h = 1e-6;
    for c in 0..2 {
        for &x in &[-2.3, -0.4, 0.0, 0.7, 1.9, 4.2] {
            let num = (l.forward(c, x + h) - l.forward(c, x - h)) / (2.0 * h);
            assert!((num - l.grad_input(c, x)).abs() < 1e-6, "dy/dx at {x}: {num} vs {}", l.grad_input(c, x));
            // dy/ds by perturbing the stored range.
            let r = l.range[c].unwrap();
            let mut up = l.clone();
            up.range[c] = Some(r + h);
            let mut dn = l.clone();
            dn.range[c] = Some(r - h);
            let num_s = (up.forward(c, x) - dn.forward(c, x)) / (2.0 * h);
            assert!((num_s - l.grad_scale(c, x)).abs() < 1e-5, "dy/ds at {x}: {num_s} vs {}", l.grad_scale(c, x));
        }
    }
}

#[test]
fn running_max_uses_momentum_and_bound() {
    let mut l = PolyActRn::new(vec![0.0, 1.0], 1, 3.0);
    l.observe(0, 9.0);
    assert_eq!(l.range[0], Some(3.0));
    l.observe(0, 3.0);
    assert!((l.range[0].unwrap() - (0.9 * 3.0 + 0.1 * 1.0)).abs() < 1e-12);
    let (coeffs, scale) = l.export();
    let s = l.scale(0);
    assert!((scale[0] - 1.0 / s).abs() < 1e-12);
    assert!((coeffs[1] - s).abs() < 1e-12);
    // For ReLU, s·p(x/s) approximates ReLU(x) on [−B·s, B·s] with an error proportional to s.
    for s_ in [0.5, 2.0, 8.0] {
        let r = PolyActRn { coeffs: hermite_polynomial(relu, 8), range: vec![Some(s_)], bound: 3.0 };
        let s = r.scale(0);
        let worst =
            (-30..=30).map(|i| i as f64 / 10.0 * s).map(|x| (r.forward(0, x) - relu(x)).abs()).fold(0.0, f64::max);
        assert!(worst < 0.2 * s && worst > 0.0, "scale {s}: max error {worst}");
    }
}

#[test]
fn folding_batch_norm_keeps_the_function_and_conversion_loads() {
    let model = import_cifar_resnet(20, shared("models/resnet20-cifar10.safetensors")).unwrap();
    let folded = fold_batch_norms(&model).unwrap();
    assert_eq!(folded.graph().nodes.len(), model.graph().nodes.len() - 19, "19 batch norms folded");
    let data = load_cifar10(shared("data/cifar10/test_batch.bin.gz"), Some(8)).unwrap();
    let x = preprocess::<f32>(&data.pixels, 8, &model.graph().input).unwrap();
    let a = Reference::<f64>::new(&model).run(&x.mapv(|v| v as f64)).unwrap();
    let b = Reference::<f64>::new(&folded).run(&x.mapv(|v| v as f64)).unwrap();
    let diff = a.iter().zip(b.iter()).map(|(p, q)| (p - q).abs()).fold(0.0, f64::max);
    assert!(diff < 1e-4, "folded logits differ by {diff}");
    let converted = convert(&model, 4, DEFAULT_BOUND, &x, 4).unwrap();
    let polys = converted
        .graph()
        .nodes
        .iter()
        .filter(|n| matches!(n.op, peregrine_model::ir::Op::Activation(peregrine_model::ir::Activation::Poly { .. })))
        .count();
    assert_eq!(polys, 19);
    let out = Reference::<f32>::new(&converted).run(&x).unwrap();
    assert!(out.iter().all(|v| v.is_finite()));
}
