//! Cleartext evaluation: the reference executor's top-1 accuracy on labelled images, batched
//! over every rayon thread.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use peregrine_data::{preprocess, LabeledImages};
use peregrine_model::reference::{argmax_rows, Real, Reference, NO_PREDICTION};
use peregrine_model::Model;
use rayon::prelude::*;

use crate::error::Result;

/// What [`accuracy`] counted.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Accuracy {
    /// Images evaluated.
    pub images: usize,
    /// Predictions equal to the label.
    pub correct: usize,
    /// Images whose output was not finite (counted wrong).
    pub non_finite: usize,
    /// Seconds of inference.
    pub seconds: f64,
}

/// Top-1 accuracy of `model` on `images` with scalar type `T`, in batches of `batch` images;
/// `progress(n)` after every batch of `n`.
pub fn accuracy<T: Real>(
    model: &Model,
    images: &LabeledImages,
    batch: usize,
    progress: impl Fn(usize) + Sync,
) -> Result<Accuracy> {
    run_all::<T>(model, images, batch, progress, false).map(|(a, _)| a)
}

/// [`accuracy`] and every image's outputs (row `i`: image `i`'s outputs as `f64`, non-finite
/// values kept), for per-image comparisons of models (`peregrine eval --outputs`).
pub fn accuracy_and_outputs<T: Real>(
    model: &Model,
    images: &LabeledImages,
    batch: usize,
    progress: impl Fn(usize) + Sync,
) -> Result<(Accuracy, Vec<Vec<f64>>)> {
    run_all::<T>(model, images, batch, progress, true)
}

fn run_all<T: Real>(
    model: &Model,
    images: &LabeledImages,
    batch: usize,
    progress: impl Fn(usize) + Sync,
    keep: bool,
) -> Result<(Accuracy, Vec<Vec<f64>>)> {
    let exec = Reference::<T>::new(model);
    let input = &model.graph().input;
    let (n, batch) = (images.len(), batch.max(1));
    let correct = AtomicUsize::new(0);
    let non_finite = AtomicUsize::new(0);
    let start = Instant::now();
    let chunks: Vec<(usize, usize)> = (0..n).step_by(batch).map(|s| (s, (s + batch).min(n))).collect();
    let rows = chunks
        .par_iter()
        .map(|&(a, b)| -> Result<Vec<Vec<f64>>> {
            let part = images.slice(a..b);
            let y = exec.run(&preprocess::<T>(&part.pixels, part.len(), input)?)?;
            let pred = argmax_rows(&y);
            correct.fetch_add(
                pred.iter().zip(&part.labels).filter(|(p, l)| **p == **l as usize).count(),
                Ordering::Relaxed,
            );
            non_finite.fetch_add(pred.iter().filter(|p| **p == NO_PREDICTION).count(), Ordering::Relaxed);
            progress(b - a);
            if !keep {
                return Ok(Vec::new());
            }
            let per_image = y.len() / (b - a).max(1);
            let flat: Vec<f64> = y.iter().map(|v| v.f64()).collect();
            Ok(flat.chunks(per_image.max(1)).map(<[f64]>::to_vec).collect())
        })
        .collect::<Result<Vec<_>>>()?;
    let accuracy = Accuracy {
        images: n,
        correct: correct.into_inner(),
        non_finite: non_finite.into_inner(),
        seconds: start.elapsed().as_secs_f64(),
    };
    Ok((accuracy, rows.into_iter().flatten().collect()))
}
