//! The shared pretrained ResNet-20: import, accuracy pinned on the first 200 test images, and
//! clear errors for bad imports and data files. Needs `../shared` beside the workspace.

use std::path::PathBuf;

use peregrine_data::{load_cifar10, parse_cifar10, preprocess, CIFAR_RECORD};
use peregrine_model::format::{load_tensors, model_from_bytes, model_to_bytes};
use peregrine_model::import::{cifar_resnet, import_cifar_resnet};
use peregrine_model::reference::{argmax_rows, Reference};

fn shared(rel: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared").join(rel);
    assert!(p.exists(), "shared asset {} is missing: these tests need ../shared beside the workspace", p.display());
    p
}

#[test]
fn resnet20_accuracy_on_first_200_test_images_is_pinned() {
    let model = import_cifar_resnet(20, shared("models/resnet20-cifar10.safetensors")).unwrap();
    assert_eq!(model.parameter_count(), 271_098);
    assert_eq!(model.graph().nodes.len(), 71);
    // The saved file loads back to the same model.
    let model = model_from_bytes(&model_to_bytes(&model).unwrap()).unwrap();
    let data = load_cifar10(shared("data/cifar10/test_batch.bin.gz"), Some(200)).unwrap();
    assert_eq!(data.len(), 200);
    let x = preprocess::<f32>(&data.pixels, 200, &model.graph().input).unwrap();
    let pred32 = argmax_rows(&Reference::<f32>::new(&model).run_parallel(&x, 50).unwrap());
    let pred64 = argmax_rows(&Reference::<f64>::new(&model).run(&x.mapv(|v| v as f64)).unwrap());
    let correct = pred32.iter().zip(&data.labels).filter(|(p, l)| **p == **l as usize).count();
    // Measured with `peregrine eval --limit 200`; an independent implementation gives 0.9035 on 2,000.
    assert_eq!(correct, 181, "ResNet-20 top-1 on the first 200 test images");
    let agree = pred32.iter().zip(&pred64).filter(|(a, b)| a == b).count();
    assert!(agree >= 199, "f32 and f64 predictions agree on {agree}/200");
}

#[test]
fn import_errors_name_the_problem() {
    let path = shared("models/resnet20-cifar10.safetensors");
    let e = import_cifar_resnet(21, &path).unwrap_err();
    assert!(e.to_string().contains("6n + 2"), "{e}");
    // The 20-layer weights cannot make a 32-layer network.
    let e = import_cifar_resnet(32, &path).unwrap_err();
    assert!(e.to_string().contains("layer1.3.conv1.weight"), "{e}");
    let mut w = load_tensors(&path).unwrap();
    w.remove("linear.bias");
    let e = cifar_resnet(20, w).unwrap_err();
    assert!(e.to_string().contains("linear.bias"), "{e}");
}

#[test]
fn malformed_cifar_files_are_rejected() {
    let e = parse_cifar10(&vec![0u8; CIFAR_RECORD * 2 - 1], None).unwrap_err();
    assert!(e.to_string().contains("whole number"), "{e}");
    let mut rec = vec![0u8; CIFAR_RECORD];
    rec[0] = 12;
    let e = parse_cifar10(&rec, None).unwrap_err();
    assert!(e.to_string().contains("label 12"), "{e}");
    let e = load_cifar10("/nonexistent/test_batch.bin.gz", None).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/test_batch.bin.gz"), "{e}");
}
