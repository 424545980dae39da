//! A trainable candle graph built generically from a model's IR.
//!
//! Batch norms train as batch norms (batch statistics in training passes, running statistics
//! updated with momentum 0.1) and are folded into the convolution before them on export. Every ReLU / SiLU / GELU becomes PolyAct-RN when a degree is given,
//! every existing polynomial activation is trained as PolyAct-RN with its current ranges, and
//! max pooling becomes average pooling. Feature maps are channels-last (`[B, H, W, C]`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::error::{Result, SftError};
use candle_core::{DType, Device, Tensor, Var, D};
use ndarray::{ArrayD, IxDyn};
use peregrine_model::ir::{Activation, Approximated, Graph, Model, Op, Shape, INPUT};

use super::kernels::{tensor_channel_stats, BatchNormTrain, Fold, PolyAct, PolyActTrained, Unfold, Window};
use crate::convert::fold_batch_norms;
use crate::hermite::{hermite_polynomial, ScaledHermite};
use crate::polyact::{EPS, MOMENTUM};

/// In training passes computed as inference computes ([`TrainModel::normalise_by_running_range`]),
/// normalised activation inputs are held within ±`RUNNING_RANGE_GUARD`·B.
pub const RUNNING_RANGE_GUARD: f64 = 2.0;

/// Momentum of batch-norm running statistics.
const BN_MOMENTUM: f64 = 0.1;

/// What happens to the model's activations.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activations {
    /// Keep ReLU / SiLU / GELU as they are (ordinary training); polynomial activations are
    /// trained as PolyAct-RN.
    Keep,
    /// Replace every ReLU / SiLU / GELU by PolyAct-RN with the Hermite polynomial of `degree`
    /// on `[-bound, bound]`, and max pooling by average pooling.
    Hermite {
        /// Polynomial degree (2, 4 or 8 in SFT).
        degree: usize,
        /// Bound B of normalised inputs.
        bound: f64,
    },
}

/// How a forward pass treats the statistics (activation ranges, batch-norm moments).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    /// Training: update each running max with the batch and normalise by the wider of the
    /// running range and the batch's own; batch norms use and record batch statistics.
    Train,
    /// Calibration: ranges as in training, batch norms frozen (the zero-epoch conversion).
    Calibrate,
    /// Inference: every statistic frozen (evaluation and export).
    Frozen,
}

/// Per-channel PolyAct-RN state of one activation node.
#[derive(Clone, Debug)]
pub struct RangeState {
    /// Base polynomials, `channels × (degree + 1)`.
    pub coeffs: Vec<f32>,
    /// Running range r_c (`None` until observed).
    pub range: Vec<Option<f32>>,
    /// Bound B.
    pub bound: f32,
    /// For an activation that is not positively homogeneous, the polynomials per range scale:
    /// `coeffs` is refitted whenever the ranges move (`None`: one polynomial for every scale).
    pub scaled: Option<Arc<ScaledHermite>>,
}

impl RangeState {
    /// Channels.
    pub fn channels(&self) -> usize {
        self.range.len()
    }
    /// Range scales s_c = r_c + ε.
    pub fn scales(&self) -> Vec<f32> {
        self.range.iter().map(|r| r.unwrap_or(1.0) + EPS as f32).collect()
    }
    fn observe(&mut self, batch_max: &[f32]) {
        for (r, m) in self.range.iter_mut().zip(batch_max) {
            let target = m / self.bound;
            *r = Some(match *r {
                None => target,
                Some(old) => (1.0 - MOMENTUM as f32) * old + MOMENTUM as f32 * target,
            });
        }
        if self.scaled.is_some() {
            self.coeffs = self.coefficients_for(&self.scales());
        }
    }

    /// Per-channel base polynomials (channels × terms) for range scales `scales`: the refitted
    /// ones of a non-homogeneous activation, else the stored ones.
    pub fn coefficients_for(&self, scales: &[f32]) -> Vec<f32> {
        match &self.scaled {
            Some(table) => scales.iter().flat_map(|&s| table.polynomial(s as f64)).map(|v| v as f32).collect(),
            None => self.coeffs.clone(),
        }
    }
}

/// Result of a forward pass.
pub struct Forward {
    /// Logits `[B, classes]`.
    pub logits: Tensor,
    /// Σ over activations of mean(|t − clamp(t, −B, B)|), t the normalised input.
    pub range_penalty: Tensor,
    /// Every activation's output `[B, H, W, C]` by node name, when
    /// [`TrainModel::collect_features`] is set (distillation matches them); empty otherwise.
    pub features: HashMap<String, Tensor>,
    /// The outputs before the model's client-side sigmoid (`[B, outputs]`), when it ends in
    /// one: a loss on probabilities takes its gradient from here, where it does not vanish.
    pub before_sigmoid: Option<Tensor>,
}

/// Values that replace a forward pass's own (see [`TrainModel::forward_substituted`]).
pub struct Substitute {
    /// Per node name, its output `[B, H, W, C]` (channels last, like the training graph).
    pub nodes: HashMap<String, Tensor>,
    /// The logits `[B, classes]`.
    pub logits: Tensor,
}

