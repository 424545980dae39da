//! Training images cut from a handful of photos, for distillation when a model's own training
//! set (ImageNet, COCO, …) is not at hand: random crops of random area and aspect ratio, quarter
//! turns and mirror images, each resized to the model input. The labels are left at 0: the
//! teacher model provides the targets.

use std::path::PathBuf;

use image::imageops::{self, FilterType};
use image::RgbImage;
use peregrine_model::ir::InputSpec;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::{load_rgb, DataError, LabeledImages, Result};

/// How crops are drawn.
#[derive(Clone, Debug, PartialEq)]
pub struct CropSettings {
    /// Smallest crop area as a fraction of the photo (the largest is the whole photo).
    pub min_area: f64,
    /// The crop's aspect ratio is the input's times a factor in [1/`aspect_jitter`, `aspect_jitter`].
    pub aspect_jitter: f64,
    /// Turn crops by a random multiple of 90°.
    pub quarter_turns: bool,
    /// Mirror half of the crops.
    pub flips: bool,
}

impl Default for CropSettings {
    fn default() -> Self {
        CropSettings { min_area: 0.15, aspect_jitter: 4.0 / 3.0, quarter_turns: true, flips: true }
    }
}

/// `count` crops of the photos in `files` (taken in turn), each `input.shape` pixels, drawn
/// reproducibly from `seed`. The model must take 3-channel images.
pub fn photo_crops(
    files: &[PathBuf],
    input: &InputSpec,
    count: usize,
    seed: u64,
    settings: &CropSettings,
) -> Result<LabeledImages> {
    let &[c, h, w] = input.shape.as_slice() else {
        return Err(DataError::Shape(format!(
            "photo crops need an image input C×H×W, the model takes {:?}",
            input.shape
        )));
    };
    if c != 3 {
        return Err(DataError::Shape(format!("photo crops are RGB; the model takes {c} channels")));
    }
    if files.is_empty() {
        return Err(DataError::Shape("no photos to crop".into()));
    }
    let area_ok = settings.min_area > 0.0 && settings.min_area <= 1.0;
    if !(area_ok && settings.aspect_jitter >= 1.0) {
        return Err(DataError::Shape(format!(
            "crop settings: the smallest area must be in (0, 1] and the aspect jitter at least 1, got {} and {}",
            settings.min_area, settings.aspect_jitter
        )));
    }
    let photos: Vec<RgbImage> = files.iter().map(load_rgb).collect::<Result<_>>()?;
    if let Some((f, _)) = files.iter().zip(&photos).find(|(_, p)| p.width() == 0 || p.height() == 0) {
        return Err(DataError::Image { path: f.display().to_string(), detail: "the image has no pixels".into() });
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut pixels = Vec::with_capacity(count * c * h * w);
    for k in 0..count {
        let photo = &photos[k % photos.len()];
        let turns = if settings.quarter_turns { rng.gen_range(0..4u8) } else { 0 };
        let crop = random_crop(photo, [h, w], turns % 2 == 1, settings, &mut rng);
        let crop = match turns {
            1 => imageops::rotate90(&crop),
            2 => imageops::rotate180(&crop),
            3 => imageops::rotate270(&crop),
            _ => crop,
        };
        let crop = if settings.flips && rng.gen_bool(0.5) { imageops::flip_horizontal(&crop) } else { crop };
        let img = imageops::resize(&crop, w as u32, h as u32, FilterType::Triangle);
        let start = pixels.len();
        pixels.resize(start + c * h * w, 0);
        for (x, y, p) in img.enumerate_pixels() {
            for ch in 0..3 {
                pixels[start + ch * h * w + y as usize * w + x as usize] = p[ch];
            }
        }
    }
    Ok(LabeledImages { shape: [c, h, w], pixels, labels: vec![0; count] })
}

/// A crop of `photo` whose area and aspect ratio (relative to the `[h, w]` input, swapped when
/// the crop will be turned by a quarter) are drawn from `settings`.
fn random_crop(photo: &RgbImage, [h, w]: [usize; 2], turned: bool, s: &CropSettings, rng: &mut StdRng) -> RgbImage {
    let (pw, ph) = (photo.width() as f64, photo.height() as f64);
    let area = rng.gen_range(s.min_area..=1.0) * pw * ph;
    let target = if turned { h as f64 / w as f64 } else { w as f64 / h as f64 };
    let aspect = target * s.aspect_jitter.powf(rng.gen_range(-1.0..=1.0));
    let cw = (area * aspect).sqrt().clamp(1.0, pw) as u32;
    let ch = (area / aspect).sqrt().clamp(1.0, ph) as u32;
    let x = rng.gen_range(0..=photo.width() - cw);
    let y = rng.gen_range(0..=photo.height() - ch);
    imageops::crop_imm(photo, x, y, cw, ch).to_image()
}
