//! ONNX import: an ONNX model (float weights, one image input) becomes a Peregrine [`Model`].
//!
//! The protobuf is decoded by the `onnx-protobuf` crate (generated from ONNX's own schema);
//! this module maps its operators onto the IR:
//!
//! | ONNX | IR |
//! |---|---|
//! | Conv (stride, padding — asymmetric and SAME too —, dilation, groups), ConvTranspose (symmetric padding) | `conv2d`, `conv_transpose2d` |
//! | BatchNormalization | `batch_norm` |
//! | Relu, LeakyRelu, Sigmoid, HardSigmoid, HardSwish, Clip (finite bounds; `[0, ∞)` is ReLU) | `relu`, `leaky_relu`, `sigmoid`, `hard_sigmoid`, `hard_swish`, `clip` |
//! | `x · Sigmoid(x)`; `x · clip(x + 3, 0, 6) / 6` and `x · HardSigmoid(x)` (α = 1/6, β = 1/2) | `silu`; `hard_swish` |
//! | MaxPool, AveragePool (padding counted in the divisor), GlobalAveragePool | `max_pool`, `avg_pool`, `global_avg_pool` |
//! | Gemm, MatMul by a constant (a following Add of a constant becomes the bias) | `linear` |
//! | Add of tensors; Mul of tensors (equal shapes, or a `[C, 1, 1]` gate broadcast) | `add`; `mul` |
//! | Add, Sub, Mul, Div by a scalar or per-channel constant | an affine `batch_norm` (maps) or a diagonal `linear` (vectors) |
//! | Concat on channels, Resize / Upsample (nearest, integer factor) | `concat`, `upsample` |
//! | Split and Slice on channels | 1×1 `conv2d` selecting the channels (fused by the packed compiler) |
//! | Pad with zeros on H and W (any amount before and after) | depthwise 1×1 identity `conv2d` with that padding |
//! | Flatten, Reshape to `[N, -1]` | `flatten` |
//! | Identity, Dropout, Constant; Shape, Gather, Slice, Unsqueeze, Squeeze, Concat, Cast, Add/Sub/Mul/Div on constants | folded |
//!
//! [`OnnxOptions::outputs`] imports chosen values instead of the graph's output (the scores
//! before a Softmax, a detector's raw heads); only the nodes they depend on are read.
//!
//! Anything else is an error naming the node and its operator, and nothing is written.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use ndarray::{ArrayD, IxDyn};
use onnx_protobuf::{Message, ModelProto, NodeProto, TensorProto};

use crate::error::{ModelError, Result};
use crate::ir::*;

/// The ONNX protobuf types (from the `onnx-protobuf` crate), for building or inspecting files.
pub use onnx_protobuf as proto;

/// Choices the ONNX file does not make.
#[derive(Clone, Debug, Default)]
pub struct OnnxOptions {
    /// Input shape `[C, H, W]` for models whose input has dynamic dimensions (and to check
    /// fixed ones).
    pub input_shape: Option<Vec<usize>>,
    /// Preprocessing recorded in the model (default: mean 0, std 1 per channel).
    pub preprocess: Option<Preprocess>,
    /// Class names for the outputs (default: none).
    pub classes: Vec<String>,
    /// The ONNX values to import as the model output, instead of the graph's output: the
    /// logits before a final Softmax, or the raw heads of a detector whose decoding (boxes,
    /// non-maximum suppression) runs on the client after decryption. Nodes after them are
    /// ignored. Several maps are brought to the largest one's size by nearest upsampling (an
    /// integer factor) and concatenated on channels, in the order given: value k is then read
    /// at every f_k-th pixel of its channels.
    pub outputs: Vec<String>,
}

/// Reads an ONNX file and imports it (see the [module](self) for the operators).
pub fn import_onnx(path: impl AsRef<Path>, options: &OnnxOptions) -> Result<Model> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
    import_onnx_bytes(&bytes, options).map_err(|e| if let ModelError::Io { .. } = e { e } else { in_file(e, path) })
}

fn in_file(e: ModelError, path: &Path) -> ModelError {
    prefixed(e, &path.display().to_string())
}

/// `e` with its message prefixed by `what` (the file, the node).
fn prefixed(e: ModelError, what: &str) -> ModelError {
    match e {
        ModelError::Unsupported(m) => ModelError::Unsupported(format!("{what}: {m}")),
        ModelError::InvalidGraph(m) => ModelError::InvalidGraph(format!("{what}: {m}")),
        ModelError::MalformedModel(m) => ModelError::MalformedModel(format!("{what}: {m}")),
        ModelError::Shape(m) => ModelError::Shape(format!("{what}: {m}")),
        ModelError::Weight(m) => ModelError::Weight(format!("{what}: {m}")),
        other => other,
    }
}

/// Imports an ONNX model from its bytes.
pub fn import_onnx_bytes(bytes: &[u8], options: &OnnxOptions) -> Result<Model> {
    let proto = ModelProto::parse_from_bytes(bytes)
        .map_err(|e| ModelError::MalformedModel(format!("not an ONNX model: {e}")))?;
    for opset in &proto.opset_import {
        if !(opset.domain.is_empty() || opset.domain == "ai.onnx") {
            return Err(ModelError::Unsupported(format!(
                "operator set '{}' (only the default ONNX domain)",
                opset.domain
            )));
        }
    }
    let Some(graph) = proto.graph.as_ref() else {
        return Err(ModelError::MalformedModel("the ONNX model has no graph".into()));
    };
    let mut b = Builder::default();
    for t in &graph.initializer {
        b.values.insert(t.name.clone(), Value::Const(tensor(t, &t.name)?));
    }
    // The one non-constant input is the image.
    let inputs: Vec<_> = graph.input.iter().filter(|i| !b.values.contains_key(&i.name)).collect();
    let [input] = inputs.as_slice() else {
        return Err(ModelError::Unsupported(format!(
            "{} graph inputs besides the weights (one image input is supported)",
            inputs.len()
        )));
    };
    let shape = input_shape(input, options.input_shape.as_deref())?;
    b.shapes.insert(INPUT.to_string(), shape.clone());
    b.values.insert(input.name.clone(), Value::Tensor(INPUT.to_string()));
    b.names.insert(INPUT.to_string());
    b.consumers = count_consumers(&graph.node, &graph.output.iter().map(|o| o.name.clone()).collect::<Vec<_>>());
    let wanted: Vec<String> = if options.outputs.is_empty() {
        let Some(out) = graph.output.first() else {
            return Err(ModelError::MalformedModel("the ONNX graph has no output".into()));
        };
        if graph.output.len() > 1 {
            return Err(ModelError::Unsupported(format!(
                "{} graph outputs (one is supported; choose the values with --graph-output)",
                graph.output.len()
            )));
        }
        vec![out.name.clone()]
    } else {
        options.outputs.clone()
    };
    let chosen = !options.outputs.is_empty();
    for name in wanted.iter().filter(|_| chosen) {
        // A chosen value is read by the model output too: it must stay materialised.
        *b.consumers.entry(name.clone()).or_insert(0) += 1;
    }
    let needed = needed_nodes(&graph.node, &wanted);
    for (i, node) in graph.node.iter().enumerate() {
        if chosen && !needed.contains(&i) {
            continue; // not an ancestor of the chosen outputs (e.g. a detector's decoding)
        }
        b.node(node).map_err(|e| prefix(e, node))?;
    }
    let mut outs = Vec::new();
    for name in &wanted {
        if matches!(b.values.get(name), Some(Value::Sigmoid(_))) {
            b.materialize_sigmoid(name)?;
        }
        match b.values.get(name) {
            Some(Value::Tensor(n)) if n != INPUT => outs.push(n.clone()),
            None if chosen => {
                return Err(ModelError::InvalidGraph(format!(
                    "the graph computes no value named '{name}' (--graph-output)"
                )))
            }
            _ => return Err(ModelError::InvalidGraph(format!("the output '{name}' is not computed from the input"))),
        }
    }
    let output = if outs.len() == 1 { outs.remove(0) } else { b.merge_outputs(&outs)? };
    let (nodes, weights) = fuse_hard_swish(b.nodes, b.weights);
    let channels = shape[0];
    let preprocess = options.preprocess.clone().unwrap_or(Preprocess {
        mean: vec![0.0; channels],
        std: vec![1.0; channels],
        resize: true,
    });
    let name = if graph.name.is_empty() { "onnx".to_string() } else { graph.name.clone() };
    let graph = Graph {
        version: FORMAT_VERSION,
        name,
        input: InputSpec { shape, preprocess },
        nodes,
        output,
        classes: options.classes.clone(),
        client_activation: None,
    };
    Model::new(graph, weights)
}

