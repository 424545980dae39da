//! Importers that build Peregrine models from PyTorch-style tensor files.

use std::path::Path;

use crate::error::{ModelError, Result};
use crate::format::load_tensors;
use crate::ir::*;

/// CIFAR-10 class names in label order.
pub const CIFAR10_CLASSES: [&str; 10] =
    ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];

/// Builds the CIFAR ResNet of the given depth (6n + 2) from a PyTorch `state_dict` file
/// (names `conv1`, `bn1`, `layerL.B.{conv1,bn1,conv2,bn2}`, `linear`), with CIFAR-10
/// normalisation and class names, "option A" shortcuts, and batch-norm eps 1e-5.
pub fn import_cifar_resnet(depth: usize, weights: impl AsRef<Path>) -> Result<Model> {
    let weights = load_tensors(weights)?;
    cifar_resnet(depth, weights)
}

/// A bias-free 3×3 convolution with padding 1 whose weight tensor is `{name}.weight`.
fn conv3x3(name: &str, cin: usize, cout: usize, stride: usize, input: &str) -> Node {
    let op = Op::Conv2d(Conv2d::square3(cin, cout, stride, &format!("{name}.weight"), None));
    Node { name: name.into(), op, inputs: vec![input.into()] }
}

/// A batch norm (eps 1e-5, PyTorch's default) over the tensors `{name}.{weight,bias,running_mean,running_var}`.
fn batch_norm(name: &str, channels: usize, input: &str) -> Node {
    let names = ["weight", "bias", "running_mean", "running_var"].map(|t| format!("{name}.{t}"));
    Node { name: name.into(), op: Op::BatchNorm(BatchNorm::named(channels, names)), inputs: vec![input.into()] }
}

/// A ReLU node.
fn relu(name: &str, input: &str) -> Node {
    Node { name: name.into(), op: Op::Activation(Activation::Relu), inputs: vec![input.into()] }
}

/// Builds the CIFAR ResNet graph of `depth` over already loaded tensors.
pub fn cifar_resnet(depth: usize, mut weights: Weights) -> Result<Model> {
    if depth < 8 || (depth - 2) % 6 != 0 {
        return Err(ModelError::Unsupported(format!(
            "CIFAR ResNet depth must be 6n + 2 (20, 32, 44, 56, 110…), got {depth}"
        )));
    }
    // PyTorch checkpoints may carry counters that inference does not use.
    weights.retain(|k, _| !k.ends_with("num_batches_tracked"));
    let blocks = (depth - 2) / 6;
    let mut nodes = Vec::new();
    nodes.push(conv3x3("conv1", 3, 16, 1, INPUT));
    nodes.push(batch_norm("bn1", 16, "conv1"));
    nodes.push(relu("relu", "bn1"));
    let mut prev = "relu".to_string();
    let mut cin = 16;
    for (l, width) in [16usize, 32, 64].into_iter().enumerate() {
        for b in 0..blocks {
            let p = format!("layer{}.{b}", l + 1);
            let stride = if l > 0 && b == 0 { 2 } else { 1 };
            nodes.push(conv3x3(&format!("{p}.conv1"), cin, width, stride, &prev));
            nodes.push(batch_norm(&format!("{p}.bn1"), width, &format!("{p}.conv1")));
            nodes.push(relu(&format!("{p}.relu1"), &format!("{p}.bn1")));
            nodes.push(conv3x3(&format!("{p}.conv2"), width, width, 1, &format!("{p}.relu1")));
            nodes.push(batch_norm(&format!("{p}.bn2"), width, &format!("{p}.conv2")));
            let shortcut = if stride != 1 || cin != width {
                let name = format!("{p}.shortcut");
                let pad = (width - cin) / 2;
                nodes.push(Node {
                    name: name.clone(),
                    op: Op::SubsampleChannelPad { stride, pad_before: pad, pad_after: width - cin - pad },
                    inputs: vec![prev.clone()],
                });
                name
            } else {
                prev.clone()
            };
            nodes.push(Node { name: format!("{p}.add"), op: Op::Add, inputs: vec![format!("{p}.bn2"), shortcut] });
            nodes.push(relu(&format!("{p}.relu2"), &format!("{p}.add")));
            prev = format!("{p}.relu2");
            cin = width;
        }
    }
    nodes.push(Node { name: "avgpool".into(), op: Op::GlobalAvgPool, inputs: vec![prev] });
    let imagenet = Preprocess { mean: vec![0.485, 0.456, 0.406], std: vec![0.229, 0.224, 0.225], resize: true };
    cifar10_classifier(format!("resnet{depth}"), nodes, 64, imagenet, weights)
}

