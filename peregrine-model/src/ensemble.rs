//! Ensembles as one wider model.
//!
//! K members of one architecture (the same graph, other weights — e.g. fine-tuned from other
//! seeds) become a single model whose every feature map holds the members' channels side by
//! side: the first layer reads the shared input with the members' filters concatenated, every
//! later convolution is grouped (block-diagonal: member k only reads member k's channels),
//! per-channel layers concatenate their parameters, and the output layer averages the members'
//! outputs. The result computes exactly the mean of the members' outputs; encrypted, the
//! members share ciphertexts, rotations and key switches, so an ensemble fills the slots one
//! member leaves free instead of multiplying the work.

use std::collections::HashMap;

use ndarray::{concatenate, ArrayD, Axis, IxDyn};

use crate::error::{ModelError, Result};
use crate::ir::{Activation, Conv2d, Graph, Linear, Model, Node, Op, Weights, INPUT};

/// How a tensor of the widened graph is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Form {
    /// The same for every member (the model input): `C` channels.
    Shared,
    /// The members' values stacked along channels (`K·C`), or along features after a flatten
    /// (member blocks stay contiguous in channel-major order).
    Stacked,
}

/// One model computing the mean of `members`' outputs (see the module documentation).
///
/// The members must have identical graphs (node names, operations, shapes, weight names) and
/// input specifications. Supported: convolutions (the first one reading the input ungrouped),
/// transposed convolutions after the first layer, batch norms, every activation, pooling,
/// global average pooling, upsampling, element-wise sums and products, flatten, fully
/// connected layers and ResNet option-A shortcuts (rewritten as grouped 1×1 convolutions);
/// channel concatenation is refused by name (the member blocks would interleave).
pub fn widen_ensemble(members: &[Model]) -> Result<Model> {
    let uniform = vec![1.0 / members.len().max(1) as f32; members.len()];
    widen_weighted_ensemble(members, &uniform)
}