/// The padding of each axis when it is the same before and after (transposed convolutions and
/// pooling take no other).
fn symmetric(pads: [[usize; 2]; 2]) -> Result<[usize; 2]> {
    match pads {
        [[t, b], [l, r]] if t == b && l == r => Ok([t, l]),
        _ => Err(unsupported(format!(
            "padding {:?} before and {:?} after (asymmetric padding is supported for Conv and Pad only)",
            [pads[0][0], pads[1][0]],
            [pads[0][1], pads[1][1]]
        ))),
    }
}

/// `(padding, padding_end)` of a convolution from the padding before and after each axis.
fn padding_pair(before: [usize; 2], after: [usize; 2]) -> ([usize; 2], Option<[usize; 2]>) {
    (before, (after != before).then_some(after))
}

fn prefix(e: ModelError, node: &NodeProto) -> ModelError {
    prefixed(e, &format!("node '{}' ({})", node_name(node), node.op_type))
}

fn node_name(node: &NodeProto) -> &str {
    if !node.name.is_empty() {
        &node.name
    } else {
        node.output.first().map(String::as_str).unwrap_or("?")
    }
}

/// Indices of the nodes the values `wanted` depend on.
fn needed_nodes(nodes: &[NodeProto], wanted: &[String]) -> HashSet<usize> {
    let producer: HashMap<&str, usize> =
        nodes.iter().enumerate().flat_map(|(i, n)| n.output.iter().map(move |o| (o.as_str(), i))).collect();
    let mut needed = HashSet::new();
    let mut stack: Vec<&str> = wanted.iter().map(String::as_str).collect();
    while let Some(v) = stack.pop() {
        if let Some(&i) = producer.get(v) {
            if needed.insert(i) {
                stack.extend(nodes[i].input.iter().filter(|n| !n.is_empty()).map(String::as_str));
            }
        }
    }
    needed
}

/// How often each value is read (graph outputs count as readers).
fn count_consumers(nodes: &[NodeProto], outputs: &[String]) -> HashMap<String, usize> {
    let mut n = HashMap::new();
    for node in nodes {
        for i in node.input.iter().filter(|i| !i.is_empty()) {
            *n.entry(i.clone()).or_insert(0) += 1;
        }
    }
    for o in outputs {
        *n.entry(o.clone()).or_insert(0) += 1;
    }
    n
}

/// The image input's `[C, H, W]`: its declared dimensions (batch dropped), with dynamic ones
/// from `given`.
fn input_shape(input: &onnx_protobuf::ValueInfoProto, given: Option<&[usize]>) -> Result<Shape> {
    let t = input.type_.tensor_type();
    if t.elem_type != 1 {
        return Err(ModelError::Unsupported(format!(
            "input '{}' of element type {} (float is supported)",
            input.name, t.elem_type
        )));
    }
    let dims: Vec<Option<usize>> = t
        .shape
        .dim
        .iter()
        .map(|d| if d.has_dim_value() && d.dim_value() > 0 { Some(d.dim_value() as usize) } else { None })
        .collect();
    if !(dims.is_empty() || dims.len() == 4) {
        return Err(ModelError::Unsupported(format!(
            "input '{}' of rank {} (an image [N, C, H, W] is supported)",
            input.name,
            dims.len()
        )));
    }
    if let Some(Some(n)) = dims.first() {
        if *n != 1 {
            return Err(ModelError::Unsupported(format!(
                "input '{}' with a fixed batch of {n} (1 or dynamic is supported)",
                input.name
            )));
        }
    }
    let declared: Vec<Option<usize>> = if dims.is_empty() { vec![None; 3] } else { dims[1..].to_vec() };
    match given {
        Some(g) => {
            if g.len() != 3 || g.contains(&0) {
                return Err(ModelError::Shape(format!("--input-shape must be C,H,W (positive), got {g:?}")));
            }
            for (a, (d, v)) in declared.iter().zip(g).enumerate() {
                if let Some(d) = d {
                    if d != v {
                        return Err(ModelError::Shape(format!(
                            "input '{}' declares dimension {} = {d}, the given shape says {v}",
                            input.name,
                            a + 1
                        )));
                    }
                }
            }
            Ok(g.to_vec())
        }
        None => declared
            .iter()
            .map(|d| {
                d.ok_or_else(|| {
                    ModelError::Shape(format!(
                        "input '{}' has dynamic dimensions {declared:?}: give --input-shape C,H,W",
                        input.name
                    ))
                })
            })
            .collect(),
    }
}

/// An ONNX tensor as f32 (float, double and integer types; integers are shape data).
fn tensor(t: &TensorProto, what: &str) -> Result<ArrayD<f32>> {
    if t.data_location.value() == 1 {
        return Err(ModelError::Unsupported(format!("tensor '{what}' keeps its data in an external file")));
    }
    let dims: Vec<usize> = t
        .dims
        .iter()
        .map(|&d| {
            usize::try_from(d).map_err(|_| ModelError::MalformedModel(format!("tensor '{what}' has dimension {d}")))
        })
        .collect::<Result<_>>()?;
    let count = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&c| c <= 1 << 31)
        .ok_or_else(|| ModelError::MalformedModel(format!("tensor '{what}' of shape {dims:?} is too large")))?;
    let raw = &t.raw_data;
    let from_raw = |size: usize| -> Result<Vec<[u8; 8]>> {
        if raw.len() != count * size {
            return Err(ModelError::MalformedModel(format!(
                "tensor '{what}' holds {} bytes for {count} values of {size} bytes",
                raw.len()
            )));
        }
        Ok(raw
            .chunks_exact(size)
            .map(|c| {
                let mut b = [0u8; 8];
                b[..size].copy_from_slice(c);
                b
            })
            .collect())
    };
    let values: Vec<f32> = match t.data_type {
        1 if raw.is_empty() => t.float_data.clone(),
        1 => from_raw(4)?.iter().map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        11 if raw.is_empty() => t.double_data.iter().map(|&v| v as f32).collect(),
        11 => from_raw(8)?.iter().map(|b| f64::from_le_bytes(*b) as f32).collect(),
        7 if raw.is_empty() => t.int64_data.iter().map(|&v| v as f32).collect(),
        7 => from_raw(8)?.iter().map(|b| i64::from_le_bytes(*b) as f32).collect(),
        6 if raw.is_empty() => t.int32_data.iter().map(|&v| v as f32).collect(),
        6 => from_raw(4)?.iter().map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32).collect(),
        other => {
            return Err(ModelError::Unsupported(format!(
                "tensor '{what}' of data type {other} (float, double, int32 and int64 are supported)"
            )))
        }
    };
    if values.len() != count {
        return Err(ModelError::MalformedModel(format!(
            "tensor '{what}' of shape {dims:?} holds {} values",
            values.len()
        )));
    }
    ArrayD::from_shape_vec(IxDyn(&dims), values)
        .map_err(|e| ModelError::MalformedModel(format!("tensor '{what}': {e}")))
}

/// What an ONNX value is during import.
#[derive(Clone, Debug)]
enum Value {
    /// Computed from the image: the IR node (or [`INPUT`]) that holds it.
    Tensor(String),
    /// A constant (initializer, Constant node, or folded shape arithmetic), in ONNX's shape.
    Const(ArrayD<f32>),
    /// Sigmoid of the tensor held by this IR node (only x·sigmoid(x) is supported).
    Sigmoid(String),
}

#[derive(Default)]
struct Builder {
    nodes: Vec<Node>,
    weights: Weights,
    values: HashMap<String, Value>,
    /// Per-sample shape of every IR node (and of [`INPUT`]).
    shapes: HashMap<String, Shape>,
    names: HashSet<String>,
    consumers: HashMap<String, usize>,
}

