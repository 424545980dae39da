//! The cleartext reference executor: runs any valid [`Model`] on batches in f32 or f64.
//!
//! Convolutions are lowered to im2col + GEMM (ndarray / matrixmultiply). The executor is
//! `Sync`; callers run batches on several threads (see [`Reference::run_parallel`]).

use ndarray::{s, Array2, Array4, ArrayD, Axis, Ix4, IxDyn, LinalgScalar};
use rayon::prelude::*;

use crate::error::{ModelError, Result};
use crate::ir::{Activation, Conv2d, ConvTranspose2d, Model, Op, Pool2d, INPUT};

/// Scalar type the reference executor computes in (`f32` or `f64`).
pub trait Real: LinalgScalar + num_traits::Float + Send + Sync + std::fmt::Debug + 'static {
    /// Converts from f64 (rounding for f32).
    fn of(x: f64) -> Self;
    /// Converts to f64.
    fn f64(self) -> f64;
}
impl Real for f32 {
    fn of(x: f64) -> Self {
        x as f32
    }
    fn f64(self) -> f64 {
        self as f64
    }
}
impl Real for f64 {
    fn of(x: f64) -> Self {
        x
    }
    fn f64(self) -> f64 {
        self
    }
}

/// A node with its weights converted and laid out for execution.
enum Step<T> {
    Conv {
        p: Conv2d,
        w: Vec<Array2<T>>,
        bias: Option<Vec<T>>,
    },
    ConvT {
        p: ConvTranspose2d,
        w_t: Vec<Array2<T>>,
        bias: Option<Vec<T>>,
    },
    Affine {
        scale: Vec<T>,
        shift: Vec<T>,
    },
    Relu,
    Silu,
    Gelu,
    /// Any other exact activation, evaluated in f64 by [`Activation::eval`].
    Exact(Activation),
    Poly {
        coeffs: Array2<T>,
        input_scale: Option<Vec<T>>,
    },
    AvgPool(Pool2d),
    MaxPool(Pool2d),
    GlobalAvgPool,
    Linear {
        w_t: Array2<T>,
        bias: Option<Vec<T>>,
    },
    Add,
    Mul,
    Concat,
    Upsample(usize),
    SubsamplePad {
        stride: usize,
        before: usize,
        after: usize,
    },
    Flatten,
}

/// Reference executor for one model in scalar type `T`.
pub struct Reference<T: Real> {
    steps: Vec<Step<T>>,
    /// For each node, the indices of its inputs (`None` = model input).
    inputs: Vec<Vec<Option<usize>>>,
    /// For each node, the last node index that reads it (values are dropped after).
    last_use: Vec<usize>,
    input_shape: Vec<usize>,
    output: usize,
    shapes: Vec<Vec<usize>>,
}

fn cvt<T: Real>(v: &ndarray::ArrayD<f32>) -> Vec<T> {
    v.iter().map(|&x| T::of(x as f64)).collect()
}

