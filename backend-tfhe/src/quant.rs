//! Quantised plans: a model compiled into integer weighted sums and lookup tables.
//!
//! TFHE evaluates a network as alternating *linear blocks* and *bootstraps*. Every chain of
//! linear operations between two activations (convolution, batch norm, pooling, residual add,
//! concatenation, flatten, fully connected…) is composed into one sparse map by
//! `peregrine-gip`'s lowering (the maps the CKKS packer schedules as diagonals), and each of
//! its rows is one affine form per output element over the values the previous bootstraps
//! produced (node fusing: an average pool after a convolution costs nothing). Each activation element is then exactly one
//! weighted sum of LWE ciphertexts with small integer weights, followed by one programmable
//! bootstrap whose lookup table applies the activation *and* requantises into the next block's
//! input encoding. Padding positions are simply absent from the forms: no ciphertext, no
//! bootstrap. The output block is a weighted sum the client decrypts.
//!
//! **Quantisation** comes from a calibration pass over sample images (float evaluation of the
//! same forms): every source value `x` is stored as an integer `q` with `x ≈ (q − z)·s` (per
//! channel step `s` and zero point `z`), and every accumulator of output channel `c` has a step
//! `t_c` chosen as the larger of what keeps the calibrated range inside the `p`-bit plaintext
//! space and what keeps the integer weights' 2-norm inside the parameter set's noise bound. The
//! plan records which of the two limited each channel, so the report can say where precision
//! goes.
//!
//! [`QuantPlan::simulate`] is the quantised cleartext simulation: the exact integer arithmetic
//! the encrypted run performs (modulo 2^(p+1), negacyclic lookup tables past the padding bit),
//! so an encrypted result must equal it bit for bit whenever the noise stays in bounds.

use peregrine_gip::lower::{self, Chain, Source};
use peregrine_model::ir::{Activation, Model, Op};
use serde::{Deserialize, Serialize};

/// How activation nodes are evaluated by the lookup tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActivationMode {
    /// The original activation (ReLU, SiLU, GELU) — for a fine-tuned polynomial node, the one it
    /// approximates, applied in the node's normalised range.
    Exact,
    /// The node's polynomial as stored in the model file.
    Poly,
}

impl std::str::FromStr for ActivationMode {
    type Err = QuantError;
    fn from_str(s: &str) -> Result<Self, QuantError> {
        match s {
            "exact" => Ok(ActivationMode::Exact),
            "poly" => Ok(ActivationMode::Poly),
            _ => Err(QuantError::UnknownMode(s.to_string())),
        }
    }
}

/// Errors of compilation and quantisation, each naming the node or setting at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QuantError {
    /// An activation mode other than `exact` or `poly`.
    #[error("unknown activation mode '{0}': use exact or poly")]
    UnknownMode(String),
    /// `exact` on a polynomial that does not record the activation it approximates.
    #[error("node '{node}': --activation exact needs the activation this polynomial approximates, and the model file does not record it (convert or fine-tune the model again with this version, or use --activation poly)")]
    NoExactActivation {
        /// The node.
        node: String,
    },
    /// A polynomial's per-channel input scale is not positive.
    #[error("node '{node}': channel {channel} has a non-positive input scale")]
    InputScale {
        /// The node.
        node: String,
        /// The channel.
        channel: usize,
    },
    /// `poly` on an activation that is not a polynomial.
    #[error("node '{node}' is a {kind} activation, not a polynomial: --activation poly needs a converted or fine-tuned model (use --activation exact for this one)")]
    NotPolynomial {
        /// The node.
        node: String,
        /// Its activation.
        kind: &'static str,
    },
    /// A layer with no integer-linear form.
    #[error("node '{node}': {what}")]
    Unsupported {
        /// The node.
        node: String,
        /// What is unsupported and what to do.
        what: &'static str,
    },
    /// A precision without a TFHE-rs set.
    #[error("precision must be 4 to 8 bits, got {0}")]
    Bits(u32),
    /// Activation bits beyond the accumulator's.
    #[error("activation bits must be 2 to {bits} (the accumulator's), got {act_bits}")]
    ActBits {
        /// The accumulator's bits.
        bits: u32,
        /// The activation bits asked for.
        act_bits: u32,
    },
    /// Too many extra accumulator bits.
    #[error("extra accumulator bits must be 0 to 12, got {0}")]
    ExtraBits(u32),
    /// A calibration quantile outside (0.5, 1].
    #[error("the calibration quantile (clip) must be in (0.5, 1], got {0}")]
    Clip(f64),
    /// No calibration image was given.
    #[error("calibration needs at least one image")]
    NoCalibrationImages,
    /// A calibration image drives a value to infinity.
    #[error("calibration: {node} gives a non-finite value ({pre} → {post}) on a calibration image")]
    NonFinite {
        /// The activation node.
        node: String,
        /// Its input.
        pre: f64,
        /// Its output.
        post: f64,
    },
    /// A plan saved by an older version lacks what this one needs.
    #[error("stage '{0}' has no output encodings (a plan saved by an older version): calibrate again")]
    OldPlan(String),
}