fn attr<'a>(node: &'a NodeProto, name: &str) -> Option<&'a onnx_protobuf::AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}
fn attr_i(node: &NodeProto, name: &str, default: i64) -> i64 {
    attr(node, name).map_or(default, |a| a.i)
}
fn attr_f(node: &NodeProto, name: &str, default: f32) -> f32 {
    attr(node, name).map_or(default, |a| a.f)
}
fn attr_ints(node: &NodeProto, name: &str) -> Option<Vec<i64>> {
    attr(node, name).map(|a| a.ints.clone())
}
fn attr_s(node: &NodeProto, name: &str, default: &str) -> String {
    attr(node, name).map_or(default.to_string(), |a| String::from_utf8_lossy(&a.s).into_owned())
}

fn pair(v: &[i64], what: &str) -> Result<[usize; 2]> {
    match v {
        [a, b] if *a >= 0 && *b >= 0 => Ok([*a as usize, *b as usize]),
        _ => Err(ModelError::Unsupported(format!("{what} {v:?} (two non-negative values for a 2-D operator)"))),
    }
}

fn unsupported(m: impl Into<String>) -> ModelError {
    ModelError::Unsupported(m.into())
}

impl Builder {
    fn value(&self, name: &str) -> Result<&Value> {
        self.values
            .get(name)
            .ok_or_else(|| ModelError::InvalidGraph(format!("input '{name}' is not defined before this node")))
    }
    fn input<'a>(&'a self, node: &NodeProto, i: usize) -> Result<&'a Value> {
        match node.input.get(i).filter(|n| !n.is_empty()) {
            Some(n) => self.value(n),
            None => Err(ModelError::InvalidGraph(format!("input {i} is missing"))),
        }
    }
    fn optional_const(&self, node: &NodeProto, i: usize) -> Result<Option<ArrayD<f32>>> {
        match node.input.get(i).filter(|n| !n.is_empty()) {
            None => Ok(None),
            Some(_) => self.constant(node, i).map(Some),
        }
    }
    fn constant(&self, node: &NodeProto, i: usize) -> Result<ArrayD<f32>> {
        match self.input(node, i)? {
            Value::Const(c) => Ok(c.clone()),
            _ => Err(unsupported(format!(
                "input {i} ('{}') computed from the image where a constant is needed",
                node.input[i]
            ))),
        }
    }
    fn tensor_in(&self, node: &NodeProto, i: usize) -> Result<String> {
        match self.input(node, i)? {
            Value::Tensor(t) => Ok(t.clone()),
            Value::Sigmoid(_) => Err(unsupported("a Sigmoid used other than in x·sigmoid(x)")),
            Value::Const(_) => Err(unsupported(format!(
                "input {i} ('{}') is a constant where the image's data is needed",
                node.input[i]
            ))),
        }
    }
    fn shape_of(&self, t: &str) -> &Shape {
        &self.shapes[t]
    }

    /// A fresh IR node name from `base`.
    fn fresh(&mut self, base: &str) -> String {
        let base = if base.is_empty() { "node" } else { base };
        let mut name = base.to_string();
        let mut k = 1;
        while self.names.contains(&name) || name == INPUT {
            name = format!("{base}_{k}");
            k += 1;
        }
        self.names.insert(name.clone());
        name
    }

    /// Adds an IR node (shape checked now) and returns its name.
    fn emit(&mut self, base: &str, op: Op, inputs: Vec<String>) -> Result<String> {
        let name = self.fresh(base);
        let node = Node { name: name.clone(), op, inputs };
        let ins: Vec<&Shape> = node.inputs.iter().map(|i| &self.shapes[i]).collect();
        let shape = infer_shape(&node, &ins, &self.weights)?;
        self.shapes.insert(name.clone(), shape);
        self.nodes.push(node);
        Ok(name)
    }

    fn weight(&mut self, node: &str, role: &str, w: ArrayD<f32>) -> String {
        let name = format!("{node}.{role}");
        self.weights.insert(name.clone(), w);
        name
    }

    fn set(&mut self, node: &NodeProto, v: Value) -> Result<()> {
        let Some(out) = node.output.first() else { return Err(ModelError::InvalidGraph("no output".into())) };
        self.values.insert(out.clone(), v);
        Ok(())
    }

    fn node(&mut self, node: &NodeProto) -> Result<()> {
        if !(node.domain.is_empty() || node.domain == "ai.onnx") {
            return Err(unsupported(format!("operator domain '{}'", node.domain)));
        }
        let base = node_name(node).to_string();
        let op = node.op_type.as_str();
        // Constants and shape arithmetic fold whatever they are.
        if let Some(v) = self.fold(node)? {
            return self.set(node, Value::Const(v));
        }
        // A Sigmoid stays a marker while it may still turn out to be part of x·sigmoid(x);
        // any other reader makes it a sigmoid node.
        for (k, i) in node.input.iter().enumerate() {
            if let Some(Value::Sigmoid(s)) = self.values.get(i) {
                let other = node.input.get(1 - k.min(1)).and_then(|o| self.values.get(o));
                let silu = op == "Mul" && node.input.len() == 2 && matches!(other, Some(Value::Tensor(t)) if t == s);
                if !silu && op != "Shape" {
                    self.materialize_sigmoid(i)?;
                }
            }
        }
        let out = match op {
            "Identity" | "Dropout" => {
                let v = self.input(node, 0)?.clone();
                return self.set(node, v);
            }
            "Conv" => self.conv(node, &base)?,
            "ConvTranspose" => self.conv_transpose(node, &base)?,
            "BatchNormalization" => {
                if attr_i(node, "training_mode", 0) != 0 {
                    return Err(unsupported("training mode"));
                }
                let x = self.tensor_in(node, 0)?;
                let c = self.shape_of(&x)[0];
                let [s, bias, mean, var] = [1, 2, 3, 4].map(|i| self.constant(node, i));
                let eps = attr_f(node, "epsilon", 1e-5) as f64;
                let names = [("weight", s?), ("bias", bias?), ("running_mean", mean?), ("running_var", var?)]
                    .map(|(r, w)| (r, w.into_shape_with_order(IxDyn(&[c]))));
                let mut n = Vec::new();
                for (r, w) in names {
                    let w = w.map_err(|_| ModelError::Weight(format!("batch norm {r} must hold {c} values")))?;
                    n.push(self.weight(&base, r, w));
                }
                let bn = BatchNorm {
                    channels: c,
                    eps,
                    weight: n[0].clone(),
                    bias: n[1].clone(),
                    running_mean: n[2].clone(),
                    running_var: n[3].clone(),
                };
                self.emit(&base, Op::BatchNorm(bn), vec![x])?
            }
            "Relu" => {
                let x = self.tensor_in(node, 0)?;
                self.emit(&base, Op::Activation(Activation::Relu), vec![x])?
            }
            "LeakyRelu" => {
                let x = self.tensor_in(node, 0)?;
                let alpha = attr_f(node, "alpha", 0.01);
                self.emit(&base, Op::Activation(Activation::LeakyRelu { alpha }), vec![x])?
            }
            "HardSigmoid" => {
                let x = self.tensor_in(node, 0)?;
                let (alpha, beta) = (attr_f(node, "alpha", 0.2), attr_f(node, "beta", 0.5));
                self.emit(&base, Op::Activation(Activation::HardSigmoid { alpha, beta }), vec![x])?
            }
            "HardSwish" => {
                let x = self.tensor_in(node, 0)?;
                self.emit(&base, Op::Activation(Activation::HardSwish), vec![x])?
            }
            "Clip" => self.clip(node, &base)?,
            "Split" => return self.split(node, &base),
            "Slice" => self.slice(node, &base)?,
            "Pad" => self.pad(node, &base)?,
            "Sigmoid" => {
                let x = self.tensor_in(node, 0)?;
                return self.set(node, Value::Sigmoid(x));
            }
            "MaxPool" | "AveragePool" => self.pool(node, &base, op == "MaxPool")?,
            "GlobalAveragePool" => {
                let x = self.tensor_in(node, 0)?;
                self.emit(&base, Op::GlobalAvgPool, vec![x])?
            }
            "Flatten" => {
                let x = self.tensor_in(node, 0)?;
                if attr_i(node, "axis", 1) != 1 {
                    return Err(unsupported(format!("axis {} (1 is supported)", attr_i(node, "axis", 1))));
                }
                self.flatten(&base, x)?
            }
            "Reshape" => {
                let x = self.tensor_in(node, 0)?;
                let target = self.constant(node, 1)?;
                let t: Vec<i64> = target.iter().map(|&v| v as i64).collect();
                let n: usize = self.shape_of(&x).iter().product();
                let flat =
                    matches!(t.as_slice(), [b, f] if (*b == 1 || *b == 0 || *b == -1) && (*f == -1 || *f == n as i64));
                if !flat {
                    return Err(unsupported(format!("reshape to {t:?} (only flattening to [N, -1] is supported)")));
                }
                self.flatten(&base, x)?
            }
            "Gemm" => self.gemm(node, &base)?,
            "MatMul" => {
                let x = self.tensor_in(node, 0)?;
                let w = self.constant(node, 1)?;
                if w.ndim() != 2 {
                    return Err(unsupported(format!(
                        "MatMul by a constant of shape {:?} (a matrix is supported)",
                        w.shape()
                    )));
                }
                let w = w.t().as_standard_layout().into_owned();
                self.linear(&base, x, w, None)?
            }
            "Add" | "Sub" | "Mul" | "Div" => self.arithmetic(node, &base, op)?,
            "Concat" => {
                let axis = attr_i(node, "axis", 1);
                if axis != 1 && axis != -3 {
                    return Err(unsupported(format!("concatenation on axis {axis} (channels, axis 1, is supported)")));
                }
                let ins = (0..node.input.len()).map(|i| self.tensor_in(node, i)).collect::<Result<Vec<_>>>()?;
                self.emit(&base, Op::Concat, ins)?
            }
            "Resize" | "Upsample" => self.resize(node, &base)?,
            "Softmax" | "LogSoftmax" => {
                return Err(unsupported(format!(
                    "operator {op} is not supported (it keeps the order of the values: pass --graph-output '{}' to import the scores before it)",
                    node.input.first().map(String::as_str).unwrap_or("?")
                )))
            }
            other => return Err(unsupported(format!("operator {other} is not supported"))),
        };
        self.set(node, Value::Tensor(out))
    }

    /// Several output maps as one: each upsampled (nearest, integer factor) to the largest
    /// one's size, then concatenated on channels.
    fn merge_outputs(&mut self, outs: &[String]) -> Result<String> {
        let shapes: Vec<Shape> = outs.iter().map(|o| self.shape_of(o).clone()).collect();
        let Some(big) = shapes.iter().filter(|s| s.len() == 3).max_by_key(|s| s[1] * s[2]).cloned() else {
            return Err(unsupported("several outputs that are not feature maps"));
        };
        let mut parts = Vec::new();
        for (o, s) in outs.iter().zip(&shapes) {
            let fits = s.len() == 3 && big[1] % s[1] == 0 && big[2] % s[2] == 0 && big[1] / s[1] == big[2] / s[2];
            if !fits {
                return Err(unsupported(format!(
                    "outputs of shapes {s:?} and {big:?} (each must be the largest one downscaled by an integer factor)"
                )));
            }
            let f = big[1] / s[1];
            parts.push(if f == 1 {
                o.clone()
            } else {
                self.emit(&format!("{o}.up"), Op::Upsample { factor: f }, vec![o.clone()])?
            });
        }
        self.emit("outputs", Op::Concat, parts)
    }

    /// Turns the Sigmoid marker held by ONNX value `name` into a sigmoid node.
    fn materialize_sigmoid(&mut self, name: &str) -> Result<()> {
        if let Some(Value::Sigmoid(x)) = self.values.get(name).cloned() {
            let s = self.emit(name, Op::Activation(Activation::Sigmoid), vec![x])?;
            self.values.insert(name.to_string(), Value::Tensor(s));
        }
        Ok(())
    }

    /// Clip(x, min, max) (bounds as inputs, opset 11+, or attributes): ReLU when only the lower
    /// bound 0 is given, else a clip activation with finite bounds (ReLU6: 0 and 6).
    fn clip(&mut self, node: &NodeProto, base: &str) -> Result<String> {
        let x = self.tensor_in(node, 0)?;
        let bound = |b: &Self, i: usize, name: &str, default: f32| -> Result<f32> {
            match b.optional_const(node, i)? {
                Some(c) if c.len() == 1 => Ok(c.iter().next().copied().unwrap_or(default)),
                Some(c) => Err(unsupported(format!("a Clip bound of shape {:?} (a scalar is supported)", c.shape()))),
                None => Ok(attr(node, name).map_or(default, |a| a.f)),
            }
        };
        let min = bound(self, 1, "min", f32::NEG_INFINITY)?;
        let max = bound(self, 2, "max", f32::INFINITY)?;
        let act = match (min, max) {
            (lo, hi) if lo == 0.0 && hi == f32::INFINITY => Activation::Relu,
            (lo, hi) if lo.is_finite() && hi.is_finite() && lo < hi => Activation::Clip { min: lo, max: hi },
            (lo, hi) => {
                return Err(unsupported(format!(
                    "Clip to [{lo}, {hi}] (finite bounds, or [0, ∞) as ReLU, are supported)"
                )))
            }
        };
        self.emit(base, Op::Activation(act), vec![x])
    }

    /// Channels `range` of `x` as a 1×1 convolution with 0/1 weights: a linear map that the
    /// packed compiler fuses into its neighbours, so it costs no level of its own.
    fn select_channels(&mut self, base: &str, x: String, range: std::ops::Range<usize>) -> Result<String> {
        let c = self.shape_of(&x)[0];
        if self.shape_of(&x).len() != 3 || range.is_empty() || range.end > c {
            return Err(unsupported(format!(
                "channels {range:?} of a tensor of shape {:?} (a non-empty channel range of a map)",
                self.shape_of(&x)
            )));
        }
        let name = self.fresh(base);
        self.names.remove(&name);
        let mut w = ArrayD::zeros(IxDyn(&[range.len(), c, 1, 1]));
        for (o, i) in range.clone().enumerate() {
            w[[o, i, 0, 0]] = 1.0;
        }
        let weight = self.weight(&name, "select", w);
        let conv = Conv2d::pointwise(c, range.len(), 1, 1, weight);
        self.emit(&name, Op::Conv2d(conv), vec![x])
    }

    /// Split on channels: one channel-selection node per output.
    fn split(&mut self, node: &NodeProto, base: &str) -> Result<()> {
        let x = self.tensor_in(node, 0)?;
        let axis = attr_i(node, "axis", 0);
        if axis != 1 && axis != -3 {
            return Err(unsupported(format!("Split on axis {axis} (channels, axis 1, is supported)")));
        }
        let c = self.shape_of(&x)[0];
        let outs = node.output.len();
        let sizes: Vec<usize> = match self.optional_const(node, 1)? {
            Some(s) => s.iter().map(|&v| v.max(0.0) as usize).collect(),
            None => match attr_ints(node, "split") {
                Some(s) => s.iter().map(|&v| v.max(0) as usize).collect(),
                None if outs > 0 => {
                    let part = c.div_ceil(outs);
                    (0..outs).map(|k| part.min(c.saturating_sub(k * part))).collect()
                }
                None => return Err(ModelError::InvalidGraph("Split without outputs".into())),
            },
        };
        if sizes.len() != outs || sizes.iter().sum::<usize>() != c {
            return Err(ModelError::InvalidGraph(format!("Split sizes {sizes:?} for {outs} outputs of {c} channels")));
        }
        let mut start = 0;
        for (k, size) in sizes.iter().enumerate() {
            let name = node.output[k].clone();
            let t = self.select_channels(&format!("{base}.{k}"), x.clone(), start..start + size)?;
            self.values.insert(name, Value::Tensor(t));
            start += size;
        }
        Ok(())
    }

    /// Slice of a computed tensor: a channel range (step 1) becomes a channel selection.
    fn slice(&mut self, node: &NodeProto, base: &str) -> Result<String> {
        let x = self.tensor_in(node, 0)?;
        let (starts, ends, axes, steps) = slice_args(self, node)?;
        let shape = self.shape_of(&x).clone();
        let mut range = 0..shape[0];
        for (k, &axis) in axes.iter().enumerate() {
            let step = steps.get(k).copied().unwrap_or(1);
            let dim = if axis == 0 || axis == -4 {
                return Err(unsupported("Slice on the batch axis"));
            } else if axis > 0 {
                axis as usize - 1
            } else {
                (axis + shape.len() as i64) as usize
            };
            let size = *shape.get(dim).ok_or_else(|| unsupported(format!("Slice on axis {axis}")))?;
            let (a, b) = clamp_range(starts[k], ends[k], size);
            if step != 1 {
                return Err(unsupported(format!("Slice with step {step} (1 is supported)")));
            }
            if dim != 0 {
                if (a, b) == (0, size) {
                    continue;
                }
                return Err(unsupported(format!("Slice on axis {axis} (channel ranges are supported)")));
            }
            range = a..b;
        }
        if range == (0..shape[0]) {
            return Ok(x);
        }
        self.select_channels(base, x, range)
    }

    /// Pad with zeros on H and W, any amount before and after: a depthwise 1×1 identity
    /// convolution with that padding (linear, fused by the packed compiler).
    fn pad(&mut self, node: &NodeProto, base: &str) -> Result<String> {
        let x = self.tensor_in(node, 0)?;
        let mode = attr_s(node, "mode", "constant");
        if mode != "constant" {
            return Err(unsupported(format!("Pad mode {mode} (constant zeros are supported)")));
        }
        let pads: Vec<i64> = match self.optional_const(node, 1)? {
            Some(p) => p.iter().map(|&v| v as i64).collect(),
            None => attr_ints(node, "pads").unwrap_or_default(),
        };
        let value = match self.optional_const(node, 2)? {
            Some(v) => v.iter().next().copied().unwrap_or(0.0),
            None => attr_f(node, "value", 0.0),
        };
        if value != 0.0 {
            return Err(unsupported(format!("Pad with the value {value} (zeros are supported)")));
        }
        if node.input.get(3).is_some_and(|a| !a.is_empty()) {
            return Err(unsupported("Pad with an axes input"));
        }
        let (padding, padding_end) = match pads.as_slice() {
            [0, 0, t, l, 0, 0, b, r] if [t, l, b, r].iter().all(|v| **v >= 0) => {
                padding_pair([*t as usize, *l as usize], [*b as usize, *r as usize])
            }
            _ => {
                return Err(unsupported(format!(
                    "pads {pads:?} (non-negative zero padding of H and W only is supported)"
                )))
            }
        };
        let c = self.shape_of(&x)[0];
        let weight = self.weight(base, "identity", ArrayD::ones(IxDyn(&[c, 1, 1, 1])));
        let conv = Conv2d {
            in_channels: c,
            out_channels: c,
            kernel: [1, 1],
            stride: [1, 1],
            padding,
            padding_end,
            dilation: [1, 1],
            groups: c,
            weight,
            bias: None,
        };
        self.emit(base, Op::Conv2d(conv), vec![x])
    }

    /// Constant folding: Constant, and shape arithmetic on constants (Shape reads the
    /// image's fixed shape, batch 1).
    fn fold(&mut self, node: &NodeProto) -> Result<Option<ArrayD<f32>>> {
        let consts = |b: &Self| -> Option<Vec<ArrayD<f32>>> {
            node.input
                .iter()
                .filter(|n| !n.is_empty())
                .map(|n| match b.values.get(n) {
                    Some(Value::Const(c)) => Some(c.clone()),
                    _ => None,
                })
                .collect()
        };
        let vec1 = |v: Vec<f32>| ArrayD::from_shape_vec(IxDyn(&[v.len()]), v).expect("1-D");
        Ok(Some(match node.op_type.as_str() {
            "Constant" => {
                if let Some(a) = attr(node, "value") {
                    tensor(&a.t, node_name(node))?
                } else if let Some(a) = attr(node, "value_float") {
                    ArrayD::from_elem(IxDyn(&[]), a.f)
                } else if let Some(a) = attr(node, "value_floats") {
                    vec1(a.floats.clone())
                } else if let Some(a) = attr(node, "value_int") {
                    ArrayD::from_elem(IxDyn(&[]), a.i as f32)
                } else if let Some(a) = attr(node, "value_ints") {
                    vec1(a.ints.iter().map(|&v| v as f32).collect())
                } else {
                    return Err(unsupported("a Constant without a value, value_float(s) or value_int(s)"));
                }
            }
            "Shape" => match self.input(node, 0)? {
                Value::Tensor(t) | Value::Sigmoid(t) => {
                    let mut s = vec![1.0];
                    s.extend(self.shape_of(t).iter().map(|&d| d as f32));
                    vec1(s)
                }
                Value::Const(c) => vec1(c.shape().iter().map(|&d| d as f32).collect()),
            },
            "Identity" | "Cast" | "Dropout" => match consts(self) {
                Some(c) if !c.is_empty() => c[0].clone(),
                _ => return Ok(None),
            },
            "Gather" => {
                let Some(c) = consts(self) else { return Ok(None) };
                let (data, idx) = (&c[0], &c[1]);
                if attr_i(node, "axis", 0) != 0 || data.ndim() != 1 {
                    return Err(unsupported("Gather on constants other than axis 0 of a vector"));
                }
                let n = data.len() as i64;
                let pick = |i: f32| -> Result<f32> {
                    let i = i as i64;
                    let j = if i < 0 { i + n } else { i };
                    data.get(j as usize)
                        .copied()
                        .filter(|_| j >= 0)
                        .ok_or_else(|| ModelError::InvalidGraph(format!("Gather index {i} out of {n}")))
                };
                let out: Vec<f32> = idx.iter().map(|&i| pick(i)).collect::<Result<_>>()?;
                ArrayD::from_shape_vec(IxDyn(idx.shape()), out).expect("same shape")
            }
            "Unsqueeze" | "Squeeze" => {
                let Some(c) = consts(self) else { return Ok(None) };
                let x = &c[0];
                if node.op_type == "Unsqueeze" && x.ndim() == 0 {
                    vec1(vec![x[IxDyn(&[])]])
                } else if node.op_type == "Squeeze" && x.len() == 1 {
                    ArrayD::from_elem(IxDyn(&[]), x.iter().next().copied().unwrap_or(0.0))
                } else {
                    x.clone()
                }
            }
            "Add" | "Sub" | "Mul" | "Div" => {
                let Some(c) = consts(self) else { return Ok(None) };
                let [a, b] = c.as_slice() else { return Ok(None) };
                // ndarray panics on shapes that do not broadcast: check first.
                let (sa, sb) = (a.shape(), b.shape());
                let n = sa.len().max(sb.len());
                let dim = |s: &[usize], k: usize| if k < n - s.len() { 1 } else { s[k - (n - s.len())] };
                if (0..n).any(|k| dim(sa, k) != dim(sb, k) && dim(sa, k) != 1 && dim(sb, k) != 1) {
                    return Err(ModelError::InvalidGraph(format!(
                        "constants of shapes {sa:?} and {sb:?} do not broadcast"
                    )));
                }
                let size = (0..n).try_fold(1usize, |acc, k| acc.checked_mul(dim(sa, k).max(dim(sb, k))));
                if size.is_none_or(|v| v > 1 << 24) {
                    return Err(unsupported(format!(
                        "arithmetic on constants of shapes {sa:?} and {sb:?} (too large)"
                    )));
                }
                match node.op_type.as_str() {
                    "Add" => a + b,
                    "Sub" => a - b,
                    "Mul" => a * b,
                    _ => a / b,
                }
            }
            "Slice" => {
                let Some(c) = consts(self) else { return Ok(None) };
                let data = &c[0];
                if data.ndim() != 1 {
                    return Err(unsupported("Slice of a constant of rank other than 1"));
                }
                let (starts, ends, axes, steps) = slice_args(self, node)?;
                if axes.iter().any(|&a| a != 0 && a != -1) || steps.iter().any(|&s| s != 1) || starts.len() != 1 {
                    return Err(unsupported("Slice of a constant vector other than one range with step 1"));
                }
                let (a, b) = clamp_range(starts[0], ends[0], data.len());
                vec1(data.iter().skip(a).take(b - a).copied().collect())
            }
            "Concat" => {
                let Some(c) = consts(self) else { return Ok(None) };
                if c.iter().any(|t| t.ndim() > 1) {
                    return Err(unsupported("Concat of constants of rank > 1"));
                }
                vec1(c.iter().flat_map(|t| t.iter().copied()).collect())
            }
            _ => return Ok(None),
        }))
    }

    /// Constant int input `i` of `node`, or `None` when absent.
    fn ints_input(&self, node: &NodeProto, i: usize) -> Result<Option<Vec<i64>>> {
        Ok(self.optional_const(node, i)?.map(|c| c.iter().map(|&v| v as i64).collect()))
    }

    /// Padding `[before, after]` of each spatial axis (`[[top, bottom], [left, right]]`).
    fn pads(
        &self,
        node: &NodeProto,
        x: &str,
        kernel: [usize; 2],
        stride: [usize; 2],
        dilation: [usize; 2],
    ) -> Result<[[usize; 2]; 2]> {
        let auto = attr_s(node, "auto_pad", "NOTSET");
        match auto.as_str() {
            "NOTSET" => {
                let p = attr_ints(node, "pads").unwrap_or(vec![0; 4]);
                match p.as_slice() {
                    [t, l, b, r] if [t, l, b, r].iter().all(|v| **v >= 0) => {
                        Ok([[*t as usize, *b as usize], [*l as usize, *r as usize]])
                    }
                    _ => Err(unsupported(format!("padding {p:?} (four non-negative values are supported)"))),
                }
            }
            "VALID" => Ok([[0, 0], [0, 0]]),
            "SAME_UPPER" | "SAME_LOWER" => {
                if [kernel, stride, dilation].iter().flatten().any(|&v| v == 0) {
                    return Err(ModelError::InvalidGraph(format!(
                        "kernel {kernel:?}, strides {stride:?} and dilations {dilation:?} must be positive"
                    )));
                }
                let s = self.shape_of(x);
                let mut out = [[0; 2]; 2];
                for a in 0..2 {
                    let i = s[1 + a];
                    let o = i.div_ceil(stride[a]);
                    let total = ((o - 1) * stride[a] + dilation[a] * (kernel[a] - 1) + 1).saturating_sub(i);
                    // An odd total puts the extra row after (SAME_UPPER) or before (SAME_LOWER).
                    let small = total / 2;
                    out[a] = if auto == "SAME_UPPER" { [small, total - small] } else { [total - small, small] };
                }
                Ok(out)
            }
            other => Err(unsupported(format!("auto_pad {other}"))),
        }
    }

    fn conv(&mut self, node: &NodeProto, base: &str) -> Result<String> {
        let x = self.tensor_in(node, 0)?;
        let w = self.constant(node, 1)?;
        let bias = self.optional_const(node, 2)?;
        if w.ndim() != 4 {
            return Err(unsupported(format!("a weight of rank {} (2-D convolutions are supported)", w.ndim())));
        }
        let s = w.shape().to_vec();
        let kernel = [s[2], s[3]];
        let stride = pair(&attr_ints(node, "strides").unwrap_or(vec![1, 1]), "strides")?;
        let dilation = pair(&attr_ints(node, "dilations").unwrap_or(vec![1, 1]), "dilations")?;
        let groups = attr_i(node, "group", 1).max(1) as usize;
        let [[top, bottom], [left, right]] = self.pads(node, &x, kernel, stride, dilation)?;
        let (padding, padding_end) = padding_pair([top, left], [bottom, right]);
        let in_channels = self.shape_of(&x)[0];
        let weight = self.weight(base, "weight", w);
        let bias = bias
            .map(|b| b.into_shape_with_order(IxDyn(&[s[0]])).map(|b| self.weight(base, "bias", b)))
            .transpose()
            .map_err(|_| ModelError::Weight(format!("the bias must hold {} values", s[0])))?;
        let op = Op::Conv2d(Conv2d {
            in_channels,
            out_channels: s[0],
            kernel,
            stride,
            padding,
            padding_end,
            dilation,
            groups,
            weight,
            bias,
        });
        self.emit(base, op, vec![x])
    }

    fn conv_transpose(&mut self, node: &NodeProto, base: &str) -> Result<String> {
        let x = self.tensor_in(node, 0)?;
        let w = self.constant(node, 1)?;
        let bias = self.optional_const(node, 2)?;
        if w.ndim() != 4 {
            return Err(unsupported(format!("a weight of rank {} (2-D convolutions are supported)", w.ndim())));
        }
        if attr(node, "output_shape").is_some() {
            return Err(unsupported("output_shape (give pads and output_padding)"));
        }
        if !matches!(attr_s(node, "auto_pad", "NOTSET").as_str(), "NOTSET" | "VALID") {
            return Err(unsupported("SAME auto_pad on ConvTranspose"));
        }
        let s = w.shape().to_vec();
        let groups = attr_i(node, "group", 1).max(1) as usize;
        let kernel = [s[2], s[3]];
        let stride = pair(&attr_ints(node, "strides").unwrap_or(vec![1, 1]), "strides")?;
        let dilation = pair(&attr_ints(node, "dilations").unwrap_or(vec![1, 1]), "dilations")?;
        let output_padding = pair(&attr_ints(node, "output_padding").unwrap_or(vec![0, 0]), "output_padding")?;
        let padding = symmetric(self.pads(node, &x, kernel, stride, dilation)?)?;
        let out_channels = s[1] * groups;
        let weight = self.weight(base, "weight", w);
        let bias = bias
            .map(|b| b.into_shape_with_order(IxDyn(&[out_channels])).map(|b| self.weight(base, "bias", b)))
            .transpose()
            .map_err(|_| ModelError::Weight(format!("the bias must hold {out_channels} values")))?;
        let op = Op::ConvTranspose2d(ConvTranspose2d {
            in_channels: s[0],
            out_channels,
            kernel,
            stride,
            padding,
            output_padding,
            dilation,
            groups,
            weight,
            bias,
        });
        self.emit(base, op, vec![x])
    }

    fn pool(&mut self, node: &NodeProto, base: &str, max: bool) -> Result<String> {
        let x = self.tensor_in(node, 0)?;
        let kernel = pair(&attr_ints(node, "kernel_shape").unwrap_or_default(), "kernel_shape")?;
        let stride = pair(&attr_ints(node, "strides").unwrap_or(vec![1, 1]), "strides")?;
        if attr_i(node, "ceil_mode", 0) != 0 {
            return Err(unsupported("ceil_mode"));
        }
        if attr_ints(node, "dilations").is_some_and(|d| d.iter().any(|&v| v != 1)) {
            return Err(unsupported("dilated pooling"));
        }
        if node.output.len() > 1 && !node.output[1].is_empty() {
            return Err(unsupported("MaxPool indices output"));
        }
        let padding = symmetric(self.pads(node, &x, kernel, stride, [1, 1])?)?;
        if !max && padding != [0, 0] && attr_i(node, "count_include_pad", 0) == 0 {
            return Err(unsupported("average pooling with padding left out of the divisor (count_include_pad = 0)"));
        }
        let p = Pool2d { kernel, stride, padding };
        self.emit(base, if max { Op::MaxPool(p) } else { Op::AvgPool(p) }, vec![x])
    }

    fn flatten(&mut self, base: &str, x: String) -> Result<String> {
        if self.shape_of(&x).len() == 1 {
            return Ok(x);
        }
        self.emit(base, Op::Flatten, vec![x])
    }

    fn linear(&mut self, base: &str, x: String, w: ArrayD<f32>, bias: Option<ArrayD<f32>>) -> Result<String> {
        let &[out_features, in_features] = w.shape() else { unreachable!("a matrix") };
        if self.shape_of(&x).len() != 1 {
            return Err(unsupported(format!(
                "a matrix product on a tensor of shape {:?} (flatten it first)",
                self.shape_of(&x)
            )));
        }
        let weight = self.weight(base, "weight", w);
        let bias = bias.map(|b| self.weight(base, "bias", b));
        self.emit(base, Op::Linear(Linear { in_features, out_features, weight, bias }), vec![x])
    }

    fn gemm(&mut self, node: &NodeProto, base: &str) -> Result<String> {
        let x = self.tensor_in(node, 0)?;
        if attr_i(node, "transA", 0) != 0 {
            return Err(unsupported("transA"));
        }
        let (alpha, beta) = (attr_f(node, "alpha", 1.0), attr_f(node, "beta", 1.0));
        let b = self.constant(node, 1)?;
        if b.ndim() != 2 {
            return Err(unsupported(format!("B of shape {:?}", b.shape())));
        }
        let w = if attr_i(node, "transB", 0) != 0 { b } else { b.t().as_standard_layout().into_owned() };
        let out = w.shape()[0];
        let w = w.mapv(|v| v * alpha);
        let c = self.optional_const(node, 2)?;
        let bias = match c {
            None => None,
            Some(c) if c.len() == out => {
                Some(c.into_shape_with_order(IxDyn(&[out])).expect("same size").mapv(|v| v * beta))
            }
            Some(c) if c.len() == 1 => {
                Some(ArrayD::from_elem(IxDyn(&[out]), c.iter().next().copied().unwrap_or(0.0) * beta))
            }
            Some(c) => return Err(unsupported(format!("C of shape {:?} for {out} outputs", c.shape()))),
        };
        self.linear(base, x, w, bias)
    }

    /// Add, Sub, Mul, Div: two image tensors (Add; Mul as x·sigmoid(x)), or a tensor and a
    /// scalar or per-channel constant.
    fn arithmetic(&mut self, node: &NodeProto, base: &str, op: &str) -> Result<String> {
        let (a, b) = (self.input(node, 0)?.clone(), self.input(node, 1)?.clone());
        match (op, &a, &b) {
            ("Add", Value::Tensor(x), Value::Tensor(y)) => {
                if self.shape_of(x) != self.shape_of(y) {
                    return Err(unsupported(format!(
                        "Add with broadcasting ({:?} + {:?})",
                        self.shape_of(x),
                        self.shape_of(y)
                    )));
                }
                self.emit(base, Op::Add, vec![x.clone(), y.clone()])
            }
            ("Mul", Value::Tensor(x), Value::Sigmoid(s)) | ("Mul", Value::Sigmoid(s), Value::Tensor(x)) if x == s => {
                self.emit(base, Op::Activation(Activation::Silu), vec![x.clone()])
            }
            (_, Value::Tensor(x), Value::Const(c)) => self.affine(node, base, op, x.clone(), c.clone(), false),
            ("Add" | "Mul", Value::Const(c), Value::Tensor(x)) => {
                self.affine(node, base, op, x.clone(), c.clone(), false)
            }
            ("Sub", Value::Const(c), Value::Tensor(x)) => self.affine(node, base, op, x.clone(), c.clone(), true),
            ("Mul", Value::Tensor(x), Value::Tensor(y)) => self.emit(base, Op::Mul, vec![x.clone(), y.clone()]),
            _ => Err(unsupported(format!("{op} of these operands"))),
        }
    }

    /// x ∘ c for a scalar or per-channel constant: for maps a batch norm with mean 0 and
    /// variance 1 − ε (so the division is by exactly 1), for vectors a diagonal linear layer;
    /// a constant added right after a bias-free linear layer becomes its bias. `reversed`: c − x.
    fn affine(
        &mut self,
        node: &NodeProto,
        base: &str,
        op: &str,
        x: String,
        c: ArrayD<f32>,
        reversed: bool,
    ) -> Result<String> {
        let shape = self.shape_of(&x).clone();
        let channels = shape[0];
        // Per-channel values: scalar, [C], [C,1,1], [1,C,1,1] (and [1, F] for vectors).
        let spatial = shape.len() == 3;
        let per: Vec<f32> = {
            let n = c.len();
            let dims: Vec<usize> = c.shape().iter().copied().filter(|&d| d != 1).collect();
            let channel_axis_ok = if spatial {
                c.ndim() <= 1 || (c.ndim() >= 3 && c.shape()[c.ndim() - 2..].iter().all(|&d| d == 1))
            } else {
                true
            };
            if n == 1 {
                vec![c.iter().next().copied().unwrap_or(0.0); channels]
            } else if n == channels && dims.len() == 1 && channel_axis_ok {
                c.iter().copied().collect()
            } else {
                return Err(unsupported(format!(
                    "{op} by a constant of shape {:?} on a tensor of shape {shape:?} (a scalar or one value per channel is supported)",
                    c.shape()
                )));
            }
        };
        let (scale, shift): (Vec<f32>, Vec<f32>) = match (op, reversed) {
            ("Add", _) => (vec![1.0; channels], per),
            ("Sub", false) => (vec![1.0; channels], per.iter().map(|v| -v).collect()),
            ("Sub", true) => (vec![-1.0; channels], per),
            ("Mul", _) => (per, vec![0.0; channels]),
            ("Div", false) => {
                if per.contains(&0.0) {
                    return Err(ModelError::InvalidGraph("division by zero".into()));
                }
                (per.iter().map(|v| 1.0 / v).collect(), vec![0.0; channels])
            }
            _ => return Err(unsupported(format!("{op} of a constant by a computed tensor"))),
        };
        let v1 = |v: Vec<f32>| ArrayD::from_shape_vec(IxDyn(&[v.len()]), v).expect("1-D");
        if !spatial {
            // A constant added to a bias-free linear layer read only here becomes its bias.
            let only_reader = node.input.iter().filter(|i| !i.is_empty()).any(|i| self.consumers.get(i) == Some(&1));
            if scale.iter().all(|&s| s == 1.0) && only_reader {
                if let Some(Node { op: Op::Linear(l), .. }) = self.nodes.iter_mut().rev().find(|n| n.name == x) {
                    if l.bias.is_none() {
                        let name = format!("{x}.bias");
                        l.bias = Some(name.clone());
                        self.weights.insert(name, v1(shift));
                        return Ok(x);
                    }
                }
            }
            if channels > 4096 {
                return Err(unsupported(format!(
                    "{op} by a constant on a vector of {channels} values (a diagonal layer is built up to 4096)"
                )));
            }
            let mut w = ArrayD::zeros(IxDyn(&[channels, channels]));
            for (i, s) in scale.iter().enumerate() {
                w[[i, i]] = *s;
            }
            return self.linear(base, x, w, Some(v1(shift)));
        }
        let eps = 1e-5;
        let names = [
            ("weight", v1(scale)),
            ("bias", v1(shift)),
            ("running_mean", v1(vec![0.0; channels])),
            ("running_var", v1(vec![(1.0 - eps) as f32; channels])),
        ]
        .map(|(r, w)| self.weight(base, r, w));
        let [weight, bias, running_mean, running_var] = names;
        let bn = BatchNorm { channels, eps, weight, bias, running_mean, running_var };
        self.emit(base, Op::BatchNorm(bn), vec![x])
    }

    fn resize(&mut self, node: &NodeProto, base: &str) -> Result<String> {
        let x = self.tensor_in(node, 0)?;
        let mode = attr_s(node, "mode", "nearest");
        if mode != "nearest" {
            return Err(unsupported(format!("{mode} interpolation (nearest is supported)")));
        }
        let s = self.shape_of(&x).clone();
        let (scales, sizes) = if node.op_type == "Upsample" {
            let sc = match attr(node, "scales") {
                Some(a) => a.floats.clone(),
                None => self.constant(node, 1)?.iter().copied().collect(),
            };
            (Some(sc), None)
        } else {
            // Resize(X, roi, scales, sizes) (opset 11+) or Resize(X, scales) (opset 10).
            let n = node.input.len();
            let idx_scales = if n == 2 { 1 } else { 2 };
            let scales = self
                .optional_const(node, idx_scales)?
                .filter(|c| !c.is_empty())
                .map(|c| c.iter().copied().collect::<Vec<f32>>());
            let sizes = if n > 3 {
                self.optional_const(node, 3)?.map(|c| c.iter().map(|&v| v as usize).collect::<Vec<usize>>())
            } else {
                None
            };
            let coord = attr_s(node, "coordinate_transformation_mode", "half_pixel");
            let nearest = attr_s(node, "nearest_mode", "round_prefer_floor");
            let exact = match coord.as_str() {
                "half_pixel" | "pytorch_half_pixel" => true,
                "asymmetric" => nearest == "floor",
                _ => false,
            };
            if !exact {
                return Err(unsupported(format!(
                    "nearest resizing with coordinate_transformation_mode {coord} and nearest_mode {nearest} (not a plain replication)"
                )));
            }
            (scales, sizes)
        };
        let factor = match (scales, sizes) {
            (Some(sc), _)
                if sc.len() == 4
                    && sc[0] == 1.0
                    && sc[1] == 1.0
                    && sc[2] == sc[3]
                    && sc[2] >= 1.0
                    && sc[2].fract() == 0.0 =>
            {
                sc[2] as usize
            }
            (_, Some(sz))
                if sz.len() == 4
                    && sz[2] % s[1] == 0
                    && sz[3] % s[2] == 0
                    && sz[2] / s[1] == sz[3] / s[2]
                    && sz[1] == s[0] =>
            {
                sz[2] / s[1]
            }
            _ => return Err(unsupported("resizing other than by one integer factor on height and width")),
        };
        self.emit(base, Op::Upsample { factor }, vec![x])
    }
}

