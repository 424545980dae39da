//! Reference-executor kernels against direct naive loops on odd, non-square shapes, f32 and f64.

use ndarray::{Array4, ArrayD, IxDyn};
use peregrine_model::ir::*;
use peregrine_model::reference::Reference;
use peregrine_model::testkit::*;

fn run1(model: &Model, x: &ArrayD<f32>) -> (ArrayD<f32>, ArrayD<f64>) {
    let y32 = Reference::<f32>::new(model).run(x).unwrap();
    let y64 = Reference::<f64>::new(model).run(&x.mapv(|v| v as f64)).unwrap();
    (y32, y64)
}

fn assert_close(got32: &ArrayD<f32>, got64: &ArrayD<f64>, want: &ArrayD<f64>, what: &str) {
    assert_eq!(got64.shape(), want.shape(), "{what}: shape");
    let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    for (i, (a, b)) in got64.iter().zip(want.iter()).enumerate() {
        assert!((a - b).abs() <= 1e-12 * scale, "{what} f64 at {i}: {a} vs {b}");
    }
    for (i, (a, b)) in got32.iter().zip(want.iter()).enumerate() {
        assert!((*a as f64 - b).abs() <= 1e-4 * scale, "{what} f32 at {i}: {a} vs {b}");
    }
}

fn naive_conv(x: &Array4<f64>, w: &ArrayD<f64>, b: Option<&ArrayD<f64>>, p: &Conv2d, out: &[usize]) -> ArrayD<f64> {
    let (n, _, h, wd) = x.dim();
    let cg = p.in_channels / p.groups;
    let og = p.out_channels / p.groups;
    let mut y = Array4::<f64>::zeros((n, out[0], out[1], out[2]));
    for bi in 0..n {
        for o in 0..out[0] {
            let g = o / og;
            for oy in 0..out[1] {
                for ox in 0..out[2] {
                    let mut acc = b.map_or(0.0, |b| b[[o]]);
                    for ci in 0..cg {
                        for i in 0..p.kernel[0] {
                            for j in 0..p.kernel[1] {
                                let iy = (oy * p.stride[0] + i * p.dilation[0]) as isize - p.padding[0] as isize;
                                let ix = (ox * p.stride[1] + j * p.dilation[1]) as isize - p.padding[1] as isize;
                                if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < wd {
                                    acc += w[[o, ci, i, j]] * x[[bi, g * cg + ci, iy as usize, ix as usize]];
                                }
                            }
                        }
                    }
                    y[[bi, o, oy, ox]] = acc;
                }
            }
        }
    }
    y.into_dyn()
}

fn single(input: [usize; 3], op: Op, weights: Weights) -> Model {
    Model::new(graph("test", input_spec(input), vec![node("n", op, &[INPUT])], "n"), weights).unwrap()
}

fn x4(r: &mut rand::rngs::StdRng, n: usize, s: [usize; 3]) -> ArrayD<f32> {
    rand_tensor(r, &[n, s[0], s[1], s[2]])
}

