//! Client-side outputs people look at, computed after decryption: YOLOv8-style detection
//! decoding with non-maximum suppression, segmentation masks, and annotated PNGs.
//!
//! A detector imported with several head outputs (`peregrine import onnx --graph-output
//! h1,h2,h3`) produces one map: each head upsampled by an integer factor to the largest one's
//! size and concatenated on channels. [`split_heads`] undoes that (head k is read at every
//! f_k-th pixel), [`decode_yolov8`] turns each head — `4·reg_max` box-distribution channels,
//! then one logit per class — into boxes, and [`non_max_suppression`] keeps the best per class.

use image::Rgb;
/// An 8-bit RGB image (the `image` crate's).
pub use image::RgbImage;

use crate::{font, DataError, Result};

/// Writes `image` as a PNG file.
pub fn save_png(image: &RgbImage, path: &std::path::Path) -> Result<()> {
    image
        .save_with_format(path, image::ImageFormat::Png)
        .map_err(|e| DataError::Image { path: path.display().to_string(), detail: format!("cannot write PNG ({e})") })
}

/// One detected object, in input-image pixels.
#[derive(Clone, Debug, PartialEq)]
pub struct Detection {
    /// Class index.
    pub class: usize,
    /// Class probability (sigmoid of its logit).
    pub score: f32,
    /// Box `[x1, y1, x2, y2]`.
    pub bbox: [f32; 4],
}

/// One detection head as a `C × H × W` map (row-major) and its stride in input pixels.
#[derive(Clone, Debug)]
pub struct Head {
    /// Values, channel-major.
    pub values: Vec<f32>,
    /// Height H (grid rows).
    pub height: usize,
    /// Width W (grid columns).
    pub width: usize,
    /// Input pixels per grid cell.
    pub stride: f32,
}