/// `y` forward with the value of `v`, the gradient of `y` backward.
fn straight_through(y: &Tensor, v: &Tensor) -> candle_core::Result<Tensor> {
    if y.dims() != v.dims() {
        candle_core::bail!("substituted values have shape {:?}, the node computes {:?}", v.dims(), y.dims());
    }
    y + (v - y)?.detach()
}

/// A model whose weights are candle variables.
pub struct TrainModel {
    graph: Graph,
    shapes: Vec<Shape>,
    params: BTreeMap<String, Var>,
    /// Batch-norm running statistics (updated in training passes).
    frozen: BTreeMap<String, Tensor>,
    ranges: BTreeMap<String, RangeState>,
    device: Device,
    /// Whether training passes compute the range penalty.
    pub track_penalty: bool,
    /// Whether forward passes return every activation's output in [`Forward::features`].
    pub collect_features: bool,
    /// Whether training passes compute what inference computes: each activation normalised
    /// by its running range (not by the wider of it and the batch's own), batch norms by their
    /// running statistics, and neither updated (an input that runs away must not widen the
    /// ranges or the variances). An input beyond the running range then meets the polynomial
    /// outside [−B, B], as it would at inference (up to [`RUNNING_RANGE_GUARD`]·B, beyond which
    /// it is held so that f32 does not overflow), and gradients still flow.
    pub normalise_by_running_range: bool,
    /// Whether batch norms keep their running statistics in training passes too (their scale
    /// and shift still train): for small batches, and for the exact affine maps an importer
    /// writes as batch norms (a per-channel `Mul` after an activation cannot be folded).
    pub freeze_batch_norms: bool,
    /// Gaussian noise added to every PolyAct-RN input in training passes (noise-aware
    /// fine-tuning): the error an encrypted run adds at each rescale, so the network learns
    /// to keep its decisions under it. `None`: no noise.
    pub activation_noise: Option<ActivationNoise>,
    /// Weight clustering during training: every convolution's and fully connected layer's
    /// weights take at most this many values forward (1-D k-means per tensor, refined every
    /// pass from the previous pass's centres) while gradients update the float weights (a
    /// straight-through estimator). `None`: no clustering.
    pub weight_clusters: Option<usize>,
    /// Current k-means centres per clustered weight tensor.
    centres: BTreeMap<String, Vec<f32>>,
    /// This pass's clustered weights (straight-through), by weight name.
    clustered: HashMap<String, Tensor>,
    /// Trainable base polynomials ([`TrainModel::train_coefficients`]): activation node name →
    /// the name of its `[channels, terms]` variable in `params`.
    coefficient_params: BTreeMap<String, String>,
    /// The leading coefficient of each trainable polynomial's Hermite start (else its loaded
    /// value), per activation node and channel: what [`TrainModel::clamp_coefficients`] keeps
    /// a fraction of.
    initial_leading: BTreeMap<String, Vec<f32>>,
}

/// The least fraction of its initial (Hermite) value a trained leading coefficient keeps, sign
/// unchanged: a degree-2 activation folds into its producer as `√a₂·(s·x + a₁/(2·a₂))`, so a
/// vanishing a₂ would shift the folded input far out of range and cost its precision.
pub const MIN_LEADING_FRACTION: f32 = 0.25;

/// Lloyd rounds per pass when clustering warm-starts from the previous pass's centres.
const CLUSTER_ROUNDS_PER_PASS: usize = 5;

/// Noise-aware training: an absolute standard deviation (in the activation's input units) and
/// the seed of this pass's draws (the trainer derives one per step, so a resumed run draws
/// the same noise as an uninterrupted one).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ActivationNoise {
    /// Standard deviation added to every activation input.
    pub std: f32,
    /// Seed of the pass's draws (each activation node draws from its own stream).
    pub seed: u64,
}

/// `x + std·N(0, 1)`, drawn from a generator seeded by `seed` (reproducible).
fn add_noise(x: &Tensor, std: f32, seed: u64) -> candle_core::Result<Tensor> {
    use rand::SeedableRng;
    use rand_distr::Distribution;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let normal = rand_distr::Normal::new(0f32, std).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    let draws: Vec<f32> = (0..x.elem_count()).map(|_| normal.sample(&mut rng)).collect();
    x + Tensor::from_vec(draws, x.dims(), x.device())?
}

/// An exact (not polynomial) activation on a tensor.
fn exact_activation(x: &Tensor, act: &Activation) -> candle_core::Result<Tensor> {
    Ok(match act {
        Activation::Relu => x.relu()?,
        Activation::Silu => x.silu()?,
        Activation::Gelu => x.gelu_erf()?,
        Activation::Sigmoid => candle_nn::ops::sigmoid(x)?,
        Activation::HardSigmoid { alpha, beta } => x.affine(*alpha as f64, *beta as f64)?.clamp(0f32, 1f32)?,
        Activation::HardSwish => (x * x.affine(1.0, 3.0)?.clamp(0f32, 6f32)?.affine(1.0 / 6.0, 0.0)?)?,
        Activation::Clip { min, max } => x.clamp(*min, *max)?,
        Activation::LeakyRelu { alpha } => (x.relu()? - x.neg()?.relu()?.affine(*alpha as f64, 0.0)?)?,
        Activation::Poly { .. } => candle_core::bail!("a polynomial activation needs its range state"),
    })
}

