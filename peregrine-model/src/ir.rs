//! The model intermediate representation: a graph of typed nodes with inferred, validated shapes.
//!
//! A [`Graph`] is pure structure (JSON-serialisable); a [`Model`] pairs it with its weights and
//! guarantees, once built, that every reference resolves, the graph is acyclic, every weight has
//! the shape its node needs and every node's output shape is known.

use std::collections::{BTreeMap, HashMap};

use ndarray::ArrayD;
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// Version of the graph JSON written by this build.
pub const FORMAT_VERSION: u32 = 1;

/// Reserved node name that refers to the model input.
pub const INPUT: &str = "input";

/// Shape of one sample (no batch axis): `[C, H, W]` for feature maps, `[F]` for vectors.
pub type Shape = Vec<usize>;

/// 2-D convolution (PyTorch semantics, weight laid out `(out, in/groups, kh, kw)`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Conv2d {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Kernel size `[kh, kw]`.
    pub kernel: [usize; 2],
    /// Stride `[sh, sw]`.
    #[serde(default = "ones")]
    pub stride: [usize; 2],
    /// Zero padding `[ph, pw]` before the first row and column (and after the last ones too,
    /// unless `padding_end` says otherwise).
    #[serde(default)]
    pub padding: [usize; 2],
    /// Zero padding `[ph, pw]` after the last row and column when it differs from `padding`
    /// (asymmetric padding, e.g. TensorFlow's SAME at stride 2); `None`: the same as `padding`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub padding_end: Option<[usize; 2]>,
    /// Dilation `[dh, dw]`.
    #[serde(default = "ones")]
    pub dilation: [usize; 2],
    /// Channel groups (`in_channels` for depthwise).
    #[serde(default = "one")]
    pub groups: usize,
    /// Name of the weight tensor.
    pub weight: String,
    /// Name of the optional bias tensor `(out)`.
    #[serde(default)]
    pub bias: Option<String>,
}

impl Conv2d {
    /// Zero padding after the last row and column (`padding_end`, else `padding`).
    pub fn padding_after(&self) -> [usize; 2] {
        self.padding_end.unwrap_or(self.padding)
    }

    /// A 1×1 convolution (no padding, no dilation, no bias) with the given stride and groups:
    /// channel selections, shifts and averages written as convolutions.
    pub fn pointwise(cin: usize, cout: usize, stride: usize, groups: usize, weight: String) -> Self {
        Conv2d {
            in_channels: cin,
            out_channels: cout,
            kernel: [1, 1],
            stride: [stride, stride],
            padding: [0, 0],
            padding_end: None,
            dilation: [1, 1],
            groups,
            weight,
            bias: None,
        }
    }

    /// A 3×3 convolution with padding 1, the given stride, no dilation and one group.
    pub fn square3(cin: usize, cout: usize, stride: usize, weight: &str, bias: Option<&str>) -> Self {
        Conv2d {
            in_channels: cin,
            out_channels: cout,
            kernel: [3, 3],
            stride: [stride, stride],
            padding: [1, 1],
            padding_end: None,
            dilation: [1, 1],
            groups: 1,
            weight: weight.into(),
            bias: bias.map(Into::into),
        }
    }
}

/// Transposed 2-D convolution (PyTorch semantics, weight laid out `(in, out/groups, kh, kw)`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConvTranspose2d {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Kernel size `[kh, kw]`.
    pub kernel: [usize; 2],
    /// Stride `[sh, sw]`.
    #[serde(default = "ones")]
    pub stride: [usize; 2],
    /// Implicit padding removed from each side of the output.
    #[serde(default)]
    pub padding: [usize; 2],
    /// Extra rows/columns added to one side of the output.
    #[serde(default)]
    pub output_padding: [usize; 2],
    /// Dilation `[dh, dw]`.
    #[serde(default = "ones")]
    pub dilation: [usize; 2],
    /// Channel groups.
    #[serde(default = "one")]
    pub groups: usize,
    /// Name of the weight tensor.
    pub weight: String,
    /// Name of the optional bias tensor `(out)`.
    #[serde(default)]
    pub bias: Option<String>,
}

/// Inference-time batch normalisation: `(x - mean) / sqrt(var + eps) * weight + bias`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchNorm {
    /// Channels.
    pub channels: usize,
    /// Small constant added to the variance.
    pub eps: f64,
    /// Name of the scale tensor `(C)`.
    pub weight: String,
    /// Name of the shift tensor `(C)`.
    pub bias: String,
    /// Name of the running-mean tensor `(C)`.
    pub running_mean: String,
    /// Name of the running-variance tensor `(C)`.
    pub running_var: String,
}

