//! Calibration images: a directory of photos, one photo, or a CIFAR batch; each resized to the
//! model input.

use peregrine_data::calibration_pixels;
use peregrine_model::ir::{InputSpec, Preprocess};

fn spec(h: usize, w: usize) -> InputSpec {
    InputSpec { shape: vec![3, h, w], preprocess: Preprocess { mean: vec![0.0; 3], std: vec![1.0; 3], resize: true } }
}

#[test]
fn a_directory_of_photos_one_photo_and_an_empty_directory() {
    let dir = std::env::temp_dir().join(format!("peregrine-calib-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Two 9×7 images of one colour each (sorted by name: a.png then b.png), and a text file.
    for (name, rgb) in [("b.png", [10u8, 20, 30]), ("a.png", [200u8, 100, 50])] {
        image::RgbImage::from_pixel(9, 7, image::Rgb(rgb)).save(dir.join(name)).unwrap();
    }
    std::fs::write(dir.join("notes.txt"), "not an image").unwrap();
    let (pixels, n) = calibration_pixels(&dir, &spec(5, 4), 64).unwrap();
    assert_eq!(n, 2);
    assert_eq!(pixels.len(), 2 * 3 * 5 * 4, "each resized to the 5×4 input");
    assert_eq!((pixels[0], pixels[20], pixels[60]), (200, 100, 10), "a.png first, planar RGB");
    let (_, n) = calibration_pixels(&dir, &spec(5, 4), 1).unwrap();
    assert_eq!(n, 1, "the limit holds");
    let (pixels, n) = calibration_pixels(&dir.join("b.png"), &spec(7, 9), 64).unwrap();
    assert_eq!((n, pixels.len(), pixels[0]), (1, 3 * 7 * 9, 10));
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let err = calibration_pixels(&empty, &spec(5, 4), 64).unwrap_err().to_string();
    assert!(err.contains("no PNG or JPEG"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