/// Result of this module.
pub type QResult<T> = Result<T, QuantError>;

/// An activation of one channel, as a real function.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ChannelActivation {
    /// max(x, 0).
    Relu,
    /// x·sigmoid(x).
    Silu,
    /// x·Φ(x).
    Gelu,
    /// Another exact activation of the IR (sigmoid, hard sigmoid, hard swish, clip, leaky ReLU).
    Other(Activation),
    /// `r·g(x / r)` for an exact activation `g` inside a normalised range `r`.
    Normalised {
        /// The exact activation.
        inner: Box<ChannelActivation>,
        /// The range scale r.
        range: f64,
    },
    /// `Σ a_k (s·x)^k`.
    Poly {
        /// Ascending coefficients.
        coeffs: Vec<f64>,
        /// Input scale s.
        input_scale: f64,
    },
}

impl ChannelActivation {
    /// Evaluates the activation.
    pub fn eval(&self, x: f64) -> f64 {
        match self {
            ChannelActivation::Relu => x.max(0.0),
            ChannelActivation::Silu => x / (1.0 + (-x).exp()),
            ChannelActivation::Gelu => 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2)),
            ChannelActivation::Other(a) => a.eval(x).unwrap_or(f64::NAN),
            ChannelActivation::Normalised { inner, range } => range * inner.eval(x / range),
            ChannelActivation::Poly { coeffs, input_scale } => {
                let t = x * input_scale;
                coeffs.iter().rev().fold(0.0, |acc, a| acc * t + a)
            }
        }
    }
}

/// An affine form `Σ w·source + bias` over real-valued sources.
#[derive(Clone, Debug, Default, PartialEq)]
struct Form {
    terms: Vec<(u32, f64)>,
    bias: f64,
}

/// The rows of `chain` as forms over every source value (`offset` places each source).
fn forms(chain: &Chain, offset: &dyn Fn(&Source) -> u32) -> Vec<Form> {
    let m = &chain.map;
    let mut out: Vec<Form> =
        (0..m.out_len).map(|k| Form { terms: Vec::new(), bias: m.bias.as_ref().map_or(0.0, |b| b[k]) }).collect();
    for e in &m.entries {
        out[e.dst as usize].terms.push((offset(&chain.sources[e.input as usize]) + e.src, e.w));
    }
    for f in &mut out {
        f.terms.sort_unstable_by_key(|t| t.0);
        f.terms.retain(|t| t.1 != 0.0);
    }
    out
}

impl Form {
    fn eval(&self, values: &[f64]) -> f64 {
        self.terms.iter().map(|&(s, c)| c * values[s as usize]).sum::<f64>() + self.bias
    }
}

/// One activation node in real-valued form: its pre-activation forms and channel functions.
#[derive(Clone, Debug)]
struct RealStage {
    node: String,
    forms: Vec<Form>,
    channel: Vec<u32>,
    acts: Vec<ChannelActivation>,
}

/// The model as real-valued affine blocks between activations.
#[derive(Clone, Debug)]
pub struct RealPlan {
    input_shape: Vec<usize>,
    stages: Vec<RealStage>,
    output: Vec<Form>,
    /// Per input channel (lo, hi) of the preprocessed pixel range.
    input_range: Vec<(f64, f64)>,
}

