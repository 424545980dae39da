//! Bounded allocation: a tiny PNG whose header claims a huge image is refused before its pixel
//! buffer is allocated (peak heap growth measured by this binary's allocator).

use peregrine_data::load_image;
use peregrine_model::ir::{InputSpec, Preprocess};
use peregrine_model::testkit::PeakAllocator;

#[global_allocator]
static ALLOC: PeakAllocator = PeakAllocator;

fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
        }
    }
    !c
}

#[test]
fn a_small_png_claiming_a_huge_image_is_refused_under_64_mib() {
    let dir = std::env::temp_dir().join(format!("peregrine-hostile-png-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let real = dir.join("one.png");
    image::RgbImage::from_pixel(1, 1, image::Rgb([200, 10, 10])).save(&real).unwrap();
    let input = InputSpec {
        shape: vec![3, 32, 32],
        preprocess: Preprocess { mean: vec![0.5; 3], std: vec![0.25; 3], resize: true },
    };
    // The genuine file loads (resized to 32×32).
    assert_eq!(load_image(&real, &input).unwrap().len(), 3 * 32 * 32);
    let bytes = std::fs::read(&real).unwrap();
    assert!(bytes.len() < 1024);
    for (w, h) in [(8000u32, 8000u32), (100_000, 100_000), (8192, 1)] {
        // IHDR: length at 8, type at 12, width and height (big-endian) at 16 and 20, CRC at 29.
        let mut b = bytes.clone();
        b[16..20].copy_from_slice(&w.to_be_bytes());
        b[20..24].copy_from_slice(&h.to_be_bytes());
        let crc = crc32(&b[12..29]);
        b[29..33].copy_from_slice(&crc.to_be_bytes());
        let path = dir.join(format!("claims-{w}x{h}.png"));
        std::fs::write(&path, &b).unwrap();
        let (e, grew) = PeakAllocator::peak_growth(|| load_image(&path, &input).unwrap_err().to_string());
        eprintln!("{}-byte PNG claiming {w}×{h}: heap peak +{} KiB: {e}", b.len(), grew >> 10);
        assert!(grew < 64 << 20, "{w}×{h}: {grew} bytes");
        assert!(e.contains(&format!("claims-{w}x{h}.png")), "{e}");
        if w as u64 * h as u64 > 1 << 20 {
            assert!(e.contains("claims an image larger"), "{e}");
        }
    }
    std::fs::remove_dir_all(dir).ok();
}
