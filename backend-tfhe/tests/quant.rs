//! Quantised plans and encrypted runs against the cleartext reference executor.
//!
//! - the fused affine forms equal the reference executor (float, every supported operation);
//! - the quantised simulation stays within a quantisation bound of it, tighter with more bits;
//! - an encrypted run equals the simulation bit for bit and bootstraps exactly the activation
//!   elements (never a padding position);
//! - bad models, plans and inputs are refused with errors naming the problem.

mod common;

use backend_tfhe::engine::{decrypt_logits, encrypt_image, probe, run, run_observed, PreparedPlan};
use backend_tfhe::lwe::{Lwe, LweClient, LweError, LweParams, LweServer};
use backend_tfhe::quant::{apply_table, wrap, ActivationMode, QuantConfig, QuantPlan, RealPlan};
use common::keys;
use ndarray::{ArrayD, IxDyn};
use peregrine_model::ir::*;
use peregrine_model::reference::Reference;
use peregrine_model::testkit::{
    conv, conv_transpose, linear, lut_every_op_model, lut_poly_cnn, node, normalised_graph, uniform,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Preprocessed random images (uniform pixels), flattened.
fn images(model: &Model, n: usize, seed: u64) -> Vec<Vec<f64>> {
    let mut r = StdRng::seed_from_u64(seed);
    let spec = &model.graph().input;
    let per: usize = spec.shape[1] * spec.shape[2];
    (0..n)
        .map(|_| {
            (0..spec.shape[0] * per)
                .map(|i| {
                    let c = i / per;
                    (r.gen_range(0.0..1.0) - spec.preprocess.mean[c] as f64) / spec.preprocess.std[c] as f64
                })
                .collect()
        })
        .collect()
}

fn reference(model: &Model, x: &[f64]) -> Vec<f64> {
    let s = &model.graph().input.shape;
    let t = ArrayD::from_shape_vec(IxDyn(&[1, s[0], s[1], s[2]]), x.to_vec()).unwrap();
    Reference::<f64>::new(model).run(&t).unwrap().iter().copied().collect()
}

fn config(bits: u32, mode: ActivationMode) -> QuantConfig {
    QuantConfig {
        bits,
        extra_bits: 0,
        act_bits: bits,
        mode,
        noise_bound: LweParams::with_bits(bits).unwrap().noise_bound,
        headroom: 0.9,
        clip: 1.0,
    }
}

/// A wide accumulator: `bits` read by the bootstrap, `extra` below, `act` bits per value.
fn wide(bits: u32, extra: u32, act: u32, mode: ActivationMode) -> QuantConfig {
    QuantConfig {
        bits,
        extra_bits: extra,
        act_bits: act,
        mode,
        noise_bound: LweParams::with_accumulator(bits, extra).unwrap().noise_bound,
        headroom: 0.9,
        clip: 1.0,
    }
}

#[test]
fn a_transposed_convolution_lowers_like_any_linear_layer() {
    // The shared lowering gives the TFHE backend every linear layer the CKKS packer has.
    let mut r = StdRng::seed_from_u64(5);
    let mut w = Weights::new();
    w.insert("c.w".into(), uniform(&mut r, &[4, 3, 3, 3], -0.5, 0.5));
    w.insert("t.w".into(), uniform(&mut r, &[4, 2, 3, 3], -0.5, 0.5));
    w.insert("t.b".into(), uniform(&mut r, &[2], -0.2, 0.2));
    w.insert("fc.w".into(), uniform(&mut r, &[3, 2 * 10 * 8], -0.2, 0.2));
    let convt = conv_transpose(4, 2, 3, 2, 1, [1, 1], 1, "t.w", Some("t.b"));
    let nodes = vec![
        node("c", conv(3, 4, 3, 2, 1, 1, 1, "c.w", None), &[INPUT]),
        node("r1", Op::Activation(Activation::Relu), &["c"]),
        node("t", convt, &["r1"]),
        node("r2", Op::Activation(Activation::Relu), &["t"]),
        node("flat", Op::Flatten, &["r2"]),
        node("fc", linear(160, 3, "fc.w", None), &["flat"]),
    ];
    let m = Model::new(normalised_graph([3, 9, 7], nodes, "fc"), w).unwrap();
    let real = RealPlan::compile(&m, ActivationMode::Exact).unwrap();
    assert_eq!(real.activations(), 4 * 5 * 4 + 2 * 10 * 8);
    for x in images(&m, 3, 2) {
        for (a, b) in real.eval(&x).iter().zip(&reference(&m, &x)) {
            assert!((a - b).abs() <= 1e-9 * (1.0 + b.abs()), "fused {a} vs reference {b}");
        }
    }
}

#[test]
fn fused_forms_equal_the_reference_executor_on_every_supported_operation() {
    let m = lut_every_op_model(3);
    let real = RealPlan::compile(&m, ActivationMode::Exact).unwrap();
    // Exact mode replaces the ReLU polynomial by r·relu(x/r) = relu(x): compare with the
    // reference executor on the same model with that node turned into a ReLU.
    let (mut g, w) = m.clone().into_parts();
    g.nodes.iter_mut().filter(|n| n.name == "p").for_each(|n| n.op = Op::Activation(Activation::Relu));
    let w = w.into_iter().filter(|(k, _)| !k.starts_with("p.")).collect();
    let exact_model = Model::new(g, w).unwrap();
    // Activation elements: silu 4·5·4, poly 4·5·4, relu 6·5·4, gelu 4·5·4.
    assert_eq!(real.activations(), 80 + 80 + 120 + 80);
    for x in images(&m, 5, 9) {
        let want = reference(&exact_model, &x);
        let got = real.eval(&x);
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() <= 1e-9 * (1.0 + b.abs()), "fused {a} vs reference {b}");
        }
    }
    // Exact mode evaluates r·relu(x/r) = relu(x) for the polynomial: a different function.
    let pm = lut_poly_cnn(4, Some(Approximated::Relu));
    let exact = RealPlan::compile(&pm, ActivationMode::Exact).unwrap();
    let poly = RealPlan::compile(&pm, ActivationMode::Poly).unwrap();
    let x = &images(&pm, 1, 1)[0];
    let want = reference(&pm, x);
    assert!(poly.eval(x).iter().zip(&want).all(|(a, b)| (a - b).abs() <= 1e-9 * (1.0 + b.abs())));
    assert!(exact.eval(x).iter().zip(&want).any(|(a, b)| (a - b).abs() > 1e-6));
}

