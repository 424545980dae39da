//! The CIFAR-10 batch parser (raw or gzip-compressed records).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = peregrine_data::parse_cifar10(data, Some(4));
});