/// Splits a merged output `[k·C, H, W]` into `k` heads of `C` channels whose grids are the
/// merged one divided by 1, 2, 4, …, as `--graph-output` built it for heads listed finest
/// first; `input` is the model's input `[H_in, W_in]` (for the strides).
pub fn split_heads(output: &[f32], shape: &[usize], channels: usize, input: [usize; 2]) -> Result<Vec<Head>> {
    let [c, h, w] = shape else {
        return Err(DataError::Shape(format!("detection output of shape {shape:?} (a [C, H, W] map is needed)")));
    };
    if channels == 0 || c % channels != 0 || output.len() != c * h * w {
        return Err(DataError::Shape(format!(
            "an output of shape {shape:?} ({} values) is not heads of {channels} channels",
            output.len()
        )));
    }
    let mut heads = Vec::new();
    for k in 0..c / channels {
        let f = 1usize << k;
        let (hh, ww) = (h.div_ceil(f), w.div_ceil(f));
        let mut values = Vec::with_capacity(channels * hh * ww);
        for ch in 0..channels {
            for i in 0..hh {
                for j in 0..ww {
                    values.push(output[((k * channels + ch) * h + i * f) * w + j * f]);
                }
            }
        }
        heads.push(Head { values, height: hh, width: ww, stride: input[0] as f32 / hh as f32 });
    }
    Ok(heads)
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// YOLOv8 decoding: per grid cell, the four side distances are the expectations of a softmax
/// over `reg_max` bins (distribution focal loss), measured from the cell centre in strides;
/// the class probabilities are sigmoids. Keeps cells whose best class reaches `threshold`;
/// a cell with a value that is not finite (a polynomial network that left its range) gives no
/// box.
pub fn decode_yolov8(heads: &[Head], classes: usize, reg_max: usize, threshold: f32) -> Result<Vec<Detection>> {
    let per = 4 * reg_max + classes;
    let mut out = Vec::new();
    for head in heads {
        let cells = head.height * head.width;
        if head.values.len() != per * cells {
            return Err(DataError::Shape(format!(
                "a head of {} values for {per} channels of {}×{}",
                head.values.len(),
                head.height,
                head.width
            )));
        }
        let at = |ch: usize, cell: usize| head.values[ch * cells + cell];
        for cell in 0..cells {
            let (class, logit) =
                (0..classes)
                    .map(|k| (k, at(4 * reg_max + k, cell)))
                    .fold((0, f32::MIN), |b, x| if x.1 > b.1 { x } else { b });
            let score = sigmoid(logit);
            if score < threshold {
                continue;
            }
            let mut side = [0f32; 4];
            for (s, d) in side.iter_mut().enumerate() {
                let bins: Vec<f32> = (0..reg_max).map(|b| at(s * reg_max + b, cell)).collect();
                let m = bins.iter().copied().fold(f32::MIN, f32::max);
                let e: Vec<f32> = bins.iter().map(|v| (v - m).exp()).collect();
                let total: f32 = e.iter().sum();
                *d = e.iter().enumerate().map(|(b, v)| b as f32 * v).sum::<f32>() / total;
            }
            let (cx, cy) = ((cell % head.width) as f32 + 0.5, (cell / head.width) as f32 + 0.5);
            let bbox = [cx - side[0], cy - side[1], cx + side[2], cy + side[3]].map(|v| v * head.stride);
            if !score.is_finite() || !bbox.iter().all(|v| v.is_finite()) {
                continue;
            }
            out.push(Detection { class, score, bbox });
        }
    }
    Ok(out)
}

/// Intersection over union of two boxes `[x1, y1, x2, y2]`.
pub fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let area = |r: &[f32; 4]| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let union = area(a) + area(b) - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// Greedy per-class non-maximum suppression: best score first, dropping boxes of the same
/// class that overlap a kept one by more than `max_iou`.
pub fn non_max_suppression(mut detections: Vec<Detection>, max_iou: f32) -> Vec<Detection> {
    detections.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<Detection> = Vec::new();
    for d in detections {
        if kept.iter().all(|k| k.class != d.class || iou(&k.bbox, &d.bbox) <= max_iou) {
            kept.push(d);
        }
    }
    kept
}

/// A distinct colour per class.
fn colour(class: usize) -> Rgb<u8> {
    const PALETTE: [[u8; 3]; 8] = [
        [230, 25, 75],
        [60, 180, 75],
        [255, 225, 25],
        [0, 130, 200],
        [245, 130, 48],
        [145, 30, 180],
        [70, 240, 240],
        [240, 50, 230],
    ];
    Rgb(PALETTE[class % PALETTE.len()])
}

/// Draws each detection's box (3 pixels wide, one colour per class) and its label — the
/// class name from `names` (or `class k`) and its score, at [`label_scale`] or smaller so it
/// is at most twice the box's width, kept inside the image — on `image`, whose size is the
/// model input's scaled by `scale` (`[sx, sy]`).
pub fn draw_detections(image: &mut RgbImage, detections: &[Detection], scale: [f32; 2], names: &[String]) {
    let (w, h) = (image.width() as i64, image.height() as i64);
    let text_scale = label_scale(image);
    for d in detections {
        let c = colour(d.class);
        let [x1, y1, x2, y2] = [d.bbox[0] * scale[0], d.bbox[1] * scale[1], d.bbox[2] * scale[0], d.bbox[3] * scale[1]]
            .map(|v| v.round() as i64);
        for t in 0..3 {
            for x in x1..=x2 {
                for y in [y1 + t, y2 - t] {
                    if (0..w).contains(&x) && (0..h).contains(&y) {
                        image.put_pixel(x as u32, y as u32, c);
                    }
                }
            }
            for y in y1..=y2 {
                for x in [x1 + t, x2 - t] {
                    if (0..w).contains(&x) && (0..h).contains(&y) {
                        image.put_pixel(x as u32, y as u32, c);
                    }
                }
            }
        }
        let name = names.get(d.class).cloned().unwrap_or_else(|| format!("class {}", d.class));
        let label = format!("{name} {:.2}", d.score);
        // At most twice the box's width (neighbouring faces' labels would cover each other),
        // never below one font pixel per image pixel.
        let per_scale = ((label.chars().count() * (font::WIDTH + 1) + 1) as i64).max(1);
        let s = (text_scale as i64).min((2 * (x2 - x1).max(1)) / per_scale).max(1) as u32;
        let (label_width, label_height) = (per_scale * s as i64, ((font::HEIGHT + 2) as u32 * s) as i64);
        // Above the box, or inside its top edge when the box touches the image's top; moved
        // left to stay inside the image when the box is near its right edge.
        let y = if y1 >= label_height { y1 - label_height } else { y1.max(0) };
        let x = x1.min(w - label_width).max(0);
        draw_text(image, x, y, &label, s, Rgb([255, 255, 255]), c);
    }
}

/// Font scale for labels on `image`: one font pixel per 160 image pixels of its larger side,
/// at least 1.
pub fn label_scale(image: &RgbImage) -> u32 {
    (image.width().max(image.height()) / 160).max(1)
}

/// Draws `text` in the built-in 5×7 font with the top-left corner of its background box at
/// `(x, y)`: each font pixel is a `scale`×`scale` square of `foreground` on a box of
/// `background` one font pixel wider on every side. Clipped to the image; returns the box's
/// width and height in pixels.
pub fn draw_text(
    image: &mut RgbImage,
    x: i64,
    y: i64,
    text: &str,
    scale: u32,
    foreground: Rgb<u8>,
    background: Rgb<u8>,
) -> (u32, u32) {
    let s = scale.max(1) as i64;
    let chars: Vec<char> = text.chars().collect();
    let box_w = ((chars.len() * (font::WIDTH + 1) + 1) as i64) * s;
    let box_h = (font::HEIGHT as i64 + 2) * s;
    let (w, h) = (image.width() as i64, image.height() as i64);
    let mut put = |px: i64, py: i64, c: Rgb<u8>| {
        if (0..w).contains(&px) && (0..h).contains(&py) {
            image.put_pixel(px as u32, py as u32, c);
        }
    };
    for py in y..y + box_h {
        for px in x..x + box_w {
            put(px, py, background);
        }
    }
    for (k, ch) in chars.iter().enumerate() {
        let left = x + ((k * (font::WIDTH + 1) + 1) as i64) * s;
        for (row, bits) in font::glyph(*ch).iter().enumerate() {
            for col in 0..font::WIDTH {
                if bits >> (font::WIDTH - 1 - col) & 1 == 1 {
                    let (gx, gy) = (left + col as i64 * s, y + (row as i64 + 1) * s);
                    for dy in 0..s {
                        for dx in 0..s {
                            put(gx + dx, gy + dy, foreground);
                        }
                    }
                }
            }
        }
    }
    (box_w as u32, box_h as u32)
}

/// Writes `caption` (e.g. a classification result) in white on black at the image's top-left
/// corner, at [`label_scale`].
pub fn draw_caption(image: &mut RgbImage, caption: &str) {
    let s = label_scale(image);
    draw_text(image, 0, 0, caption, s, Rgb([255, 255, 255]), Rgb([0, 0, 0]));
}

/// Blends a red mask over `image` where the `height × width` probability map exceeds
/// `threshold` (nearest sampling to the image's size). Returns the masked pixel count.
pub fn overlay_mask(image: &mut RgbImage, probability: &[f32], height: usize, width: usize, threshold: f32) -> usize {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let mut count = 0;
    for y in 0..h {
        for x in 0..w {
            let p = probability[(y * height / h) * width + x * width / w];
            if p > threshold {
                let px = image.get_pixel_mut(x as u32, y as u32);
                px.0 = [(px.0[0] as u16 / 2 + 127) as u8, px.0[1] / 2, px.0[2] / 2];
                count += 1;
            }
        }
    }
    count
}