impl BatchNorm {
    /// A batch norm with eps 1e-5 (PyTorch's default) over the tensors `[weight, bias,
    /// running mean, running variance]`.
    pub fn named(channels: usize, [weight, bias, running_mean, running_var]: [String; 4]) -> Self {
        BatchNorm { channels, eps: 1e-5, weight, bias, running_mean, running_var }
    }
}

/// Element-wise activation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Activation {
    /// max(x, 0).
    Relu,
    /// x · sigmoid(x).
    Silu,
    /// x · Φ(x) (exact, erf form).
    Gelu,
    /// 1 / (1 + e^(−x)).
    Sigmoid,
    /// max(0, min(1, α·x + β)) (ONNX defaults α = 0.2, β = 0.5; PyTorch's is α = 1/6).
    HardSigmoid {
        /// Slope α.
        alpha: f32,
        /// Offset β.
        beta: f32,
    },
    /// x · min(max(x + 3, 0), 6) / 6.
    HardSwish,
    /// min(max(x, min), max) (ReLU6 is `Clip { min: 0, max: 6 }`).
    Clip {
        /// Lower bound.
        min: f32,
        /// Upper bound.
        max: f32,
    },
    /// x for x ≥ 0, α·x below.
    LeakyRelu {
        /// Slope α for negative inputs.
        alpha: f32,
    },
    /// Per-channel polynomial `y = Σ_k a[c][k] · (s[c] · x)^k`.
    Poly {
        /// Coefficient tensor `(C, degree + 1)`, ascending powers.
        coeffs: String,
        /// Optional per-channel input scale tensor `(C)`.
        #[serde(default)]
        input_scale: Option<String>,
        /// The activation `g` this polynomial replaced, recorded by conversion and fine-tuning:
        /// the polynomial approximates `r·g(x/r)` with `r = 1/input_scale` per channel, so a
        /// backend with exact activations (TFHE lookup tables) can evaluate that instead.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        approximates: Option<Approximated>,
    },
}

impl Activation {
    /// The function this activation computes at `x` (`None` for a polynomial, whose
    /// coefficients live in the weights).
    pub fn eval(&self, x: f64) -> Option<f64> {
        let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
        Some(match *self {
            Activation::Relu => x.max(0.0),
            Activation::Silu => x * sigmoid(x),
            Activation::Gelu => 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2)),
            Activation::Sigmoid => sigmoid(x),
            Activation::HardSigmoid { alpha, beta } => (alpha as f64 * x + beta as f64).clamp(0.0, 1.0),
            Activation::HardSwish => x * (x + 3.0).clamp(0.0, 6.0) / 6.0,
            Activation::Clip { min, max } => x.clamp(min as f64, max as f64),
            Activation::LeakyRelu { alpha } => {
                if x >= 0.0 {
                    x
                } else {
                    alpha as f64 * x
                }
            }
            Activation::Poly { .. } => return None,
        })
    }

    /// Checks the parameters: finite, `min < max` for a clip.
    pub fn validate(&self) -> Result<()> {
        let finite = |v: &[f32]| v.iter().all(|x| x.is_finite());
        let ok = match *self {
            Activation::HardSigmoid { alpha, beta } => finite(&[alpha, beta]),
            Activation::Clip { min, max } => finite(&[min, max]) && min < max,
            Activation::LeakyRelu { alpha } => finite(&[alpha]),
            _ => true,
        };
        if ok {
            Ok(())
        } else {
            Err(ModelError::InvalidGraph(format!("activation parameters {self:?} are not finite or not ordered")))
        }
    }
}

/// An exact activation that a polynomial approximates.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Approximated {
    /// max(x, 0).
    Relu,
    /// x · sigmoid(x).
    Silu,
    /// x · Φ(x).
    Gelu,
    /// 1 / (1 + e^(−x)).
    Sigmoid,
    /// max(0, min(1, α·x + β)).
    HardSigmoid {
        /// Slope α.
        alpha: f32,
        /// Offset β.
        beta: f32,
    },
    /// x · min(max(x + 3, 0), 6) / 6.
    HardSwish,
    /// min(max(x, min), max).
    Clip {
        /// Lower bound.
        min: f32,
        /// Upper bound.
        max: f32,
    },
    /// x for x ≥ 0, α·x below.
    LeakyRelu {
        /// Slope α.
        alpha: f32,
    },
}

