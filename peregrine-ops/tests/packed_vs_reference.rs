//! Packed execution on the `clear` backend against the f64 reference executor, on odd,
//! non-power-of-two shapes through every operator, with and without CKKS-sized noise.

use std::collections::HashMap;

use backend_clear::{ClearBootstrap, ClearParams, ClearScheme, NoiseModel};
use ndarray::{ArrayD, IxDyn};
use peregrine_backend::{Client, Scheme};
use peregrine_model::ir::*;
use peregrine_model::reference::Reference;
use peregrine_model::testkit::{
    avg_pool, conv, graph, linear, node, odd_packed_model, rand_input, random_poly, raw_input, uniform,
};
use peregrine_ops::*;
use rand::{rngs::StdRng, SeedableRng};

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

fn params(log_n: u32, levels: usize) -> ClearParams {
    ClearParams { log_ring_dimension: log_n, log_scale: 40, first_modulus_bits: 60, levels, ..ClearParams::default() }
}

fn run_packed(model: &Model, p: &ClearParams, x: &[f64]) -> (Vec<f64>, Plan, HashMap<String, f64>) {
    run_packed_with(model, p, x, None)
}

fn run_packed_with(
    model: &Model,
    p: &ClearParams,
    x: &[f64],
    max_keys: Option<usize>,
) -> (Vec<f64>, Plan, HashMap<String, f64>) {
    let caps = ClearScheme::capabilities(p).unwrap();
    let program = compile(model, caps.slots).unwrap();
    let plan = plan(program, &caps).unwrap();
    let plan = match max_keys {
        Some(k) => with_key_budget(plan, k).unwrap(),
        None => plan,
    };
    let client = ClearScheme::keygen(p, &plan.key_request()).unwrap();
    let server = ClearScheme::server(&client.evaluation_keys().unwrap()).unwrap();
    let input = encrypt_input(&client, &plan, x).unwrap();
    // Per-node precision trace (client side).
    let reference = Reference::<f64>::new(model);
    let shape = &model.graph().input.shape;
    let xin = ArrayD::from_shape_vec(IxDyn(&[1, shape[0], shape[1], shape[2]]), x.to_vec()).unwrap();
    let mut ref_values: HashMap<String, Vec<f64>> = HashMap::new();
    reference
        .run_inspect(&xin, |i, v| {
            ref_values.insert(model.graph().nodes[i].name.clone(), v.iter().copied().collect());
        })
        .unwrap();
    let mut errs = HashMap::new();
    let (out, timings) = execute(&plan, &server, input, |step, t, cts| {
        let name = plan.program.tensors[t].name.trim_end_matches("@bootstrap").to_string();
        if let Some(want) = ref_values.get(&name) {
            let got = peregrine_ops::exec::decrypt_tensor(&client, &plan, t, cts).unwrap();
            let e = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            errs.insert(step.name.clone(), e);
        }
    })
    .unwrap();
    assert_eq!(timings.len(), plan.program.steps.len());
    (decrypt_output(&client, &plan, &out).unwrap(), plan, errs)
}

fn reference_output(model: &Model, x: &[f64]) -> Vec<f64> {
    let s = &model.graph().input.shape;
    let xin = ArrayD::from_shape_vec(IxDyn(&[1, s[0], s[1], s[2]]), x.to_vec()).unwrap();
    Reference::<f64>::new(model).run(&xin).unwrap().iter().copied().collect()
}

#[test]
fn odd_shapes_through_every_operator_match_the_reference() {
    let model = odd_packed_model(1);
    let mut r = StdRng::seed_from_u64(2);
    let x = rand_input(&mut r, 3 * 37 * 53);
    let want = reference_output(&model, &x);
    // 2^11 slots: the 37×53 input (1,961 px) fits one block; 2^10 slots force g > 1 (split 2).
    for log_n in [12, 11] {
        let (got, plan, errs) = run_packed(&model, &params(log_n, 30), &x);
        let max_err = max_abs_diff(&got, &want);
        assert!(max_err < 1e-6, "slots 2^{}: max error {max_err:e}; per step {errs:?}", log_n - 1);
        for (step, e) in &errs {
            assert!(*e < 1e-6, "step {step}: error {e:e}");
        }
        if log_n == 11 {
            assert!(plan.program.tensors[0].layout.gip.as_ref().unwrap().split > 1, "input must be split");
        }
        assert!(plan.cost.rotations > 0 && plan.cost.levels_consumed > 0);
    }
}

#[test]
fn large_input_splits_with_g_above_one() {
    // 5×300×451 at 2^15 slots: split 3 → 9 sub-maps; conv stride 3 brings g back to 1.
    let mut r = StdRng::seed_from_u64(3);
    let mut w = Weights::new();
    w.insert("c.w".into(), uniform(&mut r, &[2, 5, 3, 3], -0.3, 0.3));
    w.insert("fc.w".into(), uniform(&mut r, &[3, 2], -0.5, 0.5));
    let nodes = vec![
        node("c", conv(5, 2, 3, 3, 1, 1, 1, "c.w", None), &[INPUT]),
        node("gap", Op::GlobalAvgPool, &["c"]),
        node("flat", Op::Flatten, &["gap"]),
        node("fc", linear(2, 3, "fc.w", None), &["flat"]),
    ];
    let graph = graph("big", raw_input([5, 300, 451]), nodes, "fc");
    let model = Model::new(graph, w).unwrap();
    let x = rand_input(&mut r, 5 * 300 * 451);
    let want = reference_output(&model, &x);
    let (got, plan, _) = run_packed(&model, &params(16, 4), &x);
    let g = plan.program.tensors[0].layout.gip.clone().unwrap();
    assert_eq!(g.split, 3, "{g:?}");
    let conv_out = plan.program.tensors.iter().find(|t| t.name == "c").map(|t| t.layout.gip.clone().unwrap());
    if let Some(c) = conv_out {
        assert_eq!(c.split, 1, "stride 3 divides g = 3 down to 1: {c:?}");
    }
    let max_err = max_abs_diff(&got, &want);
    assert!(max_err < 1e-6, "max error {max_err:e}");
}

#[test]
fn realistic_noise_keeps_outputs_close() {
    let model = odd_packed_model(4);
    let mut r = StdRng::seed_from_u64(5);
    let x = rand_input(&mut r, 3 * 37 * 53);
    let want = reference_output(&model, &x);
    let p = ClearParams { noise: Some(NoiseModel::ckks(1 << 12)), ..params(12, 30) };
    let (got, _, _) = run_packed(&model, &p, &x);
    let max_err = max_abs_diff(&got, &want);
    assert!(max_err > 0.0 && max_err < 1e-4, "max error with noise {max_err:e}");
}