fn channel_activations(
    model: &Model,
    act: &Activation,
    channels: usize,
    node: &str,
    mode: ActivationMode,
) -> QResult<Vec<ChannelActivation>> {
    let exact = |a: &Activation| -> Option<ChannelActivation> {
        match a {
            Activation::Relu => Some(ChannelActivation::Relu),
            Activation::Silu => Some(ChannelActivation::Silu),
            Activation::Gelu => Some(ChannelActivation::Gelu),
            Activation::Poly { .. } => None,
            other => Some(ChannelActivation::Other(other.clone())),
        }
    };
    match act {
        Activation::Poly { coeffs, input_scale, approximates } => {
            let c = model.weight(coeffs);
            let d = c.shape()[1];
            let scales: Vec<f64> = match input_scale {
                Some(s) => model.weight(s).iter().map(|v| *v as f64).collect(),
                None => vec![1.0; channels],
            };
            (0..channels)
                .map(|ch| match mode {
                    ActivationMode::Poly => Ok(ChannelActivation::Poly {
                        coeffs: (0..d).map(|k| c[[ch, k]] as f64).collect(),
                        input_scale: scales[ch],
                    }),
                    ActivationMode::Exact => {
                        let Some(inner) = approximates.as_ref().and_then(|a| exact(&a.as_activation())) else {
                            return Err(QuantError::NoExactActivation { node: node.to_string() });
                        };
                        if scales[ch] <= 0.0 || !scales[ch].is_finite() {
                            return Err(QuantError::InputScale { node: node.to_string(), channel: ch });
                        }
                        Ok(ChannelActivation::Normalised { inner: Box::new(inner), range: 1.0 / scales[ch] })
                    }
                })
                .collect()
        }
        a => {
            if mode == ActivationMode::Poly {
                return Err(QuantError::NotPolynomial {
                    node: node.to_string(),
                    kind: Op::Activation(a.clone()).kind(),
                });
            }
            Ok(vec![exact(a).expect("not a polynomial"); channels])
        }
    }
}

impl RealPlan {
    /// Fuses the model's linear operations into affine forms between its activations: the
    /// linear chains of `peregrine-gip`'s lowering (the maps the CKKS packer schedules), one
    /// form per row.
    ///
    /// Refuses, naming the node, what has no integer-linear form (max pooling: convert the model
    /// first) and an `exact` run of a polynomial that does not record its original activation.
    pub fn compile(model: &Model, mode: ActivationMode) -> QResult<Self> {
        let g = model.graph();
        let input_shape = g.input.shape.clone();
        let pre = &g.input.preprocess;
        let input_range = (0..input_shape[0])
            .map(|c| {
                let (m, s) = (*pre.mean.get(c).unwrap_or(&0.0) as f64, *pre.std.get(c).unwrap_or(&1.0) as f64);
                ((0.0 - m) / s, (1.0 - m) / s)
            })
            .collect();
        let chains = lower::chains(model).map_err(|e| QuantError::Unsupported {
            node: e.node,
            what: "max pooling has no integer-linear form; convert the model first (`peregrine convert` or `peregrine finetune` turn it into average pooling)",
        })?;
        // Where each source's values start in the list of every source value.
        let mut offsets = vec![input_shape.iter().product::<usize>() as u32];
        for (i, _) in &chains.activations {
            offsets.push(offsets.last().copied().unwrap_or(0) + model.shape(*i).iter().product::<usize>() as u32);
        }
        let offset = |s: &Source| match s {
            Source::Input => 0,
            Source::Activation(k) => offsets[*k],
        };
        let mut stages = Vec::with_capacity(chains.activations.len());
        for (i, chain) in &chains.activations {
            let node = &g.nodes[*i];
            let Op::Activation(a) = &node.op else { unreachable!("chains end at activations") };
            let out_shape = model.shape(*i);
            let channels = out_shape[0];
            let per = (out_shape.iter().product::<usize>() / channels) as u32;
            let forms = forms(chain, &offset);
            let acts = channel_activations(model, a, channels, &node.name, mode)?;
            stages.push(RealStage {
                node: node.name.clone(),
                channel: (0..forms.len() as u32).map(|e| e / per).collect(),
                forms,
                acts,
            });
        }
        Ok(RealPlan { input_shape, stages, output: forms(&chains.output, &offset), input_range })
    }

    /// Number of activation elements (= bootstraps of an encrypted run).
    pub fn activations(&self) -> usize {
        self.stages.iter().map(|s| s.forms.len()).sum()
    }