impl Approximated {
    /// The exact activation.
    pub fn as_activation(&self) -> Activation {
        match *self {
            Approximated::Relu => Activation::Relu,
            Approximated::Silu => Activation::Silu,
            Approximated::Gelu => Activation::Gelu,
            Approximated::Sigmoid => Activation::Sigmoid,
            Approximated::HardSigmoid { alpha, beta } => Activation::HardSigmoid { alpha, beta },
            Approximated::HardSwish => Activation::HardSwish,
            Approximated::Clip { min, max } => Activation::Clip { min, max },
            Approximated::LeakyRelu { alpha } => Activation::LeakyRelu { alpha },
        }
    }
    /// What a polynomial replacing `op` approximates: the activation itself, or what an
    /// existing polynomial records (`None` for anything else).
    pub fn of(op: &Op) -> Option<Self> {
        match op {
            Op::Activation(a) => Some(match *a {
                Activation::Relu => Approximated::Relu,
                Activation::Silu => Approximated::Silu,
                Activation::Gelu => Approximated::Gelu,
                Activation::Sigmoid => Approximated::Sigmoid,
                Activation::HardSigmoid { alpha, beta } => Approximated::HardSigmoid { alpha, beta },
                Activation::HardSwish => Approximated::HardSwish,
                Activation::Clip { min, max } => Approximated::Clip { min, max },
                Activation::LeakyRelu { alpha } => Approximated::LeakyRelu { alpha },
                Activation::Poly { approximates, .. } => return approximates,
            }),
            _ => None,
        }
    }
}

/// Average or max pooling window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pool2d {
    /// Window `[kh, kw]`.
    pub kernel: [usize; 2],
    /// Stride `[sh, sw]`.
    pub stride: [usize; 2],
    /// Padding on each side `[ph, pw]` (zeros for average pooling, counted in the divisor).
    #[serde(default)]
    pub padding: [usize; 2],
}

/// Fully connected layer, weight `(out, in)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Linear {
    /// Input features.
    pub in_features: usize,
    /// Output features.
    pub out_features: usize,
    /// Name of the weight tensor.
    pub weight: String,
    /// Name of the optional bias tensor `(out)`.
    #[serde(default)]
    pub bias: Option<String>,
}

/// One operation of the graph.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// 2-D convolution.
    Conv2d(Conv2d),
    /// Transposed 2-D convolution.
    ConvTranspose2d(ConvTranspose2d),
    /// Batch normalisation.
    BatchNorm(BatchNorm),
    /// Element-wise activation.
    Activation(Activation),
    /// Average pooling (padding counted in the divisor).
    AvgPool(Pool2d),
    /// Max pooling.
    MaxPool(Pool2d),
    /// Mean over H and W: `[C, H, W]` → `[C, 1, 1]`.
    GlobalAvgPool,
    /// Fully connected layer on a `[F]` vector.
    Linear(Linear),
    /// Element-wise sum of two or more equally shaped inputs.
    Add,
    /// Element-wise product of two inputs; a `[C, 1, 1]` input is broadcast over the other's
    /// `[C, H, W]` (squeeze-and-excitation gates).
    Mul,
    /// Concatenation of two or more inputs along channels.
    Concat,
    /// Nearest-neighbour upsampling by an integer factor.
    Upsample {
        /// Factor applied to H and W.
        factor: usize,
    },
    /// ResNet "option A" shortcut: keep every `stride`-th pixel, then zero-pad channels.
    SubsampleChannelPad {
        /// Spatial subsampling step.
        stride: usize,
        /// Zero channels added before.
        pad_before: usize,
        /// Zero channels added after.
        pad_after: usize,
    },
    /// `[C, H, W]` → `[C·H·W]`.
    Flatten,
}

impl Op {
    /// Short lowercase name of the operation, for messages and reports.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Conv2d(_) => "conv2d",
            Op::ConvTranspose2d(_) => "conv_transpose2d",
            Op::BatchNorm(_) => "batch_norm",
            Op::Activation(Activation::Relu) => "relu",
            Op::Activation(Activation::Silu) => "silu",
            Op::Activation(Activation::Gelu) => "gelu",
            Op::Activation(Activation::Sigmoid) => "sigmoid",
            Op::Activation(Activation::HardSigmoid { .. }) => "hard_sigmoid",
            Op::Activation(Activation::HardSwish) => "hard_swish",
            Op::Activation(Activation::Clip { .. }) => "clip",
            Op::Activation(Activation::LeakyRelu { .. }) => "leaky_relu",
            Op::Activation(Activation::Poly { .. }) => "poly",
            Op::AvgPool(_) => "avg_pool",
            Op::MaxPool(_) => "max_pool",
            Op::GlobalAvgPool => "global_avg_pool",
            Op::Linear(_) => "linear",
            Op::Add => "add",
            Op::Mul => "mul",
            Op::Concat => "concat",
            Op::Upsample { .. } => "upsample",
            Op::SubsampleChannelPad { .. } => "subsample_channel_pad",
            Op::Flatten => "flatten",
        }
    }

    /// Names of the weight tensors this operation reads, with their roles.
    pub fn weight_refs(&self) -> Vec<(&'static str, &str)> {
        let mut refs = Vec::new();
        match self {
            Op::Conv2d(c) => {
                refs.push(("weight", c.weight.as_str()));
                if let Some(b) = &c.bias {
                    refs.push(("bias", b.as_str()));
                }
            }
            Op::ConvTranspose2d(c) => {
                refs.push(("weight", c.weight.as_str()));
                if let Some(b) = &c.bias {
                    refs.push(("bias", b.as_str()));
                }
            }
            Op::BatchNorm(b) => {
                refs.push(("weight", b.weight.as_str()));
                refs.push(("bias", b.bias.as_str()));
                refs.push(("running_mean", b.running_mean.as_str()));
                refs.push(("running_var", b.running_var.as_str()));
            }
            Op::Activation(Activation::Poly { coeffs, input_scale, .. }) => {
                refs.push(("coeffs", coeffs.as_str()));
                if let Some(s) = input_scale {
                    refs.push(("input_scale", s.as_str()));
                }
            }
            Op::Linear(l) => {
                refs.push(("weight", l.weight.as_str()));
                if let Some(b) = &l.bias {
                    refs.push(("bias", b.as_str()));
                }
            }
            _ => {}
        }
        refs
    }
}

