//! Client-side outputs of one photo, shared by `predict` (cleartext) and `run --image`
//! (decrypted): the top classes, YOLOv8 detections after non-maximum suppression, or a
//! segmentation mask — printed, compared between the decrypted and the cleartext output, and
//! drawn on the photo (`--annotate`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use peregrine_data::vision::{self, Detection, RgbImage};
use peregrine_model::Model;
use serde_json::{json, Value};

/// How to read and draw a model's output.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct OutputArgs {
    /// Decode the output as YOLOv8 heads with this many classes (a detector imported with
    /// `--graph-output` naming its heads, finest first); boxes after non-maximum suppression.
    #[arg(long, value_name = "CLASSES")]
    pub yolo_classes: Option<usize>,
    /// Smallest class probability of a detection.
    #[arg(long, default_value_t = 0.25)]
    pub score: f32,
    /// Largest overlap (IoU) of two kept boxes of one class.
    #[arg(long, default_value_t = 0.45)]
    pub iou: f32,
    /// Class names of the detections.
    #[arg(long, value_delimiter = ',')]
    pub labels: Vec<String>,
    /// Treat the output as a probability map and mask the pixels above this threshold.
    #[arg(long, value_name = "THRESHOLD")]
    pub mask: Option<f32>,
    /// Write the photo with the result drawn on it to this PNG: boxes with labels, the mask in
    /// red, or the predicted class as a caption.
    #[arg(long, value_name = "PNG")]
    pub annotate: Option<PathBuf>,
}

impl OutputArgs {
    /// Whether anything beyond the logits was asked for.
    pub fn wanted(&self) -> bool {
        self.yolo_classes.is_some() || self.mask.is_some() || self.annotate.is_some()
    }
}

/// A decoded output.
#[derive(Clone, Debug)]
pub enum Decoded {
    /// Class indices, best first, with their logits.
    Classes(Vec<(usize, f32)>),
    /// Detections after non-maximum suppression, in model-input pixels.
    Detections(Vec<Detection>),
    /// A probability map thresholded into a mask.
    Mask {
        /// The map, row-major.
        probability: Vec<f32>,
        /// Its height.
        height: usize,
        /// Its width.
        width: usize,
        /// Pixels above it are in the mask.
        threshold: f32,
    },
}

impl Decoded {
    /// Pixels of a mask above its threshold (0 for other outputs).
    pub fn mask_pixels(&self) -> usize {
        match self {
            Decoded::Mask { probability, threshold, .. } => probability.iter().filter(|p| *p > threshold).count(),
            _ => 0,
        }
    }
}

/// Decodes `output` (the model's whole output, flattened) as `a` asks, after the activation
/// the client applies to it, if the model has one.
pub fn decode(model: &Model, output: &[f32], a: &OutputArgs) -> Result<Decoded> {
    let finished = model.finish_output(output);
    let output = finished.as_slice();
    let runaway = output.iter().filter(|v| !v.is_finite()).count();
    if runaway > 0 {
        eprintln!(
            "warning: {runaway} of {} output values are not finite — the polynomial network left the range it was fitted on for this input; the outputs that depend on them are meaningless (detections with them are dropped)",
            output.len()
        );
    }
    let input = &model.graph().input;
    let [ih, iw] = [input.shape[1], input.shape[2]];
    if a.yolo_classes.is_some() && a.mask.is_some() {
        bail!("give at most one of --yolo-classes and --mask");
    }
    if let Some(classes) = a.yolo_classes {
        let heads = vision::split_heads(output, model.output_shape(), 4 * 16 + classes, [ih, iw])?;
        let found = vision::non_max_suppression(vision::decode_yolov8(&heads, classes, 16, a.score)?, a.iou);
        return Ok(Decoded::Detections(found));
    }
    if let Some(threshold) = a.mask {
        return match model.output_shape().as_slice() {
            [1, h, w] => Ok(Decoded::Mask { probability: output.to_vec(), height: *h, width: *w, threshold }),
            other => bail!("--mask needs a one-channel [1, H, W] output, the model gives {other:?}"),
        };
    }
    let mut order: Vec<(usize, f32)> = output.iter().copied().enumerate().collect();
    order.sort_by(|x, y| y.1.total_cmp(&x.1));
    Ok(Decoded::Classes(order))
}

/// Name of class `c`: from `--labels`, else the model's class names, else `class c`.
pub fn class_name(model: &Model, a: &OutputArgs, c: usize) -> String {
    a.labels.get(c).or_else(|| model.graph().classes.get(c)).cloned().unwrap_or_else(|| format!("class {c}"))
}

