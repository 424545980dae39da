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
    let exec = Reference::<T>::new(model);
    let input = &model.graph().input;
    let (n, batch) = (images.len(), batch.max(1));
    let correct = AtomicUsize::new(0);
    let non_finite = AtomicUsize::new(0);
    let start = Instant::now();
    let chunks: Vec<(usize, usize)> = (0..n).step_by(batch).map(|s| (s, (s + batch).min(n))).collect();
    chunks.par_iter().try_for_each(|&(a, b)| -> Result<()> {
        let part = images.slice(a..b);
        let y = exec.run(&preprocess::<T>(&part.pixels, part.len(), input)?)?;
        let pred = argmax_rows(&y);
        correct
            .fetch_add(pred.iter().zip(&part.labels).filter(|(p, l)| **p == **l as usize).count(), Ordering::Relaxed);
        non_finite.fetch_add(pred.iter().filter(|p| **p == NO_PREDICTION).count(), Ordering::Relaxed);
        progress(b - a);
        Ok(())
    })?;
    Ok(Accuracy {
        images: n,
        correct: correct.into_inner(),
        non_finite: non_finite.into_inner(),
        seconds: start.elapsed().as_secs_f64(),
    })
}