#[test]
fn too_deep_without_bootstrapping_fails_clearly_and_bootstrapping_fixes_it() {
    let model = odd_packed_model(6);
    let caps = ClearScheme::capabilities(&params(12, 6)).unwrap();
    let e = plan(compile(&model, caps.slots).unwrap(), &caps).unwrap_err().to_string();
    assert!(e.contains("needs") && e.contains("offers 6") && e.contains("cannot bootstrap"), "{e}");
    let depth = match plan(compile(&model, caps.slots).unwrap(), &caps).unwrap_err() {
        OpsError::LevelsExhausted { needed, .. } => needed,
        other => panic!("{other}"),
    };
    assert!(depth > 6);
    // With enough levels the same plan works and uses exactly `depth` levels.
    let caps2 = ClearScheme::capabilities(&params(12, depth)).unwrap();
    let pl = plan(compile(&model, caps2.slots).unwrap(), &caps2).unwrap();
    assert_eq!(pl.cost.levels_consumed, depth);
    assert_eq!(pl.cost.bootstraps, 0);
    // With bootstrapping at 6 levels it plans bootstraps and still matches the reference.
    let bp = ClearParams { bootstrap: Some(ClearBootstrap { output_level: 5, range: 1e6 }), ..params(12, 6) };
    let mut r = StdRng::seed_from_u64(7);
    let x = rand_input(&mut r, 3 * 37 * 53);
    let want = reference_output(&model, &x);
    let (got, pl, _) = run_packed(&model, &bp, &x);
    assert!(pl.cost.bootstraps > 0);
    let max_err = max_abs_diff(&got, &want);
    assert!(max_err < 1e-6, "bootstrapped max error {max_err:e}");
}

#[test]
fn unsupported_layers_are_named() {
    let mut r = StdRng::seed_from_u64(8);
    let mut w = Weights::new();
    w.insert("c.w".into(), uniform(&mut r, &[2, 3, 3, 3], -0.3, 0.3));
    let nodes = vec![
        node("c", conv(3, 2, 3, 1, 1, 1, 1, "c.w", None), &[INPUT]),
        node("act", Op::Activation(Activation::Relu), &["c"]),
    ];
    let graph = graph("relu", raw_input([3, 9, 9]), nodes, "act");
    let e = compile(&Model::new(graph, w).unwrap(), 1024).unwrap_err().to_string();
    assert!(e.contains("'act'") && e.contains("RELU"), "{e}");
}

/// The residual model with one positive and one negative quadratic (seed 9), an input and the
/// reference output.
fn two_quadratic_residual() -> (Model, Vec<f64>, Vec<f64>) {
    let mut r = StdRng::seed_from_u64(9);
    let mut q1 = uniform(&mut r, &[4, 3], -0.5, 0.5);
    let mut q2 = uniform(&mut r, &[4, 3], -0.5, 0.5);
    for c in 0..4 {
        q1[[c, 2]] = 0.1 + 0.2 * c as f32;
        q2[[c, 2]] = -0.05 - 0.1 * c as f32;
    }
    let model = residual_poly_model(&mut r, q1, q2);
    let x = rand_input(&mut r, 5 * 13 * 11);
    let want = reference_output(&model, &x);
    (model, x, want)
}

#[test]
fn quadratic_activations_cost_one_level_each() {
    // conv → quad(+) → conv → add(shortcut) → quad(−) → GAP → fc, on 5×13×11.
    let (model, x, want) = two_quadratic_residual();
    let (got, plan, _) = run_packed(&model, &params(12, 10), &x);
    let squares = plan.program.steps.iter().filter(|s| s.kind_name() == "square").count();
    assert_eq!(squares, 2, "both quadratics fold into their linear producers");
    // conv(1) + square(1) + conv+add(1) + square(1) + gap/fc(1) = 5 levels.
    assert_eq!(plan.cost.levels_consumed, 5);
    let max_err = max_abs_diff(&got, &want);
    assert!(max_err < 1e-6, "max error {max_err:e}");
}

#[test]
fn bootstraps_move_to_the_ancestor_with_fewest_ciphertexts() {
    // input 1×20×20 → poly4 (1 ct) → upsample ×3 (60×60: split 3, 9 cts) → poly4.
    // Just in time would bootstrap the 9-ciphertext map; bootstrapping the 1-ciphertext one
    // before the upsampling leaves enough levels and costs 1.
    let mut r = StdRng::seed_from_u64(10);
    let mut w = Weights::new();
    let p1 = random_poly("p1", 1, &mut w, &mut r, false);
    let p2 = random_poly("p2", 1, &mut w, &mut r, false);
    // A zero leading coefficient keeps p2 from being folded into the upsampling.
    // A leading coefficient too small to fold (|c_4|^(1/4) < 1/64) but not negligible: p2 is
    // evaluated unfolded, at degree 4 (an exact 0 would make it a foldable cubic).
    w.get_mut("p2.c").unwrap()[[0, 4]] = 1e-9;
    let nodes =
        vec![node("p1", p1, &[INPUT]), node("up", Op::Upsample { factor: 3 }, &["p1"]), node("p2", p2, &["up"])];
    let graph = graph("boot", raw_input([1, 20, 20]), nodes, "p2");
    let model = Model::new(graph, w).unwrap();
    let p = ClearParams { bootstrap: Some(ClearBootstrap { output_level: 4, range: 1e6 }), ..params(10, 4) };
    let x = rand_input(&mut r, 400);
    let want = reference_output(&model, &x);
    let (got, pl, _) = run_packed(&model, &p, &x);
    assert_eq!(pl.program.tensors.iter().find(|t| t.name.starts_with("up")).unwrap().ciphertexts, 9);
    assert_eq!(pl.cost.bootstraps, 1, "one ciphertext bootstrapped instead of nine");
    let max_err = max_abs_diff(&got, &want);
    assert!(max_err < 1e-6, "max error {max_err:e}");
}