fn relative_error(plan: &QuantPlan, real: &RealPlan, xs: &[Vec<f64>]) -> f64 {
    let (mut err, mut mag) = (0.0f64, 0.0f64);
    for x in xs {
        let sim = plan.simulate(&plan.quantise_input(x));
        let got = plan.decode_output(&sim.outputs);
        for (a, b) in got.iter().zip(real.eval(x)) {
            err = err.max((a - b).abs());
            mag = mag.max(b.abs());
        }
    }
    err / mag
}

#[test]
fn quantisation_error_is_bounded_and_shrinks_with_precision() {
    let m = lut_every_op_model(5);
    let real = RealPlan::compile(&m, ActivationMode::Exact).unwrap();
    let calib = images(&m, 40, 1);
    let test = images(&m, 20, 2);
    let mut errs = Vec::new();
    for cfg in [
        wide(4, 0, 4, ActivationMode::Exact),
        wide(4, 6, 3, ActivationMode::Exact),
        wide(6, 6, 4, ActivationMode::Exact),
        wide(8, 8, 6, ActivationMode::Exact),
    ] {
        let plan = QuantPlan::calibrate(&real, &calib, cfg).unwrap();
        assert!(plan.max_weight_norm() <= plan.config.noise_bound, "a sum exceeds the noise bound: {cfg:?}");
        errs.push(relative_error(&plan, &real, &test));
    }
    // Measured here: 0.85, 0.39, 0.073 and 0.042 of the largest logit.
    assert!(errs[1] < 0.5 && errs[2] < 0.12 && errs[3] < 0.07, "relative errors: {errs:?}");
    assert!(errs[1] < errs[0], "extra accumulator bits must help: {errs:?}");
    assert!(errs[3] < errs[2] && errs[2] < errs[1], "more bits must help: {errs:?}");
}