#[test]
fn conv2d_matches_naive_on_odd_shapes() {
    let mut r = rng(21);
    // (in, out, kernel, stride, pad, pad after if different, dilation, groups, input HxW)
    let cases = [
        (3, 5, [3, 3], [1, 1], [1, 1], None, [1, 1], 1, [13, 7]),
        (3, 4, [5, 3], [2, 3], [2, 0], None, [1, 1], 1, [17, 11]),
        (6, 6, [3, 3], [1, 2], [2, 1], None, [2, 1], 6, [9, 13]), // depthwise, dilated
        (6, 9, [1, 3], [3, 1], [0, 1], None, [1, 2], 3, [11, 5]), // grouped
        (2, 3, [7, 7], [1, 1], [3, 3], None, [1, 1], 1, [5, 3]),  // kernel larger than input
        (3, 4, [3, 3], [2, 2], [0, 0], Some([1, 1]), [1, 1], 1, [13, 8]), // TF SAME at stride 2
        (4, 4, [3, 2], [1, 3], [2, 0], Some([0, 3]), [1, 1], 4, [7, 11]), // depthwise, lopsided
        (2, 5, [1, 1], [1, 1], [1, 2], Some([3, 0]), [1, 1], 1, [5, 6]), // a Pad as a 1×1 conv
    ];
    for (k, &(cin, cout, kern, stride, pad, pad_end, dil, groups, hw)) in cases.iter().enumerate() {
        let p = Conv2d {
            in_channels: cin,
            out_channels: cout,
            kernel: kern,
            stride,
            padding: pad,
            padding_end: pad_end,
            dilation: dil,
            groups,
            weight: "w".into(),
            bias: Some("b".into()),
        };
        let mut w = Weights::new();
        w.insert("w".into(), rand_tensor(&mut r, &[cout, cin / groups, kern[0], kern[1]]));
        w.insert("b".into(), rand_tensor(&mut r, &[cout]));
        let m = single([cin, hw[0], hw[1]], Op::Conv2d(p.clone()), w.clone());
        let after = pad_end.unwrap_or(pad);
        let size = |a: usize| (hw[a] + pad[a] + after[a] - dil[a] * (kern[a] - 1) - 1) / stride[a] + 1;
        assert_eq!(m.output_shape(), &[cout, size(0), size(1)], "conv case {k}: output size");
        let x = x4(&mut r, 3, [cin, hw[0], hw[1]]);
        let (y32, y64) = run1(&m, &x);
        let want = naive_conv(
            &x.mapv(|v| v as f64).into_dimensionality().unwrap(),
            &w["w"].mapv(|v| v as f64),
            Some(&w["b"].mapv(|v| v as f64)),
            &p,
            m.output_shape(),
        );
        assert_close(&y32, &y64, &want, &format!("conv case {k}"));
    }
}