/// With a cost model the planner weighs a bootstrap against what moving it costs. Graph:
/// poly (1 ciphertext) → upsample ×3 (9 ciphertexts) → 9×9 conv → poly. Bootstrapping the one
/// ciphertext before the upsampling runs the conv's rotations on nine ciphertexts at the top
/// level; bootstrapping the nine after the conv runs them at level 1. Dear bootstraps: one,
/// early; cheap ones: nine, just in time, and the plan is cheaper for it.
#[test]
fn with_a_cost_model_bootstraps_go_where_the_plan_is_cheapest() {
    let mut r = StdRng::seed_from_u64(10);
    let mut w = Weights::new();
    let p1 = random_poly("p1", 1, &mut w, &mut r, false);
    let p2 = random_poly("p2", 1, &mut w, &mut r, false);
    // A leading coefficient too small to fold (|c_4|^(1/4) < 1/64) but not negligible: p2 is
    // evaluated unfolded, at degree 4 (an exact 0 would make it a foldable cubic).
    w.get_mut("p2.c").unwrap()[[0, 4]] = 1e-9;
    w.insert("c.w".into(), uniform(&mut r, &[1, 1, 9, 9], -0.3, 0.3));
    let nodes = vec![
        node("p1", p1, &[INPUT]),
        node("up", Op::Upsample { factor: 3 }, &["p1"]),
        node("c", conv(1, 1, 9, 1, 4, 1, 1, "c.w", None), &["up"]),
        node("p2", p2, &["c"]),
    ];
    let model = Model::new(graph("boot", raw_input([1, 20, 20]), nodes, "p2"), w).unwrap();
    let p = ClearParams { bootstrap: Some(ClearBootstrap { output_level: 4, range: 1e6 }), ..params(10, 4) };
    let mut caps = ClearScheme::capabilities(&p).unwrap();
    let levels = caps.max_level + 1;
    let model_with = |bootstrap: f64| peregrine_backend::OpCosts {
        // Work that grows steeply with the level, as key switching does.
        key_switch: (0..levels).map(|l| 10.0 * ((l + 1) * (l + 1)) as f64).collect(),
        hoisted_rotation: (0..levels).map(|l| 6.0 * ((l + 1) * (l + 1)) as f64).collect(),
        tensor: (0..levels).map(|l| (l + 1) as f64).collect(),
        ct_pt: (0..levels).map(|l| (l + 1) as f64).collect(),
        rescale: (0..levels).map(|l| (l + 1) as f64).collect(),
        bootstrap,
        unit_seconds: 1e-3,
        basis: "test".into(),
    };
    let program = compile(&model, caps.slots).unwrap();
    caps.costs = Some(model_with(1e6));
    let dear = plan(program.clone(), &caps).unwrap();
    assert_eq!(dear.cost.bootstraps, 1, "dear bootstraps: one, early");
    let units = dear.cost.estimated_units.unwrap();
    assert!(dear.cost.bootstrap_units.unwrap() == 1e6 && units > 1e6);
    assert!((dear.cost.estimated_seconds.unwrap() - units * 1e-3).abs() < 1e-9 * units);
    assert!((dear.steps.iter().filter_map(|s| s.units).sum::<f64>() - units).abs() < 1e-9 * units);
    caps.costs = Some(model_with(1.0));
    let cheap = plan(program.clone(), &caps).unwrap();
    assert_eq!(cheap.cost.bootstraps, 9, "cheap bootstraps: just in time");
    let (cheap_units, dear_work) = (cheap.cost.estimated_units.unwrap(), units - 1e6);
    assert!(cheap_units - 9.0 < dear_work, "{cheap_units} vs {dear_work} + 1 bootstrap");
    // Without a model, the count decides.
    caps.costs = None;
    assert_eq!(plan(program, &caps).unwrap().cost.bootstraps, 1);
    let x = rand_input(&mut r, 400);
    let want = reference_output(&model, &x);
    let (got, _, _) = run_packed(&model, &p, &x);
    assert!(max_abs_diff(&got, &want) < 1e-6);
}

#[test]
fn a_rotation_key_budget_composes_rotations_and_keeps_results() {
    let model = odd_packed_model(11);
    let mut r = StdRng::seed_from_u64(12);
    let x = rand_input(&mut r, 3 * 37 * 53);
    let want = reference_output(&model, &x);
    let p = params(12, 30);
    let (_, full, _) = run_packed(&model, &p, &x);
    // 2^11 slots: 21 keys ±2^i are the floor; give 25.
    let (got, lim, _) = run_packed_with(&model, &p, &x, Some(25));
    assert!(full.rotation_keys.len() > 25, "the unlimited plan uses {} keys", full.rotation_keys.len());
    assert!(lim.rotation_keys.len() <= 25, "{} keys", lim.rotation_keys.len());
    assert!(lim.cost.key_switches > full.cost.key_switches);
    let max_err = max_abs_diff(&got, &want);
    assert!(max_err < 1e-6, "max error {max_err:e}");
    // Below the ±2^i set, rotations compose along shortest paths over the keyed steps.
    let (got, small, _) = run_packed_with(&model, &p, &x, Some(6));
    assert!(small.rotation_keys.len() <= 6, "{} keys", small.rotation_keys.len());
    assert!(small.cost.key_switches > lim.cost.key_switches);
    let max_err = max_abs_diff(&got, &want);
    assert!(max_err < 1e-6, "max error {max_err:e} with 6 keys");
    let caps = ClearScheme::capabilities(&p).unwrap();
    let e = with_key_budget(plan(compile(&model, caps.slots).unwrap(), &caps).unwrap(), 0).unwrap_err().to_string();
    assert!(e.contains("cannot compose every rotation"), "{e}");
    // Signed-binary paths add up to the rotation and use only ±2^i.
    for step in [0i64, 1, 3, 7, 100, 1023, 1500, 2047] {
        let path = peregrine_ops::plan::signed_binary_path(step, 2048);
        assert_eq!(path.iter().sum::<i64>().rem_euclid(2048), step);
        for s in &path {
            let v = if *s > 1024 { 2048 - s } else { *s };
            assert!(v.count_ones() == 1, "{s} is not ±2^i");
        }
    }
}