fn to_tensor(a: &ArrayD<f32>, device: &Device) -> Result<Tensor> {
    let data: Vec<f32> = a.iter().copied().collect();
    Tensor::from_vec(data, a.shape(), device).map_err(candle_err)
}

/// Wraps a candle error.
pub fn candle_err(e: candle_core::Error) -> SftError {
    SftError::Candle(e)
}

fn vec_of(t: &Tensor) -> Result<Vec<f32>> {
    t.flatten_all().and_then(|t| t.to_vec1::<f32>()).map_err(candle_err)
}

impl TrainModel {
    /// Builds the training graph of `model` (see the module documentation).
    pub fn new(model: &Model, activations: Activations) -> Result<Self> {
        if let Activations::Hermite { degree, bound } = activations {
            if !(1..=16).contains(&degree) {
                return Err(SftError::Unsupported(format!("polynomial degree must be 1..=16, got {degree}")));
            }
            if !(bound > 0.0 && bound.is_finite()) {
                return Err(SftError::Unsupported(format!("the range bound must be positive, got {bound}")));
            }
        }
        let device = Device::Cpu;
        let (mut graph, weights) = model.clone().into_parts();
        let shapes = model.shapes().to_vec();
        let mut params = BTreeMap::new();
        let mut frozen = BTreeMap::new();
        let mut ranges = BTreeMap::new();
        let mut tables: HashMap<String, Arc<ScaledHermite>> = HashMap::new();
        for node in graph.nodes.iter_mut() {
            let channels = |j: usize| shapes[j].first().copied().unwrap_or(1);
            let input_index = model.node_index(&node.inputs[0]);
            match &node.op {
                Op::BatchNorm(bn) => {
                    for t in [&bn.weight, &bn.bias] {
                        params.insert(
                            t.clone(),
                            Var::from_tensor(&to_tensor(&weights[t], &device)?).map_err(candle_err)?,
                        );
                    }
                    for t in [&bn.running_mean, &bn.running_var] {
                        frozen.insert(t.clone(), to_tensor(&weights[t], &device)?);
                    }
                }
                Op::Activation(Activation::Poly { coeffs, input_scale, approximates }) => {
                    let a = &weights[coeffs];
                    let (c, terms) = (a.shape()[0], a.shape()[1]);
                    let s: Vec<f32> = match input_scale {
                        Some(n) => weights[n].iter().map(|v| 1.0 / v).collect(),
                        None => vec![1.0; c],
                    };
                    let base: Vec<f32> = a.iter().enumerate().map(|(k, v)| v / s[k / terms]).collect();
                    let range = s.iter().map(|s| Some(s - EPS as f32)).collect();
                    let bound = match activations {
                        Activations::Hermite { bound, .. } => bound as f32,
                        Activations::Keep => crate::polyact::DEFAULT_BOUND as f32,
                    };
                    // A non-homogeneous activation's polynomials follow its ranges when training
                    // refits them (same degree); kept as stored otherwise.
                    let scaled = match (activations, approximates) {
                        (Activations::Hermite { degree, .. }, Some(a)) if degree + 1 == terms => {
                            ScaledHermite::cached(&mut tables, &a.as_activation(), degree)
                        }
                        _ => None,
                    };
                    ranges.insert(node.name.clone(), RangeState { coeffs: base, range, bound, scaled });
                }
                Op::Activation(act) => {
                    if let Activations::Hermite { degree, bound } = activations {
                        let f = |x: f64| act.eval(x).expect("exact activations only here");
                        let Some(j) = input_index else {
                            return Err(SftError::Unsupported(format!(
                                "activation '{}' directly on the model input",
                                node.name
                            )));
                        };
                        let c = channels(j);
                        let scaled = ScaledHermite::cached(&mut tables, act, degree);
                        let mut state =
                            RangeState { coeffs: Vec::new(), range: vec![None; c], bound: bound as f32, scaled };
                        state.coeffs = match &state.scaled {
                            Some(_) => state.coefficients_for(&state.scales()),
                            None => {
                                let p: Vec<f32> = hermite_polynomial(f, degree).iter().map(|v| *v as f32).collect();
                                (0..c).flat_map(|_| p.iter().copied()).collect()
                            }
                        };
                        ranges.insert(node.name.clone(), state);
                    }
                }
                Op::MaxPool(p) => {
                    if matches!(activations, Activations::Hermite { .. }) {
                        node.op = Op::AvgPool(p.clone());
                    }
                }
                // Channel selections (imported Split and Slice) stay exact: training them would
                // turn each into a dense mixing of every channel.
                Op::Conv2d(c) if model.is_channel_selection(c) => {
                    frozen.insert(c.weight.clone(), to_tensor(&weights[&c.weight], &device)?);
                }
                op => {
                    for (_, t) in op.weight_refs() {
                        params.insert(
                            t.to_string(),
                            Var::from_tensor(&to_tensor(&weights[t], &device)?).map_err(candle_err)?,
                        );
                    }
                }
            }
        }
        Ok(TrainModel {
            graph,
            shapes,
            params,
            frozen,
            ranges,
            device,
            track_penalty: false,
            collect_features: false,
            normalise_by_running_range: false,
            freeze_batch_norms: false,
            activation_noise: None,
            weight_clusters: None,
            centres: BTreeMap::new(),
            clustered: HashMap::new(),
            coefficient_params: BTreeMap::new(),
            initial_leading: BTreeMap::new(),
        })
    }