/// Ends `nodes` with flatten → fully connected (`features` → 10, tensors `linear.weight` and
/// `linear.bias`) and builds the CIFAR-10 classifier `name` on 3×32×32 inputs.
fn cifar10_classifier(
    name: String,
    mut nodes: Vec<Node>,
    features: usize,
    preprocess: Preprocess,
    weights: Weights,
) -> Result<Model> {
    let prev = nodes.last().map_or(INPUT.to_string(), |n| n.name.clone());
    nodes.push(Node { name: "flatten".into(), op: Op::Flatten, inputs: vec![prev] });
    let linear = Linear {
        in_features: features,
        out_features: 10,
        weight: "linear.weight".into(),
        bias: Some("linear.bias".into()),
    };
    nodes.push(Node { name: "linear".into(), op: Op::Linear(linear), inputs: vec!["flatten".into()] });
    let graph = Graph {
        version: FORMAT_VERSION,
        name,
        input: InputSpec { shape: vec![3, 32, 32], preprocess },
        nodes,
        output: "linear".into(),
        classes: CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect(),
        client_activation: None,
    };
    Model::new(graph, weights)
}

/// A small CIFAR-10 CNN for backends where every activation costs a bootstrap (TFHE): for each
/// width `c_i`, a 3×3 convolution (the first with stride 2), batch norm, 2×2 average pooling
/// *before* the activation (pooling is linear, so it fuses into the convolution and the
/// activation runs on the pooled map: a quarter of the bootstraps), ReLU; then a fully
/// connected layer. Weights are He-initialised from `seed`, batch norms start as identities:
/// train it with `peregrine finetune --keep-activations`.
pub fn small_cnn(widths: &[usize], seed: u64) -> Result<Model> {
    use rand::SeedableRng;
    use rand_distr::{Distribution, Normal};
    if widths.is_empty() || widths.len() > 4 || widths.contains(&0) {
        return Err(ModelError::Unsupported(format!(
            "small CNN widths: give 1 to 4 positive channel counts, got {widths:?}"
        )));
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut weights = Weights::new();
    let mut he = |weights: &mut Weights, name: String, shape: &[usize], fan_in: usize| {
        let n = Normal::new(0.0f32, (2.0 / fan_in as f32).sqrt()).expect("positive deviation");
        let v: Vec<f32> = (0..shape.iter().product::<usize>()).map(|_| n.sample(&mut rng)).collect();
        weights.insert(name, ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(shape), v).expect("sized"));
    };
    let mut nodes = Vec::new();
    let (mut prev, mut cin, mut size) = (INPUT.to_string(), 3usize, 32usize);
    let mut constants = Vec::new();
    for (i, &c) in widths.iter().enumerate() {
        let l = i + 1;
        let stride = if i == 0 { 2 } else { 1 };
        he(&mut weights, format!("conv{l}.weight"), &[c, cin, 3, 3], cin * 9);
        nodes.push(conv3x3(&format!("conv{l}"), cin, c, stride, &prev));
        for (t, v) in [("weight", 1.0f32), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)] {
            constants.push((format!("bn{l}.{t}"), c, v));
        }
        nodes.push(batch_norm(&format!("bn{l}"), c, &format!("conv{l}")));
        nodes.push(Node {
            name: format!("pool{l}"),
            op: Op::AvgPool(Pool2d { kernel: [2, 2], stride: [2, 2], padding: [0, 0] }),
            inputs: vec![format!("bn{l}")],
        });
        nodes.push(relu(&format!("relu{l}"), &format!("pool{l}")));
        prev = format!("relu{l}");
        cin = c;
        size = size / stride / 2;
        if size == 0 {
            return Err(ModelError::Unsupported(format!(
                "small CNN: {} stages shrink a 32×32 image to nothing",
                widths.len()
            )));
        }
    }
    for (name, c, v) in constants {
        weights.insert(name, ndarray::ArrayD::from_elem(ndarray::IxDyn(&[c]), v));
    }
    let features = cin * size * size;
    he(&mut weights, "linear.weight".into(), &[10, features], features);
    weights.insert("linear.bias".into(), ndarray::ArrayD::zeros(ndarray::IxDyn(&[10])));
    let name = format!("smallcnn-{}", widths.iter().map(|w| w.to_string()).collect::<Vec<_>>().join("-"));
    let cifar = Preprocess { mean: vec![0.4914, 0.4822, 0.4465], std: vec![0.247, 0.243, 0.261], resize: true };
    cifar10_classifier(name, nodes, features, cifar, weights)
}