#[test]
fn folded_polynomials_take_ceil_log2_d_levels() {
    // conv → poly(d) → conv → add(shortcut) → poly(d) → GAP → fc for d = 3, 4, 8 with
    // leading coefficients of one sign (positive, then negative).
    for (d, sign) in [(3usize, 1.0f32), (4, -1.0), (8, 1.0)] {
        let mut r = StdRng::seed_from_u64(20 + d as u64);
        let mut q = [uniform(&mut r, &[4, d + 1], -0.3, 0.3), uniform(&mut r, &[4, d + 1], -0.3, 0.3)];
        for c in q.iter_mut() {
            for ch in 0..4 {
                c[[ch, d]] = sign * (0.05 + 0.05 * ch as f32);
            }
        }
        let [q1, q2] = q;
        let model = residual_poly_model(&mut r, q1, q2);
        let x = rand_input(&mut r, 5 * 13 * 11);
        let want = reference_output(&model, &x);
        let (got, plan, _) = run_packed(&model, &params(12, 16), &x);
        let folded = plan.program.steps.iter().filter(|s| s.kind_name() == "poly-folded").count();
        assert_eq!(folded, 2, "degree {d}: both activations fold");
        let dd = peregrine_ops::plan::ceil_log2(d);
        assert_eq!(plan.cost.levels_consumed, 3 + 2 * dd, "degree {d}: conv, poly, conv+add, poly, head");
        let max_err = max_abs_diff(&got, &want);
        let mag = want.iter().fold(0.0f64, |a, b| a.max(b.abs()));
        assert!(max_err < 1e-6 * mag.max(1.0), "degree {d}: max error {max_err:e} (outputs up to {mag:e})");
    }
}

/// conv(5→4) → poly q1 (with input scale) → conv(4→4) → add(·, q1) → poly q2 → GAP → fc(4→3),
/// on a 5×13×11 input.
fn residual_poly_model(r: &mut StdRng, q1: ArrayD<f32>, q2: ArrayD<f32>) -> Model {
    let mut w = Weights::new();
    w.insert("c1.w".into(), uniform(r, &[4, 5, 3, 3], -0.3, 0.3));
    w.insert("c2.w".into(), uniform(r, &[4, 4, 3, 3], -0.3, 0.3));
    w.insert("fc.w".into(), uniform(r, &[3, 4], -0.5, 0.5));
    w.insert("q1.c".into(), q1);
    w.insert("q1.s".into(), uniform(r, &[4], -1.0, 1.0).mapv(|v| 0.5 + v.abs()));
    w.insert("q2.c".into(), q2);
    let nodes = vec![
        node("c1", conv(5, 4, 3, 1, 1, 1, 1, "c1.w", None), &[INPUT]),
        node(
            "q1",
            Op::Activation(Activation::Poly {
                coeffs: "q1.c".into(),
                input_scale: Some("q1.s".into()),
                approximates: None,
            }),
            &["c1"],
        ),
        node("c2", conv(4, 4, 3, 1, 1, 1, 1, "c2.w", None), &["q1"]),
        node("add", Op::Add, &["c2", "q1"]),
        node(
            "q2",
            Op::Activation(Activation::Poly { coeffs: "q2.c".into(), input_scale: None, approximates: None }),
            &["add"],
        ),
        node("gap", Op::GlobalAvgPool, &["q2"]),
        node("flat", Op::Flatten, &["gap"]),
        node("fc", linear(4, 3, "fc.w", None), &["flat"]),
    ];
    let graph = graph("residual", raw_input([5, 13, 11]), nodes, "fc");
    Model::new(graph, w).unwrap()
}

/// Tower reuse: the planner's chain for a residual model with two quadratics leaves both
/// squares unrescaled (3 levels instead of 5: each square shares a prime with the linear layer
/// after it, through the shortcut add and through global average pooling), and the packed run
/// on that exact chain matches the reference; on a uniform chain nothing changes.
#[test]
fn tower_reuse_chain_shares_primes_and_matches_the_reference() {
    let (model, x, want) = two_quadratic_residual();
    let uniform_params = params(12, 10);
    let caps = ClearScheme::capabilities(&uniform_params).unwrap();
    let request = propose_chain(&compile(&model, caps.slots).unwrap(), &caps).expect("squares can share primes");
    // Bottom to top: fc (rescales the second square), c2 + add (the first), c1 (the input).
    assert_eq!(request.level_factors, vec![2, 2, 1]);
    let towered = ClearScheme::with_chain(&ClearParams { log_scale: 30, ..uniform_params.clone() }, &request).unwrap();
    assert_eq!(towered.levels, 3);
    assert_eq!(towered.level_bits, vec![56, 56, 30], "Δ = 2^30, plaintexts at 2^26 on the shared primes");
    let (got, plan, errs) = run_packed(&model, &towered, &x);
    assert_eq!(plan.lazy_squares, 2);
    assert_eq!(plan.cost.levels_consumed, 3);
    assert_eq!(plan.cost.rescales, 3, "one rescale per level: the squares add none");
    let max_err = max_abs_diff(&got, &want);
    assert!(max_err < 1e-5, "max error {max_err:e} (per step: {errs:?})");
    // A uniform chain cannot absorb a square: 5 levels, nothing lazy.
    let (got, plan, _) = run_packed(&model, &uniform_params, &x);
    assert_eq!((plan.lazy_squares, plan.cost.levels_consumed), (0, 5));
    assert!(max_abs_diff(&got, &want) < 1e-6);
    // With CKKS-sized noise at N = 2^12 the towered chain stays close.
    let noisy = ClearParams { noise: Some(NoiseModel::ckks(1 << 12)), ..towered };
    let (got, _, _) = run_packed(&model, &noisy, &x);
    let e = max_abs_diff(&got, &want);
    assert!(e < 1e-3, "noisy tower run error {e:e}");
}

/// A classifier with small weights after global pooling has sparse, small diagonals: the
/// chain widens the prime that rescales it so that encoding keeps them (coefficient rms ≥
/// [`plan::MIN_COEFFICIENT_RMS`]), only that prime, and the run on that chain still matches.
#[test]
fn the_chain_widens_the_prime_of_sparse_small_plaintexts() {
    let (model, x, _) = two_quadratic_residual();
    let (graph, mut weights) = model.into_parts();
    weights.get_mut("fc.w").unwrap().mapv_inplace(|v| v * 0.01);
    let small = Model::new(graph, weights).unwrap();
    let want = reference_output(&small, &x);
    let uniform_params = params(12, 10);
    let caps = ClearScheme::capabilities(&uniform_params).unwrap();
    let program = compile(&small, caps.slots).unwrap();
    let request = propose_chain(&program, &caps).expect("squares can share primes");
    assert_eq!(request.level_factors, vec![2, 2, 1]);
    // fc's diagonals: their norms ask for more than the default plaintext bits.
    let fc = program.steps.iter().rev().find_map(|s| match &s.kind {
        StepKind::Linear { plan, .. } => Some(plan),
        _ => None,
    });
    let need = plan::plaintext_bits_needed(fc.unwrap(), caps.slots);
    assert_eq!(request.min_plaintext_bits[0], need);
    let towered = ClearScheme::with_chain(&ClearParams { log_scale: 30, ..uniform_params.clone() }, &request).unwrap();
    // Only the classifier's prime widens (the scale gives way where it would pass 60 bits).
    let d = towered.log_scale;
    let pt = peregrine_backend::ChainRequest::plaintext_bits(d);
    assert!(need > pt && d + need <= 60, "need {need}, Δ = 2^{d}");
    assert_eq!(towered.level_bits, vec![d + need, d + pt, d]);
    let (got, plan, _) = run_packed(&small, &towered, &x);
    assert_eq!(plan.lazy_squares, 2);
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let err = max_abs_diff(&got, &want);
    assert!(err < 1e-6 * scale.max(1e-3), "max error {err:e} against outputs up to {scale:e}");
}

