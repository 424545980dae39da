//! `onnx_file` (see `peregrine_fuzz::targets`) under libFuzzer.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    peregrine_fuzz::run("onnx_file", data);
});