    /// Pre-activation values of every stage (float), for precision traces.
    pub fn trace(&self, input: &[f64]) -> Vec<Vec<f64>> {
        let mut values = input.to_vec();
        let mut out = Vec::new();
        for st in &self.stages {
            let pre: Vec<f64> = st.forms.iter().map(|f| f.eval(&values)).collect();
            values.extend(pre.iter().zip(&st.channel).map(|(a, &c)| st.acts[c as usize].eval(*a)));
            out.push(pre);
        }
        out
    }

    /// Float evaluation of the fused forms (the reference the quantisation approximates).
    pub fn eval(&self, input: &[f64]) -> Vec<f64> {
        let mut values = input.to_vec();
        for st in &self.stages {
            let outs: Vec<f64> =
                st.forms.iter().zip(&st.channel).map(|(f, &c)| st.acts[c as usize].eval(f.eval(&values))).collect();
            values.extend(outs);
        }
        self.output.iter().map(|f| f.eval(&values)).collect()
    }
}

/// An integer weighted sum: `Σ w·value[source] + bias`, then lookup table `lut` (stage sums).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IntSum {
    /// `(source index, integer weight)`.
    pub terms: Vec<(u32, i32)>,
    /// Integer bias (zero points folded in).
    pub bias: i64,
    /// Index of the lookup table (the output channel).
    pub lut: u32,
}

impl IntSum {
    /// The exact integer value of the sum over `values` (no wrap-around).
    pub fn value(&self, values: &[i64]) -> i64 {
        self.terms.iter().map(|&(src, w)| w as i64 * values[src as usize]).sum::<i64>() + self.bias
    }
}

/// One bootstrapped layer of a quantised plan.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct QuantStage {
    /// The activation node.
    pub node: String,
    /// One sum per activation element.
    pub sums: Vec<IntSum>,
    /// Per channel: lookup table over the signed inputs `−2^(p−1) … 2^(p−1)−1`.
    pub tables: Vec<Vec<i64>>,
    /// Per channel: accumulator step (real value of one unit).
    pub acc_step: Vec<f64>,
    /// Per channel: whether the noise bound (rather than the calibrated range) set the step.
    pub noise_limited: Vec<bool>,
    /// Per channel: encoding of the bootstrap outputs (what the table entries mean).
    #[serde(default)]
    pub outputs: Vec<Encoding>,
}

/// Calibrated `(step, zero point)` of a quantised source: `x ≈ (q − z)·step`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Encoding {
    /// Real value of one unit.
    pub step: f64,
    /// Integer representing 0.
    pub zero: i64,
}

impl Encoding {
    fn for_range(lo: f64, hi: f64, h: i64) -> Self {
        let (lo, hi) = (lo.min(0.0), hi.max(0.0));
        let span = (hi - lo).max(1e-12);
        let step = span / (2 * h) as f64;
        let zero = (-(hi + lo) / (2.0 * step)).round() as i64;
        Encoding { step, zero }
    }
    /// The integer for `x`, clamped into `[−h, h]`.
    pub fn quantise(&self, x: f64, h: i64) -> i64 {
        ((x / self.step).round() as i64 + self.zero).clamp(-h, h)
    }
}

/// Settings of quantisation.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuantConfig {
    /// Bits p of the plaintext space (the TFHE-rs set: 4 to 8): the accumulator range.
    pub bits: u32,
    /// Extra accumulator bits k below the bootstrap's resolution (see [`crate::lwe`]): sums
    /// hold `bits + extra_bits` bits and a bootstrap reads the top `bits`.
    #[serde(default)]
    pub extra_bits: u32,
    /// Bits of the values a bootstrap outputs (and of the encrypted inputs), at most `bits`.
    /// Fewer bits than the accumulator leave room for long sums: a weighted sum of n values
    /// of `act_bits` bits needs its integer weights to keep Σ w·q inside `bits` bits, so
    /// coarser values allow finer weights.
    pub act_bits: u32,
    /// Activation mode.
    pub mode: ActivationMode,
    /// Noise 2-norm bound of the set (weights' 2-norm per sum may not exceed it).
    pub noise_bound: f64,
    /// Fraction of the signed range the calibrated maximum of an accumulator may use.
    pub headroom: f64,
    /// Quantile of the calibration values that sets each range (1 = the maximum). Below 1 the
    /// few largest values of a channel (a polynomial far outside its normalised range on one
    /// calibration image, say) saturate instead of stretching every other value's step.
    #[serde(default = "max_quantile")]
    pub clip: f64,
}

