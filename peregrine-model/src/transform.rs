//! Model rewrites for encrypted execution without training: every ReLU / SiLU / GELU becomes a
//! per-channel polynomial on a calibrated range, max pooling becomes average pooling.
//!
//! The polynomial is the least-squares fit of the activation on [−1, 1] (uniform weight),
//! applied to `x / r_c` and scaled back by `r_c`, with `r_c` the largest |x| seen on channel
//! `c` over calibration images. This is the "no fine-tuning" conversion; `peregrine-sft`
//! improves on it by training.

use std::collections::HashMap;

use ndarray::{ArrayD, IxDyn};

use crate::error::{ModelError, Result};
use crate::ir::{Activation, Approximated, Model, Node, Op, INPUT};
use crate::reference::Reference;

/// Least-squares polynomial fit (ascending coefficients) of `f` on [−1, 1].
pub fn fit_on_unit_interval(f: impl Fn(f64) -> f64, degree: usize) -> Vec<f64> {
    let n = 4001;
    let xs: Vec<f64> = (0..n).map(|i| -1.0 + 2.0 * i as f64 / (n - 1) as f64).collect();
    let m = degree + 1;
    // Normal equations in the Legendre-friendly monomial basis (small degree: well conditioned enough).
    let mut a = vec![vec![0.0; m + 1]; m];
    for &x in &xs {
        let fx = f(x);
        let pw: Vec<f64> = (0..m).map(|k| x.powi(k as i32)).collect();
        for r in 0..m {
            for c in 0..m {
                a[r][c] += pw[r] * pw[c];
            }
            a[r][m] += pw[r] * fx;
        }
    }
    // Gaussian elimination with partial pivoting.
    for col in 0..m {
        let piv = (col..m).max_by(|i, j| a[*i][col].abs().total_cmp(&a[*j][col].abs())).expect("rows");
        a.swap(col, piv);
        for r in 0..m {
            if r != col {
                let f = a[r][col] / a[col][col];
                for c in col..=m {
                    a[r][c] -= f * a[col][c];
                }
            }
        }
    }
    (0..m).map(|k| a[k][m] / a[k][k]).collect()
}

/// The function an activation computes.
pub fn activation_fn(a: &Activation) -> Option<impl Fn(f64) -> f64 + '_> {
    a.eval(0.0).map(|_| move |x| a.eval(x).expect("an exact activation"))
}

/// Largest |x| per channel at the input of every non-polynomial activation, over `inputs`
/// (`[N, C, H, W]`, preprocessed), keyed by activation node name.
pub fn calibrate_ranges(model: &Model, inputs: &ArrayD<f32>) -> Result<HashMap<String, Vec<f64>>> {
    let g = model.graph();
    let mut wanted: HashMap<usize, Vec<String>> = HashMap::new();
    let mut from_input = Vec::new();
    for n in &g.nodes {
        if let Op::Activation(a) = &n.op {
            if activation_fn(a).is_some() {
                match model.node_index(&n.inputs[0]) {
                    Some(j) => wanted.entry(j).or_default().push(n.name.clone()),
                    None => from_input.push(n.name.clone()),
                }
            }
        }
    }
    let mut ranges: HashMap<String, Vec<f64>> = HashMap::new();
    let mut record = |names: &[String], v: &ArrayD<f32>| {
        let c = v.shape()[1];
        let inner: usize = v.shape()[2..].iter().product();
        let mut m = vec![0.0f64; c];
        for (k, chunk) in v.as_standard_layout().as_slice().expect("standard").chunks(inner.max(1)).enumerate() {
            let ch = k % c;
            for x in chunk {
                m[ch] = m[ch].max(x.abs() as f64);
            }
        }
        for n in names {
            let e = ranges.entry(n.clone()).or_insert_with(|| vec![0.0; c]);
            for (a, b) in e.iter_mut().zip(&m) {
                *a = a.max(*b);
            }
        }
    };
    record(&from_input, inputs);
    let exec = Reference::<f32>::new(model);
    for chunk in 0..inputs.shape()[0].div_ceil(64) {
        let a = chunk * 64;
        let b = (a + 64).min(inputs.shape()[0]);
        let x = inputs.slice_axis(ndarray::Axis(0), (a..b).into()).to_owned();
        exec.run_inspect(&x, |i, v| {
            if let Some(names) = wanted.get(&i) {
                record(names, v);
            }
        })?;
    }
    Ok(ranges)
}

