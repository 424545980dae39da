//! Training kernels against plain definitions: im2col/col2im adjointness, PolyAct-RN and batch
//! norm gradients against finite differences and candle's own autodiff, on odd sizes.

use std::sync::Arc;

use candle_core::{Device, Tensor, Var};
use peregrine_sft::train::{BatchNormTrain, Fold, PolyAct, Unfold, Window};
use rand::{rngs::StdRng, Rng, SeedableRng};

fn rand_vec(r: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| r.gen_range(-1.0..1.0)).collect()
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
}

/// Windows as (batch, input, channels, groups, kernel, stride, padding, dilation).
fn windows() -> Vec<Window> {
    type Geometry = [usize; 2];
    let w = |batch, input, channels, groups, kernel, stride, padding, dilation: Geometry| Window {
        batch,
        input,
        channels,
        groups,
        kernel,
        stride,
        padding,
        padding_end: padding,
        dilation,
    };
    vec![
        w(2, [7, 9], 3, 1, [3, 3], [1, 1], [1, 1], [1, 1]),
        w(3, [11, 5], 6, 3, [3, 2], [2, 1], [2, 0], [2, 1]),
        w(1, [13, 13], 5, 5, [5, 5], [3, 3], [2, 2], [1, 1]),
        w(2, [9, 7], 4, 1, [1, 1], [2, 2], [0, 0], [1, 1]),
    ]
}

#[test]
fn unfold_matches_direct_indexing_and_fold_is_its_adjoint() {
    let mut r = StdRng::seed_from_u64(3);
    for w in windows() {
        let [h, wd] = w.input;
        let c = w.channels;
        let x = rand_vec(&mut r, w.batch * h * wd * c);
        let cols = w.unfold(&x);
        let [oh, ow] = w.output();
        assert_eq!(cols.len(), w.rows() * w.columns());
        // Direct definition, columns ordered (group, ky, kx, channel in group).
        let cg = c / w.groups;
        let mut k = 0;
        for b in 0..w.batch {
            for oy in 0..oh {
                for ox in 0..ow {
                    for g in 0..w.groups {
                        for ky in 0..w.kernel[0] {
                            for kx in 0..w.kernel[1] {
                                for ci in 0..cg {
                                    let y = (oy * w.stride[0] + ky * w.dilation[0]) as isize - w.padding[0] as isize;
                                    let xx = (ox * w.stride[1] + kx * w.dilation[1]) as isize - w.padding[1] as isize;
                                    let want = if y < 0 || xx < 0 || y >= h as isize || xx >= wd as isize {
                                        0.0
                                    } else {
                                        x[((b * h + y as usize) * wd + xx as usize) * c + g * cg + ci]
                                    };
                                    assert_eq!(cols[k], want, "{w:?} entry {k}");
                                    k += 1;
                                }
                            }
                        }
                    }
                }
            }
        }
        // <unfold(x), y> = <x, fold(y)>
        let y = rand_vec(&mut r, cols.len());
        let lhs = dot(&cols, &y);
        let rhs = dot(&x, &w.fold(&y));
        assert!((lhs - rhs).abs() < 1e-4 * (1.0 + lhs.abs()), "{w:?}: {lhs} vs {rhs}");
    }
}