fn max_quantile() -> f64 {
    1.0
}

/// The `q`-quantile of `values` (reordered; `q` = 1 gives the maximum, an empty set 0).
fn quantile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let i = (((values.len() - 1) as f64) * q).round() as usize;
    *values.select_nth_unstable_by(i.min(values.len() - 1), |a, b| a.total_cmp(b)).1
}

/// A calibrated, quantised plan: everything the server needs besides the keys, and the
/// encodings the client needs to encrypt inputs and read outputs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct QuantPlan {
    /// Settings.
    pub config: QuantConfig,
    /// Input encoding per input channel.
    pub input: Vec<Encoding>,
    /// Elements per input channel.
    pub input_per_channel: usize,
    /// Bootstrapped layers.
    pub stages: Vec<QuantStage>,
    /// Output sums (no lookup table; `lut` unused).
    pub output: Vec<IntSum>,
    /// Real value of one unit of the output accumulators.
    pub output_step: f64,
    /// Whether the noise bound set the output step.
    pub output_noise_limited: bool,
    /// Number of calibration images.
    pub calibration_images: usize,
}

/// The quantised network's values for one image in real numbers (see [`QuantPlan::real_values`]).
#[derive(Clone, Debug, PartialEq)]
pub struct RealValues {
    /// Per stage, the decoded bootstrap outputs.
    pub stages: Vec<Vec<f64>>,
    /// The decoded output accumulators.
    pub logits: Vec<f64>,
}

/// What the simulation (or an encrypted run) found beyond the outputs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SimReport {
    /// Decrypted output accumulators (signed integers).
    pub outputs: Vec<i64>,
    /// Sums whose exact value left the signed range and wrapped around.
    pub wrapped: usize,
    /// Bootstraps performed.
    pub bootstraps: usize,
}

fn half(bits: u32) -> i64 {
    1i64 << (bits - 1)
}

/// The signed value a decryption returns for an exact sum `v`: two's complement on the torus,
/// modulo 2^(p+1+k) units.
pub fn wrap(v: i64, bits: u32, extra_bits: u32) -> i64 {
    let h = 1i64 << (bits + extra_bits);
    (v + h).rem_euclid(2 * h) - h
}

/// A programmable bootstrap on the integers, as the encrypted run computes it (without noise):
/// box `round(v / 2^k)` (halves up) shifted by 2^(p−1), the table inside `[0, 2^p)` and its
/// negation past the padding bit (TFHE's negacyclic rotation).
pub fn apply_table(table: &[i64], v: i64, bits: u32, extra_bits: u32) -> i64 {
    let k = extra_bits;
    let p2 = 1i64 << bits;
    let rounded = if k == 0 { v } else { (v + (1i64 << (k - 1))).div_euclid(1i64 << k) };
    let m = (rounded + p2 / 2).rem_euclid(2 * p2);
    if m < p2 {
        table[m as usize]
    } else {
        -table[(m - p2) as usize]
    }
}

