//! Bounded allocation: a 1 KiB model file whose header claims huge sizes is refused without a
//! large allocation (peak heap growth measured by this binary's allocator).

use peregrine_model::format::model_from_bytes;
use peregrine_model::testkit::PeakAllocator;

#[global_allocator]
static ALLOC: PeakAllocator = PeakAllocator;

/// A safetensors file of exactly 1 KiB: header length `len` (as written), `header`, padding.
fn file(len: u64, header: &str) -> Vec<u8> {
    let mut b = len.to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    b.resize(1024, b' ');
    b
}

#[test]
fn one_kib_model_files_claiming_huge_sizes_are_refused_under_64_mib() {
    let graph = r#"{\"version\":1}"#;
    let huge_tensor = format!(
        r#"{{"__metadata__":{{"peregrine.graph":"{graph}"}},"w":{{"dtype":"F32","shape":[65536,65536],"data_offsets":[0,17179869184]}}}}"#
    );
    let many_dims = format!(
        r#"{{"__metadata__":{{"peregrine.graph":"{graph}"}},"w":{{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,4]}}}}"#
    );
    let cases = [
        ("header length 2^64 − 1", file(u64::MAX, "{}")),
        ("header length 100 MB", file(100_000_000, "{}")),
        ("a 16 GiB tensor", file(huge_tensor.len() as u64, &huge_tensor)),
        ("a shape whose product overflows", file(many_dims.len() as u64, &many_dims)),
    ];
    for (what, bytes) in cases {
        let (e, grew) = PeakAllocator::peak_growth(|| model_from_bytes(&bytes).expect_err(what).to_string());
        eprintln!("{what}: heap peak +{} KiB: {e}", grew >> 10);
        assert!(grew < 64 << 20, "{what}: {grew} bytes");
        assert!(e.contains("malformed model file"), "{what}: {e}");
    }
}
