//! Training crops cut from a few photos (distillation without a data set): sizes, quarter
//! turns, reproducibility, and refusals.

use peregrine_data::photos::{photo_crops, CropSettings};
use peregrine_model::ir::{InputSpec, Preprocess};

fn spec(c: usize, h: usize, w: usize) -> InputSpec {
    InputSpec { shape: vec![c, h, w], preprocess: Preprocess { mean: vec![0.0; c], std: vec![1.0; c], resize: true } }
}

/// A 41×29 photo whose left half is red and right half blue, and a plain green 17×33 one.
fn photos(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    let halves =
        image::RgbImage::from_fn(41, 29, |x, _| if x < 20 { image::Rgb([250, 0, 0]) } else { image::Rgb([0, 0, 250]) });
    halves.save(dir.join("halves.png")).unwrap();
    image::RgbImage::from_pixel(17, 33, image::Rgb([0, 200, 0])).save(dir.join("green.png")).unwrap();
    peregrine_data::image_files(dir).unwrap()
}

#[test]
fn crops_have_the_input_size_follow_the_seed_and_cover_turns() {
    let dir = std::env::temp_dir().join(format!("peregrine-crops-{}", std::process::id()));
    let files = photos(&dir);
    assert_eq!(files.len(), 2);
    let input = spec(3, 11, 19);
    let a = photo_crops(&files, &input, 40, 7, &CropSettings::default()).unwrap();
    assert_eq!((a.len(), a.shape, a.pixels.len()), (40, [3, 11, 19], 40 * 3 * 11 * 19));
    assert!(a.labels.iter().all(|&l| l == 0), "no labels: the teacher provides the targets");
    let again = photo_crops(&files, &input, 40, 7, &CropSettings::default()).unwrap();
    assert_eq!(a.pixels, again.pixels, "the same seed gives the same crops");
    let other = photo_crops(&files, &input, 40, 8, &CropSettings::default()).unwrap();
    assert_ne!(a.pixels, other.pixels, "another seed gives other crops");
    // Photos are taken in turn (sorted by name): even crops come from green.png (green 200,
    // red and blue 0), odd ones from halves.png.
    let n = 3 * 11 * 19;
    for k in (0..40).step_by(2) {
        let img = a.image(k);
        assert!(img[n / 3..2 * n / 3].iter().all(|&g| g == 200) && img[..n / 3].iter().all(|&r| r == 0));
    }
    // halves.png: a crop turned by a quarter shows red above blue (or blue above red) instead
    // of side by side; without turns no crop of it may do so.
    let stacked = |c: &peregrine_data::LabeledImages, k: usize| {
        let red = &c.image(k)[..11 * 19];
        let (top, bottom) =
            (red[..19].iter().map(|&v| v as u32).sum::<u32>(), red[10 * 19..].iter().map(|&v| v as u32).sum::<u32>());
        top.abs_diff(bottom) > 19 * 200
    };
    assert!((1..40).step_by(2).any(|k| stacked(&a, k)), "some quarter-turned crops");
    let flat = CropSettings { quarter_turns: false, ..CropSettings::default() };
    let b = photo_crops(&files, &input, 40, 7, &flat).unwrap();
    assert!(!(1..40).step_by(2).any(|k| stacked(&b, k)), "no turned crop without quarter turns");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn crops_refuse_grey_models_missing_photos_and_bad_settings() {
    let dir = std::env::temp_dir().join(format!("peregrine-crops-bad-{}", std::process::id()));
    let files = photos(&dir);
    let e = photo_crops(&files, &spec(1, 8, 8), 4, 1, &CropSettings::default()).unwrap_err().to_string();
    assert!(e.contains("RGB") && e.contains("1 channels"), "{e}");
    let e = photo_crops(&[], &spec(3, 8, 8), 4, 1, &CropSettings::default()).unwrap_err().to_string();
    assert!(e.contains("no photos"), "{e}");
    let bad = CropSettings { min_area: 0.0, ..CropSettings::default() };
    let e = photo_crops(&files, &spec(3, 8, 8), 4, 1, &bad).unwrap_err().to_string();
    assert!(e.contains("smallest area"), "{e}");
    let e = photo_crops(&[dir.join("missing.png")], &spec(3, 8, 8), 4, 1, &CropSettings::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.png"), "{e}");
    let e = peregrine_data::image_files(&dir.join("halves.txt")).unwrap_err().to_string();
    assert!(e.contains("neither a directory nor a PNG"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}