impl QuantPlan {
    /// Calibrates on `images` (preprocessed, `[N, C, H, W]` flattened per image) and quantises.
    pub fn calibrate(real: &RealPlan, images: &[Vec<f64>], config: QuantConfig) -> QResult<Self> {
        if images.is_empty() {
            return Err(QuantError::NoCalibrationImages);
        }
        if !(4..=8).contains(&config.bits) {
            return Err(QuantError::Bits(config.bits));
        }
        if !(2..=config.bits).contains(&config.act_bits) {
            return Err(QuantError::ActBits { bits: config.bits, act_bits: config.act_bits });
        }
        if config.extra_bits > 12 {
            return Err(QuantError::ExtraBits(config.extra_bits));
        }
        let extra = config.extra_bits;
        // Accumulator range (p + k bits) and table inputs (p bits).
        let h = half(config.bits + extra) - 1;
        let ht = half(config.bits);
        let ha = half(config.act_bits) - 1;
        if !(config.clip > 0.5 && config.clip <= 1.0) {
            return Err(QuantError::Clip(config.clip));
        }
        // Float pass: per stage and channel, every pre- and post-activation value; their ranges
        // are the `clip` quantiles (the extremes with clip = 1).
        let mut pre_abs: Vec<Vec<Vec<f64>>> = real.stages.iter().map(|s| vec![Vec::new(); s.acts.len()]).collect();
        let mut post: Vec<Vec<Vec<f64>>> = pre_abs.clone();
        let mut out_abs = Vec::new();
        for img in images {
            let mut values = img.clone();
            for (k, st) in real.stages.iter().enumerate() {
                for (f, &c) in st.forms.iter().zip(&st.channel) {
                    let a = f.eval(&values);
                    let y = st.acts[c as usize].eval(a);
                    if !(a.is_finite() && y.is_finite()) {
                        return Err(QuantError::NonFinite { node: st.node.clone(), pre: a, post: y });
                    }
                    pre_abs[k][c as usize].push(a.abs());
                    post[k][c as usize].push(y);
                    values.push(y);
                }
            }
            out_abs.extend(real.output.iter().map(|f| f.eval(&values).abs()));
        }
        let q = config.clip;
        let pre_max: Vec<Vec<f64>> =
            pre_abs.iter_mut().map(|st| st.iter_mut().map(|v| quantile(v, q)).collect()).collect();
        let post_lo: Vec<Vec<f64>> =
            post.iter_mut().map(|st| st.iter_mut().map(|v| quantile(v, 1.0 - q).min(0.0)).collect()).collect();
        let post_hi: Vec<Vec<f64>> =
            post.iter_mut().map(|st| st.iter_mut().map(|v| quantile(v, q).max(0.0)).collect()).collect();
        let out_max = quantile(&mut out_abs, q);
        // Source encodings: inputs per channel, then each stage's outputs per channel.
        let per_in = real.input_shape.iter().product::<usize>() / real.input_shape[0];
        let input: Vec<Encoding> = real.input_range.iter().map(|&(lo, hi)| Encoding::for_range(lo, hi, ha)).collect();
        let mut src_enc: Vec<Encoding> =
            (0..real.input_shape.iter().product::<usize>()).map(|i| input[i / per_in]).collect();
        let mut stages = Vec::with_capacity(real.stages.len());
        for (k, st) in real.stages.iter().enumerate() {
            let channels = st.acts.len();
            let out_enc: Vec<Encoding> =
                (0..channels).map(|c| Encoding::for_range(post_lo[k][c], post_hi[k][c], ha)).collect();
            let mut acc_step = vec![0.0; channels];
            let mut noise_limited = vec![false; channels];
            let mut sums = vec![IntSum { terms: Vec::new(), bias: 0, lut: 0 }; st.forms.len()];
            let mut by_channel: Vec<Vec<usize>> = vec![Vec::new(); channels];
            for (i, &c) in st.channel.iter().enumerate() {
                by_channel[c as usize].push(i);
            }
            for c in 0..channels {
                let members = &by_channel[c];
                let (t, limited) =
                    choose_step(members.iter().map(|&i| &st.forms[i]), &src_enc, pre_max[k][c], h, &config);
                acc_step[c] = t;
                noise_limited[c] = limited;
                for &i in members {
                    sums[i] = quantise_form(&st.forms[i], &src_enc, t, c as u32);
                }
            }
            let tables = (0..channels)
                .map(|c| {
                    (-ht..ht)
                        .map(|b| out_enc[c].quantise(st.acts[c].eval((b << extra) as f64 * acc_step[c]), ha))
                        .collect()
                })
                .collect();
            src_enc.extend(st.channel.iter().map(|&c| out_enc[c as usize]));
            stages.push(QuantStage { node: st.node.clone(), sums, tables, acc_step, noise_limited, outputs: out_enc });
        }
        let (output_step, output_noise_limited) = choose_step(real.output.iter(), &src_enc, out_max, h, &config);
        let output = real.output.iter().map(|f| quantise_form(f, &src_enc, output_step, 0)).collect();
        Ok(QuantPlan {
            config,
            input,
            input_per_channel: per_in,
            stages,
            output,
            output_step,
            output_noise_limited,
            calibration_images: images.len(),
        })
    }

    /// Quantises one preprocessed image for encryption.
    pub fn quantise_input(&self, x: &[f64]) -> Vec<i64> {
        let h = half(self.config.act_bits) - 1;
        x.iter().enumerate().map(|(i, v)| self.input[i / self.input_per_channel].quantise(*v, h)).collect()
    }

    /// Real logits from decrypted output accumulators.
    pub fn decode_output(&self, acc: &[i64]) -> Vec<f64> {
        acc.iter().map(|&a| a as f64 * self.output_step).collect()
    }