/// Draws `decoded` on the photo at `image` (at its own size) and writes it to `out`; `note`
/// is appended to a classification caption (e.g. "encrypted").
pub fn annotate(model: &Model, image: &Path, decoded: &Decoded, a: &OutputArgs, out: &Path, note: &str) -> Result<()> {
    let mut photo: RgbImage = peregrine_data::load_rgb(image)?;
    let input = &model.graph().input;
    let scale = [photo.width() as f32 / input.shape[2] as f32, photo.height() as f32 / input.shape[1] as f32];
    match decoded {
        Decoded::Detections(found) => {
            let names: Vec<String> = (0..a.yolo_classes.unwrap_or(0)).map(|c| class_name(model, a, c)).collect();
            vision::draw_detections(&mut photo, found, scale, &names);
        }
        Decoded::Mask { probability, height, width, threshold } => {
            vision::overlay_mask(&mut photo, probability, *height, *width, *threshold);
        }
        Decoded::Classes(order) => {
            let (c, logit) = order.first().copied().unwrap_or((0, f32::NAN));
            let note = if note.is_empty() { String::new() } else { format!(" ({note})") };
            vision::draw_caption(&mut photo, &format!("{} {logit:.2}{note}", class_name(model, a, c)));
        }
    }
    Ok(vision::save_png(&photo, out)?)
}

/// The decoded output as JSON.
pub fn to_json(model: &Model, decoded: &Decoded, a: &OutputArgs, top: usize) -> Value {
    match decoded {
        Decoded::Classes(order) => {
            let tops: Vec<_> = order
                .iter()
                .take(top.max(1))
                .map(|&(i, l)| json!({"class": i, "name": class_name(model, a, i), "logit": l}))
                .collect();
            let first = order.first().map(|p| p.0);
            json!({"prediction": first, "name": first.map(|c| class_name(model, a, c)), "top": tops})
        }
        Decoded::Detections(found) => {
            let list: Vec<_> = found
                .iter()
                .map(|d| json!({"class": d.class, "name": class_name(model, a, d.class), "score": d.score, "box": d.bbox}))
                .collect();
            json!({"detections": list})
        }
        Decoded::Mask { height, width, threshold, .. } => {
            json!({"mask_pixels": decoded.mask_pixels(), "pixels": height * width, "threshold": threshold})
        }
    }
}

/// Prints the decoded output as text lines.
pub fn print(model: &Model, decoded: &Decoded, a: &OutputArgs, top: usize) {
    let input = &model.graph().input;
    match decoded {
        Decoded::Classes(order) => {
            for &(i, l) in order.iter().take(top.max(1)) {
                println!("{:>3} {:<12} {:>9.4}", i, class_name(model, a, i), l);
            }
        }
        Decoded::Detections(found) => {
            println!("{} detections (boxes in {}×{} input pixels)", found.len(), input.shape[2], input.shape[1]);
            for d in found {
                let b = d.bbox.map(|v| v.round());
                println!(
                    "  {:<24} {:.3}  [{}, {}, {}, {}]",
                    class_name(model, a, d.class),
                    d.score,
                    b[0],
                    b[1],
                    b[2],
                    b[3]
                );
            }
        }
        Decoded::Mask { height, width, threshold, .. } => {
            println!(
                "mask: {} of {} pixels above {threshold} ({height}×{width})",
                decoded.mask_pixels(),
                height * width
            );
        }
    }
}

/// How a decrypted output's decoding agrees with the cleartext model's.
#[derive(Clone, Debug, PartialEq)]
pub struct Agreement {
    /// What is compared (`top-1`, `boxes`, `mask`).
    pub what: &'static str,
    /// Items that agree.
    pub agree: usize,
    /// Items compared.
    pub of: usize,
    /// One line for people.
    pub summary: String,
}

/// Whose outputs [`agreement`] compares, as its summary names them: the decrypted output
/// against the cleartext model's (`run --image`), or a converted model's against its original
/// (`predict --against`).
#[derive(Clone, Copy, Debug)]
pub struct Sides {
    /// The output checked ("decrypted", "converted").
    pub ours: &'static str,
    /// The output it should equal ("cleartext", "original").
    pub theirs: &'static str,
}