    /// Makes every PolyAct-RN activation's base polynomial a trainable variable (one row of
    /// `degree + 1` coefficients per channel, starting from the current ones — Hermite's, or a
    /// loaded model's), named `<node>.poly_base` among [`TrainModel::params`]. The exported
    /// model stores them as it stores fixed ones (`s_c·p_c`): still one polynomial of the same
    /// degree per channel, so the FHE side is unchanged. Refused for an activation whose
    /// polynomial is refitted to its range (not positively homogeneous, e.g. SiLU).
    pub fn train_coefficients(&mut self) -> Result<()> {
        for (name, state) in &self.ranges {
            if state.scaled.is_some() {
                return Err(SftError::Unsupported(format!(
                    "activation '{name}' is not positively homogeneous (its polynomial is refitted to its range as it moves): its coefficients cannot be trained"
                )));
            }
            let c = state.channels();
            let terms = state.coeffs.len() / c;
            let param = format!("{name}.poly_base");
            if self.params.contains_key(&param) {
                return Err(SftError::Unsupported(format!("the model already has a weight named '{param}'")));
            }
            let t = Tensor::from_vec(state.coeffs.clone(), (c, terms), &self.device).map_err(candle_err)?;
            self.params.insert(param.clone(), Var::from_tensor(&t).map_err(candle_err)?);
            self.coefficient_params.insert(name.clone(), param);
            // The floor follows the Hermite polynomial of the activation approximated, so that
            // a resumed run (its coefficients already trained) keeps the same one.
            let hermite = self.graph.nodes.iter().find(|n| &n.name == name).and_then(|n| match &n.op {
                Op::Activation(Activation::Poly { approximates, .. }) => approximates.map(|a| a.as_activation()),
                Op::Activation(a) => Some(a.clone()),
                _ => None,
            });
            let leading = match hermite.filter(|a| a.eval(0.0).is_some()) {
                Some(a) => vec![hermite_polynomial(|x| a.eval(x).unwrap_or(0.0), terms - 1)[terms - 1] as f32; c],
                None => (0..c).map(|ch| state.coeffs[ch * terms + terms - 1]).collect(),
            };
            self.initial_leading.insert(name.clone(), leading);
        }
        Ok(())
    }

    /// Whether `param` is a trainable base polynomial (no weight decay: it is not a weight
    /// that shrinking regularises, and decay would pull the activation towards zero).
    pub fn is_coefficient(&self, param: &str) -> bool {
        self.coefficient_params.values().any(|p| p == param)
    }

    /// Keeps every trained leading coefficient on its initial sign and at least
    /// [`MIN_LEADING_FRACTION`] of its initial size (called after each optimiser step).
    pub fn clamp_coefficients(&self) -> Result<()> {
        for (node, param) in &self.coefficient_params {
            let var = &self.params[param];
            let (c, terms) = var.as_tensor().dims2().map_err(candle_err)?;
            let mut v = vec_of(var.as_tensor())?;
            let mut changed = false;
            for (ch, init) in self.initial_leading[node].iter().enumerate() {
                let floor = MIN_LEADING_FRACTION * init.abs();
                let a = &mut v[ch * terms + terms - 1];
                if *a * init.signum() < floor {
                    *a = floor * init.signum();
                    changed = true;
                }
            }
            if changed {
                var.set(&Tensor::from_vec(v, (c, terms), &self.device).map_err(candle_err)?).map_err(candle_err)?;
            }
        }
        Ok(())
    }

    /// The base polynomials of activation `node` now: its trained variable's, else the
    /// stored ones.
    fn base_coefficients(&self, node: &str, state: &RangeState) -> Result<Vec<f32>> {
        match self.coefficient_params.get(node) {
            Some(p) => vec_of(self.params[p].as_tensor()),
            None => Ok(state.coeffs.clone()),
        }
    }

    /// The centres of weight tensor `name` for `values`: the previous pass's refined by a few
    /// Lloyd rounds, or a fresh k-means the first time.
    fn cluster_centres(&self, name: &str, values: &[f32], k: usize) -> Vec<f32> {
        use peregrine_model::cluster::{kmeans_1d, refine_1d};
        match self.centres.get(name) {
            Some(c) => refine_1d(values, c, CLUSTER_ROUNDS_PER_PASS),
            None => kmeans_1d(values, k),
        }
    }