/// A model without squares (degree-4 polynomials) gets no tower chain: a uniform one is as short.
#[test]
fn no_tower_chain_without_squares() {
    let model = odd_packed_model(5);
    let caps = ClearScheme::capabilities(&params(14, 30)).unwrap();
    let program = compile(&model, caps.slots).unwrap();
    assert!(propose_chain(&program, &caps).is_none());
}

/// The mobile test model (hard swish, leaky ReLU, ReLU6, hard sigmoid, sigmoid; a
/// squeeze-and-excitation gate times its map and a product of two maps) with its activations
/// replaced by degree-4 polynomials on calibrated ranges.
fn mobile_poly_model() -> Model {
    use peregrine_model::transform::{calibrate_ranges, polynomialize};
    let model = peregrine_model::testkit::odd_mobile_model(7);
    let mut r = StdRng::seed_from_u64(8);
    let values: Vec<f32> = rand_input(&mut r, 4 * 3 * 19 * 23).iter().map(|v| *v as f32).collect();
    let calib = ArrayD::from_shape_vec(IxDyn(&[4, 3, 19, 23]), values).unwrap();
    let ranges = calibrate_ranges(&model, &calib).unwrap();
    polynomialize(&model, 4, &ranges, 1.1, 4.0).unwrap()
}

#[test]
fn products_of_two_tensors_match_the_reference_packed_and_split() {
    let model = mobile_poly_model();
    assert_eq!(model.graph().nodes.iter().filter(|n| n.op.kind() == "mul").count(), 2);
    let mut r = StdRng::seed_from_u64(9);
    let x = rand_input(&mut r, 3 * 19 * 23);
    let want = reference_output(&model, &x);
    // 2^11 slots: every map in one ciphertext; 2^9 slots: the 6×10×12 maps take several.
    for log_n in [12, 10] {
        let (got, plan, errs) = run_packed(&model, &params(log_n, 40), &x);
        let max_err = max_abs_diff(&got, &want);
        assert!(max_err < 1e-6, "slots 2^{}: max error {max_err:e}; per step {errs:?}", log_n - 1);
        let products: Vec<_> = plan.program.steps.iter().filter(|s| s.kind_name() == "product").collect();
        assert_eq!(products.len(), 2, "one product step per mul node");
        assert!(plan.cost.ct_ct_mults > 0);
        for (step, e) in &errs {
            assert!(*e < 1e-6, "step {step}: error {e:e}");
        }
    }
    let p = ClearParams { noise: Some(NoiseModel::ckks(1 << 12)), ..params(12, 40) };
    let (got, _, _) = run_packed(&model, &p, &x);
    let max_err = max_abs_diff(&got, &want);
    assert!(max_err > 0.0 && max_err < 1e-4, "max error with noise {max_err:e}");
}

#[test]
fn asymmetric_padding_matches_the_reference() {
    // 3×23×18 → conv 3×3 s2 (padding 0 before, 1 after: TensorFlow's SAME) → poly → depthwise
    // 2×3 (padding [1, 0] before, [0, 2] after) → GAP → linear; 2^11 slots (one block) and 2^9
    // (the input split over several ciphertexts).
    let mut r = StdRng::seed_from_u64(31);
    let mut w = Weights::new();
    w.insert("c1.w".into(), uniform(&mut r, &[4, 3, 3, 3], -0.4, 0.4));
    w.insert("dw.w".into(), uniform(&mut r, &[4, 1, 2, 3], -0.5, 0.5));
    w.insert("fc.w".into(), uniform(&mut r, &[5, 4], -0.5, 0.5));
    let p1 = random_poly("p1", 4, &mut w, &mut r, false);
    let asym = |op: Op, end: [usize; 2]| match op {
        Op::Conv2d(c) => Op::Conv2d(Conv2d { padding_end: Some(end), ..c }),
        other => other,
    };
    let mut dw = conv(4, 4, 1, 1, 0, 1, 4, "dw.w", None);
    if let Op::Conv2d(c) = &mut dw {
        c.kernel = [2, 3];
        c.padding = [1, 0];
        c.padding_end = Some([0, 2]);
    }
    let nodes = vec![
        node("c1", asym(conv(3, 4, 3, 2, 0, 1, 1, "c1.w", None), [1, 1]), &[INPUT]),
        node("p1", p1, &["c1"]),
        node("dw", dw, &["p1"]),
        node("gap", Op::GlobalAvgPool, &["dw"]),
        node("flat", Op::Flatten, &["gap"]),
        node("fc", linear(4, 5, "fc.w", None), &["flat"]),
    ];
    let model = Model::new(graph("asym", raw_input([3, 23, 18]), nodes, "fc"), w).unwrap();
    // (23 + 0 + 1 − 3) / 2 + 1 = 11 rows, (18 + 1 − 3) / 2 + 1 = 9 columns; then 11 + 1 − 2 + 1 = 11
    // and 9 + 2 − 3 + 1 = 9.
    assert_eq!(model.shape(0), &[4, 11, 9]);
    assert_eq!(model.shape(2), &[4, 11, 9]);
    let x = rand_input(&mut r, 3 * 23 * 18);
    let want = reference_output(&model, &x);
    for log_n in [12, 10] {
        let (got, _, errs) = run_packed(&model, &params(log_n, 12), &x);
        let max_err = max_abs_diff(&got, &want);
        assert!(max_err < 1e-6, "slots 2^{}: max error {max_err:e}; per step {errs:?}", log_n - 1);
    }
}