impl<T: Real> Reference<T> {
    /// Prepares a model for execution (weights converted, batch norm turned into an affine map).
    pub fn new(model: &Model) -> Self {
        let g = model.graph();
        let idx = |name: &str| model.node_index(name);
        let mut steps = Vec::new();
        let mut inputs = Vec::new();
        let mut last_use: Vec<usize> = (0..g.nodes.len()).collect();
        for (i, node) in g.nodes.iter().enumerate() {
            let ins: Vec<Option<usize>> = node.inputs.iter().map(|n| if n == INPUT { None } else { idx(n) }).collect();
            for j in ins.iter().flatten() {
                last_use[*j] = last_use[*j].max(i);
            }
            inputs.push(ins);
            let step = match &node.op {
                Op::Conv2d(p) => {
                    let w = model.weight(&p.weight);
                    let og = p.out_channels / p.groups;
                    let k = w.len() / p.out_channels;
                    let flat: Vec<T> = cvt(w);
                    let w = (0..p.groups)
                        .map(|gi| {
                            Array2::from_shape_vec((og, k), flat[gi * og * k..(gi + 1) * og * k].to_vec())
                                .expect("validated shape")
                        })
                        .collect();
                    Step::Conv { p: p.clone(), w, bias: p.bias.as_ref().map(|b| cvt(model.weight(b))) }
                }
                Op::ConvTranspose2d(p) => {
                    let w = model.weight(&p.weight);
                    let cg = p.in_channels / p.groups;
                    let k = w.len() / p.in_channels; // (out/groups)·kh·kw
                    let flat: Vec<T> = cvt(w);
                    let w_t = (0..p.groups)
                        .map(|gi| {
                            Array2::from_shape_vec((cg, k), flat[gi * cg * k..(gi + 1) * cg * k].to_vec())
                                .expect("validated shape")
                                .reversed_axes()
                                .as_standard_layout()
                                .to_owned()
                        })
                        .collect();
                    Step::ConvT { p: p.clone(), w_t, bias: p.bias.as_ref().map(|b| cvt(model.weight(b))) }
                }
                Op::BatchNorm(b) => {
                    let (w, bb, m, v) = (
                        model.weight(&b.weight),
                        model.weight(&b.bias),
                        model.weight(&b.running_mean),
                        model.weight(&b.running_var),
                    );
                    let mut scale = Vec::new();
                    let mut shift = Vec::new();
                    for c in 0..b.channels {
                        let s = w[c] as f64 / (v[c] as f64 + b.eps).sqrt();
                        scale.push(T::of(s));
                        shift.push(T::of(bb[c] as f64 - m[c] as f64 * s));
                    }
                    Step::Affine { scale, shift }
                }
                Op::Activation(Activation::Relu) => Step::Relu,
                Op::Activation(Activation::Silu) => Step::Silu,
                Op::Activation(Activation::Gelu) => Step::Gelu,
                Op::Activation(a @ Activation::Sigmoid)
                | Op::Activation(a @ Activation::HardSigmoid { .. })
                | Op::Activation(a @ Activation::HardSwish)
                | Op::Activation(a @ Activation::Clip { .. })
                | Op::Activation(a @ Activation::LeakyRelu { .. }) => Step::Exact(a.clone()),
                Op::Activation(Activation::Poly { coeffs, input_scale, .. }) => {
                    let c = model.weight(coeffs);
                    let coeffs = Array2::from_shape_vec((c.shape()[0], c.shape()[1]), cvt(c)).expect("2-D");
                    Step::Poly { coeffs, input_scale: input_scale.as_ref().map(|s| cvt(model.weight(s))) }
                }
                Op::AvgPool(p) => Step::AvgPool(p.clone()),
                Op::MaxPool(p) => Step::MaxPool(p.clone()),
                Op::GlobalAvgPool => Step::GlobalAvgPool,
                Op::Linear(l) => {
                    let w = model.weight(&l.weight);
                    let w = Array2::from_shape_vec((l.out_features, l.in_features), cvt(w)).expect("2-D");
                    Step::Linear {
                        w_t: w.reversed_axes().as_standard_layout().to_owned(),
                        bias: l.bias.as_ref().map(|b| cvt(model.weight(b))),
                    }
                }
                Op::Add => Step::Add,
                Op::Mul => Step::Mul,
                Op::Concat => Step::Concat,
                Op::Upsample { factor } => Step::Upsample(*factor),
                Op::SubsampleChannelPad { stride, pad_before, pad_after } => {
                    Step::SubsamplePad { stride: *stride, before: *pad_before, after: *pad_after }
                }
                Op::Flatten => Step::Flatten,
            };
            steps.push(step);
        }
        let output = model.node_index(&g.output).expect("validated");
        last_use[output] = usize::MAX;
        Reference {
            steps,
            inputs,
            last_use,
            input_shape: g.input.shape.clone(),
            output,
            shapes: model.shapes().to_vec(),
        }
    }

    /// Runs a batch `[N, C, H, W]` and returns the output `[N, ...]`.
    pub fn run(&self, input: &ArrayD<T>) -> Result<ArrayD<T>> {
        self.run_inspect(input, |_, _| {})
    }

    /// Runs a batch, calling `inspect(node_index, value)` on every node's output as it is made.
    pub fn run_inspect(&self, input: &ArrayD<T>, mut inspect: impl FnMut(usize, &ArrayD<T>)) -> Result<ArrayD<T>> {
        if input.ndim() != 4 || input.shape()[1..] != self.input_shape[..] {
            return Err(ModelError::Shape(format!(
                "model input must be [N, {}, {}, {}], got {:?}",
                self.input_shape[0],
                self.input_shape[1],
                self.input_shape[2],
                input.shape()
            )));
        }
        let input = input.as_standard_layout().into_owned();
        let mut values: Vec<Option<ArrayD<T>>> = (0..self.steps.len()).map(|_| None).collect();
        for (i, step) in self.steps.iter().enumerate() {
            let ins: Vec<&ArrayD<T>> = self.inputs[i]
                .iter()
                .map(|j| match j {
                    None => &input,
                    Some(j) => values[*j].as_ref().expect("topological order"),
                })
                .collect();
            let out = apply(step, &ins, &self.shapes[i]);
            inspect(i, &out);
            values[i] = Some(out);
            for j in self.inputs[i].iter().flatten() {
                if self.last_use[*j] == i {
                    values[*j] = None;
                }
            }
        }
        Ok(values[self.output].take().expect("output computed"))
    }

