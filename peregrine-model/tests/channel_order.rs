//! `transform::reverse_input_channels`: a BGR network made to take RGB images.

use peregrine_model::ir::{Op, INPUT};
use peregrine_model::reference::Reference;
use peregrine_model::testkit::{avg_pool, graph, node, odd_packed_model, raw_input, rng, uniform};
use peregrine_model::transform::reverse_input_channels;
use peregrine_model::Model;
use rand::Rng;

/// Planar pixels in [0, 1] normalised by `model`'s preprocessing, as `[1, C, H, W]`.
fn normalised(model: &Model, pixels: &[f32]) -> ndarray::ArrayD<f32> {
    let spec = &model.graph().input;
    let (c, hw) = (spec.shape[0], spec.shape[1] * spec.shape[2]);
    let v: Vec<f32> = pixels
        .iter()
        .enumerate()
        .map(|(i, p)| (p - spec.preprocess.mean[i / hw]) / spec.preprocess.std[i / hw])
        .collect();
    let dims = [1, c, spec.shape[1], spec.shape[2]];
    ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&dims), v).unwrap()
}

#[test]
fn a_bgr_network_on_reversed_pixels_equals_the_reversed_model_on_rgb_pixels() {
    // Two convolutions read the input (3×37×53): a 3×3 stride-2 one and a 1×1 side branch.
    let (g, w) = odd_packed_model(5).into_parts();
    let mut g = g;
    g.input.preprocess.mean = vec![0.40, 0.45, 0.50];
    g.input.preprocess.std = vec![0.20, 0.25, 0.30];
    let bgr = Model::new(g, w).unwrap();
    let rgb = reverse_input_channels(&bgr).unwrap();
    assert_eq!(rgb.graph().input.preprocess.mean, vec![0.50, 0.45, 0.40]);
    assert_eq!(rgb.graph().input.preprocess.std, vec![0.30, 0.25, 0.20]);

    let mut r = rng(9);
    let hw = 37 * 53;
    let pixels: Vec<f32> = (0..3 * hw).map(|_| r.gen_range(0.0..1.0)).collect();
    let swapped: Vec<f32> = (0..3 * hw).map(|i| pixels[(2 - i / hw) * hw + i % hw]).collect();
    let want = Reference::<f32>::new(&bgr).run(&normalised(&bgr, &swapped)).unwrap();
    let got = Reference::<f32>::new(&rgb).run(&normalised(&rgb, &pixels)).unwrap();
    let diff = want.iter().zip(got.iter()).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(scale > 1e-3 && diff <= 1e-5 * scale.max(1.0), "max |Δ| {diff} of {scale}");
    // On the same (unswapped) pixels the two models differ: the reversal did something.
    let other = Reference::<f32>::new(&bgr).run(&normalised(&bgr, &pixels)).unwrap();
    assert!(other.iter().zip(got.iter()).any(|(a, b)| (a - b).abs() > 1e-3));
    // Reversing twice gives the original weights back.
    let back = reverse_input_channels(&rgb).unwrap();
    assert_eq!(back.weights(), bgr.weights());
    assert_eq!(back.graph(), bgr.graph());
}

#[test]
fn inputs_read_by_other_layers_or_not_three_channels_are_refused_by_name() {
    let mut w = peregrine_model::ir::Weights::new();
    w.insert("c.w".into(), uniform(&mut rng(1), &[2, 3, 3, 3], -0.5, 0.5));
    let nodes = vec![
        node("c", peregrine_model::testkit::conv(3, 2, 3, 1, 1, 1, 1, "c.w", None), &[INPUT]),
        node("pool", avg_pool(3, 1, 1), &[INPUT]),
        node("cat", Op::Concat, &["c", "pool"]),
    ];
    let m = Model::new(graph("mixed", raw_input([3, 8, 10]), nodes, "cat"), w).unwrap();
    let e = reverse_input_channels(&m).unwrap_err().to_string();
    assert!(e.contains("'pool'") && e.contains("reads the input"), "{e}");

    let mut w = peregrine_model::ir::Weights::new();
    w.insert("c.w".into(), uniform(&mut rng(1), &[2, 4, 1, 1], -0.5, 0.5));
    let nodes = vec![node("c", peregrine_model::testkit::conv(4, 2, 1, 1, 0, 1, 1, "c.w", None), &[INPUT])];
    let m = Model::new(graph("four", raw_input([4, 5, 5]), nodes, "c"), w).unwrap();
    let e = reverse_input_channels(&m).unwrap_err().to_string();
    assert!(e.contains("3-channel") && e.contains("takes 4"), "{e}");
}
