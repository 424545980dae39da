//! An ensemble widened into one model computes the mean of its members' outputs.

use ndarray::ArrayD;
use peregrine_model::ensemble::{widen_ensemble, widen_weighted_ensemble};
use peregrine_model::ir::*;
use peregrine_model::reference::Reference;
use peregrine_model::testkit::*;

/// The largest |ensemble − mean of the members| over `batch` random inputs, and the largest
/// |mean| (the scale the difference is judged against).
fn mean_error(members: &[Model], ensemble: &Model, batch: usize, seed: u64) -> (f64, f64) {
    let equal = vec![1.0 / members.len() as f64; members.len()];
    weighted_error(members, &equal, ensemble, batch, seed)
}

/// [`mean_error`] against the members' outputs weighted by `share`.
fn weighted_error(members: &[Model], share: &[f64], ensemble: &Model, batch: usize, seed: u64) -> (f64, f64) {
    let shape = &members[0].graph().input.shape;
    let mut dims = vec![batch];
    dims.extend(shape);
    let x = uniform(&mut rng(seed), &dims, -1.0, 1.0);
    let got = Reference::<f64>::new(ensemble).run(&x.mapv(f64::from)).expect("the ensemble runs");
    let outs: Vec<ArrayD<f64>> =
        members.iter().map(|m| Reference::<f64>::new(m).run(&x.mapv(f64::from)).expect("a member runs")).collect();
    let mean: ArrayD<f64> = outs.iter().zip(share).fold(ArrayD::zeros(outs[0].raw_dim()), |a, (b, s)| a + b * *s);
    assert_eq!(got.shape(), mean.shape(), "the ensemble's output has the members' shape");
    let err = got.iter().zip(&mean).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    let mag = mean.iter().map(|v| v.abs()).fold(0.0, f64::max);
    (err, mag)
}

/// A ResNet-like model with every layer an ensemble widens: a convolution on the input, batch
/// norm, a scaled polynomial, an option-A shortcut (stride 2, channels padded), a grouped
/// convolution, a transposed convolution, pooling, an SE-style product, a hidden fully
/// connected layer and a fully connected output. Odd sizes; `seed` draws the weights.
fn odd_resnet(seed: u64) -> Model {
    let mut r = rng(seed);
    let mut w = Weights::new();
    w.insert("c1.w".into(), rand_tensor(&mut r, &[4, 3, 3, 3]));
    w.insert("c1.b".into(), rand_tensor(&mut r, &[4]));
    let bn = random_batch_norm(&mut r, &mut w, "bn", 4);
    let p1 = random_poly("p1", 4, &mut w, &mut r, true);
    w.insert("c2.w".into(), rand_tensor(&mut r, &[6, 2, 3, 3]));
    let p2 = random_poly("p2", 6, &mut w, &mut r, false);
    w.insert("ct.w".into(), rand_tensor(&mut r, &[6, 3, 2, 2]));
    w.insert("g.w".into(), rand_tensor(&mut r, &[6, 6, 1, 1]));
    w.insert("h.w".into(), rand_tensor(&mut r, &[5, 6]));
    w.insert("h.b".into(), rand_tensor(&mut r, &[5]));
    w.insert("fc.w".into(), rand_tensor(&mut r, &[3, 5]));
    w.insert("fc.b".into(), rand_tensor(&mut r, &[3]));
    let nodes = vec![
        node("c1", conv(3, 4, 3, 1, 1, 1, 1, "c1.w", Some("c1.b")), &[INPUT]), // 4×13×11
        node("bn", bn, &["c1"]),
        node("p1", p1, &["bn"]),
        node("c2", conv(4, 6, 3, 2, 1, 1, 2, "c2.w", None), &["p1"]), // 6×7×6, groups 2
        node("short", Op::SubsampleChannelPad { stride: 2, pad_before: 2, pad_after: 0 }, &["p1"]), // 6×7×6
        node("add", Op::Add, &["c2", "short"]),
        node("p2", p2, &["add"]),
        node("ct", conv_transpose(6, 6, 2, 2, 0, [0, 0], 2, "ct.w", None), &["p2"]), // 6×14×12
        node("pool", avg_pool(2, 2, 0), &["ct"]),                                    // 6×7×6
        node("gap", Op::GlobalAvgPool, &["pool"]),
        node("gate", conv(6, 6, 1, 1, 0, 1, 1, "g.w", None), &["gap"]),
        node("sig", Op::Activation(Activation::Sigmoid), &["gate"]),
        node("excite", Op::Mul, &["sig", "pool"]),
        node("gap2", Op::GlobalAvgPool, &["excite"]),
        node("flat", Op::Flatten, &["gap2"]),
        node("hidden", linear(6, 5, "h.w", Some("h.b")), &["flat"]),
        node("relu", Op::Activation(Activation::Relu), &["hidden"]),
        node("fc", linear(5, 3, "fc.w", Some("fc.b")), &["relu"]),
    ];
    Model::new(graph("odd-resnet", input_spec([3, 13, 11]), nodes, "fc"), w).expect("a valid test model")
}