    /// Runs many samples (`[N, C, H, W]`) split in batches of `batch` over all rayon threads.
    pub fn run_parallel(&self, input: &ArrayD<T>, batch: usize) -> Result<ArrayD<T>> {
        let n = input.shape()[0];
        let chunks: Vec<(usize, usize)> =
            (0..n).step_by(batch.max(1)).map(|s| (s, (s + batch.max(1)).min(n))).collect();
        let outs = chunks
            .par_iter()
            .map(|&(a, b)| self.run(&input.slice_axis(Axis(0), (a..b).into()).to_owned()))
            .collect::<Result<Vec<_>>>()?;
        let views: Vec<_> = outs.iter().map(|o| o.view()).collect();
        ndarray::concatenate(Axis(0), &views).map_err(|e| ModelError::Shape(e.to_string()))
    }
}

fn as4<T: Real>(x: &ArrayD<T>) -> ndarray::ArrayView4<'_, T> {
    x.view().into_dimensionality::<Ix4>().expect("validated [N, C, H, W]")
}

fn apply<T: Real>(step: &Step<T>, ins: &[&ArrayD<T>], shape: &[usize]) -> ArrayD<T> {
    let x = ins[0];
    match step {
        Step::Conv { p, w, bias } => conv2d(&as4(x), p, w, bias.as_deref()).into_dyn(),
        Step::ConvT { p, w_t, bias } => conv_transpose2d(&as4(x), p, w_t, bias.as_deref(), shape).into_dyn(),
        Step::Affine { scale, shift } => {
            let mut y = x.clone();
            per_channel(&mut y, |c, v| *v = *v * scale[c] + shift[c]);
            y
        }
        Step::Relu => x.mapv(|v| if v > T::zero() { v } else { T::zero() }),
        Step::Silu => x.mapv(|v| v / (T::one() + (-v).exp())),
        Step::Gelu => x.mapv(|v| {
            let f = v.f64();
            T::of(0.5 * f * (1.0 + libm::erf(f / std::f64::consts::SQRT_2)))
        }),
        Step::Exact(a) => x.mapv(|v| T::of(a.eval(v.f64()).expect("not a polynomial"))),
        Step::Poly { coeffs, input_scale } => {
            let mut y = x.clone();
            per_channel(&mut y, |c, v| {
                let t = match input_scale {
                    Some(s) => *v * s[c],
                    None => *v,
                };
                let row = coeffs.row(c);
                let mut acc = T::zero();
                for k in (0..row.len()).rev() {
                    acc = acc * t + row[k];
                }
                *v = acc;
            });
            y
        }
        Step::AvgPool(p) => pool(&as4(x), p, shape, false).into_dyn(),
        Step::MaxPool(p) => pool(&as4(x), p, shape, true).into_dyn(),
        Step::GlobalAvgPool => {
            let x4 = as4(x);
            let (n, c, h, w) = x4.dim();
            let inv = T::of(1.0 / (h * w) as f64);
            let mut out = Array4::<T>::zeros((n, c, 1, 1));
            for b in 0..n {
                for ch in 0..c {
                    out[[b, ch, 0, 0]] = x4.slice(s![b, ch, .., ..]).sum() * inv;
                }
            }
            out.into_dyn()
        }
        Step::Linear { w_t, bias } => {
            let n = x.shape()[0];
            let x2 = x.view().into_shape_with_order((n, x.len() / n.max(1))).expect("contiguous");
            let mut y = x2.dot(w_t);
            if let Some(b) = bias {
                for mut row in y.rows_mut() {
                    for (v, bb) in row.iter_mut().zip(b) {
                        *v = *v + *bb;
                    }
                }
            }
            y.into_dyn()
        }
        Step::Add => {
            let mut y = x.clone();
            for o in &ins[1..] {
                y.zip_mut_with(*o, |a, b| *a = *a + *b);
            }
            y
        }
        Step::Mul => {
            // The larger operand is the map; a [C, 1, 1] gate broadcasts over its H and W.
            let (map, gate) = if x.len() >= ins[1].len() { (x, ins[1]) } else { (ins[1], x) };
            let mut y = map.clone();
            if map.shape() == gate.shape() {
                y.zip_mut_with(gate, |a, b| *a = *a * *b);
            } else {
                let g = gate.as_standard_layout();
                let g = g.as_slice().expect("standard layout");
                let hw: usize = map.shape()[2..].iter().product::<usize>().max(1);
                let data = y.as_slice_mut().expect("standard layout");
                for (k, chunk) in data.chunks_mut(hw).enumerate() {
                    for v in chunk {
                        *v = *v * g[k];
                    }
                }
            }
            y
        }
        Step::Concat => {
            let views: Vec<_> = ins.iter().map(|a| a.view()).collect();
            ndarray::concatenate(Axis(1), &views).expect("validated concat")
        }
        Step::Upsample(f) => {
            let x4 = as4(x);
            let (n, c, h, w) = x4.dim();
            Array4::from_shape_fn((n, c, h * f, w * f), |(b, ch, i, j)| x4[[b, ch, i / f, j / f]]).into_dyn()
        }
        Step::SubsamplePad { stride, before, after } => {
            let x4 = as4(x);
            let (n, c, _, _) = x4.dim();
            let sub = x4.slice(s![.., .., ..;*stride, ..;*stride]);
            let (_, _, ho, wo) = sub.dim();
            let mut out = Array4::<T>::zeros((n, c + before + after, ho, wo));
            out.slice_mut(s![.., *before..*before + c, .., ..]).assign(&sub);
            out.into_dyn()
        }
        Step::Flatten => {
            let n = x.shape()[0];
            x.as_standard_layout()
                .into_owned()
                .into_shape_with_order(IxDyn(&[n, x.len() / n.max(1)]))
                .expect("contiguous")
        }
    }
}