    /// Recomputes the clustered weights of this pass (nothing without clustering).
    fn refresh_clusters(&mut self) -> candle_core::Result<()> {
        self.clustered.clear();
        let Some(k) = self.weight_clusters else { return Ok(()) };
        for name in peregrine_model::cluster::clusterable_weights(&self.graph) {
            // Frozen weights (channel selections) are exact already.
            let Some(var) = self.params.get(&name) else { continue };
            let w = var.as_tensor().clone();
            let values = w.flatten_all()?.to_vec1::<f32>()?;
            let centres = self.cluster_centres(&name, &values, k);
            let q: Vec<f32> = values.iter().map(|&v| peregrine_model::cluster::nearest_centre(&centres, v)).collect();
            let q = Tensor::from_vec(q, w.dims(), &self.device)?;
            let effective = (&w + (q - &w)?.detach())?;
            self.centres.insert(name.clone(), centres);
            self.clustered.insert(name, effective);
        }
        Ok(())
    }

    /// `model` (this one exported, batch norms folded) with every clustered weight tensor's
    /// values replaced by the nearest of its centres — refined once more on the final weights,
    /// so the file holds at most `weight_clusters` values per tensor. Unchanged without
    /// clustering.
    pub fn apply_clusters(&self, model: Model) -> Result<Model> {
        let Some(k) = self.weight_clusters else { return Ok(model) };
        let (graph, mut weights) = model.into_parts();
        for name in peregrine_model::cluster::clusterable_weights(&graph) {
            let Some(w) = weights.get_mut(&name) else { continue };
            let values: Vec<f32> = w.iter().copied().collect();
            let centres = self.cluster_centres(&name, &values, k);
            w.mapv_inplace(|v| peregrine_model::cluster::nearest_centre(&centres, v));
        }
        Ok(Model::new(graph, weights)?)
    }

    /// The candle device (CPU).
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The trainable variables by weight name.
    pub fn params(&self) -> &BTreeMap<String, Var> {
        &self.params
    }

    /// PolyAct-RN states by activation node name.
    pub fn ranges(&self) -> &BTreeMap<String, RangeState> {
        &self.ranges
    }

    /// Number of PolyAct-RN activations.
    pub fn poly_activations(&self) -> usize {
        self.ranges.len()
    }

    fn param(&self, name: &str) -> &Tensor {
        self.clustered.get(name).or_else(|| self.frozen.get(name)).unwrap_or_else(|| self.params[name].as_tensor())
    }

    /// Runs a batch `[B, H, W, C]` (channels-last, preprocessed) through the graph.
    pub fn forward(&mut self, x: &Tensor, pass: Pass) -> Result<Forward> {
        self.forward_inner(x, pass, None).map_err(candle_err)
    }

    /// A forward pass whose values are replaced by `substitute` (a straight-through estimator):
    /// each named node, and the logits, take the given values forward while gradients flow as
    /// if the float values had been used. Quantisation-aware training substitutes what the
    /// quantised network computes.
    pub fn forward_substituted(&mut self, x: &Tensor, pass: Pass, substitute: &Substitute) -> Result<Forward> {
        self.forward_inner(x, pass, Some(substitute)).map_err(candle_err)
    }

