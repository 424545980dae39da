//! The lowering of a model's linear layers to [`LinearMap`]s, shared by every backend.
//!
//! [`node_map`] gives the map of one linear IR node over its inputs; [`chains`] composes, for
//! every activation of a model and for its output, all the linear layers since the previous
//! activations into one map over those activations' outputs (and the model input). The CKKS
//! compiler (`peregrine-ops`) schedules such maps as diagonals between packed layouts; the TFHE
//! quantiser (`backend-tfhe`) turns their rows into integer weighted sums.

use peregrine_model::ir::{Model, Op, INPUT};
use thiserror::Error;

use crate::linear::{LinearMap, Window};

/// A layer the lowering cannot express as a linear map.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("node '{node}' ({kind}) is not linear")]
pub struct NotLinear {
    /// The node.
    pub node: String,
    /// Its operation (`max_pool`, `relu`…).
    pub kind: &'static str,
}

fn f64s(model: &Model, name: &str) -> Vec<f64> {
    model.weight(name).iter().map(|&v| v as f64).collect()
}

fn window(kernel: [usize; 2], stride: [usize; 2], padding: [usize; 2], dilation: [usize; 2]) -> Window {
    Window::symmetric(kernel, stride, padding, dilation)
}

/// `(c, h, w)` of a shape (`[F]` is `F × 1 × 1`).
fn chw(s: &[usize]) -> (usize, usize, usize) {
    (s[0], s.get(1).copied().unwrap_or(1), s.get(2).copied().unwrap_or(1))
}

/// The shape of tensor `name` (a node or the model input).
pub fn shape_of<'a>(model: &'a Model, name: &str) -> &'a [usize] {
    match model.node_index(name) {
        Some(i) => model.shape(i),
        None if name == INPUT => &model.graph().input.shape,
        None => &[],
    }
}

/// The linear map of node `i` over its inputs (in their order), or `None` for an activation;
/// max pooling is not linear.
pub fn node_map(model: &Model, i: usize) -> Result<Option<LinearMap>, NotLinear> {
    let node = &model.graph().nodes[i];
    let (ci, hi, wi) = chw(shape_of(model, &node.inputs[0]));
    let out = model.shape(i);
    let m = model;
    let bias = |b: &Option<String>| b.as_ref().map(|b| f64s(m, b));
    Ok(Some(match &node.op {
        Op::Conv2d(p) => {
            let w = Window { padding_end: p.padding_after(), ..window(p.kernel, p.stride, p.padding, p.dilation) };
            LinearMap::conv2d(ci, hi, wi, p.out_channels, w, p.groups, &f64s(m, &p.weight), bias(&p.bias).as_deref())
        }
        Op::ConvTranspose2d(p) => {
            let w = window(p.kernel, p.stride, p.padding, p.dilation);
            let (weight, b) = (f64s(m, &p.weight), bias(&p.bias));
            LinearMap::conv_transpose2d(ci, hi, wi, p.out_channels, out[1], out[2], w, p.groups, &weight, b.as_deref())
        }
        Op::BatchNorm(b) => {
            let (w, bb, mean, var) =
                (f64s(m, &b.weight), f64s(m, &b.bias), f64s(m, &b.running_mean), f64s(m, &b.running_var));
            let scale: Vec<f64> = (0..ci).map(|c| w[c] / (var[c] + b.eps).sqrt()).collect();
            let shift: Vec<f64> = (0..ci).map(|c| bb[c] - mean[c] * scale[c]).collect();
            LinearMap::affine(ci, hi * wi, &scale, &shift)
        }
        Op::AvgPool(p) => LinearMap::avg_pool(ci, hi, wi, window(p.kernel, p.stride, p.padding, [1, 1])),
        Op::GlobalAvgPool => LinearMap::global_avg_pool(ci, hi, wi),
        Op::Linear(l) => {
            LinearMap::fully_connected(l.in_features, l.out_features, &f64s(m, &l.weight), bias(&l.bias).as_deref())
        }
        Op::Upsample { factor } => LinearMap::upsample(ci, hi, wi, *factor),
        Op::SubsampleChannelPad { stride, pad_before, pad_after } => {
            LinearMap::subsample_pad(ci, hi, wi, *stride, *pad_before, *pad_after)
        }
        Op::Flatten => LinearMap::identity(ci * hi * wi),
        Op::Add | Op::Concat => {
            let lens: Vec<usize> = node.inputs.iter().map(|n| shape_of(m, n).iter().product()).collect();
            if matches!(node.op, Op::Add) {
                LinearMap::sum(lens.len(), lens[0])
            } else {
                LinearMap::concat(&lens)
            }
        }
        Op::Activation(_) => return Ok(None),
        Op::MaxPool(_) | Op::Mul => return Err(NotLinear { node: node.name.clone(), kind: node.op.kind() }),
    }))
}

/// A tensor that is not a linear function of others: the model input or an activation's output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// The model input.
    Input,
    /// The output of the `k`-th activation (in [`Chains::activations`] order).
    Activation(usize),
}

/// An affine map over sources.
#[derive(Clone, Debug, PartialEq)]
pub struct Chain {
    /// The composed map; its input `j` is `sources[j]`.
    pub map: LinearMap,
    /// The sources, each once.
    pub sources: Vec<Source>,
}

/// A model as alternating linear chains and activations.
#[derive(Clone, Debug, PartialEq)]
pub struct Chains {
    /// Per activation, in topological order: its node index and the chain computing its input.
    pub activations: Vec<(usize, Chain)>,
    /// The chain computing the model output.
    pub output: Chain,
}

/// Composes the linear layers of `model` between its activations (see the module
/// documentation). Fails on a layer that is neither linear nor an activation.
pub fn chains(model: &Model) -> Result<Chains, NotLinear> {
    let g = model.graph();
    let identity = |source: Source, len: usize| Chain { map: LinearMap::identity(len), sources: vec![source] };
    let input_len: usize = g.input.shape.iter().product();
    let mut values: Vec<Option<Chain>> = vec![None; g.nodes.len()];
    // Uses left of every node's value: the last one takes it instead of a copy.
    let mut uses = vec![0usize; g.nodes.len()];
    for name in g.nodes.iter().flat_map(|n| &n.inputs).chain(std::iter::once(&g.output)) {
        if let Some(j) = model.node_index(name) {
            uses[j] += 1;
        }
    }
    let mut activations = Vec::new();
    let mut value = |values: &mut [Option<Chain>], name: &str| -> Chain {
        let Some(j) = model.node_index(name) else { return identity(Source::Input, input_len) };
        uses[j] -= 1;
        if uses[j] == 0 {
            values[j].take().expect("topological order, one use each")
        } else {
            values[j].clone().expect("topological order")
        }
    };
    for (i, node) in g.nodes.iter().enumerate() {
        let len: usize = model.shape(i).iter().product();
        let next = match node_map(model, i)? {
            None => {
                activations.push((i, value(&mut values, &node.inputs[0])));
                identity(Source::Activation(activations.len() - 1), len)
            }
            Some(outer) => {
                let inner: Vec<Chain> = node.inputs.iter().map(|n| value(&mut values, n)).collect();
                let maps: Vec<Option<&LinearMap>> = inner.iter().map(|c| Some(&c.map)).collect();
                let ids: Vec<Source> = inner.iter().flat_map(|c| c.sources.iter().copied()).collect();
                let (map, sources) = outer.substitute(&maps).merge_inputs(&ids);
                Chain { map, sources }
            }
        };
        values[i] = Some(next);
    }
    let output = value(&mut values, &g.output);
    Ok(Chains { activations, output })
}