fn ones() -> [usize; 2] {
    [1, 1]
}
fn one() -> usize {
    1
}

/// One node: a named operation applied to named inputs (other nodes or [`INPUT`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Unique name.
    pub name: String,
    /// Operation.
    #[serde(flatten)]
    pub op: Op,
    /// Names of the input nodes, in order.
    pub inputs: Vec<String>,
}

/// How raw images become the model's input tensor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Preprocess {
    /// Per-channel mean subtracted after scaling pixels to `[0, 1]`.
    pub mean: Vec<f32>,
    /// Per-channel standard deviation divided by.
    pub std: Vec<f32>,
    /// Whether images of another size are resized to the input size (else rejected).
    #[serde(default = "yes")]
    pub resize: bool,
}

fn yes() -> bool {
    true
}

/// The model input: shape and preprocessing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InputSpec {
    /// Shape `[C, H, W]`.
    pub shape: Shape,
    /// Image preprocessing.
    pub preprocess: Preprocess,
}

/// A model graph: input, nodes, the output node and class names.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Graph {
    /// Graph JSON format version ([`FORMAT_VERSION`]).
    pub version: u32,
    /// Architecture name, informational (e.g. `resnet20`).
    #[serde(default)]
    pub name: String,
    /// Input description.
    pub input: InputSpec,
    /// Nodes (any order; [`Model::new`] sorts them topologically).
    pub nodes: Vec<Node>,
    /// Name of the node whose value is the model output.
    pub output: String,
    /// Class names, index = output position.
    #[serde(default)]
    pub classes: Vec<String>,
    /// An elementwise activation the *client* applies to the decrypted output: the network's
    /// last activation (e.g. a segmenter's sigmoid), moved out of the encrypted program by
    /// [`crate::transform::client_output_activation`] because after decryption it is exact and
    /// free, while a low-degree polynomial on the output's wide range loses the threshold a
    /// mask or a score is read at. `None`: the output is used as computed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_activation: Option<Activation>,
}

/// Weight tensors by name (f32, row-major).
pub type Weights = BTreeMap<String, ArrayD<f32>>;

/// A validated model: graph in topological order, weights, and every node's output shape.
#[derive(Clone, Debug)]
pub struct Model {
    graph: Graph,
    weights: Weights,
    shapes: Vec<Shape>,
}