/// [`widen_ensemble`] with the output a weighted sum of the members' outputs: member `m`'s
/// output counts `share[m]` (finite, not all zero; a sum of 1 keeps the outputs' scale — the
/// CLI normalises). Still linear, so an encrypted run pays nothing for the weights.
pub fn widen_weighted_ensemble(members: &[Model], share: &[f32]) -> Result<Model> {
    if share.len() != members.len() {
        return Err(ModelError::Unsupported(format!(
            "an ensemble of {} members got {} weights",
            members.len(),
            share.len()
        )));
    }
    if share.iter().any(|w| !w.is_finite()) || share.iter().all(|w| *w == 0.0) {
        return Err(ModelError::Unsupported(format!(
            "ensemble weights must be finite and not all zero, got {share:?}"
        )));
    }
    let Some(first) = members.first() else {
        return Err(ModelError::Unsupported("an ensemble needs at least two members, got none".into()));
    };
    if members.len() < 2 {
        return Err(ModelError::Unsupported("an ensemble needs at least two members, got one".into()));
    }
    let g = first.graph();
    if let Some(i) = members.iter().position(|m| m.client_activation().is_some()) {
        return Err(ModelError::Unsupported(format!(
            "ensemble member {} ends in an activation its client applies: the mean of the members' outputs before it is not the mean after it",
            i + 1
        )));
    }
    for (i, m) in members.iter().enumerate().skip(1) {
        let h = m.graph();
        if h.input != g.input {
            return Err(ModelError::Unsupported(format!(
                "ensemble member {} takes input {:?} (preprocessing {:?}), member 1 {:?} ({:?})",
                i + 1,
                h.input.shape,
                h.input.preprocess,
                g.input.shape,
                g.input.preprocess
            )));
        }
        if h.nodes != g.nodes || h.output != g.output {
            let differs = g.nodes.iter().zip(&h.nodes).find(|(a, b)| a != b).map(|(a, _)| a.name.clone());
            return Err(ModelError::Unsupported(format!(
                "ensemble member {} has another architecture than member 1 (first difference: {})",
                i + 1,
                differs.unwrap_or_else(|| "the number of nodes or the output".into())
            )));
        }
    }
    let k = members.len();
    let shapes: HashMap<&str, &[usize]> =
        g.nodes.iter().zip(first.shapes()).map(|(n, s)| (n.name.as_str(), s.as_slice())).collect();
    let mut forms: HashMap<String, Form> = HashMap::from([(INPUT.to_string(), Form::Shared)]);
    let mut weights = Weights::new();
    let mut nodes = Vec::with_capacity(g.nodes.len() + 1);
    // The members' copies of a weight tensor, concatenated along `axis`.
    let stack = |name: &str, axis: usize| -> Result<ArrayD<f32>> {
        let views: Vec<_> = members.iter().map(|m| m.weights()[name].view()).collect();
        concatenate(Axis(axis), &views).map_err(|e| ModelError::Weight(format!("stacking '{name}': {e}")))
    };
    let unsupported = |node: &Node, why: &str| {
        ModelError::Unsupported(format!("ensemble: node '{}' ({}) {why}", node.name, node.op.kind()))
    };
    for node in &g.nodes {
        let ins: Vec<Form> = node.inputs.iter().map(|n| forms[n]).collect();
        let all_stacked = ins.iter().all(|f| *f == Form::Stacked);
        let is_output = node.name == g.output;
        let mut out = node.clone();
        match &node.op {
            Op::Conv2d(c) => {
                let conv = match ins[0] {
                    Form::Shared if c.groups == 1 => Conv2d { out_channels: k * c.out_channels, ..c.clone() },
                    Form::Shared => return Err(unsupported(node, "is grouped and reads the input")),
                    Form::Stacked => Conv2d {
                        in_channels: k * c.in_channels,
                        out_channels: k * c.out_channels,
                        groups: k * c.groups,
                        ..c.clone()
                    },
                };
                // Filters (out, in/g, kh, kw) and biases: the members' concatenated.
                for t in std::iter::once(&c.weight).chain(&c.bias) {
                    weights.insert(t.clone(), stack(t, 0)?);
                }
                out.op = Op::Conv2d(conv);
            }
            Op::ConvTranspose2d(c) => {
                if ins[0] != Form::Stacked {
                    return Err(unsupported(node, "reads the input (only later transposed convolutions widen)"));
                }
                let mut t = c.clone();
                t.in_channels *= k;
                t.out_channels *= k;
                t.groups *= k;
                // Filters (in, out/g, kh, kw) by input channel: grouped by member once stacked.
                for w in std::iter::once(&c.weight).chain(&c.bias) {
                    weights.insert(w.clone(), stack(w, 0)?);
                }
                out.op = Op::ConvTranspose2d(t);
            }
            Op::BatchNorm(bn) => {
                if ins[0] != Form::Stacked {
                    return Err(unsupported(node, "normalises the input itself"));
                }
                for t in [&bn.weight, &bn.bias, &bn.running_mean, &bn.running_var] {
                    weights.insert(t.clone(), stack(t, 0)?);
                }
                let mut b = bn.clone();
                b.channels *= k;
                out.op = Op::BatchNorm(b);
            }
            Op::Activation(Activation::Poly { coeffs, input_scale, .. }) => {
                if ins[0] != Form::Stacked {
                    return Err(unsupported(node, "applies a polynomial to the input itself"));
                }
                let channels = shapes[node.name.as_str()][0];
                // Members of different degrees: a polynomial is the same polynomial with zero
                // coefficients above its degree, so every member's rows are padded to the largest.
                weights.insert(coeffs.clone(), stack_rows(members, coeffs, channels, true)?);
                if let Some(s) = input_scale {
                    weights.insert(s.clone(), stack_rows(members, s, channels, false)?);
                }
            }
            Op::Activation(_) | Op::AvgPool(_) | Op::MaxPool(_) | Op::GlobalAvgPool | Op::Upsample { .. } => {
                if ins[0] != Form::Stacked {
                    return Err(unsupported(node, "works on the input itself"));
                }
            }
            Op::Add | Op::Mul => {
                if !all_stacked {
                    return Err(unsupported(node, "combines the input with member values"));
                }
            }
            Op::Concat => {
                return Err(unsupported(node, "concatenates channels (the members' blocks would interleave)"))
            }
            Op::Flatten => {
                if ins[0] != Form::Stacked {
                    return Err(unsupported(node, "flattens the input itself"));
                }
            }
            Op::SubsampleChannelPad { stride, pad_before, pad_after } => {
                if ins[0] != Form::Stacked {
                    return Err(unsupported(node, "reads the input"));
                }
                // Per member: keep every stride-th pixel and place channel i at pad_before + i
                // — a 1×1 convolution of stride `stride` with 0/1 weights, grouped by member.
                let cin = shapes[node.inputs[0].as_str()][0];
                let cout = cin + pad_before + pad_after;
                let name = format!("{}.ensemble_shift", node.name);
                let mut w = ArrayD::zeros(IxDyn(&[k * cout, cin, 1, 1]));
                for m in 0..k {
                    for i in 0..cin {
                        w[[m * cout + pad_before + i, i, 0, 0]] = 1.0;
                    }
                }
                weights.insert(name.clone(), w);
                out.op = Op::Conv2d(Conv2d::pointwise(k * cin, k * cout, *stride, k, name));
            }
            Op::Linear(l) => {
                if ins[0] != Form::Stacked {
                    return Err(unsupported(node, "reads the input (flatten a feature map first)"));
                }
                if is_output {
                    // The weighted mean of the members' outputs: [s_1·W_1 … s_K·W_K], Σ s_m·b_m.
                    let mut w = stack(&l.weight, 1)?;
                    for (m, s) in share.iter().enumerate() {
                        let cols = m * l.in_features..(m + 1) * l.in_features;
                        w.slice_axis_mut(Axis(1), cols.into()).mapv_inplace(|v| v * s);
                    }
                    weights.insert(l.weight.clone(), w);
                    if let Some(b) = &l.bias {
                        let mean = members
                            .iter()
                            .zip(share)
                            .map(|(m, s)| m.weights()[b].mapv(|v| v * s))
                            .reduce(|a, b| a + b)
                            .expect("k >= 2");
                        weights.insert(b.clone(), mean);
                    }
                    out.op = Op::Linear(Linear { in_features: k * l.in_features, ..l.clone() });
                } else {
                    // Block-diagonal: member m's outputs read member m's features only.
                    let mut w = ArrayD::zeros(IxDyn(&[k * l.out_features, k * l.in_features]));
                    for (m, member) in members.iter().enumerate() {
                        let wm = &member.weights()[&l.weight];
                        for o in 0..l.out_features {
                            for i in 0..l.in_features {
                                w[[m * l.out_features + o, m * l.in_features + i]] = wm[[o, i]];
                            }
                        }
                    }
                    weights.insert(l.weight.clone(), w);
                    if let Some(b) = &l.bias {
                        weights.insert(b.clone(), stack(b, 0)?);
                    }
                    out.op = Op::Linear(Linear {
                        in_features: k * l.in_features,
                        out_features: k * l.out_features,
                        ..l.clone()
                    });
                }
            }
        }
        let form = match (&node.op, is_output) {
            (Op::Linear(_), true) => Form::Shared,
            _ => Form::Stacked,
        };
        forms.insert(node.name.clone(), form);
        nodes.push(out);
    }
    let mut output = g.output.clone();
    if forms[&output] == Form::Stacked {
        // An output that is not a fully connected layer (maps, detector heads): averaged by one
        // more layer, ungrouped, weights I/K per member.
        let shape = shapes[output.as_str()];
        let name = format!("{output}.ensemble_mean");
        let weight = format!("{name}.weight");
        let op = match shape {
            [f] => {
                let mut w = ArrayD::zeros(IxDyn(&[*f, k * f]));
                for m in 0..k {
                    for i in 0..*f {
                        w[[i, m * f + i]] = share[m];
                    }
                }
                weights.insert(weight.clone(), w);
                Op::Linear(Linear { in_features: k * f, out_features: *f, weight, bias: None })
            }
            [c, _, _] => {
                let mut w = ArrayD::zeros(IxDyn(&[*c, k * c, 1, 1]));
                for m in 0..k {
                    for i in 0..*c {
                        w[[i, m * c + i, 0, 0]] = share[m];
                    }
                }
                weights.insert(weight.clone(), w);
                Op::Conv2d(Conv2d::pointwise(k * c, *c, 1, 1, weight))
            }
            other => {
                return Err(ModelError::Unsupported(format!(
                    "ensemble: output '{output}' has shape {other:?}; only vectors and [C, H, W] maps are averaged"
                )))
            }
        };
        nodes.push(Node { name: name.clone(), op, inputs: vec![output.clone()] });
        output = name;
    }
    let graph = Graph { name: format!("{}-ensemble{k}", g.name), nodes, output, ..g.clone() };
    Model::new(graph, weights)
}