#[test]
fn a_calibration_quantile_below_one_lets_an_outlier_saturate() {
    // One calibration image 30 times too large drives the polynomials far outside their
    // normalised ranges: with clip = 1 its extremes set every step and the ordinary images
    // lose their resolution; the 0.99 quantile ignores it (it is 1 image in 200).
    let m = lut_poly_cnn(5, Some(Approximated::Relu));
    let real = RealPlan::compile(&m, ActivationMode::Poly).unwrap();
    let normal = images(&m, 199, 11);
    let test = images(&m, 20, 12);
    let mut with_outlier = normal.clone();
    with_outlier.push(normal[0].iter().map(|v| v * 30.0).collect());
    let cfg = wide(6, 4, 5, ActivationMode::Poly);
    let error = |calib: &[Vec<f64>], clip: f64| {
        relative_error(&QuantPlan::calibrate(&real, calib, QuantConfig { clip, ..cfg }).unwrap(), &real, &test)
    };
    let (clean, stretched, clipped) = (error(&normal, 1.0), error(&with_outlier, 1.0), error(&with_outlier, 0.99));
    assert!(
        stretched > 3.0 * clean,
        "the outlier should have coarsened the plan: clean {clean}, stretched {stretched}"
    );
    assert!(clipped < 2.0 * clean, "the quantile should have ignored the outlier: clean {clean}, clipped {clipped}");
    for bad in [0.3, 1.5, f64::NAN] {
        let e = QuantPlan::calibrate(&real, &normal, QuantConfig { clip: bad, ..cfg }).unwrap_err();
        assert!(e.to_string().contains("clip"), "{e}");
    }
    // A calibration image that makes the network non-finite is named, not turned into NaN steps.
    let mut broken = normal.clone();
    broken[3][0] = f64::NAN;
    let e = QuantPlan::calibrate(&real, &broken, cfg).unwrap_err().to_string();
    assert!(e.contains("non-finite") && e.contains("calibration image"), "{e}");
}

#[test]
fn real_values_decode_what_the_simulation_computes() {
    let m = lut_every_op_model(6);
    let real = RealPlan::compile(&m, ActivationMode::Exact).unwrap();
    let plan = QuantPlan::calibrate(&real, &images(&m, 30, 3), wide(5, 2, 3, ActivationMode::Exact)).unwrap();
    let mut wrapped = 0;
    for x in images(&m, 7, 4) {
        let q = plan.quantise_input(&x);
        let got = plan.real_values(&x).unwrap();
        let sim = plan.simulate(&q);
        wrapped += sim.wrapped;
        assert_eq!(
            got.logits,
            plan.decode_output(&sim.outputs),
            "the logits are the simulation's, wrap-around included"
        );
        for ((vals, outs), st) in got.stages.iter().zip(plan.stage_outputs(&q)).zip(&plan.stages) {
            assert_eq!(vals.len(), st.sums.len());
            for ((v, o), s) in vals.iter().zip(outs).zip(&st.sums) {
                let e = st.outputs[s.lut as usize];
                assert!(
                    ((o - e.zero) as f64 * e.step - v).abs() <= 1e-12 * (1.0 + v.abs()),
                    "stage {}: {v} decodes {o}",
                    st.node
                );
                // A decoded output lies in its channel's calibrated range (the table clamps).
                assert!(o.abs() < 1 << 2);
            }
        }
    }
    assert!(wrapped < 7 * plan.bootstraps() / 10, "almost every sum wrapped: the test would prove little");
    // A plan saved before output encodings were recorded is refused, not indexed out of bounds.
    let mut old = plan.clone();
    old.stages[0].outputs.clear();
    let e = old.real_values(&images(&m, 1, 5)[0]).unwrap_err().to_string();
    assert!(e.contains("no output encodings") && e.contains("calibrate again"), "{e}");
}