#[test]
fn a_widened_ensemble_computes_the_mean_of_its_members() {
    for k in [2, 3] {
        let members: Vec<Model> = (0..k).map(|i| odd_resnet(10 + i)).collect();
        let ensemble = widen_ensemble(&members).expect("the ensemble widens");
        let (err, mag) = mean_error(&members, &ensemble, 3, 7);
        assert!(mag > 1e-3 && err <= 1e-6 * mag.max(1.0), "k = {k}: |Δ| {err:e} against outputs up to {mag:e}");
        // Every convolution after the first is grouped by member; the option-A shortcut became
        // a grouped 1×1 convolution; the output keeps its size.
        let nodes = &ensemble.graph().nodes;
        let c2 = nodes.iter().find(|n| n.name == "c2").unwrap();
        assert!(matches!(&c2.op, Op::Conv2d(c) if c.groups == 2 * k as usize && c.in_channels == 4 * k as usize));
        let short = nodes.iter().find(|n| n.name == "short").unwrap();
        assert!(matches!(&short.op, Op::Conv2d(c) if c.groups == k as usize && c.stride == [2, 2]));
        assert_eq!(ensemble.output_shape(), members[0].output_shape());
    }
}

#[test]
fn a_weighted_ensemble_computes_the_weighted_sum_and_refuses_bad_weights() {
    let members: Vec<Model> = (0..3).map(|i| odd_resnet(20 + i)).collect();
    let share = [0.5f32, 0.3, 0.2];
    let ensemble = widen_weighted_ensemble(&members, &share).expect("the ensemble widens");
    let share64: Vec<f64> = share.iter().map(|s| f64::from(*s)).collect();
    let (err, mag) = weighted_error(&members, &share64, &ensemble, 3, 9);
    assert!(mag > 1e-3 && err <= 1e-6 * mag.max(1.0), "weighted: |Δ| {err:e} against outputs up to {mag:e}");
    // A weight of zero leaves exactly the other members.
    let only_first = widen_weighted_ensemble(&members[..2], &[1.0, 0.0]).unwrap();
    let (err, mag) = weighted_error(&members[..2], &[1.0, 0.0], &only_first, 2, 4);
    assert!(mag > 1e-3 && err <= 1e-6 * mag.max(1.0), "one member: |Δ| {err:e} against {mag:e}");
    // Wrong counts, non-finite or all-zero weights: refused by what is wrong.
    for (bad, why) in
        [(vec![0.5f32, 0.5], "got 2 weights"), (vec![1.0, f32::NAN, 0.0], "finite"), (vec![0.0; 3], "not all zero")]
    {
        let e = widen_weighted_ensemble(&members, &bad).unwrap_err().to_string();
        assert!(e.contains(why), "{bad:?}: {e}");
    }
}

