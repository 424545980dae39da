//! Weight clustering: at most k values per layer, nothing else touched, exact when k covers
//! every value.

use ndarray::ArrayD;
use peregrine_model::cluster::{cluster_weights, kmeans_1d};
use peregrine_model::ir::*;
use peregrine_model::reference::Reference;
use peregrine_model::testkit::*;

#[test]
fn one_dimensional_kmeans_finds_separated_groups() {
    // Three groups of odd sizes around -1, 0.25 and 3.
    let mut v = Vec::new();
    for (centre, n) in [(-1.0f32, 7), (0.25, 13), (3.0, 5)] {
        for i in 0..n {
            v.push(centre + 0.01 * (i as f32 - (n / 2) as f32));
        }
    }
    let c = kmeans_1d(&v, 3);
    assert_eq!(c.len(), 3);
    for (got, want) in c.iter().zip([-1.0f32, 0.25, 3.0]) {
        assert!((got - want).abs() < 1e-5, "{c:?}");
    }
    // Fewer distinct values than k: the values themselves.
    assert_eq!(kmeans_1d(&[2.0, 1.0, 2.0], 8), vec![1.0, 2.0]);
}

#[test]
fn clustering_leaves_k_values_per_layer_and_touches_nothing_else() {
    let model = odd_mobile_model(3);
    for k in [2usize, 5, 16] {
        let (clustered, report) = cluster_weights(&model, k).unwrap();
        assert!(!report.is_empty());
        for r in &report {
            let w = &clustered.weights()[&r.name];
            let mut values: Vec<f32> = w.iter().copied().collect();
            values.sort_by(f32::total_cmp);
            values.dedup();
            assert!(
                values.len() <= k && r.distinct_after == values.len(),
                "{}: {} values for k = {k}",
                r.name,
                values.len()
            );
            assert!(r.relative_rms_change < 1.0);
        }
        // Biases and everything that is not a layer's weight matrix are unchanged.
        for (name, w) in model.weights() {
            if !report.iter().any(|r| &r.name == name) {
                assert_eq!(&clustered.weights()[name], w, "{name} changed");
            }
        }
    }
    assert!(cluster_weights(&model, 1).unwrap_err().to_string().contains("at least 2"));
}

#[test]
fn clustering_is_exact_when_k_covers_every_value() {
    let model = odd_resnet_like();
    let most = model.weights().values().map(|w| w.len()).max().unwrap();
    let (same, report) = cluster_weights(&model, most).unwrap();
    assert!(report.iter().all(|r| r.max_change == 0.0 && r.distinct_after == r.distinct_before));
    let x = uniform(&mut rng(4), &[2, 3, 13, 11], -1.0, 1.0).mapv(f64::from);
    let a: ArrayD<f64> = Reference::<f64>::new(&model).run(&x).unwrap();
    let b: ArrayD<f64> = Reference::<f64>::new(&same).run(&x).unwrap();
    assert_eq!(a, b);
    // And clustering to few values moves the outputs (the test can fail).
    let (few, _) = cluster_weights(&model, 2).unwrap();
    let c: ArrayD<f64> = Reference::<f64>::new(&few).run(&x).unwrap();
    assert!(a.iter().zip(&c).any(|(u, v)| (u - v).abs() > 1e-3));
}

fn odd_resnet_like() -> Model {
    every_op_model(6)
}