/// A per-channel parameter (`(C, …)`, or one row shared by all `channels`) of every member,
/// each expanded to `channels` rows, stacked; with `pad_columns`, rows of `(C, k)` tensors are
/// first padded with zeros to the members' largest k (polynomial coefficients of lower degree).
fn stack_rows(members: &[Model], name: &str, channels: usize, pad_columns: bool) -> Result<ArrayD<f32>> {
    let columns = members.iter().filter_map(|m| m.weights()[name].shape().get(1).copied()).max();
    let mut parts = Vec::with_capacity(members.len());
    for m in members {
        let mut w = &m.weights()[name];
        let padded;
        if let (true, Some(k), &[rows, have]) = (pad_columns, columns, w.shape()) {
            if have < k {
                padded = ArrayD::from_shape_fn(IxDyn(&[rows, k]), |i| if i[1] < have { w[[i[0], i[1]]] } else { 0.0 });
                w = &padded;
            }
        }
        let rows = w.shape().first().copied().unwrap_or(1);
        let full = if rows == channels {
            w.clone()
        } else if rows == 1 {
            let mut shape = w.shape().to_vec();
            shape[0] = channels;
            w.broadcast(IxDyn(&shape))
                .ok_or_else(|| ModelError::Weight(format!("'{name}' does not broadcast to {channels} channels")))?
                .to_owned()
        } else {
            return Err(ModelError::Weight(format!("'{name}' has {rows} rows for {channels} channels")));
        };
        parts.push(full);
    }
    let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
    concatenate(Axis(0), &views).map_err(|e| ModelError::Weight(format!("stacking '{name}': {e}")))
}
