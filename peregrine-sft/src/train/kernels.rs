//! CPU kernels for training, as candle custom operations on channels-last (NHWC) tensors.
//!
//! candle's own CPU convolution is several times slower than im2col + GEMM on the shapes of
//! CIFAR networks, and its polynomial activations would take a dozen passes over memory. So a
//! convolution here is [`Unfold`] (im2col) followed by candle's matrix product, whose backward
//! pass candle derives; the adjoint of [`Unfold`] is [`Fold`] (col2im) and vice versa. A
//! PolyAct-RN activation is one fused pass forward ([`PolyAct`]) and one backward.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Geometry of a sliding window over an NHWC map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Batch size.
    pub batch: usize,
    /// Input height and width.
    pub input: [usize; 2],
    /// Channels of the input map.
    pub channels: usize,
    /// Channel groups; columns are ordered (group, ky, kx, channel in group).
    pub groups: usize,
    /// Kernel `[kh, kw]`.
    pub kernel: [usize; 2],
    /// Stride.
    pub stride: [usize; 2],
    /// Zero padding before the first row and column.
    pub padding: [usize; 2],
    /// Zero padding after the last row and column.
    pub padding_end: [usize; 2],
    /// Dilation.
    pub dilation: [usize; 2],
}

impl Window {
    /// A per-channel window (pooling, subsampling) over a `(B, H, W, C)` map.
    pub fn pooling(
        dims: (usize, usize, usize, usize),
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
    ) -> Self {
        let (batch, h, w, channels) = dims;
        Window {
            batch,
            input: [h, w],
            channels,
            groups: 1,
            kernel,
            stride,
            padding,
            padding_end: padding,
            dilation: [1, 1],
        }
    }

    /// Output height and width.
    pub fn output(&self) -> [usize; 2] {
        let o = |i: usize| {
            let span = self.dilation[i] * (self.kernel[i] - 1) + 1;
            (self.input[i] + self.padding[i] + self.padding_end[i]).saturating_sub(span) / self.stride[i] + 1
        };
        [o(0), o(1)]
    }

    /// Columns of the unfolded matrix: `kh·kw·C`.
    pub fn columns(&self) -> usize {
        self.kernel[0] * self.kernel[1] * self.channels
    }

    /// Rows of the unfolded matrix: `B·OH·OW`.
    pub fn rows(&self) -> usize {
        let [oh, ow] = self.output();
        self.batch * oh * ow
    }

    /// Visits, for output pixel `(oy, ox)`, every in-bounds tap as
    /// `(input pixel index within the image, column offset of channel 0 of group 0)`.
    fn taps(&self, oy: usize, ox: usize, mut f: impl FnMut(usize, usize)) {
        let [h, w] = self.input;
        let cg = self.channels / self.groups;
        for ky in 0..self.kernel[0] {
            let y = (oy * self.stride[0] + ky * self.dilation[0]) as isize - self.padding[0] as isize;
            if y < 0 || y >= h as isize {
                continue;
            }
            for kx in 0..self.kernel[1] {
                let x = (ox * self.stride[1] + kx * self.dilation[1]) as isize - self.padding[1] as isize;
                if x < 0 || x >= w as isize {
                    continue;
                }
                f(y as usize * w + x as usize, (ky * self.kernel[1] + kx) * cg);
            }
        }
    }

    fn copy_in(&self, pixel: &[f32], row: &mut [f32], col: usize) {
        let cg = self.channels / self.groups;
        let per_group = self.kernel[0] * self.kernel[1] * cg;
        for g in 0..self.groups {
            row[g * per_group + col..g * per_group + col + cg].copy_from_slice(&pixel[g * cg..(g + 1) * cg]);
        }
    }

    fn add_out(&self, row: &[f32], pixel: &mut [f32], col: usize) {
        let cg = self.channels / self.groups;
        let per_group = self.kernel[0] * self.kernel[1] * cg;
        for g in 0..self.groups {
            for (p, r) in
                pixel[g * cg..(g + 1) * cg].iter_mut().zip(&row[g * per_group + col..g * per_group + col + cg])
            {
                *p += r;
            }
        }
    }