/// Compares one output's decoding with a reference one's: the top-1 class; each reference box
/// matched to a box of its class with IoU ≥ `min_iou`; mask pixels on the same side of the
/// threshold, and the two masks' intersection over union (pixel agreement alone says little
/// when the mask is a small part of the image).
pub fn agreement(decrypted: &Decoded, reference: &Decoded, min_iou: f32, sides: Sides) -> Agreement {
    let Sides { ours, theirs } = sides;
    match (decrypted, reference) {
        (Decoded::Classes(a), Decoded::Classes(b)) => {
            let same = a.first().map(|p| p.0) == b.first().map(|p| p.0);
            Agreement {
                what: "top-1",
                agree: same as usize,
                of: 1,
                summary: format!("top-1 {} the {theirs} model's", if same { "equals" } else { "DIFFERS FROM" }),
            }
        }
        (Decoded::Detections(got), Decoded::Detections(want)) => {
            let mut used = vec![false; got.len()];
            let mut matched = 0;
            let mut worst = 1.0f32;
            for w in want {
                let best = got
                    .iter()
                    .enumerate()
                    .filter(|(k, g)| !used[*k] && g.class == w.class)
                    .map(|(k, g)| (k, vision::iou(&g.bbox, &w.bbox)))
                    .max_by(|x, y| x.1.total_cmp(&y.1));
                if let Some((k, iou)) = best.filter(|b| b.1 >= min_iou) {
                    used[k] = true;
                    matched += 1;
                    worst = worst.min(iou);
                }
            }
            let extra = got.len() - matched;
            Agreement {
                what: "boxes",
                agree: matched,
                of: want.len(),
                summary: format!(
                    "{matched} of {} {theirs} boxes found (same class, IoU ≥ {min_iou}; smallest IoU {}), {extra} other {ours} boxes",
                    want.len(),
                    if matched > 0 { format!("{worst:.3}") } else { "-".into() }
                ),
            }
        }
        (Decoded::Mask { probability: p, threshold, .. }, Decoded::Mask { probability: q, .. }) => {
            let [same, both, either] = mask_counts(p, q, *threshold);
            let iou = if either == 0 { "-".to_string() } else { format!("{:.3}", both as f64 / either as f64) };
            Agreement {
                what: "mask",
                agree: same,
                of: q.len(),
                summary: format!(
                    "mask pixels agree on {same} of {} ({:.4} %), mask IoU {iou}; {} {ours} and {} {theirs} pixels above {threshold}",
                    q.len(),
                    100.0 * same as f64 / q.len().max(1) as f64,
                    decrypted.mask_pixels(),
                    reference.mask_pixels()
                ),
            }
        }
        _ => Agreement { what: "nothing", agree: 0, of: 0, summary: "the two outputs were decoded differently".into() },
    }
}

/// Pixels of two probability maps on the same side of `threshold`, above it in both, and above
/// it in either.
fn mask_counts(p: &[f32], q: &[f32], threshold: f32) -> [usize; 3] {
    p.iter().zip(q).fold([0; 3], |[same, both, either], (&x, &y)| {
        let (a, b) = (x > threshold, y > threshold);
        [same + (a == b) as usize, both + (a && b) as usize, either + (a || b) as usize]
    })
}

/// A converted model's agreement with its original pooled over several photos
/// (`predict --image DIR --against`): top-1 classes; boxes matched at IoU ≥ 0.5 and ≥ 0.9;
/// mask pixels and the pooled mask IoU (intersection and union summed over every photo).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Pooled {
    /// What was compared (`top-1`, `boxes`, `mask`; empty before the first photo).
    pub what: &'static str,
    /// Photos compared.
    pub images: usize,
    /// Photos whose top-1 classes agree (classifiers).
    pub top1: usize,
    /// Boxes of the original model, of the converted one, and the original's boxes found
    /// (same class) at IoU ≥ 0.5 and ≥ 0.9 (detectors).
    pub boxes: [usize; 4],
    /// Mask pixels on the same side of the threshold, pixels compared, pixels masked by both
    /// and by either (segmenters).
    pub mask: [usize; 4],
}

impl Pooled {
    /// Adds one photo's decodings (the converted model's, the original's).
    pub fn add(&mut self, ours: &Decoded, theirs: &Decoded) {
        self.images += 1;
        let sides = Sides { ours: "converted", theirs: "original" };
        let strict = agreement(ours, theirs, 0.9, sides);
        self.what = strict.what;
        match (ours, theirs) {
            (Decoded::Classes(_), Decoded::Classes(_)) => self.top1 += strict.agree,
            (Decoded::Detections(got), Decoded::Detections(want)) => {
                self.boxes[0] += want.len();
                self.boxes[1] += got.len();
                self.boxes[2] += agreement(ours, theirs, 0.5, sides).agree;
                self.boxes[3] += strict.agree;
            }
            (Decoded::Mask { probability: p, threshold, .. }, Decoded::Mask { probability: q, .. }) => {
                let [same, both, either] = mask_counts(p, q, *threshold);
                self.mask = [self.mask[0] + same, self.mask[1] + q.len(), self.mask[2] + both, self.mask[3] + either];
            }
            _ => {}
        }
    }