/// Applies `f(channel, value)` to every element of a `[N, C, ...]` tensor.
fn per_channel<T: Real>(y: &mut ArrayD<T>, mut f: impl FnMut(usize, &mut T)) {
    let c = y.shape()[1];
    let inner: usize = y.shape()[2..].iter().product();
    let data = y.as_slice_mut().expect("standard layout");
    for (k, chunk) in data.chunks_mut(inner.max(1)).enumerate() {
        let ch = k % c;
        for v in chunk {
            f(ch, v);
        }
    }
}

/// Batched 2-D convolution via im2col + GEMM per group.
pub(crate) fn conv2d<T: Real>(
    x: &ndarray::ArrayView4<T>,
    p: &Conv2d,
    w: &[Array2<T>],
    bias: Option<&[T]>,
) -> Array4<T> {
    let (n, c, h, wd) = x.dim();
    let [kh, kw] = p.kernel;
    let end = p.padding_after();
    let ho =
        crate::ir::window_out_padded(h, kh, p.stride[0], [p.padding[0], end[0]], p.dilation[0]).expect("validated");
    let wo =
        crate::ir::window_out_padded(wd, kw, p.stride[1], [p.padding[1], end[1]], p.dilation[1]).expect("validated");
    let cg = c / p.groups;
    let og = p.out_channels / p.groups;
    let hw = ho * wo;
    let xs = x.as_standard_layout();
    let xs = xs.as_slice().expect("standard");
    let mut out = Array4::<T>::zeros((n, p.out_channels, ho, wo));
    let mut col = Array2::<T>::zeros((cg * kh * kw, n * hw));
    for g in 0..p.groups {
        {
            let cs = col.as_slice_mut().expect("standard");
            for ci in 0..cg {
                let ch = g * cg + ci;
                for i in 0..kh {
                    for j in 0..kw {
                        let row = &mut cs[((ci * kh + i) * kw + j) * n * hw..][..n * hw];
                        for b in 0..n {
                            let plane = &xs[(b * c + ch) * h * wd..][..h * wd];
                            for oy in 0..ho {
                                let iy = (oy * p.stride[0] + i * p.dilation[0]) as isize - p.padding[0] as isize;
                                let dst = &mut row[b * hw + oy * wo..][..wo];
                                if iy < 0 || iy >= h as isize {
                                    dst.fill(T::zero());
                                    continue;
                                }
                                let src = &plane[iy as usize * wd..][..wd];
                                for (ox, d) in dst.iter_mut().enumerate() {
                                    let ix = (ox * p.stride[1] + j * p.dilation[1]) as isize - p.padding[1] as isize;
                                    *d = if ix < 0 || ix >= wd as isize { T::zero() } else { src[ix as usize] };
                                }
                            }
                        }
                    }
                }
            }
        }
        let y = w[g].dot(&col); // [og, n·hw]
        let ys = y.as_slice().expect("standard");
        let os = out.as_slice_mut().expect("standard");
        for o in 0..og {
            let oc = g * og + o;
            let bv = bias.map_or(T::zero(), |b| b[oc]);
            for b in 0..n {
                let dst = &mut os[(b * p.out_channels + oc) * hw..][..hw];
                let src = &ys[o * n * hw + b * hw..][..hw];
                for (d, s) in dst.iter_mut().zip(src) {
                    *d = *s + bv;
                }
            }
        }
    }
    out
}