#[test]
fn the_simulation_models_wrap_around_rounding_and_negacyclic_tables() {
    // 4 bits, no extra bits: values wrap modulo 2^(p+1) = 32 (two's complement on the torus).
    assert_eq!(wrap(7, 4, 0), 7);
    assert_eq!(wrap(8, 4, 0), 8, "past the table range, into the padding half");
    assert_eq!(wrap(16, 4, 0), -16);
    assert_eq!(wrap(-17, 4, 0), 15);
    assert_eq!(wrap(100, 4, 2), 100 - 128);
    // Table t(v) = v + 1 over v = −8…7.
    let table: Vec<i64> = (-8..8).map(|v: i64| v + 1).collect();
    assert_eq!(apply_table(&table, 5, 4, 0), 6);
    assert_eq!(apply_table(&table, -8, 4, 0), -7);
    // Past the padding bit TFHE returns the negated entry of the wrapped box.
    assert_eq!(apply_table(&table, 8, 4, 0), -table[0]);
    assert_eq!(apply_table(&table, 9, 4, 0), -table[1]);
    // With 2 extra bits the table reads round(v / 4), halves up.
    assert_eq!(apply_table(&table, 5, 4, 2), table[8 + 1]);
    assert_eq!(apply_table(&table, 6, 4, 2), table[8 + 2]);
    assert_eq!(apply_table(&table, -6, 4, 2), table[8 - 1]);
    assert_eq!(apply_table(&table, -7, 4, 2), table[8 - 2]);
}

#[test]
fn encrypted_runs_equal_the_simulation_and_bootstrap_only_real_activations() {
    let (client, server) = keys();
    let m = lut_poly_cnn(7, Some(Approximated::Relu));
    // Activation elements of the model, from its shapes: p1 4×7×5, p2 3×3×2.
    let activations: usize = m
        .graph()
        .nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| matches!(n.op, Op::Activation(_)))
        .map(|(i, _)| m.shape(i).iter().product::<usize>())
        .sum();
    assert_eq!(activations, 140 + 18);
    for mode in [ActivationMode::Exact, ActivationMode::Poly] {
        let real = RealPlan::compile(&m, mode).unwrap();
        let plan = QuantPlan::calibrate(&real, &images(&m, 30, 3), config(4, mode)).unwrap();
        assert_eq!(plan.activations(), activations);
        let prepared = PreparedPlan::new(server, &plan).unwrap();
        for x in images(&m, 2, 11) {
            let sim = plan.simulate(&plan.quantise_input(&x));
            let cts = encrypt_image(client, &plan, &x).unwrap();
            let mut stages = 0;
            let (out, report) = run(server, &prepared, cts, |_, _| stages += 1).unwrap();
            let (logits, raw) = decrypt_logits(client, &plan, &out);
            assert_eq!(raw, sim.outputs, "{mode:?}: encrypted and simulated accumulators differ");
            assert_eq!(logits, plan.decode_output(&sim.outputs));
            assert_eq!(report.bootstraps, sim.bootstraps);
            assert_eq!(
                report.bootstraps + report.constant_sums,
                activations,
                "{mode:?}: one bootstrap per activation element, none for padding"
            );
            assert_eq!(report.bootstraps, plan.bootstraps());
            assert_eq!(stages, 3);
        }
    }
}

