//! Reference executor throughput: ResNet-20 forward on a batch of 16 CIFAR images (f32).
//! Needs `../shared`; run with `cargo bench -p peregrine-benches --bench reference`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use peregrine_data::{load_cifar10, preprocess};
use peregrine_model::import::import_cifar_resnet;
use peregrine_model::reference::Reference;

fn resnet20(c: &mut Criterion) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared");
    let model = import_cifar_resnet(20, root.join("models/resnet20-cifar10.safetensors")).expect("shared ResNet-20");
    let data = load_cifar10(root.join("data/cifar10/test_batch.bin.gz"), Some(16)).expect("shared CIFAR-10");
    let x = preprocess::<f32>(&data.pixels, 16, &model.graph().input).unwrap();
    let exec = Reference::<f32>::new(&model);
    let mut g = c.benchmark_group("reference");
    g.throughput(Throughput::Elements(16));
    g.sample_size(20);
    g.bench_function("resnet20_f32_batch16_one_thread", |b| b.iter(|| exec.run(&x).unwrap()));
    g.finish();
}

criterion_group!(benches, resnet20);
criterion_main!(benches);
