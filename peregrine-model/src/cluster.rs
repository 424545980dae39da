//! Weight clustering: every convolution's and fully connected layer's weights replaced by the
//! nearest of k values (one-dimensional k-means per layer), biases, batch norms and polynomial
//! coefficients kept. A clustered layer has at most k distinct weights, which an execution
//! can exploit by summing the inputs that share a value before one multiplication; the
//! accuracy it costs is measured with `peregrine eval` on the result.

use crate::error::{ModelError, Result};
use crate::ir::{Graph, Model, Op};

/// What clustering did to one weight tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusteredTensor {
    /// Weight tensor name.
    pub name: String,
    /// Number of weights.
    pub weights: usize,
    /// Distinct values before clustering.
    pub distinct_before: usize,
    /// Distinct values after clustering (at most k).
    pub distinct_after: usize,
    /// Largest |change| of a weight.
    pub max_change: f32,
    /// Root mean square of the change, relative to the weights' root mean square.
    pub relative_rms_change: f64,
}

/// The 1-D k-means centres of `values`, sorted (fewer when there are fewer distinct values or
/// a centre ends up with no value). Lloyd's iterations (to a fixed point or 300 rounds) from
/// two deterministic starts — centres spread evenly over the values' range (the few large
/// weights, which matter most, keep centres of their own) and centres at the quantiles — and
/// the one with the smaller squared error is kept.
pub fn kmeans_1d(values: &[f32], k: usize) -> Vec<f32> {
    let mut all: Vec<f64> = values.iter().filter(|v| v.is_finite()).map(|&v| v as f64).collect();
    all.sort_by(f64::total_cmp);
    let mut distinct = all.clone();
    distinct.dedup();
    if k == 0 || distinct.is_empty() {
        return Vec::new();
    }
    if distinct.len() <= k {
        return distinct.into_iter().map(|v| v as f32).collect();
    }
    let n = all.len();
    let (lo, hi) = (all[0], all[n - 1]);
    let linear: Vec<f64> = (0..k).map(|i| lo + (hi - lo) * (i as f64 + 0.5) / k as f64).collect();
    let quantiles: Vec<f64> = (0..k).map(|i| all[((2 * i + 1) * n / (2 * k)).min(n - 1)]).collect();
    let (a, ea) = lloyd(&all, linear, 300);
    let (b, eb) = lloyd(&all, quantiles, 300);
    let mut out: Vec<f32> = if ea <= eb { a } else { b }.into_iter().map(|c| c as f32).collect();
    out.sort_by(f32::total_cmp);
    out.dedup();
    out
}

/// At most `rounds` of Lloyd's iterations on `values` from `centres` (a warm start, e.g. the
/// previous step's centres while training moves the weights), sorted on return; centres left
/// without a value are dropped.
pub fn refine_1d(values: &[f32], centres: &[f32], rounds: usize) -> Vec<f32> {
    let mut all: Vec<f64> = values.iter().filter(|v| v.is_finite()).map(|&v| v as f64).collect();
    all.sort_by(f64::total_cmp);
    let mut start: Vec<f64> = centres.iter().filter(|c| c.is_finite()).map(|&c| c as f64).collect();
    start.sort_by(f64::total_cmp);
    start.dedup();
    if all.is_empty() || start.is_empty() {
        return Vec::new();
    }
    let (out, _) = lloyd(&all, start, rounds);
    let mut out: Vec<f32> = out.into_iter().map(|c| c as f32).collect();
    out.dedup();
    out
}

/// The centre nearest to `v` among sorted `centres` (ties go to the smaller; `v` itself when
/// there are none).
pub fn nearest_centre(centres: &[f32], v: f32) -> f32 {
    let i = centres.partition_point(|&c| c < v);
    match (i.checked_sub(1).map(|j| centres[j]), centres.get(i).copied()) {
        (Some(a), Some(b)) => {
            if v - a <= b - v {
                a
            } else {
                b
            }
        }
        (Some(a), None) => a,
        (None, Some(b)) => b,
        (None, None) => v,
    }
}

/// At most `rounds` of Lloyd's iterations on sorted `all` from `centres` (sorted): the final
/// centres and their squared error.
fn lloyd(all: &[f64], mut centres: Vec<f64>, rounds: usize) -> (Vec<f64>, f64) {
    let k = centres.len();
    // Assigns the sorted values to the centres (split at the midpoints): per-centre sums,
    // counts and the total squared error.
    let assign = |centres: &[f64]| {
        let (mut sums, mut counts, mut err) = (vec![0f64; k], vec![0usize; k], 0f64);
        let mut c = 0;
        for &v in all {
            while c + 1 < k && v > (centres[c] + centres[c + 1]) / 2.0 {
                c += 1;
            }
            sums[c] += v;
            counts[c] += 1;
            err += (v - centres[c]) * (v - centres[c]);
        }
        (sums, counts, err)
    };
    for _ in 0..rounds {
        let (sums, counts, _) = assign(&centres);
        let next: Vec<f64> =
            (0..k).map(|i| if counts[i] > 0 { sums[i] / counts[i] as f64 } else { centres[i] }).collect();
        let moved = next.iter().zip(&centres).any(|(a, b)| (a - b).abs() > 1e-12 * b.abs().max(1e-30));
        centres = next;
        if !moved {
            break;
        }
    }
    let (_, counts, err) = assign(&centres);
    (centres.into_iter().zip(counts).filter(|(_, n)| *n > 0).map(|(c, _)| c).collect(), err)
}

/// The weight tensors clustering applies to: every convolution's, transposed convolution's and
/// fully connected layer's (each once, in graph order).
pub fn clusterable_weights(graph: &Graph) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for node in &graph.nodes {
        let name = match &node.op {
            Op::Conv2d(c) => &c.weight,
            Op::ConvTranspose2d(c) => &c.weight,
            Op::Linear(l) => &l.weight,
            _ => continue,
        };
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    names
}

/// `model` with every convolution's, transposed convolution's and fully connected layer's
/// weights clustered to at most `k` values per tensor, and what changed.
pub fn cluster_weights(model: &Model, k: usize) -> Result<(Model, Vec<ClusteredTensor>)> {
    if k < 2 {
        return Err(ModelError::Unsupported(format!("weight clustering needs at least 2 values per layer, got {k}")));
    }
    let (graph, mut weights) = model.clone().into_parts();
    let mut report = Vec::new();
    for name in &clusterable_weights(&graph) {
        let w = weights.get_mut(name).expect("a validated model has its weights");
        let values: Vec<f32> = w.iter().copied().collect();
        let centres = kmeans_1d(&values, k);
        let nearest = |v: f32| nearest_centre(&centres, v);
        let distinct = |v: &[f32]| {
            let mut s = v.to_vec();
            s.sort_by(f32::total_cmp);
            s.dedup();
            s.len()
        };
        let before = distinct(&values);
        w.mapv_inplace(nearest);
        let after: Vec<f32> = w.iter().copied().collect();
        let (mut change2, mut energy, mut max_change) = (0f64, 0f64, 0f32);
        for (a, b) in values.iter().zip(&after) {
            change2 += ((a - b) as f64).powi(2);
            energy += (*a as f64).powi(2);
            max_change = max_change.max((a - b).abs());
        }
        report.push(ClusteredTensor {
            name: name.clone(),
            weights: values.len(),
            distinct_before: before,
            distinct_after: distinct(&after),
            max_change,
            relative_rms_change: if energy > 0.0 { (change2 / energy).sqrt() } else { 0.0 },
        });
    }
    Ok((Model::new(graph, weights)?, report))
}