impl Model {
    /// Validates `graph` against `weights` and builds the model.
    ///
    /// Fails with a message naming the problem on: unknown version, duplicate or reserved node
    /// name, dangling input reference, cycle, unknown output, missing/extra/mis-shaped weight,
    /// non-finite weight, or any shape inconsistency.
    pub fn new(mut graph: Graph, weights: Weights) -> Result<Self> {
        if graph.version != FORMAT_VERSION {
            return Err(ModelError::UnsupportedVersion { found: graph.version, supported: FORMAT_VERSION });
        }
        validate_input(&graph.input)?;
        graph.nodes = topological_order(std::mem::take(&mut graph.nodes))?;
        let index: HashMap<&str, usize> = graph.nodes.iter().enumerate().map(|(i, n)| (n.name.as_str(), i)).collect();
        if !index.contains_key(graph.output.as_str()) {
            return Err(ModelError::InvalidGraph(format!("output node '{}' does not exist", graph.output)));
        }
        let mut used = std::collections::BTreeSet::new();
        let mut shapes: Vec<Shape> = Vec::with_capacity(graph.nodes.len());
        for node in &graph.nodes {
            let ins: Vec<&Shape> = node
                .inputs
                .iter()
                .map(|n| if n == INPUT { &graph.input.shape } else { &shapes[index[n.as_str()]] })
                .collect();
            for (role, name) in node.op.weight_refs() {
                if !weights.contains_key(name) {
                    return Err(ModelError::Weight(format!(
                        "node '{}' ({}) needs tensor '{}' as its {}, which the file does not contain",
                        node.name,
                        node.op.kind(),
                        name,
                        role
                    )));
                }
                used.insert(name.to_string());
            }
            let shape = infer_shape(node, &ins, &weights).map_err(|e| prefix_error(e, &node.name, node.op.kind()))?;
            shapes.push(shape);
        }
        if let Some(extra) = weights.keys().find(|k| !used.contains(*k)) {
            return Err(ModelError::Weight(format!("tensor '{extra}' is not used by any node")));
        }
        for (name, w) in &weights {
            if w.iter().any(|v| !v.is_finite()) {
                return Err(ModelError::Weight(format!("tensor '{name}' contains NaN or infinity")));
            }
        }
        if let Some(a) = &graph.client_activation {
            a.validate()?;
            if a.eval(0.0).is_none() {
                return Err(ModelError::InvalidGraph(
                    "the client-side output activation must be an exact activation, not a polynomial".into(),
                ));
            }
        }
        if !graph.classes.is_empty() {
            let out = &shapes[index[graph.output.as_str()]];
            let n: usize = out.iter().product();
            if n != graph.classes.len() {
                return Err(ModelError::InvalidGraph(format!(
                    "{} class names for an output of {} values",
                    graph.classes.len(),
                    n
                )));
            }
        }
        Ok(Model { graph, weights, shapes })
    }

    /// The graph, nodes in topological order.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }
    /// All weight tensors.
    pub fn weights(&self) -> &Weights {
        &self.weights
    }
    /// A weight tensor by name (present for every name the graph references).
    pub fn weight(&self, name: &str) -> &ArrayD<f32> {
        &self.weights[name]
    }

    /// Whether `conv` only selects channels (a 1×1, stride-1, bias-free convolution whose
    /// weight rows each hold a single 1 and zeros): the form Split and channel Slice import
    /// to. Such a node is structure, not a learned layer — fine-tuning keeps it exact, which
    /// also keeps its linear map one coefficient per output.
    pub fn is_channel_selection(&self, conv: &Conv2d) -> bool {
        let Some(w) = self.weights.get(&conv.weight) else { return false };
        conv.kernel == [1, 1]
            && conv.stride == [1, 1]
            && conv.padding == [0, 0]
            && conv.padding_after() == [0, 0]
            && conv.groups == 1
            && conv.bias.is_none()
            && w.len() == conv.out_channels * conv.in_channels
            && w.iter().all(|v| *v == 0.0 || *v == 1.0)
            && w.as_slice()
                .is_some_and(|v| v.chunks(conv.in_channels).all(|row| row.iter().filter(|x| **x == 1.0).count() == 1))
    }
    /// Output shape of node `i` (topological index).
    pub fn shape(&self, i: usize) -> &Shape {
        &self.shapes[i]
    }
    /// Output shapes of all nodes, by topological index.
    pub fn shapes(&self) -> &[Shape] {
        &self.shapes
    }
    /// Shape of the model output.
    pub fn output_shape(&self) -> &Shape {
        &self.shapes[self.node_index(&self.graph.output).expect("validated output")]
    }
    /// Topological index of a node by name.
    pub fn node_index(&self, name: &str) -> Option<usize> {
        self.graph.nodes.iter().position(|n| n.name == name)
    }
    /// Number of scalar parameters.
    pub fn parameter_count(&self) -> usize {
        self.weights.values().map(|w| w.len()).sum()
    }
    /// The activation the client applies to the decrypted output, if any
    /// ([`Graph::client_activation`]).
    pub fn client_activation(&self) -> Option<&Activation> {
        self.graph.client_activation.as_ref()
    }
    /// `output` (the program's output, flattened) as the model defines it: with the
    /// client-side activation applied, when there is one.
    pub fn finish_output(&self, output: &[f32]) -> Vec<f32> {
        match &self.graph.client_activation {
            Some(a) => output.iter().map(|&x| a.eval(x as f64).expect("validated: exact") as f32).collect(),
            None => output.to_vec(),
        }
    }
    /// Takes the model apart into graph and weights.
    pub fn into_parts(self) -> (Graph, Weights) {
        (self.graph, self.weights)
    }
}