    /// im2col of one batch `[B, H, W, C]` into `[B·OH·OW, kh·kw·C]`.
    pub fn unfold(&self, x: &[f32]) -> Vec<f32> {
        let [h, w] = self.input;
        let [oh, ow] = self.output();
        let (c, k) = (self.channels, self.columns());
        let mut out = vec![0.0f32; self.rows() * k];
        out.par_chunks_mut(oh * ow * k).enumerate().for_each(|(b, image)| {
            let src = &x[b * h * w * c..(b + 1) * h * w * c];
            for (r, row) in image.chunks_mut(k).enumerate() {
                self.taps(r / ow, r % ow, |p, col| self.copy_in(&src[p * c..(p + 1) * c], row, col));
            }
        });
        out
    }

    /// col2im: the adjoint of [`Window::unfold`], summing overlapping taps.
    pub fn fold(&self, cols: &[f32]) -> Vec<f32> {
        let [h, w] = self.input;
        let [oh, ow] = self.output();
        let (c, k) = (self.channels, self.columns());
        let mut out = vec![0.0f32; self.batch * h * w * c];
        out.par_chunks_mut(h * w * c).enumerate().for_each(|(b, image)| {
            let src = &cols[b * oh * ow * k..(b + 1) * oh * ow * k];
            for (r, row) in src.chunks(k).enumerate() {
                self.taps(r / ow, r % ow, |p, col| self.add_out(row, &mut image[p * c..(p + 1) * c], col));
            }
        });
        out
    }
}

fn contiguous<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else { candle_core::bail!("{what}: expected f32 storage") };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{what}: input must be contiguous"),
    }
}

/// im2col as a differentiable candle operation: `[B, H, W, C]` → `[B·OH·OW, kh·kw·C]`.
#[derive(Clone, Debug)]
pub struct Unfold(pub Window);

/// col2im as a differentiable candle operation: `[B·OH·OW, kh·kw·C]` → `[B, H, W, C]`.
#[derive(Clone, Debug)]
pub struct Fold(pub Window);

impl CustomOp1 for Unfold {
    fn name(&self) -> &'static str {
        "unfold"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let w = &self.0;
        let want = [w.batch, w.input[0], w.input[1], w.channels];
        if l.dims() != want {
            candle_core::bail!("unfold: input {:?}, window expects {:?}", l.dims(), want);
        }
        let out = w.unfold(contiguous(s, l, "unfold")?);
        Ok((CpuStorage::F32(out), Shape::from((w.rows(), w.columns()))))
    }
    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1(Fold(self.0))?))
    }
}

impl CustomOp1 for Fold {
    fn name(&self) -> &'static str {
        "fold"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let w = &self.0;
        if l.dims() != [w.rows(), w.columns()] {
            candle_core::bail!("fold: input {:?}, window expects {:?}", l.dims(), [w.rows(), w.columns()]);
        }
        let out = w.fold(contiguous(s, l, "fold")?);
        Ok((CpuStorage::F32(out), Shape::from((w.batch, w.input[0], w.input[1], w.channels))))
    }
    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1(Unfold(self.0))?))
    }
}

/// Per-channel polynomial after range normalisation, on a channels-last tensor:
/// `y = s_c · Σ_k p_{c,k} (x / s_c)^k`. The scales are statistics, not trained by gradient.
#[derive(Clone, Debug)]
pub struct PolyAct {
    /// Base polynomials, `channels × (degree + 1)`, ascending powers.
    pub coeffs: Arc<Vec<f32>>,
    /// Range scales s_c.
    pub scales: Arc<Vec<f32>>,
}

impl PolyAct {
    fn terms(&self) -> usize {
        self.coeffs.len() / self.scales.len()
    }
}

const CHUNK: usize = 1 << 14;