    /// Activation elements: every one is a bootstrap, except a sum whose weights all
    /// rounded to zero (a known constant).
    pub fn activations(&self) -> usize {
        self.stages.iter().map(|s| s.sums.len()).sum()
    }

    /// Bootstraps an encrypted run performs: one per activation element with an encrypted term.
    pub fn bootstraps(&self) -> usize {
        self.stages.iter().flat_map(|s| &s.sums).filter(|s| !s.terms.is_empty()).count()
    }

    /// The largest integer-weight 2-norm of any sum (must not exceed the noise bound).
    pub fn max_weight_norm(&self) -> f64 {
        self.stages.iter().flat_map(|s| s.sums.iter()).chain(&self.output).map(weight_norm).fold(0.0, f64::max)
    }

    /// The quantised cleartext simulation: exactly the integer arithmetic of the encrypted run.
    pub fn simulate(&self, input: &[i64]) -> SimReport {
        let (bits, k) = (self.config.bits, self.config.extra_bits);
        let o = half(bits + k);
        let mut values: Vec<i64> = input.to_vec();
        let mut wrapped = 0;
        let mut bootstraps = 0;
        for st in &self.stages {
            let outs: Vec<i64> = st
                .sums
                .iter()
                .map(|s| {
                    let v = s.value(&values);
                    if !(-o..o).contains(&v) {
                        wrapped += 1;
                    }
                    // A sum without encrypted terms is a known constant: no bootstrap.
                    bootstraps += usize::from(!s.terms.is_empty());
                    apply_table(&st.tables[s.lut as usize], v, bits, k)
                })
                .collect();
            values.extend(outs);
        }
        let outputs = self
            .output
            .iter()
            .map(|s| {
                let (v, wrapped_here) = self.read_output(s, &values);
                wrapped += usize::from(wrapped_here);
                v
            })
            .collect();
        SimReport { outputs, wrapped, bootstraps }
    }

    /// What the client decrypts from output sum `s` over `values`, and whether it wrapped: a sum
    /// without encrypted terms is a known constant (clamped into range); others wrap around.
    fn read_output(&self, s: &IntSum, values: &[i64]) -> (i64, bool) {
        let (bits, k) = (self.config.bits, self.config.extra_bits);
        let o = half(bits + k);
        let v = s.value(values);
        if s.terms.is_empty() {
            return (v.clamp(-o, o - 1), false);
        }
        (wrap(v, bits, k), !(-o..o).contains(&v))
    }

    /// Every stage's bootstrapped outputs as the simulation computes them (what an encrypted
    /// run's stages must decrypt to).
    pub fn stage_outputs(&self, input: &[i64]) -> Vec<Vec<i64>> {
        let (bits, k) = (self.config.bits, self.config.extra_bits);
        let mut values: Vec<i64> = input.to_vec();
        let mut out = Vec::with_capacity(self.stages.len());
        for st in &self.stages {
            let outs: Vec<i64> =
                st.sums.iter().map(|s| apply_table(&st.tables[s.lut as usize], s.value(&values), bits, k)).collect();
            values.extend(&outs);
            out.push(outs);
        }
        out
    }

    /// What the quantised network computes for one preprocessed image, in real numbers: every
    /// stage's bootstrap outputs (decoded with their encodings, in the node's C×H×W order) and
    /// the logits. Quantisation-aware training substitutes these for the float values.
    /// Refuses a plan without output encodings (saved by a version before they were recorded).
    pub fn real_values(&self, x: &[f64]) -> QResult<RealValues> {
        if let Some(st) = self.stages.iter().find(|st| st.outputs.len() != st.tables.len()) {
            return Err(QuantError::OldPlan(st.node.clone()));
        }
        let q = self.quantise_input(x);
        let stages = self.stage_outputs(&q);
        let decoded = stages
            .iter()
            .zip(&self.stages)
            .map(|(outs, st)| {
                outs.iter()
                    .zip(&st.sums)
                    .map(|(&v, s)| {
                        let e = st.outputs[s.lut as usize];
                        (v - e.zero) as f64 * e.step
                    })
                    .collect()
            })
            .collect();
        let mut values = q;
        values.extend(stages.into_iter().flatten());
        let acc: Vec<i64> = self.output.iter().map(|s| self.read_output(s, &values).0).collect();
        Ok(RealValues { stages: decoded, logits: self.decode_output(&acc) })
    }

