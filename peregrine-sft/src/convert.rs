//! Conversion of a pretrained model without training (SFT with zero epochs): batch norm folded
//! into the convolution before it, every ReLU / SiLU / GELU replaced by PolyAct-RN with the
//! Hermite polynomial of the given degree and ranges from running maxima over calibration
//! batches, max pooling replaced by average pooling; a final activation (a segmenter's
//! sigmoid) is left to the client ([`peregrine_model::transform::client_output_activation`]).

use std::collections::HashMap;

use crate::error::{Result, SftError};
use ndarray::{ArrayD, Axis, IxDyn};
use peregrine_model::ir::{Activation, Approximated, Model, Node, Op};
use peregrine_model::reference::Reference;

use crate::hermite::{hermite_polynomial, ScaledHermite};
use crate::polyact::PolyActRn;

/// The output channel of each entry of a flattened weight tensor.
type ChannelOf = Box<dyn Fn(usize) -> usize>;

/// Folds every batch norm whose input is a convolution or transposed convolution used by
/// nothing else into that convolution's weights and bias. The folded model computes the same function.
pub fn fold_batch_norms(model: &Model) -> Result<Model> {
    let (graph, mut weights) = model.clone().into_parts();
    let mut consumers: HashMap<&str, usize> = HashMap::new();
    for n in &graph.nodes {
        for i in &n.inputs {
            *consumers.entry(i.as_str()).or_default() += 1;
        }
    }
    let by_name: HashMap<&str, &Node> = graph.nodes.iter().map(|n| (n.name.as_str(), n)).collect();
    // bn node name -> conv node name
    let mut folded: HashMap<String, String> = HashMap::new();
    let mut new_conv_bias: HashMap<String, String> = HashMap::new();
    for n in &graph.nodes {
        let Op::BatchNorm(bn) = &n.op else { continue };
        let Some(prev) = by_name.get(n.inputs[0].as_str()) else { continue };
        // (weight name, bias name, output channels, output channel of each weight entry)
        let (weight_name, bias_name, out_channels, out_of): (String, Option<String>, usize, ChannelOf) = match &prev.op
        {
            Op::Conv2d(conv) => {
                let per_out = weights[&conv.weight].len() / conv.out_channels;
                (conv.weight.clone(), conv.bias.clone(), conv.out_channels, Box::new(move |i| i / per_out))
            }
            Op::ConvTranspose2d(ct) => {
                // weight (in, out/g, kh, kw): entry i belongs to input row i / (out/g·kh·kw),
                // group row / (in/g), output channel group·(out/g) + column.
                let (g, k) = (ct.groups, ct.kernel[0] * ct.kernel[1]);
                let (in_g, out_g) = (ct.in_channels / g, ct.out_channels / g);
                (
                    ct.weight.clone(),
                    ct.bias.clone(),
                    ct.out_channels,
                    Box::new(move |i| {
                        let row = i / (out_g * k);
                        (row / in_g) * out_g + (i / k) % out_g
                    }),
                )
            }
            _ => continue,
        };
        if consumers.get(prev.name.as_str()).copied().unwrap_or(0) != 1 || graph.output == prev.name {
            continue;
        }
        let (g, b, m, v) =
            (&weights[&bn.weight], &weights[&bn.bias], &weights[&bn.running_mean], &weights[&bn.running_var]);
        let scale: Vec<f64> = (0..bn.channels).map(|c| g[[c]] as f64 / (v[[c]] as f64 + bn.eps).sqrt()).collect();
        let shift: Vec<f64> = (0..bn.channels).map(|c| b[[c]] as f64 - m[[c]] as f64 * scale[c]).collect();
        let mut w = weights[&weight_name].clone();
        for (i, x) in w.iter_mut().enumerate() {
            *x = (*x as f64 * scale[out_of(i)]) as f32;
        }
        let old_bias: Vec<f64> = match &bias_name {
            Some(bn_) => weights[bn_].iter().map(|&x| x as f64).collect(),
            None => vec![0.0; out_channels],
        };
        let bias: Vec<f32> = (0..out_channels).map(|c| (old_bias[c] * scale[c] + shift[c]) as f32).collect();
        weights.insert(weight_name.clone(), w);
        let bias_name = bias_name.unwrap_or_else(|| format!("{}.bias", prev.name));
        weights.insert(bias_name.clone(), ArrayD::from_shape_vec(IxDyn(&[out_channels]), bias).expect("sized"));
        for t in [&bn.weight, &bn.bias, &bn.running_mean, &bn.running_var] {
            weights.remove(t);
        }
        folded.insert(n.name.clone(), prev.name.clone());
        new_conv_bias.insert(prev.name.clone(), bias_name);
    }
    let mut graph = graph;
    graph.nodes.retain(|n| !folded.contains_key(&n.name));
    for n in graph.nodes.iter_mut() {
        for i in n.inputs.iter_mut() {
            if let Some(c) = folded.get(i) {
                *i = c.clone();
            }
        }
        if let Some(b) = new_conv_bias.get(&n.name) {
            match &mut n.op {
                Op::Conv2d(conv) => conv.bias = Some(b.clone()),
                Op::ConvTranspose2d(ct) => ct.bias = Some(b.clone()),
                _ => {}
            }
        }
    }
    if let Some(c) = folded.get(&graph.output) {
        graph.output = c.clone();
    }
    Ok(Model::new(graph, weights)?)
}