/// A convolution's diagonals repeat each weight over a channel's positions: the program keeps
/// them as short repeated templates, under 1 byte per coefficient (8 and more before), and the
/// packed run still matches the reference.
#[test]
fn program_diagonals_are_stored_compactly_and_stay_exact() {
    let model = peregrine_model::testkit::tiny_poly_cnn_sized(5, 8, 1);
    let p = params(14, 8);
    let caps = ClearScheme::capabilities(&p).unwrap();
    let program = compile(&model, caps.slots).unwrap();
    let coefficients: usize = program
        .steps
        .iter()
        .filter_map(|s| match &s.kind {
            StepKind::Linear { plan, .. } => Some(plan),
            _ => None,
        })
        .flat_map(|d| d.outputs.iter().flat_map(|o| o.giants.iter().flat_map(|g| g.terms.iter())))
        .map(|t| t.diag.len())
        .sum();
    let planned = plan(program, &caps).unwrap();
    let bytes = planned.cost.diagonal_bytes as usize;
    assert!(coefficients > 50_000, "{coefficients} coefficients");
    assert!(bytes > 0 && bytes < coefficients, "{bytes} bytes for {coefficients} coefficients");
    let x = rand_input(&mut StdRng::seed_from_u64(3), 3 * 32 * 32);
    let (out, _, _) = run_packed(&model, &p, &x);
    let want = reference_output(&model, &x);
    let err = max_abs_diff(&out, &want);
    assert!(err < 1e-6, "max |packed − reference| = {err}");
    eprintln!("{coefficients} coefficients in {bytes} bytes; max error {err:.1e}");
}

/// DBNet's residual squeeze-and-excitation block, `x + x·gate(x)`: the product of two
/// ciphertexts at Δ is rescaled by a prime that is not exactly Δ, so unless the gate is produced
/// at the scale that lands the product on Δ, the residual add meets two scales (the twenty-first
/// session's encrypted DBNet failed there on `ckks`). Odd sizes, NTT-friendly primes (scale drift
/// modelled), with and without CKKS-sized noise.
#[test]
fn a_residual_gate_adds_the_product_to_its_map_at_one_scale() {
    use peregrine_model::transform::{calibrate_ranges, polynomialize};
    let mut r = StdRng::seed_from_u64(41);
    let mut w = Weights::new();
    w.insert("c1.w".into(), uniform(&mut r, &[5, 3, 3, 3], -0.5, 0.5));
    w.insert("se1.w".into(), uniform(&mut r, &[3, 5, 1, 1], -0.8, 0.8));
    w.insert("se1.b".into(), uniform(&mut r, &[3], 0.0, 0.5));
    w.insert("se2.w".into(), uniform(&mut r, &[5, 3, 1, 1], -0.8, 0.8));
    w.insert("se2.b".into(), uniform(&mut r, &[5], -0.2, 0.2));
    w.insert("c2.w".into(), uniform(&mut r, &[4, 5, 3, 3], -0.4, 0.4));
    w.insert("c3.w".into(), uniform(&mut r, &[4, 5, 1, 1], -0.4, 0.4));
    w.insert("side.w".into(), uniform(&mut r, &[5, 3, 3, 3], -0.4, 0.4));
    w.insert("fc.w".into(), uniform(&mut r, &[3, 4], -0.5, 0.5));
    let nodes = vec![
        node("c1", conv(3, 5, 3, 1, 1, 1, 1, "c1.w", None), &[INPUT]), // 5×17×13
        node("gap", Op::GlobalAvgPool, &["c1"]),
        node("se1", conv(5, 3, 1, 1, 0, 1, 1, "se1.w", Some("se1.b")), &["gap"]),
        node("relu", Op::Activation(Activation::Relu), &["se1"]),
        node("se2", conv(3, 5, 1, 1, 0, 1, 1, "se2.w", Some("se2.b")), &["relu"]),
        node("gate", Op::Activation(Activation::HardSigmoid { alpha: 0.2, beta: 0.5 }), &["se2"]),
        node("excite", Op::Mul, &["c1", "gate"]),
        node("residual", Op::Add, &["c1", "excite"]),
        // A map times a map that is used twice (its producer cannot aim the product at Δ, so
        // the operand above the product's level does), added to the residual and to itself.
        node("side", conv(3, 5, 3, 1, 1, 1, 1, "side.w", None), &[INPUT]),
        node("a3", Op::Activation(Activation::Sigmoid), &["side"]),
        node("mix", Op::Mul, &["residual", "a3"]),
        node("res2", Op::Add, &["residual", "mix"]),
        node("extra", Op::Add, &["res2", "a3"]),
        // Two consumers (as in DBNet's neck): the sum is materialised by itself, no product in it.
        node("c2", conv(5, 4, 3, 2, 1, 1, 1, "c2.w", None), &["extra"]), // 4×9×7
        node("c3", conv(5, 4, 1, 2, 0, 1, 1, "c3.w", None), &["extra"]),
        node("both", Op::Add, &["c2", "c3"]),
        node("pool", Op::GlobalAvgPool, &["both"]),
        node("flat", Op::Flatten, &["pool"]),
        node("fc", linear(4, 3, "fc.w", None), &["flat"]),
    ];
    let model = Model::new(graph("rse", raw_input([3, 17, 13]), nodes, "fc"), w).unwrap();
    let values: Vec<f32> = rand_input(&mut r, 4 * 3 * 17 * 13).iter().map(|v| *v as f32).collect();
    let calib = ArrayD::from_shape_vec(IxDyn(&[4, 3, 17, 13]), values).unwrap();
    let ranges = calibrate_ranges(&model, &calib).unwrap();
    let model = polynomialize(&model, 4, &ranges, 1.1, 4.0).unwrap();
    let x = rand_input(&mut r, 3 * 17 * 13);
    let want = reference_output(&model, &x);
    for log_scale in [40u32, 33] {
        let p = ClearParams { log_scale, ..params(12, 40) };
        let (got, _, errs) = run_packed(&model, &p, &x);
        let max_err = max_abs_diff(&got, &want);
        assert!(max_err < 1e-5, "Δ = 2^{log_scale}: max error {max_err:e}; per step {errs:?}");
        let p = ClearParams { noise: Some(NoiseModel::ckks(1 << 12)), ..p };
        let (got, _, errs) = run_packed(&model, &p, &x);
        let max_err = max_abs_diff(&got, &want);
        // Noise grows as 1/Δ (the sigmoid's narrow range amplifies it most): 1e-3 at 2^40.
        let bound = 1e-3 * f64::from(40 - log_scale).exp2();
        assert!(max_err > 0.0 && max_err < bound, "Δ = 2^{log_scale} with noise: max error {max_err:e}; {errs:?}");
    }
}