#[test]
fn with_one_extra_bit_every_bootstrap_of_a_run_reads_the_simulations_box() {
    // k = 1: sums are read at half their resolution, and every integer sits half a unit inside
    // its box (the bootstrap's half-unit shift), several noise deviations: every bootstrap of
    // the run reads the simulation's box. (At k = 6 about 2 % of bootstraps read the
    // neighbouring box; without the shift every odd sum here would sit on a boundary.)
    let client = LweClient::new(LweParams::with_accumulator(4, 1).unwrap());
    let server = client.server();
    let m = lut_poly_cnn(7, Some(Approximated::Relu));
    for mode in [ActivationMode::Exact, ActivationMode::Poly] {
        let real = RealPlan::compile(&m, mode).unwrap();
        let plan = QuantPlan::calibrate(&real, &images(&m, 30, 3), wide(4, 1, 3, mode)).unwrap();
        let prepared = PreparedPlan::new(&server, &plan).unwrap();
        for x in images(&m, 1, 13) {
            let q = plan.quantise_input(&x);
            let sim = plan.simulate(&q);
            // Only meaningful if sums fall between box centres: count the first stage's sums
            // that are odd.
            let off_centre = plan.stages[0].sums.iter().filter(|s| s.value(&q).rem_euclid(2) != 0).count();
            assert!(
                off_centre * 4 > plan.stages[0].sums.len(),
                "{off_centre} of {} sums off a box centre",
                plan.stages[0].sums.len()
            );
            let want = plan.stage_outputs(&q);
            let mut got: Vec<Vec<i64>> = Vec::new();
            let (out, report) =
                run_observed(&server, &prepared, encrypt_image(&client, &plan, &x).unwrap(), |_, cts| {
                    got.push(cts.iter().map(|c| client.decrypt(c)).collect())
                })
                .unwrap();
            assert_eq!(got, want, "{mode:?}: some bootstrap read another box than the simulation");
            assert_eq!(report.bootstraps, sim.bootstraps);
            // The output sums are decrypted without a bootstrap, at the resolution of one unit
            // (half a box): their noise may move them by one unit.
            let (_, raw) = decrypt_logits(&client, &plan, &out);
            let off = raw.iter().zip(&sim.outputs).map(|(a, b)| (a - b).abs()).max().unwrap();
            assert!(off <= 1, "{mode:?}: outputs {raw:?}, simulation {:?}", sim.outputs);
        }
    }
}

#[test]
fn the_stage_probe_samples_every_stage_and_matches_the_simulation_without_extra_bits() {
    let (client, server) = keys();
    let m = lut_poly_cnn(5, Some(Approximated::Relu));
    let real = RealPlan::compile(&m, ActivationMode::Exact).unwrap();
    let plan = QuantPlan::calibrate(&real, &images(&m, 30, 3), config(4, ActivationMode::Exact)).unwrap();
    let prepared = PreparedPlan::new(server, &plan).unwrap();
    let x = &images(&m, 1, 19)[0];
    let probes = probe(client, server, &prepared, x, 9).unwrap();
    let stages: Vec<usize> = plan.stages.iter().map(|s| s.sums.len()).collect();
    assert_eq!(probes.iter().map(|p| p.elements).collect::<Vec<_>>(), stages);
    for p in &probes {
        assert!(p.sampled >= 1 && p.sampled <= 9.min(p.elements), "{p:?}");
        assert!(p.seconds > 0.0 && p.extrapolated_seconds() >= p.seconds, "{p:?}");
        // k = 0: the encrypted stage is the simulation bit for bit.
        assert_eq!((p.mismatched, p.max_units_off), (0, 0), "{p:?}");
    }
}

#[test]
fn server_keys_round_trip_and_corrupted_keys_are_refused() {
    let (client, server) = keys();
    let bytes = server.to_bytes().unwrap();
    assert_eq!(bytes.len() as u64, server.key_bytes().unwrap());
    let back = LweServer::from_bytes(&bytes).unwrap();
    let x = client.encrypt(3).unwrap();
    let lut = back.lut(|v| 2 * v - 1);
    assert_eq!(client.decrypt(&back.bootstrap(&back.weighted_sum(&[(&x, 1)], 0).unwrap(), &lut)), 5);
    let e = LweServer::from_bytes(&bytes[..bytes.len() / 2]).err().unwrap();
    assert!(e.to_string().contains("corrupted"), "{e}");
    let mut wrong = bytes.clone();
    wrong[0] = 6;
    assert!(LweServer::from_bytes(&wrong).is_err(), "keys of the 4-bit set read as the 6-bit set");
    assert!(LweServer::from_bytes(&[]).is_err());
    // One flipped byte in the keys, the client key or a ciphertext: refused by the checksum.
    let flip = |b: &[u8], at: usize| {
        let mut b = b.to_vec();
        b[at] ^= 0x04;
        b
    };
    let e = LweServer::from_bytes(&flip(&bytes, bytes.len() / 3)).err().unwrap().to_string();
    assert!(e.contains("TFHE server key") && e.contains("checksum mismatch"), "{e}");
    let secret = client.to_bytes().unwrap();
    let e = LweClient::from_bytes(&flip(&secret, secret.len() / 2)).err().unwrap().to_string();
    assert!(e.contains("TFHE client key") && e.contains("checksum mismatch"), "{e}");
    let ct = x.to_bytes().unwrap();
    for at in [0, 9, ct.len() - 1] {
        let e = Lwe::from_bytes(&flip(&ct, at)).err().unwrap().to_string();
        assert!(e.contains("TFHE ciphertext") && e.contains("checksum mismatch"), "{e}");
    }
    assert!(Lwe::from_bytes(&ct).is_ok() && LweClient::from_bytes(&secret).is_ok());
}

