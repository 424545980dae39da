//! Quantisation-aware training for the TFHE backend (feature `tfhe`): the bridge between
//! candle training and `backend-tfhe`'s quantised integer simulation.
//!
//! Every training step recalibrates the current model (as an encrypted run with the same
//! parameters would), runs the batch through the quantised simulation, and hands its stage
//! outputs and logits to [`Finetuner`](crate::train::Finetuner) to train through with a
//! straight-through estimator.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use backend_tfhe::params::TfheParams;
use backend_tfhe::quant::{ActivationMode, QuantConfig, QuantPlan, RealPlan, RealValues};
use candle_core::Tensor;
use peregrine_data::preprocessed_rows;
use peregrine_model::ir::{InputSpec, Model};
use rayon::prelude::*;

use crate::error::{Result, SftError};
use crate::train::{to_channels_last, Evaluator, Quantiser, Substitute};

/// Prefix of a recorded quantisation target (`FinetuneConfig::quantise_for`); the TFHE
/// parameters (JSON) follow it.
pub const TARGET_PREFIX: &str = "tfhe ";

/// The recorded target for TFHE parameters `params`.
pub fn target(params: &str) -> String {
    format!("{TARGET_PREFIX}{params}")
}

/// Quantisation-aware training for a recorded `target` (see [`target`]): the [`Quantiser`]
/// to attach to the fine-tuner and an evaluator of the simulation's accuracy. Calibration
/// images come from the parameters' `calibration`, else `data_batch_1` in the CIFAR-10
/// directory `data`.
pub fn quantisation_aware(target: &str, data: &Path, input: &InputSpec) -> Result<(Quantiser, Evaluator)> {
    let Some(params) = target.strip_prefix(TARGET_PREFIX) else {
        return Err(SftError::Unsupported(format!(
            "this run trains for '{target}', which this version cannot quantise"
        )));
    };
    let params = TfheParams::parse(params, None)?;
    let settings = params.settings()?;
    let (images, _) = params.calibration_images(Some(data), input)?;
    let images = Arc::new(images);
    let (mode, config) = (settings.mode, settings.config);
    let cal = images.clone();
    let quantiser: Quantiser = Box::new(move |model, x| simulate_batch(model, x, mode, config, &cal));
    let evaluate: Evaluator = Box::new(move |model, test| {
        let plan = QuantPlan::calibrate(&RealPlan::compile(model, mode)?, &images, config)?;
        let rows = preprocessed_rows(test, &model.graph().input)?;
        let correct: usize = rows
            .par_iter()
            .zip(test.labels.par_iter())
            .map(|(x, &l)| {
                usize::from(argmax(&plan.decode_output(&plan.simulate(&plan.quantise_input(x)).outputs)) == l as usize)
            })
            .sum();
        Ok(correct as f64 / test.len().max(1) as f64)
    });
    Ok((quantiser, evaluate))
}

fn argmax(v: &[f64]) -> usize {
    v.iter().enumerate().fold(0, |b, (i, x)| if *x > v[b] { i } else { b })
}

/// What the quantised network computes for a channels-last batch `x` of `model`.
fn simulate_batch(
    model: &Model,
    x: &Tensor,
    mode: ActivationMode,
    config: QuantConfig,
    images: &[Vec<f64>],
) -> Result<Substitute> {
    let plan = QuantPlan::calibrate(&RealPlan::compile(model, mode)?, images, config)?;
    // The batch is channels-last; the plan reads images C×H×W.
    let b = x.dims4()?.0;
    let nchw = x.permute((0, 3, 1, 2))?.flatten_all()?.to_vec1::<f32>()?;
    let per_image: Vec<RealValues> = nchw
        .par_chunks(nchw.len() / b.max(1))
        .map(|img| plan.real_values(&img.iter().map(|&v| v as f64).collect::<Vec<_>>()))
        .collect::<Result<_, _>>()?;
    let mut nodes = HashMap::new();
    for (k, st) in plan.stages.iter().enumerate() {
        let idx = model.node_index(&st.node).ok_or_else(|| {
            SftError::Unsupported(format!(
                "quantisation-aware training: the plan's node '{}' is not in the model",
                st.node
            ))
        })?;
        let dims: Vec<usize> = std::iter::once(b).chain(model.shape(idx).iter().copied()).collect();
        let data: Vec<f32> = per_image.iter().flat_map(|v| v.stages[k].iter().map(|&v| v as f32)).collect();
        let values = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&dims), data)
            .map_err(|e| SftError::Unsupported(format!("quantisation-aware training: {e}")))?;
        nodes.insert(st.node.clone(), to_channels_last(&values, x.device())?);
    }
    let classes = per_image.first().map_or(0, |v| v.logits.len());
    let logits: Vec<f32> = per_image.iter().flat_map(|v| v.logits.iter().map(|&l| l as f32)).collect();
    Ok(Substitute { nodes, logits: Tensor::from_vec(logits, (b, classes), x.device())? })
}