/// A leading coefficient no input in range can feel (an odd function's x⁴ term fitted as 1e-18,
/// as in DBNet's sigmoid) is dropped: the activation folds as degree 3. One that matters but
/// whose root is small (|c_4|^(1/4) < 1/64: folding would cost more than six bits of its
/// input) is evaluated unfolded. Both match the reference, with CKKS-sized noise too.
#[test]
fn negligible_or_tiny_leading_coefficients_do_not_fold_into_noise() {
    for (lead, kind, degree) in [(1e-18f32, "poly-folded", 3usize), (1e-9, "poly", 4), (0.02, "poly-folded", 4)] {
        let mut r = StdRng::seed_from_u64(61);
        let mut q = [uniform(&mut r, &[4, 5], -0.3, 0.3), uniform(&mut r, &[4, 5], -0.3, 0.3)];
        for c in q.iter_mut() {
            for ch in 0..4 {
                c[[ch, 3]] = -0.07 - 0.01 * ch as f32;
                c[[ch, 4]] = lead;
            }
        }
        let [q1, q2] = q;
        let model = residual_poly_model(&mut r, q1, q2);
        let x = rand_input(&mut r, 5 * 13 * 11);
        let want = reference_output(&model, &x);
        let (got, plan, _) = run_packed(&model, &params(12, 16), &x);
        let kinds: Vec<&str> =
            plan.program.steps.iter().filter(|s| s.name == "q1" || s.name == "q2").map(|s| s.kind_name()).collect();
        assert_eq!(kinds, [kind, kind], "leading coefficient {lead:e}");
        for s in plan.program.steps.iter().filter(|s| s.name == "q1" || s.name == "q2") {
            let d = match &s.kind {
                StepKind::Poly { degree, .. } | StepKind::Folded { degree, .. } => *degree,
                other => panic!("unexpected step {other:?}"),
            };
            assert_eq!(d, degree, "leading coefficient {lead:e}: degree evaluated");
        }
        let mag = want.iter().fold(0.0f64, |a, b| a.max(b.abs()));
        let err = max_abs_diff(&got, &want);
        assert!(err < 1e-6 * mag.max(1.0), "leading coefficient {lead:e}: max error {err:e}");
        let noisy = ClearParams { noise: Some(NoiseModel::ckks(1 << 12)), ..params(12, 16) };
        let (got, _, errs) = run_packed(&model, &noisy, &x);
        let err = max_abs_diff(&got, &want);
        assert!(err > 0.0 && err < 1e-4 * mag.max(1.0), "leading coefficient {lead:e}, noise: {err:e}; {errs:?}");
    }
    assert_eq!(peregrine_ops::compile::effective_terms(&[1.0, 0.5, 1e-18, 1e-19], 1, 4), 2);
    assert_eq!(peregrine_ops::compile::effective_terms(&[1.0, 0.5, 1e-18, 1e-19, 1e-3], 1, 5), 5);
    assert_eq!(peregrine_ops::compile::effective_terms(&[0.0, 0.0, 0.0], 1, 3), 1);
}

/// Global average pooling sums H·W values before its 1/(H·W), which the next linear map
/// applies: a bootstrap of the sum would need a range H·W times its mean's (1,073 here). The
/// planner forms a sum only with a level to spare, and a bootstrap whose tensor is beyond the
/// parameters' range spends that level dividing by an integer first (and multiplies back,
/// exactly, after). Ranges are measured as the runtime does (every slot of every bootstrapped
/// tensor on `clear`); with them the run matches the reference at a parameters' range sized for
/// the other bootstraps only, and without them it stops at the sum's bootstrap.
#[test]
fn a_pooled_sum_beyond_the_bootstrap_range_is_divided_before_it() {
    use peregrine_model::transform::{calibrate_ranges, polynomialize};
    let mut r = StdRng::seed_from_u64(71);
    let mut w = Weights::new();
    w.insert("c1.w".into(), uniform(&mut r, &[4, 3, 3, 3], -0.5, 0.5));
    w.insert("c1.b".into(), uniform(&mut r, &[4], 0.5, 1.0));
    w.insert("se.w".into(), uniform(&mut r, &[3, 4, 1, 1], -0.8, 0.8));
    w.insert("se.b".into(), uniform(&mut r, &[3], -0.2, 0.2));
    w.insert("fc.w".into(), uniform(&mut r, &[2, 3], -0.5, 0.5));
    let nodes = vec![
        node("c1", conv(3, 4, 3, 1, 1, 1, 1, "c1.w", Some("c1.b")), &[INPUT]), // 4×37×29
        node("a1", Op::Activation(Activation::Silu), &["c1"]),
        node("gap", Op::GlobalAvgPool, &["a1"]),
        node("se", conv(4, 3, 1, 1, 0, 1, 1, "se.w", Some("se.b")), &["gap"]),
        node("a2", Op::Activation(Activation::Silu), &["se"]),
        node("flat", Op::Flatten, &["a2"]),
        node("fc", linear(3, 2, "fc.w", None), &["flat"]),
    ];
    let model = Model::new(graph("pooled", raw_input([3, 37, 29]), nodes, "fc"), w).unwrap();
    let values: Vec<f32> = rand_input(&mut r, 4 * 3 * 37 * 29).iter().map(|v| *v as f32).collect();
    let calib = ArrayD::from_shape_vec(IxDyn(&[4, 3, 37, 29]), values).unwrap();
    let ranges = calibrate_ranges(&model, &calib).unwrap();
    let model = polynomialize(&model, 4, &ranges, 1.1, 4.0).unwrap();
    let x = rand_input(&mut r, 3 * 37 * 29);
    let want = reference_output(&model, &x);
    let with_range = |range: f64, noise: Option<NoiseModel>| ClearParams {
        bootstrap: Some(ClearBootstrap { output_level: 4, range }),
        noise,
        ..params(13, 4)
    };
    let planned = |p: &ClearParams| {
        let caps = ClearScheme::capabilities(p).unwrap();
        plan(compile(&model, caps.slots).unwrap(), &caps).unwrap()
    };
    // With three levels the activation leaves the pooled map at level 0: the map is
    // bootstrapped, not its sum.
    let low = ClearParams { bootstrap: Some(ClearBootstrap { output_level: 3, range: 1e12 }), ..params(13, 3) };
    let low_plan = planned(&low);
    let names: Vec<&str> =
        low_plan.program.steps.iter().filter(|s| s.kind_name() == "bootstrap").map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"bootstrap(a1)") && !names.iter().any(|n| n.contains("#sum")), "{names:?}");
    // Every bootstrapped tensor's largest value, measured with a range nothing exceeds.
    let wide = with_range(1e12, None);
    let pl = planned(&wide);
    let client = ClearScheme::keygen(&wide, &pl.key_request()).unwrap();
    let server = ClearScheme::server(&client.evaluation_keys().unwrap()).unwrap();
    let mut largest: HashMap<TensorId, f64> = HashMap::new();
    execute(&pl, &server, encrypt_input(&client, &pl, &x).unwrap(), |_, t, cts| {
        let m = cts.iter().flat_map(|c| client.decrypt_values(c).unwrap()).fold(0f64, |m, v| m.max(v.abs()));
        largest.insert(t, m);
    })
    .unwrap();
    let boots: Vec<(TensorId, TensorId)> = pl
        .program
        .steps
        .iter()
        .filter_map(|s| match s.kind {
            StepKind::Bootstrap { input } => Some((input, s.output)),
            _ => None,
        })
        .collect();
    assert!(!boots.is_empty(), "the plan bootstraps");
    for &(input, _) in &boots {
        let name = &pl.program.tensors[input].name;
        assert!(!(name.ends_with("#sum") && pl.levels[input] == 0), "{name} bootstrapped without a spare level");
    }
    let tight = boots.iter().filter(|(i, _)| pl.levels[*i] == 0).map(|(i, _)| largest[i]).fold(0f64, f64::max);
    let range = 1.25 * tight.max(1.0);
    let sum_boot = boots.iter().find(|(i, _)| pl.program.tensors[*i].name.ends_with("#sum"));
    let &(sum, _) = sum_boot.expect("the pooled sum is bootstrapped (with a spare level)");
    assert!(largest[&sum] > 8.0 * range, "the sum ({}) is far beyond the range {range}", largest[&sum]);
    for noise in [None, Some(NoiseModel::ckks(1 << 13))] {
        let p = with_range(range, noise.clone());
        let mut pl = planned(&p);
        assert_eq!(pl.program.steps.len(), boots.len() + compile(&model, pl.capabilities.slots).unwrap().steps.len());
        for &(input, output) in &boots {
            pl.bootstrap_ranges.insert(output, 1.25 * largest[&input]);
        }
        let divisor = peregrine_ops::exec::range_divisor(Some(1.25 * largest[&sum]), Some(range), pl.levels[sum]);
        assert!(divisor > 8, "divisor {divisor}");
        let client = ClearScheme::keygen(&p, &pl.key_request()).unwrap();
        let server = ClearScheme::server(&client.evaluation_keys().unwrap()).unwrap();
        let run = |pl: &Plan| {
            execute(pl, &server, encrypt_input(&client, pl, &x).unwrap(), |_, _, _| {})
                .map(|(out, _)| decrypt_output(&client, pl, &out).unwrap())
        };
        let got = run(&pl).unwrap();
        let err = max_abs_diff(&got, &want);
        let bound = if noise.is_some() { 1e-3 } else { 1e-6 };
        assert!(err < bound, "noise {}: max error {err:e}", noise.is_some());
        pl.bootstrap_ranges.clear();
        let e = run(&pl).unwrap_err().to_string();
        assert!(e.contains("bootstrap") && e.contains("exceeds the bootstrap range"), "{e}");
    }
}