#[test]
fn unfold_and_fold_backward_are_each_others_forward() {
    let mut r = StdRng::seed_from_u64(4);
    let w = windows()[1];
    let [h, wd] = w.input;
    let x = Var::from_vec(rand_vec(&mut r, w.batch * h * wd * w.channels), (w.batch, h, wd, w.channels), &Device::Cpu)
        .unwrap();
    let probe =
        Tensor::from_vec(rand_vec(&mut r, w.rows() * w.columns()), (w.rows(), w.columns()), &Device::Cpu).unwrap();
    let loss = x.as_tensor().apply_op1(Unfold(w)).unwrap().mul(&probe).unwrap().sum_all().unwrap();
    let g = loss.backward().unwrap();
    let got: Vec<f32> = g.get(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let want: Vec<f32> = probe.apply_op1(Fold(w)).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(got, want);
}

#[test]
fn polyact_gradient_matches_finite_differences() {
    let mut r = StdRng::seed_from_u64(5);
    let c = 5;
    let n = 7 * c;
    let coeffs: Vec<f32> = rand_vec(&mut r, c * 5);
    let scales: Vec<f32> = (0..c).map(|_| r.gen_range(0.5..2.0)).collect();
    let op = PolyAct { coeffs: Arc::new(coeffs.clone()), scales: Arc::new(scales.clone()) };
    let xs: Vec<f32> = rand_vec(&mut r, n).iter().map(|v| v * 3.0).collect();
    let x = Var::from_vec(xs.clone(), (7, c), &Device::Cpu).unwrap();
    let y = x.as_tensor().apply_op1(op.clone()).unwrap();
    // forward against the definition y = s·Σ p_k (x/s)^k
    let yv: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
    for (i, (&xi, &yi)) in xs.iter().zip(&yv).enumerate() {
        let ch = i % c;
        let t = xi as f64 / scales[ch] as f64;
        let want: f64 = scales[ch] as f64 * (0..5).map(|k| coeffs[ch * 5 + k] as f64 * t.powi(k as i32)).sum::<f64>();
        assert!((yi as f64 - want).abs() < 1e-4 * (1.0 + want.abs()), "forward {i}: {yi} vs {want}");
    }
    let g = y.sum_all().unwrap().backward().unwrap();
    let grad: Vec<f32> = g.get(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let f = |v: f64, ch: usize| {
        let t = v / scales[ch] as f64;
        scales[ch] as f64 * (0..5).map(|k| coeffs[ch * 5 + k] as f64 * t.powi(k as i32)).sum::<f64>()
    };
    for (i, &xi) in xs.iter().enumerate() {
        let h = 1e-4;
        let fd = (f(xi as f64 + h, i % c) - f(xi as f64 - h, i % c)) / (2.0 * h);
        assert!((grad[i] as f64 - fd).abs() < 1e-3 * (1.0 + fd.abs()), "grad {i}: {} vs {fd}", grad[i]);
    }
}

#[test]
fn fused_batch_norm_matches_candle_autodiff() {
    let mut r = StdRng::seed_from_u64(6);
    let (n, c) = (3 * 5 * 7, 6);
    let dev = Device::Cpu;
    let x =
        Var::from_vec(rand_vec(&mut r, n * c).iter().map(|v| v * 2.0 + 0.3).collect::<Vec<f32>>(), (3, 5, 7, c), &dev)
            .unwrap();
    let gamma = Var::from_vec(rand_vec(&mut r, c), c, &dev).unwrap();
    let beta = Var::from_vec(rand_vec(&mut r, c), c, &dev).unwrap();
    let probe = Tensor::from_vec(rand_vec(&mut r, n * c), (3, 5, 7, c), &dev).unwrap();
    let eps = 1e-5;
    // Reference: batch norm from candle operations.
    let flat = x.as_tensor().reshape((n, c)).unwrap();
    let mean = flat.mean(0).unwrap();
    let var = flat.broadcast_sub(&mean).unwrap().sqr().unwrap().mean(0).unwrap();
    let std = (var + eps).unwrap().sqrt().unwrap();
    let y_ref = flat
        .broadcast_sub(&mean)
        .unwrap()
        .broadcast_div(&std)
        .unwrap()
        .broadcast_mul(gamma.as_tensor())
        .unwrap()
        .broadcast_add(beta.as_tensor())
        .unwrap();
    let loss_ref = y_ref.reshape((3, 5, 7, c)).unwrap().mul(&probe).unwrap().sum_all().unwrap();
    let g_ref = loss_ref.backward().unwrap();
    // Fused.
    let (_, m, v) = peregrine_sft::train::tensor_channel_stats(x.as_tensor()).unwrap();
    let op = BatchNormTrain {
        mean: Arc::new(m),
        std: Arc::new(v.iter().map(|v| (v + eps as f32).sqrt()).collect()),
        gamma: Arc::new(gamma.as_tensor().to_vec1().unwrap()),
    };
    let y = x.as_tensor().apply_op3(gamma.as_tensor(), beta.as_tensor(), op).unwrap();
    let loss = y.mul(&probe).unwrap().sum_all().unwrap();
    let g = loss.backward().unwrap();
    let close = |a: &Tensor, b: &Tensor, what: &str| {
        let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
        let d = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(d < 1e-4, "{what}: max difference {d}");
    };
    close(&y, &y_ref.reshape((3, 5, 7, c)).unwrap(), "output");
    close(g.get(&x).unwrap(), g_ref.get(&x).unwrap(), "d/dx");
    close(g.get(&gamma).unwrap(), g_ref.get(&gamma).unwrap(), "d/dγ");
    close(g.get(&beta).unwrap(), g_ref.get(&beta).unwrap(), "d/dβ");
}