#[test]
fn bad_models_plans_and_inputs_are_refused_with_clear_errors() {
    // Max pooling has no linear form.
    let mut g = lut_poly_cnn(1, Some(Approximated::Relu)).graph().clone();
    g.nodes[2].op = Op::MaxPool(Pool2d { kernel: [2, 2], stride: [2, 2], padding: [0, 0] });
    let m = Model::new(g, lut_poly_cnn(1, Some(Approximated::Relu)).weights().clone()).unwrap();
    let e = RealPlan::compile(&m, ActivationMode::Exact).unwrap_err().to_string();
    assert!(e.contains("'ap'") && e.contains("max pooling"), "{e}");
    // Exact mode needs to know what a polynomial stands for.
    let e = RealPlan::compile(&lut_poly_cnn(1, None), ActivationMode::Exact).unwrap_err().to_string();
    assert!(e.contains("'p1'") && e.contains("--activation poly"), "{e}");
    // Poly mode needs polynomials.
    let e = RealPlan::compile(&lut_every_op_model(1), ActivationMode::Poly).unwrap_err().to_string();
    assert!(e.contains("'silu'") && e.contains("--activation exact"), "{e}");
    // A plan for other keys, and the wrong number of inputs.
    let (client, server) = keys();
    let m = lut_poly_cnn(2, Some(Approximated::Relu));
    let real = RealPlan::compile(&m, ActivationMode::Poly).unwrap();
    let plan6 = QuantPlan::calibrate(&real, &images(&m, 4, 1), config(6, ActivationMode::Poly)).unwrap();
    assert!(PreparedPlan::new(server, &plan6).err().unwrap().to_string().contains("quantised for 6 bits"));
    let plan_wide = QuantPlan::calibrate(&real, &images(&m, 4, 1), wide(4, 3, 3, ActivationMode::Poly)).unwrap();
    assert!(PreparedPlan::new(server, &plan_wide).err().unwrap().to_string().contains("+3 accumulator bits"));
    assert!(encrypt_image(client, &plan6, &images(&m, 1, 1)[0]).is_err());
    let plan4 = QuantPlan::calibrate(&real, &images(&m, 4, 1), config(4, ActivationMode::Poly)).unwrap();
    let prepared = PreparedPlan::new(server, &plan4).unwrap();
    let e = run(server, &prepared, vec![client.encrypt(0).unwrap()], |_, _| {}).err().unwrap();
    assert!(e.to_string().contains("takes 105 encrypted inputs, got 1"), "{e}");
    // A sum beyond the noise bound (a doctored plan) is refused with advice, not computed.
    let mut doctored = plan4.clone();
    doctored.stages[0].sums[0].terms = vec![(0, 100)];
    let prepared = PreparedPlan::new(server, &doctored).unwrap();
    let cts = encrypt_image(client, &doctored, &images(&m, 1, 1)[0]).unwrap();
    let e = run(server, &prepared, cts, |_, _| {}).err().unwrap();
    assert!(matches!(e, LweError::NoiseBudget { .. }), "{e:?}");
    assert!(QuantPlan::calibrate(&real, &[], config(4, ActivationMode::Poly)).is_err());
}