/// Zero-epoch SFT conversion: folds batch norms, calibrates PolyAct-RN ranges as running maxima
/// over `inputs` in batches of `batch` (preprocessed `[N, C, H, W]`), and exports the model with
/// per-channel polynomial activations (degree `degree`, bound `bound`).
pub fn convert(model: &Model, degree: usize, bound: f64, inputs: &ArrayD<f32>, batch: usize) -> Result<Model> {
    if !(1..=16).contains(&degree) {
        return Err(SftError::Unsupported(format!("polynomial degree must be 1..=16, got {degree}")));
    }
    let model = fold_batch_norms(&peregrine_model::transform::client_output_activation(model)?)?;
    let g = model.graph();
    let mut layers: HashMap<String, PolyActRn> = HashMap::new();
    // activation node -> index of the node producing its input
    let mut watch: HashMap<usize, Vec<String>> = HashMap::new();
    // Activations that are not positively homogeneous get one polynomial per channel range.
    let mut tables: HashMap<String, std::sync::Arc<ScaledHermite>> = HashMap::new();
    let mut scaled: HashMap<String, std::sync::Arc<ScaledHermite>> = HashMap::new();
    for n in &g.nodes {
        if let Op::Activation(a) = &n.op {
            if a.eval(0.0).is_none() {
                continue; // already a polynomial
            }
            let f = |x: f64| a.eval(x).expect("an exact activation");
            let Some(j) = model.node_index(&n.inputs[0]) else {
                return Err(SftError::Unsupported(format!("activation '{}' directly on the model input", n.name)));
            };
            let channels = model.shape(j)[0];
            layers.insert(n.name.clone(), PolyActRn::new(hermite_polynomial(f, degree), channels, bound));
            if let Some(table) = ScaledHermite::cached(&mut tables, a, degree) {
                scaled.insert(n.name.clone(), table);
            }
            watch.entry(j).or_default().push(n.name.clone());
        }
    }
    let exec = Reference::<f32>::new(&model);
    let n = inputs.shape()[0];
    for start in (0..n).step_by(batch.max(1)) {
        let x = inputs.slice_axis(Axis(0), (start..(start + batch).min(n)).into()).to_owned();
        exec.run_inspect(&x, |i, v| {
            if let Some(names) = watch.get(&i) {
                let c = v.shape()[1];
                let inner: usize = v.shape()[2..].iter().product::<usize>().max(1);
                let mut m = vec![0.0f64; c];
                for (k, chunk) in v.as_standard_layout().as_slice().expect("standard").chunks(inner).enumerate() {
                    for x in chunk {
                        m[k % c] = m[k % c].max(x.abs() as f64);
                    }
                }
                for name in names {
                    let l = layers.get_mut(name).expect("registered");
                    for (ch, mx) in m.iter().enumerate() {
                        l.observe(ch, *mx);
                    }
                }
            }
        })?;
    }
    let (mut graph, mut weights) = model.into_parts();
    for node in graph.nodes.iter_mut() {
        if let Some(l) = layers.get(&node.name) {
            let (mut coeffs, scale) = l.export();
            if let Some(table) = scaled.get(&node.name) {
                coeffs = (0..scale.len())
                    .flat_map(|c| {
                        let s = l.scale(c);
                        table.polynomial(s).into_iter().map(move |a| s * a)
                    })
                    .collect();
            }
            let c = scale.len();
            let cname = format!("{}.poly_coeffs", node.name);
            let sname = format!("{}.poly_input_scale", node.name);
            weights.insert(
                cname.clone(),
                ArrayD::from_shape_vec(IxDyn(&[c, degree + 1]), coeffs.iter().map(|v| *v as f32).collect())
                    .expect("sized"),
            );
            weights.insert(
                sname.clone(),
                ArrayD::from_shape_vec(IxDyn(&[c]), scale.iter().map(|v| *v as f32).collect()).expect("sized"),
            );
            node.op = Op::Activation(Activation::Poly {
                coeffs: cname,
                input_scale: Some(sname),
                approximates: Approximated::of(&node.op),
            });
        } else if let Op::MaxPool(p) = &node.op {
            node.op = Op::AvgPool(p.clone());
        }
    }
    graph.name = format!("{}-sft{degree}-e0", graph.name);
    Ok(Model::new(graph, weights)?)
}