    fn forward_inner(
        &mut self,
        x: &Tensor,
        pass: Pass,
        substitute: Option<&Substitute>,
    ) -> candle_core::Result<Forward> {
        let batch = x.dims()[0];
        self.refresh_clusters()?;
        let mut values: HashMap<String, Tensor> = HashMap::new();
        values.insert(INPUT.to_string(), x.clone());
        let mut penalty = Tensor::zeros((), DType::F32, &self.device)?;
        let mut features = HashMap::new();
        let nodes = self.graph.nodes.clone();
        for (index, node) in nodes.iter().enumerate() {
            let ins: Vec<&Tensor> = node.inputs.iter().map(|n| &values[n]).collect();
            let x = ins[0];
            let y = match &node.op {
                Op::Conv2d(c) => {
                    let d = x.dims4()?;
                    let win = Window {
                        batch,
                        input: [d.1, d.2],
                        channels: c.in_channels,
                        groups: c.groups,
                        kernel: c.kernel,
                        stride: c.stride,
                        padding: c.padding,
                        padding_end: c.padding_after(),
                        dilation: c.dilation,
                    };
                    let [oh, ow] = win.output();
                    let cols = x.contiguous()?.apply_op1(Unfold(win))?;
                    // IR weight (out, in/g, kh, kw) -> (out, kh, kw, in/g)
                    let w = self.param(&c.weight).permute((0, 2, 3, 1))?;
                    let y = grouped_matmul(&cols, &w, c.groups, c.out_channels)?;
                    let y = match &c.bias {
                        Some(b) => y.broadcast_add(self.param(b))?,
                        None => y,
                    };
                    y.reshape((batch, oh, ow, c.out_channels))?
                }
                Op::ConvTranspose2d(c) => {
                    let d = x.dims4()?;
                    let shape = &self.shapes[self.index(&node.name)];
                    let win = Window {
                        batch,
                        input: [shape[1], shape[2]],
                        channels: c.out_channels,
                        groups: c.groups,
                        kernel: c.kernel,
                        stride: c.stride,
                        padding: c.padding,
                        padding_end: c.padding,
                        dilation: c.dilation,
                    };
                    if win.output() != [d.1, d.2] {
                        candle_core::bail!("conv_transpose '{}': geometry mismatch", node.name);
                    }
                    let g = c.groups;
                    let (cin_g, cout_g) = (c.in_channels / g, c.out_channels / g);
                    let k = c.kernel[0] * c.kernel[1];
                    // IR weight (in, out/g, kh, kw) -> per group (in/g, kh·kw·out/g)
                    let w = self.param(&c.weight).permute((0, 2, 3, 1))?.reshape((g, cin_g, k * cout_g))?;
                    let rows = x.contiguous()?.reshape((batch * d.1 * d.2, g, cin_g))?;
                    let cols = if g == 1 {
                        rows.squeeze(1)?.matmul(&w.squeeze(0)?)?
                    } else {
                        rows.transpose(0, 1)?
                            .contiguous()?
                            .matmul(&w)?
                            .transpose(0, 1)?
                            .reshape((batch * d.1 * d.2, g * k * cout_g))?
                    };
                    let y = cols.contiguous()?.apply_op1(Fold(win))?;
                    match &c.bias {
                        Some(b) => y.broadcast_add(self.param(b))?,
                        None => y,
                    }
                }
                Op::BatchNorm(bn) => {
                    let c = bn.channels;
                    if pass == Pass::Train && !self.freeze_batch_norms && !self.normalise_by_running_range {
                        let (_, mean, var) = tensor_channel_stats(x)?;
                        let n = (x.elem_count() / c) as f32;
                        let m = BN_MOMENTUM as f32;
                        let blend = |old: &Tensor, new: Vec<f32>| -> candle_core::Result<Tensor> {
                            let old = old.to_vec1::<f32>()?;
                            let v: Vec<f32> = old.iter().zip(new).map(|(o, n)| (1.0 - m) * o + m * n).collect();
                            Tensor::from_vec(v, c, &self.device)
                        };
                        let unbiased: Vec<f32> = var.iter().map(|v| v * n / (n - 1.0).max(1.0)).collect();
                        let rm = blend(&self.frozen[&bn.running_mean], mean.clone())?;
                        let rv = blend(&self.frozen[&bn.running_var], unbiased)?;
                        self.frozen.insert(bn.running_mean.clone(), rm);
                        self.frozen.insert(bn.running_var.clone(), rv);
                        let op = BatchNormTrain {
                            std: Arc::new(var.iter().map(|v| (v + bn.eps as f32).sqrt()).collect()),
                            mean: Arc::new(mean),
                            gamma: Arc::new(self.param(&bn.weight).to_vec1::<f32>()?),
                        };
                        x.contiguous()?.apply_op3(self.param(&bn.weight), self.param(&bn.bias), op)?
                    } else {
                        let var = (&self.frozen[&bn.running_var] + bn.eps)?.sqrt()?;
                        let scale = self.param(&bn.weight).div(&var)?;
                        let shift = (self.param(&bn.bias) - self.frozen[&bn.running_mean].mul(&scale)?)?;
                        x.broadcast_mul(&scale)?.broadcast_add(&shift)?
                    }
                }
                Op::Activation(act) => match self.ranges.get_mut(&node.name) {
                    Some(state) => {
                        // Noise first: the ranges then cover what an encrypted run feeds the
                        // polynomial (a nearly dead channel's range widens to the noise).
                        let noisy;
                        let x = match (self.activation_noise, pass) {
                            (Some(n), Pass::Train) if n.std > 0.0 => {
                                let stream = n.seed ^ (index as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03);
                                noisy = add_noise(x, n.std, stream)?;
                                &noisy
                            }
                            _ => x,
                        };
                        let c = state.channels();
                        let trained =
                            self.coefficient_params.get(&node.name).map(|p| self.params[p].as_tensor().clone());
                        if let Some(b) = &trained {
                            state.coeffs = b.flatten_all()?.to_vec1::<f32>()?;
                        }
                        let mut scales = state.scales();
                        let as_inference = pass == Pass::Train && self.normalise_by_running_range;
                        if pass != Pass::Frozen && !as_inference {
                            // Like batch norm's batch statistics: the batch is normalised by
                            // its own range when that is wider than the running one, so every
                            // training input lies in [−B, B]; inference uses the running range
                            // (and so do training passes asked to compute as inference does).
                            let (m, _, _) = tensor_channel_stats(x)?;
                            state.observe(&m);
                            scales = state.scales();
                            for (s, m) in scales.iter_mut().zip(&m) {
                                *s = s.max(m / state.bound + EPS as f32);
                            }
                        }
                        if self.track_penalty && pass == Pass::Train {
                            // Measured against the running range, the one inference uses: the
                            // batch-widened range keeps t inside [−B, B] by construction.
                            let running = Tensor::from_slice(&state.scales(), c, &self.device)?;
                            let t = x.broadcast_div(&running)?;
                            let excess = (t.abs()? - state.bound as f64)?.relu()?.mean_all()?;
                            penalty = (penalty + excess)?;
                        }
                        let guarded;
                        let x = if as_inference {
                            // Computed as inference computes, but a runaway input would overflow
                            // f32 a few squarings on and poison the whole batch's gradient: held
                            // at GUARD·B, where inference would already be lost (the range
                            // penalty, on the unheld input, still pulls it back).
                            // `scales` are the running ranges here (nothing widened them).
                            let running = Tensor::from_slice(&scales, c, &self.device)?;
                            let limit = RUNNING_RANGE_GUARD * state.bound as f64;
                            guarded = x.broadcast_div(&running)?.clamp(-limit, limit)?.broadcast_mul(&running)?;
                            &guarded
                        } else {
                            x
                        };
                        let coeffs = if pass == Pass::Frozen || as_inference {
                            state.coeffs.clone()
                        } else {
                            state.coefficients_for(&scales)
                        };
                        let scales = Arc::new(scales);
                        match trained {
                            Some(b) => x.contiguous()?.apply_op2(&b, PolyActTrained { scales })?,
                            None => x.contiguous()?.apply_op1(PolyAct { coeffs: Arc::new(coeffs), scales })?,
                        }
                    }
                    None => exact_activation(x, act)?,
                },
                Op::AvgPool(p) | Op::MaxPool(p) => {
                    let d = x.dims4()?;
                    let win = Window::pooling(x.dims4()?, p.kernel, p.stride, p.padding);
                    let [oh, ow] = win.output();
                    let k = p.kernel[0] * p.kernel[1];
                    let cols = x.contiguous()?.apply_op1(Unfold(win))?.reshape((batch * oh * ow, k, d.3))?;
                    let pooled =
                        if matches!(node.op, Op::MaxPool(_)) { cols.max(1)? } else { (cols.sum(1)? / k as f64)? };
                    pooled.reshape((batch, oh, ow, d.3))?
                }
                Op::GlobalAvgPool => x.mean_keepdim(1)?.mean_keepdim(2)?,
                Op::Linear(l) => {
                    let y = x.matmul(&self.param(&l.weight).t()?)?;
                    match &l.bias {
                        Some(b) => y.broadcast_add(self.param(b))?,
                        None => y,
                    }
                }
                Op::Add => {
                    let mut acc = x.clone();
                    for t in &ins[1..] {
                        acc = (acc + *t)?;
                    }
                    acc
                }
                // NHWC: a [b, 1, 1, c] gate broadcasts over a [b, h, w, c] map.
                Op::Mul => ins[0].broadcast_mul(ins[1])?,
                Op::Concat => Tensor::cat(&ins, 3)?,
                Op::Upsample { factor } => {
                    let (b, h, w, c) = x.dims4()?;
                    let f = *factor;
                    x.reshape((b, h, 1, w, 1, c))?.broadcast_as((b, h, f, w, f, c))?.contiguous()?.reshape((
                        b,
                        h * f,
                        w * f,
                        c,
                    ))?
                }
                Op::SubsampleChannelPad { stride, pad_before, pad_after } => {
                    let d = x.dims4()?;
                    let win = Window::pooling(d, [1, 1], [*stride, *stride], [0, 0]);
                    let [oh, ow] = win.output();
                    x.contiguous()?.apply_op1(Unfold(win))?.reshape((batch, oh, ow, d.3))?.pad_with_zeros(
                        3,
                        *pad_before,
                        *pad_after,
                    )?
                }
                Op::Flatten => {
                    if x.rank() == 4 {
                        x.permute((0, 3, 1, 2))?.contiguous()?.flatten_from(1)?
                    } else {
                        x.clone()
                    }
                }
            };
            let y = match substitute.and_then(|s| s.nodes.get(&node.name)) {
                Some(v) => straight_through(&y, v)?,
                None => y,
            };
            if self.collect_features && matches!(node.op, Op::Activation(_)) {
                features.insert(node.name.clone(), y.clone());
            }
            values.insert(node.name.clone(), y);
        }
        let flat = |t: Tensor| -> candle_core::Result<Tensor> {
            if t.rank() == 4 {
                t.permute((0, 3, 1, 2))?.contiguous()?.flatten_from(1)
            } else {
                Ok(t)
            }
        };
        let mut out = values.remove(&self.graph.output).expect("output computed");
        let mut before_sigmoid = None;
        if let Some(act) = &self.graph.client_activation {
            if *act == Activation::Sigmoid {
                before_sigmoid = Some(flat(out.clone())?);
            }
            out = exact_activation(&out, act)?;
        }
        let logits = flat(out)?;
        let logits = match substitute {
            Some(s) => straight_through(&logits, &s.logits)?,
            None => logits,
        };
        Ok(Forward { logits, range_penalty: penalty, features, before_sigmoid })
    }