#[test]
fn mobile_and_residual_members_widen_too() {
    // Hard-swish, depthwise convolutions, a squeeze-and-excitation product, clips.
    let mobile: Vec<Model> = (1..=2).map(odd_mobile_model).collect();
    let (err, mag) = mean_error(&mobile, &widen_ensemble(&mobile).unwrap(), 2, 3);
    assert!(mag > 1e-3 && err <= 1e-6 * mag.max(1.0), "mobile: |Δ| {err:e} against {mag:e}");
    // Quadratic residual network (the leveled path's shape), deterministic weights per seed.
    let square: Vec<Model> = (1..=2).map(tiny_square_resnet).collect();
    let (err, mag) = mean_error(&square, &widen_ensemble(&square).unwrap(), 2, 4);
    assert!(mag > 1e-3 && err <= 1e-6 * mag.max(1.0), "square resnet: |Δ| {err:e} against {mag:e}");
}

#[test]
fn a_map_output_is_averaged_by_one_more_layer() {
    // A segmenter-like output: the last node is a convolution's map, not a classifier.
    let map = |seed: u64| {
        let mut r = rng(seed);
        let mut w = Weights::new();
        w.insert("c1.w".into(), rand_tensor(&mut r, &[5, 3, 3, 3]));
        w.insert("c2.w".into(), rand_tensor(&mut r, &[2, 5, 1, 1]));
        w.insert("c2.b".into(), rand_tensor(&mut r, &[2]));
        let nodes = vec![
            node("c1", conv(3, 5, 3, 1, 1, 1, 1, "c1.w", None), &[INPUT]),
            node("a", Op::Activation(Activation::Silu), &["c1"]),
            node("up", Op::Upsample { factor: 2 }, &["a"]),
            node("c2", conv(5, 2, 1, 1, 0, 1, 1, "c2.w", Some("c2.b")), &["up"]),
        ];
        Model::new(graph("seg", input_spec([3, 7, 9]), nodes, "c2"), w).unwrap()
    };
    let members = [map(1), map(2), map(3)];
    let ensemble = widen_ensemble(&members).unwrap();
    assert_eq!(ensemble.graph().output, "c2.ensemble_mean");
    let (err, mag) = mean_error(&members, &ensemble, 2, 5);
    assert!(mag > 1e-3 && err <= 1e-6 * mag.max(1.0), "maps: |Δ| {err:e} against {mag:e}");
}

#[test]
fn ensembles_that_cannot_be_widened_are_refused_by_name() {
    let one = [odd_resnet(1)];
    assert!(widen_ensemble(&one).unwrap_err().to_string().contains("at least two members"));
    // Another architecture.
    let e = widen_ensemble(&[odd_resnet(1), odd_mobile_model(1)]).unwrap_err().to_string();
    assert!(e.contains("member 2"), "{e}");
    // Channel concatenation interleaves the members' blocks: refused, naming the node.
    let e = widen_ensemble(&[every_op_model(1), every_op_model(2)]).unwrap_err().to_string();
    assert!(e.contains("'cat'") && e.contains("concat"), "{e}");
}

#[test]
fn members_of_different_degrees_widen_with_their_polynomials_padded() {
    // Member 2's polynomials raised by two degrees (random extra coefficients): a degree-2 and
    // a degree-4 network of one architecture, which differ more than two of one degree.
    let low = odd_resnet(31);
    let (graph, mut w) = odd_resnet(32).into_parts();
    let mut r = rng(33);
    for node in &graph.nodes {
        if let Op::Activation(Activation::Poly { coeffs, .. }) = &node.op {
            let c = &w[coeffs];
            let (rows, terms) = (c.shape()[0], c.shape()[1]);
            let extra = uniform(&mut r, &[rows, 2], -0.05, 0.05);
            let wider = ArrayD::from_shape_fn(ndarray::IxDyn(&[rows, terms + 2]), |i| {
                if i[1] < terms {
                    c[[i[0], i[1]]]
                } else {
                    extra[[i[0], i[1] - terms]]
                }
            });
            w.insert(coeffs.clone(), wider);
        }
    }
    let high = Model::new(graph, w).unwrap();
    for members in [vec![low.clone(), high.clone()], vec![high, low]] {
        let ensemble = widen_ensemble(&members).expect("members of different degrees widen");
        let (err, mag) = mean_error(&members, &ensemble, 3, 8);
        assert!(mag > 1e-3 && err <= 1e-6 * mag.max(1.0), "|Δ| {err:e} against outputs up to {mag:e}");
    }
}