    /// One line for people.
    pub fn summary(&self) -> String {
        let n = self.images;
        let ratio = |a: usize, b: usize| if b == 0 { "-".to_string() } else { format!("{:.3}", a as f64 / b as f64) };
        if self.what == "mask" {
            let [same, all, both, either] = self.mask;
            format!(
                "{n} photos: mask pixels agree on {same} of {all} ({:.2} %), pooled mask IoU {} ({both} pixels in both masks, {either} in either)",
                100.0 * same as f64 / all.max(1) as f64,
                ratio(both, either)
            )
        } else if self.what == "boxes" {
            let [want, got, at5, at9] = self.boxes;
            format!(
                "{n} photos: {at5} of {want} original boxes found at IoU ≥ 0.5 ({}), {at9} at IoU ≥ 0.9 ({}); {got} converted boxes, {} of them matching none",
                ratio(at5, want),
                ratio(at9, want),
                got - at5
            )
        } else {
            format!("{n} photos: top-1 equal on {} ({})", self.top1, ratio(self.top1, n))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{agreement, Decoded, Pooled, Sides};

    #[test]
    fn mask_agreement_counts_pixels_and_intersection_over_union() {
        let mask = |p: Vec<f32>| Decoded::Mask { probability: p, height: 1, width: 5, threshold: 0.5 };
        let sides = Sides { ours: "converted", theirs: "original" };
        // Masks {0, 1, 4} and {0, 2, 4}: 3 of 5 pixels on the same side, IoU 2 / 4.
        let g = agreement(&mask(vec![0.9, 0.8, 0.1, 0.2, 0.7]), &mask(vec![0.6, 0.3, 0.9, 0.0, 1.0]), 0.9, sides);
        assert_eq!((g.what, g.agree, g.of), ("mask", 3, 5));
        assert!(
            g.summary.contains("mask IoU 0.500") && g.summary.contains("3 converted and 3 original"),
            "{}",
            g.summary
        );
        // Two empty masks agree everywhere and have no IoU.
        let g = agreement(&mask(vec![0.0; 5]), &mask(vec![0.1; 5]), 0.9, sides);
        assert_eq!(g.agree, 5);
        assert!(g.summary.contains("mask IoU -"), "{}", g.summary);
    }

    #[test]
    fn agreement_pools_over_photos() {
        use peregrine_data::vision::Detection;
        let det = |class, x: f32| Detection { class, score: 0.9, bbox: [x, 0.0, x + 10.0, 10.0] };
        let boxes = |d: Vec<Detection>| Decoded::Detections(d);
        let mut p = Pooled::default();
        // Photo 1: the original's two boxes; one found exactly, one shifted by 2 (IoU 8/12).
        p.add(&boxes(vec![det(1, 0.0), det(1, 52.0)]), &boxes(vec![det(1, 0.0), det(1, 50.0)]));
        // Photo 2: the original sees nothing, the converted model one box of another class.
        p.add(&boxes(vec![det(3, 0.0)]), &boxes(vec![]));
        assert_eq!((p.what, p.images, p.boxes), ("boxes", 2, [2, 3, 2, 1]));
        assert!(p.summary().contains("2 of 2 original boxes found at IoU ≥ 0.5 (1.000), 1 at IoU ≥ 0.9 (0.500); 3 converted boxes, 1 of them matching none"), "{}", p.summary());
        // Masks: intersection and union summed before dividing, not IoUs averaged.
        let mask = |p: Vec<f32>| Decoded::Mask { probability: p, height: 1, width: 4, threshold: 0.5 };
        let mut m = Pooled::default();
        m.add(&mask(vec![1.0, 0.0, 0.0, 0.0]), &mask(vec![1.0, 1.0, 1.0, 0.0])); // 1 both, 3 either
        m.add(&mask(vec![0.0; 4]), &mask(vec![0.0; 4])); // nothing anywhere
        assert_eq!(m.mask, [6, 8, 1, 3]);
        assert!(m.summary().contains("pooled mask IoU 0.333") && m.summary().contains("75.00 %"), "{}", m.summary());
        let top = |k: usize| Decoded::Classes(vec![(k, 2.0), (1 - k, 1.0)]);
        let mut c = Pooled::default();
        c.add(&top(0), &top(0));
        c.add(&top(1), &top(0));
        assert_eq!(c.summary(), "2 photos: top-1 equal on 1 (0.500)");
    }

    #[test]
    fn a_mask_is_read_after_the_clients_sigmoid() {
        use peregrine_model::transform::client_output_activation;
        let model = client_output_activation(&peregrine_model::testkit::tiny_segmenter(3, 10.0)).unwrap();
        let a = super::OutputArgs { mask: Some(0.3), ..Default::default() };
        // The program's output −0.5 everywhere: below 0.3 as it stands, sigmoid(−0.5) = 0.378 above.
        let decoded = super::decode(&model, &vec![-0.5; 13 * 11], &a).unwrap();
        assert_eq!(decoded.mask_pixels(), 13 * 11);
        let Decoded::Mask { probability, .. } = decoded else { panic!("a mask was asked for") };
        assert!((probability[0] - 0.377_540_67).abs() < 1e-6, "{}", probability[0]);
    }
}