impl CustomOp1 for PolyAct {
    fn name(&self) -> &'static str {
        "poly_act"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous(s, l, "poly_act")?;
        let c = self.scales.len();
        if l.dims().last() != Some(&c) {
            candle_core::bail!("poly_act: last dimension of {:?} is not {c} channels", l.dims());
        }
        let t = self.terms();
        let mut y = vec![0.0f32; x.len()];
        let chunk = (CHUNK / c).max(1) * c;
        y.par_chunks_mut(chunk).zip(x.par_chunks(chunk)).for_each(|(y, x)| {
            for (i, (y, &x)) in y.iter_mut().zip(x).enumerate() {
                let ch = i % c;
                let s = self.scales[ch];
                let u = x / s;
                let p = &self.coeffs[ch * t..(ch + 1) * t];
                *y = s * p.iter().rev().fold(0.0f32, |acc, a| acc * u + a);
            }
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2_no_bwd(&grad.contiguous()?, &PolyActGrad(self.clone()))?))
    }
}

/// Backward of [`PolyAct`]: `(x, ∂L/∂y)` → `∂L/∂x = ∂L/∂y · p'(x / s)`.
#[derive(Clone, Debug)]
pub struct PolyActGrad(pub PolyAct);

impl CustomOp2 for PolyActGrad {
    fn name(&self) -> &'static str {
        "poly_act_grad"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous(s1, l1, "poly_act_grad")?;
        let g = contiguous(s2, l2, "poly_act_grad")?;
        if l1.dims() != l2.dims() {
            candle_core::bail!("poly_act_grad: shapes {:?} and {:?} differ", l1.dims(), l2.dims());
        }
        let op = &self.0;
        let c = op.scales.len();
        let t = op.terms();
        let mut out = vec![0.0f32; x.len()];
        let chunk = (CHUNK / c).max(1) * c;
        out.par_chunks_mut(chunk).zip(x.par_chunks(chunk).zip(g.par_chunks(chunk))).for_each(|(o, (x, g))| {
            for (i, ((o, &x), &g)) in o.iter_mut().zip(x).zip(g).enumerate() {
                let ch = i % c;
                let u = x / op.scales[ch];
                let p = &op.coeffs[ch * t..(ch + 1) * t];
                let d = p.iter().enumerate().skip(1).rev().fold(0.0f32, |acc, (k, a)| acc * u + k as f32 * a);
                *o = g * d;
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// [`PolyAct`] whose base polynomials are a trained tensor: `(x [.., C], p [C, T])` →
/// `y = s_c · Σ_k p_{c,k} (x / s_c)^k`, differentiated in both arguments (the coefficients'
/// gradient by [`PolyActCoeffGrad`], one fused reduction).
#[derive(Clone, Debug)]
pub struct PolyActTrained {
    /// Range scales s_c (statistics, not trained by gradient).
    pub scales: Arc<Vec<f32>>,
}

impl PolyActTrained {
    fn with(&self, coeffs: &Tensor) -> Result<PolyAct> {
        Ok(PolyAct { coeffs: Arc::new(coeffs.flatten_all()?.to_vec1::<f32>()?), scales: self.scales.clone() })
    }
}

impl CustomOp2 for PolyActTrained {
    fn name(&self) -> &'static str {
        "poly_act_trained"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let p = contiguous(s2, l2, "poly_act_trained")?;
        let c = self.scales.len();
        if l2.dims().len() != 2 || l2.dims()[0] != c {
            candle_core::bail!("poly_act_trained: coefficients {:?} are not {c} rows", l2.dims());
        }
        PolyAct { coeffs: Arc::new(p.to_vec()), scales: self.scales.clone() }.cpu_fwd(s1, l1)
    }
    fn bwd(&self, x: &Tensor, p: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let gx = x.apply_op2_no_bwd(&grad, &PolyActGrad(self.with(p)?))?;
        let gp = x.apply_op2_no_bwd(&grad, &PolyActCoeffGrad { scales: self.scales.clone(), terms: p.dims()[1] })?;
        Ok((Some(gx), Some(gp)))
    }
}

/// Gradient of [`PolyActTrained`] in its coefficients: `(x, ∂L/∂y)` →
/// `∂L/∂p_{c,k} = Σ ∂L/∂y · s_c · (x / s_c)^k` over every position of channel c, `[C, terms]`.
#[derive(Clone, Debug)]
pub struct PolyActCoeffGrad {
    /// Range scales s_c.
    pub scales: Arc<Vec<f32>>,
    /// Coefficients per channel (degree + 1).
    pub terms: usize,
}

impl CustomOp2 for PolyActCoeffGrad {
    fn name(&self) -> &'static str {
        "poly_act_coeff_grad"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous(s1, l1, "poly_act_coeff_grad")?;
        let g = contiguous(s2, l2, "poly_act_coeff_grad")?;
        if l1.dims() != l2.dims() {
            candle_core::bail!("poly_act_coeff_grad: shapes {:?} and {:?} differ", l1.dims(), l2.dims());
        }
        let (c, t) = (self.scales.len(), self.terms);
        let chunk = (CHUNK / c).max(1) * c;
        let sums = x
            .par_chunks(chunk)
            .zip(g.par_chunks(chunk))
            .map(|(x, g)| {
                let mut acc = vec![0.0f64; c * t];
                for (i, (&x, &g)) in x.iter().zip(g).enumerate() {
                    let ch = i % c;
                    let s = self.scales[ch];
                    let u = (x / s) as f64;
                    let mut term = (g * s) as f64;
                    for a in &mut acc[ch * t..(ch + 1) * t] {
                        *a += term;
                        term *= u;
                    }
                }
                acc
            })
            .reduce(
                || vec![0.0f64; c * t],
                |mut a, b| {
                    a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
                    a
                },
            );
        Ok((CpuStorage::F32(sums.into_iter().map(|v| v as f32).collect()), Shape::from((c, t))))
    }
}

/// Per-channel statistics of a channels-last slice: `(max |x|, mean, biased variance)`.
pub fn channel_stats(x: &[f32], channels: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let c = channels;
    let chunk = (CHUNK / c).max(1) * c;
    let zero = || (vec![0.0f32; c], vec![0.0f64; c], vec![0.0f64; c]);
    let (max, sum, sq) = x
        .par_chunks(chunk)
        .map(|part| {
            let (mut m, mut s, mut q) = zero();
            for (i, &v) in part.iter().enumerate() {
                let ch = i % c;
                m[ch] = m[ch].max(v.abs());
                s[ch] += v as f64;
                q[ch] += v as f64 * v as f64;
            }
            (m, s, q)
        })
        .reduce(zero, |mut a, b| {
            for ch in 0..c {
                a.0[ch] = a.0[ch].max(b.0[ch]);
                a.1[ch] += b.1[ch];
                a.2[ch] += b.2[ch];
            }
            a
        });
    let n = (x.len() / c).max(1) as f64;
    let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
    let var = sq.iter().zip(&mean).map(|(q, m)| ((q / n) - m * m).max(0.0) as f32).collect();
    (max, mean.iter().map(|m| *m as f32).collect(), var)
}

/// Batch normalisation with batch statistics, on a channels-last tensor:
/// `(x, γ, β)` → `γ·(x − μ)/σ + β`, where μ and σ² are the batch's per-channel mean and
/// (biased) variance plus ε, computed before the call and kept for the backward pass.
#[derive(Clone, Debug)]
pub struct BatchNormTrain {
    /// Batch means.
    pub mean: Arc<Vec<f32>>,
    /// Batch standard deviations √(σ² + ε).
    pub std: Arc<Vec<f32>>,
    /// Current γ (for the backward pass).
    pub gamma: Arc<Vec<f32>>,
}

impl candle_core::CustomOp3 for BatchNormTrain {
    fn name(&self) -> &'static str {
        "batch_norm_train"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        _s2: &CpuStorage,
        _l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous(s1, l1, "batch_norm_train")?;
        let beta = contiguous(s3, l3, "batch_norm_train")?;
        let c = self.mean.len();
        let a: Vec<f32> = (0..c).map(|k| self.gamma[k] / self.std[k]).collect();
        let b: Vec<f32> = (0..c).map(|k| beta[k] - self.mean[k] * a[k]).collect();
        let mut y = vec![0.0f32; x.len()];
        let chunk = (CHUNK / c).max(1) * c;
        y.par_chunks_mut(chunk).zip(x.par_chunks(chunk)).for_each(|(y, x)| {
            for (i, (y, x)) in y.iter_mut().zip(x).enumerate() {
                *y = x * a[i % c] + b[i % c];
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }
    fn bwd(
        &self,
        x: &Tensor,
        _g: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let c = self.mean.len();
        let grad = grad.contiguous()?;
        let params = x.apply_op2_no_bwd(&grad, &BatchNormParamGrad(self.clone()))?; // [2, C]
        let dx = x.apply_op3_no_bwd(&grad, &params, &BatchNormInputGrad(self.clone()))?;
        let dgamma = params.narrow(0, 0, 1)?.reshape(c)?;
        let dbeta = params.narrow(0, 1, 1)?.reshape(c)?;
        Ok((Some(dx), Some(dgamma), Some(dbeta)))
    }
}

/// `(x, ∂L/∂y)` → `[∂L/∂γ; ∂L/∂β]` of [`BatchNormTrain`].
#[derive(Clone, Debug)]
pub struct BatchNormParamGrad(pub BatchNormTrain);

impl CustomOp2 for BatchNormParamGrad {
    fn name(&self) -> &'static str {
        "batch_norm_param_grad"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous(s1, l1, "batch_norm_param_grad")?;
        let g = contiguous(s2, l2, "batch_norm_param_grad")?;
        let bn = &self.0;
        let c = bn.mean.len();
        let chunk = (CHUNK / c).max(1) * c;
        let zero = || (vec![0.0f64; c], vec![0.0f64; c]);
        let (dg, db) = x
            .par_chunks(chunk)
            .zip(g.par_chunks(chunk))
            .map(|(x, g)| {
                let (mut dg, mut db) = zero();
                for (i, (x, g)) in x.iter().zip(g).enumerate() {
                    let ch = i % c;
                    dg[ch] += (*g * (x - bn.mean[ch]) / bn.std[ch]) as f64;
                    db[ch] += *g as f64;
                }
                (dg, db)
            })
            .reduce(zero, |mut a, b| {
                for ch in 0..c {
                    a.0[ch] += b.0[ch];
                    a.1[ch] += b.1[ch];
                }
                a
            });
        let out: Vec<f32> = dg.iter().chain(&db).map(|v| *v as f32).collect();
        Ok((CpuStorage::F32(out), Shape::from((2, c))))
    }
}

/// `(x, ∂L/∂y, [∂L/∂γ; ∂L/∂β])` → `∂L/∂x` of [`BatchNormTrain`] (batch statistics depend on x).
#[derive(Clone, Debug)]
pub struct BatchNormInputGrad(pub BatchNormTrain);

impl candle_core::CustomOp3 for BatchNormInputGrad {
    fn name(&self) -> &'static str {
        "batch_norm_input_grad"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous(s1, l1, "batch_norm_input_grad")?;
        let g = contiguous(s2, l2, "batch_norm_input_grad")?;
        let p = contiguous(s3, l3, "batch_norm_input_grad")?;
        let bn = &self.0;
        let c = bn.mean.len();
        let n = (x.len() / c) as f32;
        let (dg, db) = p.split_at(c);
        let mut out = vec![0.0f32; x.len()];
        let chunk = (CHUNK / c).max(1) * c;
        out.par_chunks_mut(chunk).zip(x.par_chunks(chunk).zip(g.par_chunks(chunk))).for_each(|(o, (x, g))| {
            for (i, (o, (x, g))) in o.iter_mut().zip(x.iter().zip(g)).enumerate() {
                let ch = i % c;
                let xh = (x - bn.mean[ch]) / bn.std[ch];
                *o = bn.gamma[ch] / bn.std[ch] * (g - db[ch] / n - xh * dg[ch] / n);
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Per-channel `(max |x|, mean, biased variance)` of a channels-last tensor.
pub fn tensor_channel_stats(x: &Tensor) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    let c = *x.dims().last().expect("rank ≥ 1");
    let x = x.contiguous()?;
    let (storage, layout) = x.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("channel statistics run on the CPU only")
    };
    let data = contiguous(cpu, layout, "channel_stats")?;
    Ok(channel_stats(data, c))
}