/// Slice's starts, ends, axes and steps, one entry per sliced axis.
type SliceArgs = (Vec<i64>, Vec<i64>, Vec<i64>, Vec<i64>);

/// Slice's starts, ends, axes and steps (inputs since opset 10, attributes before).
fn slice_args(b: &Builder, node: &NodeProto) -> Result<SliceArgs> {
    let starts = match b.ints_input(node, 1)? {
        Some(v) => v,
        None => attr_ints(node, "starts").ok_or_else(|| ModelError::InvalidGraph("Slice without starts".into()))?,
    };
    let ends = match b.ints_input(node, 2)? {
        Some(v) => v,
        None => attr_ints(node, "ends").ok_or_else(|| ModelError::InvalidGraph("Slice without ends".into()))?,
    };
    let axes = match b.ints_input(node, 3)? {
        Some(v) => v,
        None => attr_ints(node, "axes").unwrap_or_else(|| (0..starts.len() as i64).collect()),
    };
    let steps = b.ints_input(node, 4)?.unwrap_or_else(|| vec![1; starts.len()]);
    if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
        return Err(ModelError::InvalidGraph("Slice with starts, ends, axes and steps of different lengths".into()));
    }
    Ok((starts, ends, axes, steps))
}

/// ONNX's clamping of a slice `[start, end)` (negative = from the end) to a dimension of `size`.
fn clamp_range(start: i64, end: i64, size: usize) -> (usize, usize) {
    let n = size as i64;
    let fix = |v: i64| if v < 0 { (v + n).max(0) } else { v.min(n) };
    let (a, b) = (fix(start), fix(end));
    (a as usize, b.max(a) as usize)
}