/// Batched transposed convolution via GEMM + col2im per group.
fn conv_transpose2d<T: Real>(
    x: &ndarray::ArrayView4<T>,
    p: &ConvTranspose2d,
    w_t: &[Array2<T>],
    bias: Option<&[T]>,
    shape: &[usize],
) -> Array4<T> {
    let (n, c, h, wd) = x.dim();
    let (ho, wo) = (shape[1], shape[2]);
    let [kh, kw] = p.kernel;
    let cg = c / p.groups;
    let og = p.out_channels / p.groups;
    let xs = x.as_standard_layout();
    let mut out = Array4::<T>::zeros((n, p.out_channels, ho, wo));
    for g in 0..p.groups {
        // xg: [cg, n·h·w]
        let mut xg = Array2::<T>::zeros((cg, n * h * wd));
        for ci in 0..cg {
            for b in 0..n {
                xg.slice_mut(s![ci, b * h * wd..(b + 1) * h * wd])
                    .assign(&xs.slice(s![b, g * cg + ci, .., ..]).iter().copied().collect::<ndarray::Array1<T>>());
            }
        }
        let cols = w_t[g].dot(&xg); // [og·kh·kw, n·h·w]
        for o in 0..og {
            let oc = g * og + o;
            for i in 0..kh {
                for j in 0..kw {
                    let r = cols.row((o * kh + i) * kw + j);
                    for b in 0..n {
                        for iy in 0..h {
                            let oy = (iy * p.stride[0] + i * p.dilation[0]) as isize - p.padding[0] as isize;
                            if oy < 0 || oy >= ho as isize {
                                continue;
                            }
                            for ix in 0..wd {
                                let ox = (ix * p.stride[1] + j * p.dilation[1]) as isize - p.padding[1] as isize;
                                if ox < 0 || ox >= wo as isize {
                                    continue;
                                }
                                let v = r[b * h * wd + iy * wd + ix];
                                let cell = &mut out[[b, oc, oy as usize, ox as usize]];
                                *cell = *cell + v;
                            }
                        }
                    }
                }
            }
            if let Some(bv) = bias {
                out.slice_mut(s![.., oc, .., ..]).mapv_inplace(|v| v + bv[oc]);
            }
        }
    }
    out
}

/// Average (zero padding counted) or max pooling.
fn pool<T: Real>(x: &ndarray::ArrayView4<T>, p: &Pool2d, shape: &[usize], max: bool) -> Array4<T> {
    let (n, c, h, w) = x.dim();
    let (ho, wo) = (shape[1], shape[2]);
    let inv = T::of(1.0 / (p.kernel[0] * p.kernel[1]) as f64);
    Array4::from_shape_fn((n, c, ho, wo), |(b, ch, oy, ox)| {
        let mut acc = if max { T::neg_infinity() } else { T::zero() };
        for i in 0..p.kernel[0] {
            let iy = (oy * p.stride[0] + i) as isize - p.padding[0] as isize;
            if iy < 0 || iy >= h as isize {
                continue;
            }
            for j in 0..p.kernel[1] {
                let ix = (ox * p.stride[1] + j) as isize - p.padding[1] as isize;
                if ix < 0 || ix >= w as isize {
                    continue;
                }
                let v = x[[b, ch, iy as usize, ix as usize]];
                acc = if max { acc.max(v) } else { acc + v };
            }
        }
        if max {
            acc
        } else {
            acc * inv
        }
    })
}

/// What [`argmax_rows`] returns for a row with a non-finite value (never a class index, so
/// an overflowed output never counts as a correct prediction).
pub const NO_PREDICTION: usize = usize::MAX;

/// Index of the largest value of each row of a `[N, K]` output (first one on ties), or
/// [`NO_PREDICTION`] when the row holds a NaN or an infinity.
pub fn argmax_rows<T: Real>(logits: &ArrayD<T>) -> Vec<usize> {
    let n = logits.shape()[0];
    let k = logits.len() / n.max(1);
    let flat = logits.as_standard_layout();
    let flat = flat.as_slice().expect("standard");
    (0..n)
        .map(|b| {
            let row = &flat[b * k..(b + 1) * k];
            if row.iter().any(|v| !v.is_finite()) {
                return NO_PREDICTION;
            }
            let mut best = 0;
            for (i, v) in row.iter().enumerate() {
                if *v > row[best] {
                    best = i;
                }
            }
            best
        })
        .collect()
}