fn prefix_error(e: ModelError, node: &str, kind: &str) -> ModelError {
    match e {
        ModelError::Shape(m) => ModelError::Shape(format!("node '{node}' ({kind}): {m}")),
        ModelError::Weight(m) => ModelError::Weight(format!("node '{node}' ({kind}): {m}")),
        ModelError::InvalidGraph(m) => ModelError::InvalidGraph(format!("node '{node}' ({kind}): {m}")),
        other => other,
    }
}

fn validate_input(input: &InputSpec) -> Result<()> {
    if input.shape.len() != 3 || input.shape.contains(&0) {
        return Err(ModelError::InvalidGraph(format!(
            "input shape must be [C, H, W] with non-zero sizes, got {:?}",
            input.shape
        )));
    }
    let c = input.shape[0];
    let p = &input.preprocess;
    if p.mean.len() != c || p.std.len() != c {
        return Err(ModelError::InvalidGraph(format!(
            "preprocessing has {} means and {} stds for {} input channels",
            p.mean.len(),
            p.std.len(),
            c
        )));
    }
    if p.std.iter().any(|&s| !(s > 0.0) || !s.is_finite()) || p.mean.iter().any(|m| !m.is_finite()) {
        return Err(ModelError::InvalidGraph("preprocessing std must be positive and finite".into()));
    }
    Ok(())
}

/// Sorts nodes so every node follows its inputs; rejects duplicates, dangling references, cycles.
fn topological_order(nodes: Vec<Node>) -> Result<Vec<Node>> {
    let mut index = HashMap::new();
    for (i, n) in nodes.iter().enumerate() {
        if n.name == INPUT {
            return Err(ModelError::InvalidGraph(format!("node name '{INPUT}' is reserved for the model input")));
        }
        if n.name.is_empty() {
            return Err(ModelError::InvalidGraph(format!("node #{i} has an empty name")));
        }
        if index.insert(n.name.clone(), i).is_some() {
            return Err(ModelError::InvalidGraph(format!("two nodes are named '{}'", n.name)));
        }
    }
    let mut indegree = vec![0usize; nodes.len()];
    let mut users: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    for (i, n) in nodes.iter().enumerate() {
        if n.inputs.is_empty() {
            return Err(ModelError::InvalidGraph(format!("node '{}' has no inputs", n.name)));
        }
        for inp in &n.inputs {
            if inp == INPUT {
                continue;
            }
            match index.get(inp) {
                Some(&j) => {
                    indegree[i] += 1;
                    users[j].push(i);
                }
                None => {
                    return Err(ModelError::InvalidGraph(format!(
                        "node '{}' refers to input '{}', which is not a node (dangling reference)",
                        n.name, inp
                    )))
                }
            }
        }
    }
    // Kahn's algorithm, stable with respect to the original order.
    let mut ready: std::collections::BTreeSet<usize> = (0..nodes.len()).filter(|&i| indegree[i] == 0).collect();
    let mut order = Vec::with_capacity(nodes.len());
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &u in &users[i] {
            indegree[u] -= 1;
            if indegree[u] == 0 {
                ready.insert(u);
            }
        }
    }
    if order.len() != nodes.len() {
        let stuck: Vec<&str> = (0..nodes.len()).filter(|&i| indegree[i] > 0).map(|i| nodes[i].name.as_str()).collect();
        return Err(ModelError::InvalidGraph(format!("the graph has a cycle through nodes {stuck:?}")));
    }
    let mut slots: Vec<Option<Node>> = nodes.into_iter().map(Some).collect();
    Ok(order.into_iter().map(|i| slots[i].take().expect("each index once")).collect())
}

fn expect_weight(weights: &Weights, name: &str, role: &str, shape: &[usize]) -> Result<()> {
    let w = &weights[name];
    if w.shape() != shape {
        return Err(ModelError::Weight(format!(
            "{role} tensor '{name}' has shape {:?}, expected {:?}",
            w.shape(),
            shape
        )));
    }
    Ok(())
}

fn arity(node: &Node, n: usize) -> Result<()> {
    if node.inputs.len() != n {
        return Err(ModelError::InvalidGraph(format!("takes {n} input(s), got {}", node.inputs.len())));
    }
    Ok(())
}

fn chw(s: &Shape) -> Result<(usize, usize, usize)> {
    match s.as_slice() {
        [c, h, w] => Ok((*c, *h, *w)),
        _ => Err(ModelError::Shape(format!("needs a [C, H, W] feature map, got {s:?}"))),
    }
}

fn positive(name: &str, v: &[usize]) -> Result<()> {
    if v.contains(&0) {
        return Err(ModelError::InvalidGraph(format!("{name} must be positive, got {v:?}")));
    }
    Ok(())
}