/// Replaces activations by degree-`degree` polynomials on the calibrated per-channel ranges
/// (`margin` × the largest |x| seen; `default_range` where no range was calibrated) and max
/// pooling by average pooling. The result loads and runs like any model.
pub fn polynomialize(
    model: &Model,
    degree: usize,
    ranges: &HashMap<String, Vec<f64>>,
    margin: f64,
    default_range: f64,
) -> Result<Model> {
    if !(1..=16).contains(&degree) {
        return Err(ModelError::Unsupported(format!("polynomial degree must be 1..=16, got {degree}")));
    }
    let (mut graph, mut weights) = model.clone().into_parts();
    let shapes: HashMap<String, Vec<usize>> =
        graph.nodes.iter().enumerate().map(|(i, n)| (n.name.clone(), model.shape(i).clone())).collect();
    let mut nodes = Vec::with_capacity(graph.nodes.len());
    for n in graph.nodes.drain(..) {
        let op = match &n.op {
            Op::Activation(a) => match activation_fn(a) {
                Some(f) => {
                    let shape = if n.inputs[0] == INPUT {
                        model.graph().input.shape.clone()
                    } else {
                        shapes[&n.inputs[0]].clone()
                    };
                    let c = shape[0];
                    let r: Vec<f64> = match ranges.get(&n.name) {
                        Some(v) => v.iter().map(|x| (x * margin).max(1e-3)).collect(),
                        None => vec![default_range; c],
                    };
                    let mut coeffs = Vec::with_capacity(c * (degree + 1));
                    for rc in &r {
                        // y = r·p(x/r) with p the fit of t ↦ f(r·t)/r on [−1, 1] (for ReLU, p is the same for every r).
                        let fc = fit_on_unit_interval(|t| f(rc * t) / rc, degree);
                        coeffs.extend(fc.iter().map(|k| (rc * k) as f32));
                    }
                    let cname = format!("{}.poly_coeffs", n.name);
                    let sname = format!("{}.poly_input_scale", n.name);
                    weights
                        .insert(cname.clone(), ArrayD::from_shape_vec(IxDyn(&[c, degree + 1]), coeffs).expect("sized"));
                    weights.insert(
                        sname.clone(),
                        ArrayD::from_shape_vec(IxDyn(&[c]), r.iter().map(|x| (1.0 / x) as f32).collect())
                            .expect("sized"),
                    );
                    Op::Activation(Activation::Poly {
                        coeffs: cname,
                        input_scale: Some(sname),
                        approximates: relu_only(&n.op),
                    })
                }
                None => n.op.clone(),
            },
            Op::MaxPool(p) => Op::AvgPool(p.clone()),
            other => other.clone(),
        };
        nodes.push(Node { op, ..n });
    }
    graph.nodes = nodes;
    if !graph.name.contains("poly") {
        graph.name = format!("{}-poly{degree}", graph.name);
    }
    Model::new(graph, weights)
}

/// Calibrates on `inputs` (`[N, C, H, W]`, preprocessed), then polynomializes; a final
/// activation goes to the client first ([`client_output_activation`]).
pub fn convert(model: &Model, degree: usize, inputs: &ArrayD<f32>, margin: f64) -> Result<Model> {
    let model = client_output_activation(model)?;
    let ranges = calibrate_ranges(&model, inputs)?;
    polynomialize(&model, degree, &ranges, margin, 1.0)
}

/// The same function with its last activation applied by the client: when the output node is
/// an exact elementwise activation (a segmenter's sigmoid, a regressor's ReLU) that nothing
/// else reads, it leaves the graph, its input becomes the output, and
/// [`crate::ir::Graph::client_activation`] records it. An encrypted run then returns the values
/// before it, and the client applies it exactly after decryption instead of the server
/// evaluating a polynomial on the output's whole range. Any other model is returned as is.
pub fn client_output_activation(model: &Model) -> Result<Model> {
    let g = model.graph();
    if g.client_activation.is_some() {
        return Ok(model.clone());
    }
    let Some(node) = g.nodes.iter().find(|n| n.name == g.output) else { return Ok(model.clone()) };
    let Op::Activation(a) = &node.op else { return Ok(model.clone()) };
    let read_elsewhere = g.nodes.iter().any(|n| n.inputs.contains(&node.name));
    if a.eval(0.0).is_none() || node.inputs[0] == INPUT || read_elsewhere {
        return Ok(model.clone());
    }
    let (a, input, name) = (a.clone(), node.inputs[0].clone(), node.name.clone());
    let (mut graph, weights) = model.clone().into_parts();
    graph.nodes.retain(|n| n.name != name);
    graph.output = input;
    graph.client_activation = Some(a);
    Model::new(graph, weights)
}

/// This conversion fits `f(x)` itself, which equals `r·f(x/r)` (the meaning of
/// `Activation::Poly::approximates`) only for the positively homogeneous ReLU.
fn relu_only(op: &Op) -> Option<Approximated> {
    Approximated::of(op).filter(|a| *a == Approximated::Relu)
}

/// The same model taking its input channels in reverse order (a network trained on BGR images
/// made to take RGB ones, or the other way round): the normalisation's means and standard
/// deviations are reversed, and so are the input channels of every layer that reads the input.
/// Those layers must be convolutions (plain or transposed) of one group; anything else reading
/// the input is refused by name, and so is an input that is not 3 channels.
pub fn reverse_input_channels(model: &Model) -> Result<Model> {
    let (mut graph, mut weights) = model.clone().into_parts();
    let c = graph.input.shape[0];
    if c != 3 {
        return Err(ModelError::Unsupported(format!(
            "reversing the channel order (BGR ↔ RGB) needs a 3-channel input, the model takes {c}"
        )));
    }
    graph.input.preprocess.mean.reverse();
    graph.input.preprocess.std.reverse();
    let mut reversed = Vec::new();
    for n in graph.nodes.iter().filter(|n| n.inputs.iter().any(|i| i == INPUT)) {
        let (weight, axis) = match &n.op {
            Op::Conv2d(p) if p.groups == 1 => (&p.weight, 1),
            Op::ConvTranspose2d(p) if p.groups == 1 => (&p.weight, 0),
            other => {
                return Err(ModelError::Unsupported(format!(
                    "cannot reverse the input's channel order: node '{}' ({}) reads the input; only convolutions of one group can take the order over",
                    n.name,
                    other.kind()
                )))
            }
        };
        let entry = (weight.clone(), axis);
        if !reversed.contains(&entry) {
            reversed.push(entry);
        }
    }
    for (name, axis) in reversed {
        let w = weights.get_mut(&name).ok_or_else(|| ModelError::Weight(format!("tensor '{name}' is missing")))?;
        w.invert_axis(ndarray::Axis(axis));
    }
    Model::new(graph, weights)
}
