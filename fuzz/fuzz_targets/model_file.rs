//! The model file loader: any bytes give a model or an error, never a panic or a large
//! allocation.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = peregrine_model::format::model_from_bytes(data);
});