#[test]
fn conv_transpose_matches_naive_scatter() {
    let mut r = rng(22);
    for (k, &(cin, cout, kern, stride, pad, opad, groups, hw)) in
        [(4, 6, [3, 3], [2, 2], [1, 1], [1, 0], 2, [5, 7]), (3, 2, [2, 4], [3, 1], [0, 1], [2, 0], 1, [4, 3])]
            .iter()
            .enumerate()
    {
        let p = ConvTranspose2d {
            in_channels: cin,
            out_channels: cout,
            kernel: kern,
            stride,
            padding: pad,
            output_padding: opad,
            dilation: [1, 1],
            groups,
            weight: "w".into(),
            bias: Some("b".into()),
        };
        let mut w = Weights::new();
        w.insert("w".into(), rand_tensor(&mut r, &[cin, cout / groups, kern[0], kern[1]]));
        w.insert("b".into(), rand_tensor(&mut r, &[cout]));
        let m = single([cin, hw[0], hw[1]], Op::ConvTranspose2d(p.clone()), w.clone());
        let out = m.output_shape().clone();
        let x = x4(&mut r, 2, [cin, hw[0], hw[1]]);
        let (y32, y64) = run1(&m, &x);
        let xd = x.mapv(|v| v as f64);
        let wd = w["w"].mapv(|v| v as f64);
        let mut want = ArrayD::<f64>::zeros(IxDyn(&[2, out[0], out[1], out[2]]));
        let (cg, og) = (cin / groups, cout / groups);
        for b in 0..2 {
            for o in 0..cout {
                for oy in 0..out[1] {
                    for ox in 0..out[2] {
                        want[[b, o, oy, ox]] = w["b"][[o]] as f64;
                    }
                }
            }
            for ci in 0..cin {
                let g = ci / cg;
                for iy in 0..hw[0] {
                    for ix in 0..hw[1] {
                        for o in 0..og {
                            for i in 0..kern[0] {
                                for j in 0..kern[1] {
                                    let oy = (iy * stride[0] + i) as isize - pad[0] as isize;
                                    let ox = (ix * stride[1] + j) as isize - pad[1] as isize;
                                    if oy >= 0 && ox >= 0 && (oy as usize) < out[1] && (ox as usize) < out[2] {
                                        want[[b, g * og + o, oy as usize, ox as usize]] +=
                                            wd[[ci, o, i, j]] * xd[[b, ci, iy, ix]];
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        assert_close(&y32, &y64, &want, &format!("conv_transpose case {k}"));
    }
}

#[test]
fn pooling_matches_naive() {
    let mut r = rng(23);
    for (k, &(kern, stride, pad, hw)) in
        [([3, 3], [2, 2], [1, 1], [11, 9]), ([2, 3], [2, 1], [0, 1], [7, 13]), ([5, 5], [3, 3], [2, 2], [17, 5])]
            .iter()
            .enumerate()
    {
        let p = Pool2d { kernel: kern, stride, padding: pad };
        for max in [false, true] {
            let op = if max { Op::MaxPool(p.clone()) } else { Op::AvgPool(p.clone()) };
            let m = single([3, hw[0], hw[1]], op, Weights::new());
            let out = m.output_shape().clone();
            let x = x4(&mut r, 2, [3, hw[0], hw[1]]);
            let (y32, y64) = run1(&m, &x);
            let want = ArrayD::from_shape_fn(IxDyn(&[2, 3, out[1], out[2]]), |ix| {
                let (b, c, oy, ox) = (ix[0], ix[1], ix[2], ix[3]);
                let mut vals = Vec::new();
                for i in 0..kern[0] {
                    for j in 0..kern[1] {
                        let iy = (oy * stride[0] + i) as isize - pad[0] as isize;
                        let jx = (ox * stride[1] + j) as isize - pad[1] as isize;
                        if iy >= 0 && jx >= 0 && (iy as usize) < hw[0] && (jx as usize) < hw[1] {
                            vals.push(x[[b, c, iy as usize, jx as usize]] as f64);
                        } else if !max {
                            vals.push(0.0);
                        }
                    }
                }
                if max {
                    vals.iter().cloned().fold(f64::MIN, f64::max)
                } else {
                    vals.iter().sum::<f64>() / (kern[0] * kern[1]) as f64
                }
            });
            assert_close(&y32, &y64, &want, &format!("pool case {k} max={max}"));
        }
    }
}

#[test]
fn elementwise_and_reshaping_ops_match_naive() {
    let mut r = rng(24);
    let s = [5, 7, 3];
    let x = x4(&mut r, 2, s);
    let xd = x.mapv(|v| v as f64);
    // Upsample ×3.
    let m = single(s, Op::Upsample { factor: 3 }, Weights::new());
    let (a, b) = run1(&m, &x);
    let want = ArrayD::from_shape_fn(IxDyn(&[2, 5, 21, 9]), |i| xd[[i[0], i[1], i[2] / 3, i[3] / 3]]);
    assert_close(&a, &b, &want, "upsample");
    // Option-A shortcut on odd sizes: ceil(7/2) × ceil(3/2).
    let m = single(s, Op::SubsampleChannelPad { stride: 2, pad_before: 2, pad_after: 1 }, Weights::new());
    let (a, b) = run1(&m, &x);
    let want = ArrayD::from_shape_fn(IxDyn(&[2, 8, 4, 2]), |i| {
        if i[1] < 2 || i[1] >= 7 {
            0.0
        } else {
            xd[[i[0], i[1] - 2, 2 * i[2], 2 * i[3]]]
        }
    });
    assert_close(&a, &b, &want, "subsample_channel_pad");
    // Per-channel polynomial with input scale.
    let mut w = Weights::new();
    w.insert("c".into(), rand_tensor(&mut r, &[5, 4]));
    w.insert("s".into(), rand_tensor(&mut r, &[5]));
    let m = single(
        s,
        Op::Activation(Activation::Poly { coeffs: "c".into(), input_scale: Some("s".into()), approximates: None }),
        w.clone(),
    );
    let (a, b) = run1(&m, &x);
    let want = ArrayD::from_shape_fn(xd.raw_dim(), |i| {
        let t = xd[&i] * w["s"][[i[1]]] as f64;
        (0..4).map(|k| w["c"][[i[1], k]] as f64 * t.powi(k as i32)).sum()
    });
    assert_close(&a, &b, &want, "poly");
    // Batch norm.
    let mut w = Weights::new();
    for t in ["w", "b", "m"] {
        w.insert(t.into(), rand_tensor(&mut r, &[5]));
    }
    w.insert("v".into(), rand_tensor(&mut r, &[5]).mapv(|v| v.abs() + 0.1));
    let bn = BatchNorm {
        channels: 5,
        eps: 1e-5,
        weight: "w".into(),
        bias: "b".into(),
        running_mean: "m".into(),
        running_var: "v".into(),
    };
    let m = single(s, Op::BatchNorm(bn), w.clone());
    let (a, b) = run1(&m, &x);
    let want = ArrayD::from_shape_fn(xd.raw_dim(), |i| {
        let c = i[1];
        (xd[&i] - w["m"][[c]] as f64) / (w["v"][[c]] as f64 + 1e-5).sqrt() * w["w"][[c]] as f64 + w["b"][[c]] as f64
    });
    assert_close(&a, &b, &want, "batch_norm");
    // Activations.
    for (act, f) in [
        (Activation::Relu, (|v: f64| v.max(0.0)) as fn(f64) -> f64),
        (Activation::Silu, |v: f64| v / (1.0 + (-v).exp())),
        (Activation::Gelu, |v: f64| 0.5 * v * (1.0 + libm_erf(v / std::f64::consts::SQRT_2))),
    ] {
        let m = single(s, Op::Activation(act.clone()), Weights::new());
        let (a, b) = run1(&m, &x);
        assert_close(&a, &b, &xd.mapv(f), &format!("{act:?}"));
    }
}

/// erf by its Maclaurin series (converges fast for |x| < 1, the range of the test data).
fn libm_erf(x: f64) -> f64 {
    let mut sum = 0.0;
    let mut term = x;
    for n in 0..60 {
        sum += term / (2 * n + 1) as f64;
        term *= -x * x / (n + 1) as f64;
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

#[test]
fn global_pool_flatten_linear_concat_add() {
    let mut r = rng(25);
    let mut w = Weights::new();
    w.insert("fc.w".into(), rand_tensor(&mut r, &[7, 10]));
    w.insert("fc.b".into(), rand_tensor(&mut r, &[7]));
    let nodes = vec![
        node("cat", Op::Concat, &[INPUT, INPUT]),
        node("sum", Op::Add, &["cat", "cat", "cat"]),
        node("gap", Op::GlobalAvgPool, &["sum"]),
        node("flat", Op::Flatten, &["gap"]),
        node(
            "fc",
            Op::Linear(Linear { in_features: 10, out_features: 7, weight: "fc.w".into(), bias: Some("fc.b".into()) }),
            &["flat"],
        ),
    ];
    let m = Model::new(graph("test", input_spec([5, 9, 7]), nodes, "fc"), w.clone()).unwrap();
    let x = x4(&mut r, 3, [5, 9, 7]);
    let (a, b) = run1(&m, &x);
    let xd = x.mapv(|v| v as f64);
    let want = ArrayD::from_shape_fn(IxDyn(&[3, 7]), |i| {
        let mut acc = w["fc.b"][[i[1]]] as f64;
        for f in 0..10 {
            let c = f % 5;
            let mean: f64 = (0..9)
                .flat_map(|y| (0..7).map(move |xx| (y, xx)))
                .map(|(y, xx)| 3.0 * xd[[i[0], c, y, xx]])
                .sum::<f64>()
                / 63.0;
            acc += w["fc.w"][[i[1], f]] as f64 * mean;
        }
        acc
    });
    assert_close(&a, &b, &want, "gap/flatten/linear/concat/add");
}

#[test]
fn batches_and_parallel_runs_agree_with_single_images() {
    let m = every_op_model(26);
    let mut r = rng(27);
    let x = x4(&mut r, 7, [3, 13, 11]);
    let exec = Reference::<f64>::new(&m);
    let xd = x.mapv(|v| v as f64);
    let all = exec.run(&xd).unwrap();
    let par = exec.run_parallel(&xd, 3).unwrap();
    assert_eq!(all.shape(), &[7, 5]);
    for i in 0..7 {
        let one = exec.run(&xd.slice_axis(ndarray::Axis(0), (i..i + 1).into()).to_owned()).unwrap();
        for k in 0..5 {
            assert!((one[[0, k]] - all[[i, k]]).abs() < 1e-12);
            assert!((par[[i, k]] - all[[i, k]]).abs() < 1e-12);
        }
    }
    let bad = exec.run(&ArrayD::zeros(IxDyn(&[1, 3, 12, 11]))).unwrap_err();
    assert!(bad.to_string().contains("[N, 3, 13, 11]"), "{bad}");
}