    fn index(&self, name: &str) -> usize {
        self.graph.nodes.iter().position(|n| n.name == name).expect("node exists")
    }

    /// The model's input (shape and preprocessing).
    pub fn input(&self) -> &peregrine_model::ir::InputSpec {
        &self.graph.input
    }

    /// The shape of the model's output (`[classes]`, or a map's `[C, H, W]`).
    pub fn output_shape(&self) -> &[usize] {
        &self.shapes[self.index(&self.graph.output)]
    }

    /// Number of values the model outputs (logits, or a map's pixels).
    pub fn output_len(&self) -> usize {
        self.shapes[self.index(&self.graph.output)].iter().product()
    }

    /// Whether every activation already has its ranges (a model whose activations are
    /// polynomials with stored input scales): nothing needs calibrating.
    pub fn has_all_ranges(&self) -> bool {
        self.ranges.values().all(|r| r.range.iter().all(Option::is_some))
    }

    /// Whether the graph has a batch norm.
    pub fn has_batch_norm(&self) -> bool {
        self.graph.nodes.iter().any(|n| matches!(n.op, Op::BatchNorm(_)))
    }

    /// The model with the current weights and frozen ranges, in the IR: polynomial
    /// activations with per-channel coefficients `s_c·p` and input scales `1/s_c`, batch norms
    /// folded into the convolution before them.
    pub fn export(&self, name_suffix: &str) -> Result<Model> {
        fold_batch_norms(&self.export_unfolded(name_suffix)?)
    }