/// The per-channel `(scale, shift)` of a batch-norm node, if every channel has the same.
fn uniform_affine(node: &Node, weights: &Weights) -> Option<(f64, f64)> {
    let Op::BatchNorm(b) = &node.op else { return None };
    let (w, bias, m, v) = (&weights[&b.weight], &weights[&b.bias], &weights[&b.running_mean], &weights[&b.running_var]);
    let mut out: Option<(f64, f64)> = None;
    for c in 0..b.channels {
        let s = w[c] as f64 / (v[c] as f64 + b.eps).sqrt();
        let t = bias[c] as f64 - m[c] as f64 * s;
        match out {
            None => out = Some((s, t)),
            Some((s0, t0)) if (s - s0).abs() <= 1e-6 && (t - t0).abs() <= 1e-6 => {}
            Some(_) => return None,
        }
    }
    out
}

/// Recognises hard-swish written out — `x · clip(x + 3, 0, 6) / 6` (the division before or after
/// the product) or `x · hardsigmoid(x)` with α = 1/6, β = 1/2 — and replaces it by one
/// `hard_swish` activation, dropping the intermediate nodes (each read only there).
fn fuse_hard_swish(mut nodes: Vec<Node>, mut weights: Weights) -> (Vec<Node>, Weights) {
    loop {
        let index: HashMap<&str, usize> = nodes.iter().enumerate().map(|(i, n)| (n.name.as_str(), i)).collect();
        let mut readers: HashMap<&str, usize> = HashMap::new();
        for n in &nodes {
            for i in &n.inputs {
                *readers.entry(i.as_str()).or_insert(0) += 1;
            }
        }
        let near = |a: f64, b: f64| (a - b).abs() <= 1e-5;
        let producer = |name: &str| index.get(name).map(|&i| &nodes[i]);
        let only = |name: &str| readers.get(name) == Some(&1);
        // Is `g` (read once) a hard-swish gate of `x` once the product is scaled by `after`:
        // `after · s · clip(x + 3, 0, 6) = clip(x + 3, 0, 6) / 6` (s: an optional uniform scale
        // after the clip), or `after · s · hardsigmoid(x) = hardsigmoid(x)` with α = 1/6, β = 1/2?
        // Returns the nodes it spans.
        let gate = |g: &str, x: &str, after: f64| -> Option<Vec<String>> {
            let mut span = Vec::new();
            let mut cur = producer(g)?;
            let mut scale = after;
            if let Some((s, t)) = uniform_affine(cur, &weights) {
                if !near(t, 0.0) || !only(&cur.name) {
                    return None;
                }
                scale *= s;
                span.push(cur.name.clone());
                cur = producer(&cur.inputs[0])?;
            }
            if !only(&cur.name) {
                return None;
            }
            match &cur.op {
                Op::Activation(Activation::HardSigmoid { alpha, beta })
                    if near(*alpha as f64, 1.0 / 6.0) && near(*beta as f64, 0.5) && cur.inputs[0] == x =>
                {
                    span.push(cur.name.clone());
                    near(scale, 1.0).then_some(span)
                }
                Op::Activation(Activation::Clip { min, max }) if *min == 0.0 && *max == 6.0 => {
                    span.push(cur.name.clone());
                    let add = producer(&cur.inputs[0])?;
                    let (s, t) = uniform_affine(add, &weights)?;
                    (near(s, 1.0) && near(t, 3.0) && add.inputs[0] == x && only(&add.name) && near(scale, 1.0 / 6.0))
                        .then(|| {
                            span.push(add.name.clone());
                            span
                        })
                }
                _ => None,
            }
        };
        let mut found: Option<(usize, String, Vec<String>)> = None;
        for (i, n) in nodes.iter().enumerate() {
            let Op::Mul = n.op else { continue };
            for (x, g) in [(&n.inputs[0], &n.inputs[1]), (&n.inputs[1], &n.inputs[0])] {
                if let Some(span) = gate(g, x, 1.0) {
                    found = Some((i, x.clone(), span));
                    break;
                }
                // x · clip(x + 3, 0, 6), divided by 6 by the product's only reader.
                if let Some(span) = gate(g, x, 1.0 / 6.0).filter(|_| only(&n.name)) {
                    let div = nodes.iter().position(|d| {
                        d.inputs.len() == 1
                            && d.inputs[0] == n.name
                            && uniform_affine(d, &weights).is_some_and(|(s, t)| near(s, 1.0 / 6.0) && near(t, 0.0))
                    });
                    if let Some(d) = div {
                        let mut span = span;
                        span.push(n.name.clone());
                        found = Some((d, x.clone(), span));
                        break;
                    }
                }
            }
            if found.is_some() {
                break;
            }
        }
        let Some((target, x, span)) = found else { return (nodes, weights) };
        for (_, w) in nodes[target].op.weight_refs() {
            weights.remove(w);
        }
        nodes[target].op = Op::Activation(Activation::HardSwish);
        nodes[target].inputs = vec![x];
        let dropped: HashSet<String> = span.into_iter().filter(|s| *s != nodes[target].name).collect();
        for n in nodes.iter().filter(|n| dropped.contains(&n.name)) {
            for (_, w) in n.op.weight_refs() {
                weights.remove(w);
            }
        }
        nodes.retain(|n| !dropped.contains(&n.name));
    }
}