    /// Pre-activation values of every stage as the simulation sees them (accumulator × step).
    pub fn trace(&self, input: &[i64]) -> Vec<Vec<f64>> {
        let (bits, k) = (self.config.bits, self.config.extra_bits);
        let mut values: Vec<i64> = input.to_vec();
        let mut out = Vec::new();
        for st in &self.stages {
            let acc: Vec<i64> = st.sums.iter().map(|s| s.value(&values)).collect();
            out.push(acc.iter().zip(&st.sums).map(|(a, s)| *a as f64 * st.acc_step[s.lut as usize]).collect());
            values.extend(acc.iter().zip(&st.sums).map(|(a, s)| apply_table(&st.tables[s.lut as usize], *a, bits, k)));
        }
        out
    }

    /// For every source value, the last stage that reads it (`stages.len()` = the output sums),
    /// so an encrypted run can free ciphertexts early.
    pub fn last_use(&self) -> Vec<usize> {
        let n_in = self.input.len() * self.input_per_channel;
        let total = n_in + self.activations();
        let mut last = vec![0usize; total];
        for (k, st) in self.stages.iter().enumerate() {
            for s in &st.sums {
                for &(src, _) in &s.terms {
                    last[src as usize] = k;
                }
            }
        }
        for s in &self.output {
            for &(src, _) in &s.terms {
                last[src as usize] = self.stages.len();
            }
        }
        last
    }

    /// A summary line per stage: node, elements, channels limited by noise, mean terms per sum.
    pub fn describe(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .stages
            .iter()
            .map(|s| {
                let terms = s.sums.iter().map(|x| x.terms.len()).sum::<usize>() as f64 / s.sums.len().max(1) as f64;
                let noisy = s.noise_limited.iter().filter(|b| **b).count();
                format!(
                    "{:<24} {:>7} bootstraps, {:>6.1} terms/sum, {noisy}/{} channels noise-limited",
                    s.node,
                    s.sums.len(),
                    terms,
                    s.noise_limited.len()
                )
            })
            .collect();
        lines.push(format!(
            "{:<24} {:>7} sums (decrypted), step {:.3e}{}",
            "output",
            self.output.len(),
            self.output_step,
            if self.output_noise_limited { ", noise-limited" } else { "" }
        ));
        lines
    }
}

fn weight_norm(s: &IntSum) -> f64 {
    s.terms.iter().map(|&(_, w)| (w as f64).powi(2)).sum::<f64>().sqrt()
}

/// The accumulator step of a group of forms: the larger of the range constraint (calibrated
/// maximum within `headroom` of the range) and the noise constraint (integer weights' 2-norm
/// within the bound, checked after rounding); returns whether noise decided.
fn choose_step<'a>(
    forms: impl Iterator<Item = &'a Form> + Clone,
    src: &[Encoding],
    max_abs: f64,
    h: i64,
    cfg: &QuantConfig,
) -> (f64, bool) {
    let range_t = (max_abs / (h as f64 * cfg.headroom)).max(1e-12);
    let real_norm = forms
        .clone()
        .map(|f| f.terms.iter().map(|&(s, c)| (c * src[s as usize].step).powi(2)).sum::<f64>().sqrt())
        .fold(0.0, f64::max);
    let noise_t = real_norm / (cfg.noise_bound * 0.98);
    let mut t = range_t.max(noise_t);
    let limited = noise_t > range_t;
    // Rounding can push a norm over the bound: widen until every rounded sum fits.
    for _ in 0..200 {
        let worst = forms.clone().map(|f| weight_norm(&quantise_form(f, src, t, 0))).fold(0.0, f64::max);
        if worst <= cfg.noise_bound {
            break;
        }
        t *= 1.01;
    }
    (t, limited)
}

fn quantise_form(f: &Form, src: &[Encoding], t: f64, lut: u32) -> IntSum {
    let mut terms = Vec::with_capacity(f.terms.len());
    let mut bias = (f.bias / t).round() as i64;
    for &(s, c) in &f.terms {
        let e = src[s as usize];
        let w = (c * e.step / t).round() as i64;
        if w != 0 {
            terms.push((s, w as i32));
            bias -= w * e.zero;
        }
    }
    IntSum { terms, bias, lut }
}