    /// Like [`TrainModel::export`] but with the batch norms kept (with their running
    /// statistics): the form a checkpoint stores, from which training resumes unchanged.
    pub fn export_unfolded(&self, name_suffix: &str) -> Result<Model> {
        let mut weights = BTreeMap::new();
        for (name, var) in &self.params {
            if self.is_coefficient(name) {
                continue;
            }
            let t = var.as_tensor();
            weights.insert(name.clone(), ArrayD::from_shape_vec(IxDyn(t.dims()), vec_of(t)?).expect("sized"));
        }
        for (name, t) in &self.frozen {
            weights.insert(name.clone(), ArrayD::from_shape_vec(IxDyn(t.dims()), vec_of(t)?).expect("sized"));
        }
        let mut graph = self.graph.clone();
        for node in graph.nodes.iter_mut() {
            let Some(state) = self.ranges.get(&node.name) else { continue };
            if state.range.iter().any(Option::is_none) {
                return Err(SftError::Unsupported(format!(
                    "activation '{}' has no range statistics yet: calibrate or train before exporting",
                    node.name
                )));
            }
            let c = state.channels();
            let base = self.base_coefficients(&node.name, state)?;
            let terms = base.len() / c;
            let s = state.scales();
            let coeffs: Vec<f32> = base.iter().enumerate().map(|(k, a)| a * s[k / terms]).collect();
            let inv: Vec<f32> = s.iter().map(|s| 1.0 / s).collect();
            let (cn, sn) = (format!("{}.poly_coeffs", node.name), format!("{}.poly_input_scale", node.name));
            weights.insert(cn.clone(), ArrayD::from_shape_vec(IxDyn(&[c, terms]), coeffs).expect("sized"));
            weights.insert(sn.clone(), ArrayD::from_shape_vec(IxDyn(&[c]), inv).expect("sized"));
            node.op = Op::Activation(Activation::Poly {
                coeffs: cn,
                input_scale: Some(sn),
                approximates: Approximated::of(&node.op),
            });
        }
        if !name_suffix.is_empty() {
            graph.name = format!("{}{name_suffix}", graph.name);
        }
        Ok(Model::new(graph, weights)?)
    }
}

/// `cols [N, g·K] × w [out, K]` per group (columns ordered group-major) → `[N, out]`.
fn grouped_matmul(cols: &Tensor, w: &Tensor, groups: usize, out: usize) -> candle_core::Result<Tensor> {
    let n = cols.dims()[0];
    let k = cols.dims()[1] / groups;
    let w = w.reshape((groups, out / groups, k))?;
    if groups == 1 {
        return cols.matmul(&w.squeeze(0)?.t()?);
    }
    let per = cols.reshape((n, groups, k))?.transpose(0, 1)?.contiguous()?;
    let y = per.matmul(&w.transpose(1, 2)?)?; // [g, N, out/g]
    y.transpose(0, 1)?.contiguous()?.reshape((n, out))
}

/// Converts preprocessed `[B, C, H, W]` data to the channels-last layout of the training graph.
pub fn to_channels_last(x: &ArrayD<f32>, device: &Device) -> Result<Tensor> {
    let t = to_tensor(x, device)?;
    let t = if t.rank() == 4 { t.permute((0, 2, 3, 1)).and_then(|t| t.contiguous()).map_err(candle_err)? } else { t };
    Ok(t)
}

/// Mean cross-entropy of `logits [B, K]` against `labels`.
pub fn cross_entropy(logits: &Tensor, labels: &[u8]) -> Result<Tensor> {
    let target = Tensor::from_iter(labels.iter().map(|&l| l as u32), logits.device()).map_err(candle_err)?;
    candle_nn::loss::cross_entropy(logits, &target).map_err(candle_err)
}

/// Per-row argmax of `logits [B, K]`.
pub fn predictions(logits: &Tensor) -> Result<Vec<u32>> {
    logits.argmax(D::Minus1).and_then(|t| t.to_vec1::<u32>()).map_err(candle_err)
}