/// An SPPF block (three chained 5×5 pools, concatenated with their input, then a 1×1
/// convolution): composed, the last pool multiplies the convolution's coefficients by 25; past
/// the composition threshold the pooled concatenation is scheduled as its own step instead
/// (one more linear step, fewer coefficients per step) and the packed run still matches the
/// reference.
#[test]
fn a_composition_that_multiplies_coefficients_is_scheduled_apart() {
    let mut r = StdRng::seed_from_u64(41);
    let mut w = Weights::new();
    w.insert("c1.w".into(), uniform(&mut r, &[4, 3, 3, 3], -0.4, 0.4));
    w.insert("cv2.w".into(), uniform(&mut r, &[5, 16, 1, 1], -0.4, 0.4));
    let p1 = random_poly("p1", 4, &mut w, &mut r, false);
    let nodes = vec![
        node("c1", conv(3, 4, 3, 1, 1, 1, 1, "c1.w", None), &[INPUT]),
        node("p1", p1, &["c1"]),
        node("m1", avg_pool(5, 1, 2), &["p1"]),
        node("m2", avg_pool(5, 1, 2), &["m1"]),
        node("m3", avg_pool(5, 1, 2), &["m2"]),
        node("cat", Op::Concat, &["p1", "m1", "m2", "m3"]),
        node("cv2", conv(16, 5, 1, 1, 0, 1, 1, "cv2.w", None), &["cat"]),
    ];
    let model = Model::new(graph("sppf", raw_input([3, 13, 11]), nodes, "cv2"), w).unwrap();
    let x = rand_input(&mut r, 3 * 13 * 11);
    let want = reference_output(&model, &x);
    let slots = 1 << 10;
    let composed = compile(&model, slots).unwrap();
    let apart = compile_with(&model, slots, 0).unwrap();
    let linear_steps = |p: &Program| p.steps.iter().filter(|s| s.kind_name() == "linear").count();
    let largest = |p: &Program| {
        p.steps
            .iter()
            .filter_map(|s| match &s.kind {
                StepKind::Linear { plan, .. } => Some(plan.plaintext_mults()),
                _ => None,
            })
            .max()
            .unwrap()
    };
    assert_eq!(linear_steps(&apart), linear_steps(&composed) + 1, "the pooled concatenation is one more step");
    assert!(
        largest(&apart) < largest(&composed),
        "largest step: {} plaintext products apart, {} composed",
        largest(&apart),
        largest(&composed)
    );
    let caps = ClearScheme::capabilities(&params(11, 20)).unwrap();
    let plan = plan(apart, &caps).unwrap();
    let p = params(11, 20);
    let client = ClearScheme::keygen(&p, &plan.key_request()).unwrap();
    let server = ClearScheme::server(&client.evaluation_keys().unwrap()).unwrap();
    let input = encrypt_input(&client, &plan, &x).unwrap();
    let (out, _) = execute(&plan, &server, input, |_, _, _| {}).unwrap();
    let got = decrypt_output(&client, &plan, &out).unwrap();
    let max_err = max_abs_diff(&got, &want);
    assert!(max_err < 1e-6, "max error {max_err:e}");
}