/// Output size of a sliding window along one axis, or an error if the window does not fit.
pub fn window_out(input: usize, kernel: usize, stride: usize, pad: usize, dilation: usize) -> Result<usize> {
    window_out_padded(input, kernel, stride, [pad, pad], dilation)
}

/// [`window_out`] with padding `[before, after]` that may differ.
pub fn window_out_padded(
    input: usize,
    kernel: usize,
    stride: usize,
    pad: [usize; 2],
    dilation: usize,
) -> Result<usize> {
    let span = dilation * (kernel - 1) + 1;
    let padded = input + pad[0] + pad[1];
    if padded < span {
        return Err(ModelError::Shape(format!(
            "window of extent {span} does not fit input of size {input} with padding {pad:?}"
        )));
    }
    Ok((padded - span) / stride + 1)
}

pub(crate) fn infer_shape(node: &Node, ins: &[&Shape], weights: &Weights) -> Result<Shape> {
    match &node.op {
        Op::Conv2d(c) => {
            arity(node, 1)?;
            let (ci, h, w) = chw(ins[0])?;
            positive("kernel", &c.kernel)?;
            positive("stride", &c.stride)?;
            positive("dilation", &c.dilation)?;
            if c.groups == 0 || c.in_channels % c.groups != 0 || c.out_channels % c.groups != 0 {
                return Err(ModelError::InvalidGraph(format!(
                    "groups {} must divide in_channels {} and out_channels {}",
                    c.groups, c.in_channels, c.out_channels
                )));
            }
            if ci != c.in_channels {
                return Err(ModelError::Shape(format!("expects {} input channels, got {ci}", c.in_channels)));
            }
            expect_weight(
                weights,
                &c.weight,
                "weight",
                &[c.out_channels, c.in_channels / c.groups, c.kernel[0], c.kernel[1]],
            )?;
            if let Some(b) = &c.bias {
                expect_weight(weights, b, "bias", &[c.out_channels])?;
            }
            let end = c.padding_after();
            let ho = window_out_padded(h, c.kernel[0], c.stride[0], [c.padding[0], end[0]], c.dilation[0])?;
            let wo = window_out_padded(w, c.kernel[1], c.stride[1], [c.padding[1], end[1]], c.dilation[1])?;
            Ok(vec![c.out_channels, ho, wo])
        }
        Op::ConvTranspose2d(c) => {
            arity(node, 1)?;
            let (ci, h, w) = chw(ins[0])?;
            positive("kernel", &c.kernel)?;
            positive("stride", &c.stride)?;
            positive("dilation", &c.dilation)?;
            if c.groups == 0 || c.in_channels % c.groups != 0 || c.out_channels % c.groups != 0 {
                return Err(ModelError::InvalidGraph(format!(
                    "groups {} must divide in_channels {} and out_channels {}",
                    c.groups, c.in_channels, c.out_channels
                )));
            }
            if ci != c.in_channels {
                return Err(ModelError::Shape(format!("expects {} input channels, got {ci}", c.in_channels)));
            }
            for a in 0..2 {
                if c.output_padding[a] >= c.stride[a].max(c.dilation[a]) {
                    return Err(ModelError::InvalidGraph(format!(
                        "output_padding {:?} must be smaller than stride or dilation",
                        c.output_padding
                    )));
                }
            }
            expect_weight(
                weights,
                &c.weight,
                "weight",
                &[c.in_channels, c.out_channels / c.groups, c.kernel[0], c.kernel[1]],
            )?;
            if let Some(b) = &c.bias {
                expect_weight(weights, b, "bias", &[c.out_channels])?;
            }
            let out = |i: usize, a: usize| -> Result<usize> {
                let full = (i - 1) * c.stride[a] + c.dilation[a] * (c.kernel[a] - 1) + c.output_padding[a] + 1;
                full.checked_sub(2 * c.padding[a])
                    .filter(|&v| v > 0)
                    .ok_or_else(|| ModelError::Shape(format!("padding {:?} leaves an empty output", c.padding)))
            };
            Ok(vec![c.out_channels, out(h, 0)?, out(w, 1)?])
        }
        Op::BatchNorm(b) => {
            arity(node, 1)?;
            let (c, _, _) = chw(ins[0])?;
            if c != b.channels {
                return Err(ModelError::Shape(format!("expects {} channels, got {c}", b.channels)));
            }
            if !(b.eps > 0.0) {
                return Err(ModelError::InvalidGraph(format!("eps must be positive, got {}", b.eps)));
            }
            for (role, t) in [
                ("weight", &b.weight),
                ("bias", &b.bias),
                ("running_mean", &b.running_mean),
                ("running_var", &b.running_var),
            ] {
                expect_weight(weights, t, role, &[c])?;
            }
            if weights[&b.running_var].iter().any(|&v| v < 0.0) {
                return Err(ModelError::Weight(format!("running_var tensor '{}' has negative entries", b.running_var)));
            }
            Ok(ins[0].clone())
        }
        Op::Activation(a) => {
            arity(node, 1)?;
            a.validate()?;
            if let Activation::Poly { coeffs, input_scale, .. } = a {
                let c = ins[0][0];
                let t = &weights[coeffs];
                if t.ndim() != 2 || t.shape()[0] != c || t.shape()[1] < 2 {
                    return Err(ModelError::Weight(format!(
                        "coeffs tensor '{coeffs}' has shape {:?}, expected [{c}, degree + 1] with degree >= 1",
                        t.shape()
                    )));
                }
                if let Some(s) = input_scale {
                    expect_weight(weights, s, "input_scale", &[c])?;
                }
            }
            Ok(ins[0].clone())
        }
        Op::AvgPool(p) | Op::MaxPool(p) => {
            arity(node, 1)?;
            let (c, h, w) = chw(ins[0])?;
            positive("kernel", &p.kernel)?;
            positive("stride", &p.stride)?;
            if p.padding[0] * 2 > p.kernel[0] || p.padding[1] * 2 > p.kernel[1] {
                return Err(ModelError::InvalidGraph(format!(
                    "padding {:?} must be at most half the kernel {:?}",
                    p.padding, p.kernel
                )));
            }
            let ho = window_out(h, p.kernel[0], p.stride[0], p.padding[0], 1)?;
            let wo = window_out(w, p.kernel[1], p.stride[1], p.padding[1], 1)?;
            Ok(vec![c, ho, wo])
        }
        Op::GlobalAvgPool => {
            arity(node, 1)?;
            let (c, _, _) = chw(ins[0])?;
            Ok(vec![c, 1, 1])
        }
        Op::Linear(l) => {
            arity(node, 1)?;
            if ins[0].len() != 1 || ins[0][0] != l.in_features {
                return Err(ModelError::Shape(format!(
                    "expects a vector of {} features, got {:?} (add a flatten node before it)",
                    l.in_features, ins[0]
                )));
            }
            expect_weight(weights, &l.weight, "weight", &[l.out_features, l.in_features])?;
            if let Some(b) = &l.bias {
                expect_weight(weights, b, "bias", &[l.out_features])?;
            }
            Ok(vec![l.out_features])
        }
        Op::Add => {
            if node.inputs.len() < 2 {
                return Err(ModelError::InvalidGraph("add takes at least 2 inputs".into()));
            }
            if let Some(s) = ins.iter().find(|s| **s != ins[0]) {
                return Err(ModelError::Shape(format!("inputs differ in shape: {:?} vs {:?}", ins[0], s)));
            }
            Ok(ins[0].clone())
        }
        Op::Mul => {
            arity(node, 2)?;
            let (a, b) = (ins[0], ins[1]);
            let gate = |g: &Shape, x: &Shape| g.len() == 3 && x.len() == 3 && g[0] == x[0] && g[1] == 1 && g[2] == 1;
            if a == b || gate(b, a) {
                Ok(a.clone())
            } else if gate(a, b) {
                Ok(b.clone())
            } else {
                Err(ModelError::Shape(format!(
                    "inputs {a:?} and {b:?} neither agree nor broadcast (a [C, 1, 1] gate over a [C, H, W] map)"
                )))
            }
        }
        Op::Concat => {
            if node.inputs.len() < 2 {
                return Err(ModelError::InvalidGraph("concat takes at least 2 inputs".into()));
            }
            let (_, h, w) = chw(ins[0])?;
            let mut c = 0;
            for s in ins {
                let (ci, hi, wi) = chw(s)?;
                if (hi, wi) != (h, w) {
                    return Err(ModelError::Shape(format!("inputs differ spatially: {:?} vs {:?}", ins[0], s)));
                }
                c += ci;
            }
            Ok(vec![c, h, w])
        }
        Op::Upsample { factor } => {
            arity(node, 1)?;
            let (c, h, w) = chw(ins[0])?;
            positive("factor", &[*factor])?;
            Ok(vec![c, h * factor, w * factor])
        }
        Op::SubsampleChannelPad { stride, pad_before, pad_after } => {
            arity(node, 1)?;
            let (c, h, w) = chw(ins[0])?;
            positive("stride", &[*stride])?;
            Ok(vec![c + pad_before + pad_after, h.div_ceil(*stride), w.div_ceil(*stride)])
        }
        Op::Flatten => {
            arity(node, 1)?;
            Ok(vec![ins[0].iter().product()])
        }
    }
}
