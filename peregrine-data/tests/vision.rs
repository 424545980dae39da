//! Client-side decoding: YOLOv8 heads, non-maximum suppression, masks, annotated images.

use peregrine_data::vision::*;

/// One head of `classes` classes on an h×w grid, all logits very negative, except cell
/// `(i, j)`: class `class` with logit `logit` and side distances `sides` (whole bins).
fn head(
    h: usize,
    w: usize,
    classes: usize,
    cell: (usize, usize),
    class: usize,
    logit: f32,
    sides: [usize; 4],
) -> Vec<f32> {
    let per = 64 + classes;
    let mut v = vec![-20.0f32; per * h * w];
    let at = |ch: usize| (ch * h + cell.0) * w + cell.1;
    for (s, d) in sides.iter().enumerate() {
        v[at(s * 16 + d)] = 30.0; // a softmax peaked on bin d: expectation d
    }
    v[at(64 + class)] = logit;
    v
}

#[test]
fn a_peaked_distribution_decodes_to_its_box_and_nms_keeps_the_best_per_class() {
    let classes = 3;
    let values = head(5, 7, classes, (2, 3), 1, 2.0, [1, 2, 3, 1]);
    let heads = vec![Head { values, height: 5, width: 7, stride: 8.0 }];
    let found = decode_yolov8(&heads, classes, 16, 0.25).unwrap();
    assert_eq!(found.len(), 1);
    let d = &found[0];
    assert_eq!(d.class, 1);
    assert!((d.score - 1.0 / (1.0 + (-2.0f32).exp())).abs() < 1e-6);
    // Cell centre (3.5, 2.5) in strides; sides l=1, t=2, r=3, b=1.
    let want = [2.5 * 8.0, 0.5 * 8.0, 6.5 * 8.0, 3.5 * 8.0];
    for k in 0..4 {
        assert!((d.bbox[k] - want[k]).abs() < 1e-3, "{:?} vs {want:?}", d.bbox);
    }
    // A weaker overlapping box of the same class goes, one of another class stays.
    let weaker = Detection { class: 1, score: 0.5, bbox: [21.0, 5.0, 52.0, 28.0] };
    let other = Detection { class: 2, score: 0.4, bbox: d.bbox };
    let kept = non_max_suppression(vec![weaker, d.clone(), other.clone()], 0.45);
    assert_eq!(kept, vec![d.clone(), other]);
    assert!((iou(&d.bbox, &d.bbox) - 1.0).abs() < 1e-6);
    assert_eq!(iou(&[0.0, 0.0, 1.0, 1.0], &[2.0, 2.0, 3.0, 3.0]), 0.0);
    // Below the threshold: nothing.
    assert!(decode_yolov8(&heads, classes, 16, 0.95).unwrap().is_empty());
    // A head of the wrong size is an error, not a panic.
    let bad = vec![Head { values: vec![0.0; 10], height: 5, width: 7, stride: 8.0 }];
    assert!(decode_yolov8(&bad, classes, 16, 0.25).is_err());
}

#[test]
fn merged_heads_split_back_at_every_fth_pixel() {
    // Heads of 2 channels on 4×6, 2×3 (upsampled ×2 in the merged map).
    let (c, h, w) = (2, 4, 6);
    let mut merged = vec![0f32; 2 * c * h * w];
    for ch in 0..c {
        for i in 0..h {
            for j in 0..w {
                merged[(ch * h + i) * w + j] = (100 * ch + 10 * i + j) as f32;
                merged[((c + ch) * h + i) * w + j] = (1000 + 100 * ch + 10 * (i / 2) + j / 2) as f32;
            }
        }
    }
    let heads = split_heads(&merged, &[2 * c, h, w], c, [32, 48]).unwrap();
    assert_eq!(heads.len(), 2);
    assert_eq!((heads[1].height, heads[1].width, heads[1].stride), (2, 3, 16.0));
    assert_eq!(heads[0].stride, 8.0);
    assert_eq!(heads[1].values[3 + 2], 1012.0); // channel 0, row 1, column 2
    assert_eq!(heads[1].values[6 + 4], 1111.0); // channel 1, row 1, column 1
    assert!(split_heads(&merged, &[2 * c, h, w], 3, [32, 48]).is_err());
    assert!(split_heads(&merged, &[2 * c * h * w], c, [32, 48]).is_err());
}

#[test]
fn masks_and_boxes_are_drawn_on_the_photo() {
    let mut img = RgbImage::from_pixel(8, 6, image::Rgb([100, 100, 100]));
    // A 3×4 map, its right half above 0.5: the right half of the photo turns red.
    let prob: Vec<f32> = (0..12).map(|k| if k % 4 >= 2 { 0.9 } else { 0.1 }).collect();
    assert_eq!(overlay_mask(&mut img, &prob, 3, 4, 0.5), 24);
    assert_eq!(img.get_pixel(7, 0).0, [177, 50, 50]);
    assert_eq!(img.get_pixel(0, 0).0, [100, 100, 100]);
    let d = Detection { class: 0, score: 0.9, bbox: [1.0, 1.0, 3.0, 2.0] };
    draw_detections(&mut img, &[d], [2.0, 2.0], &[]); // model input half the photo's size
    assert_ne!(img.get_pixel(2, 2).0, [100, 100, 100], "the box's corner is drawn");
}

#[test]
fn text_is_drawn_glyph_by_glyph_on_its_box_and_clipped() {
    use peregrine_data::font;
    use peregrine_data::vision::draw_text;
    let grey = image::Rgb([100, 100, 100]);
    let (fg, bg) = (image::Rgb([255, 255, 255]), image::Rgb([0, 0, 0]));
    let mut img = RgbImage::from_pixel(40, 30, grey);
    // "1" at scale 2 from (3, 4): a box of (1 + 6) × 2 by (7 + 2) × 2 pixels.
    assert_eq!(draw_text(&mut img, 3, 4, "1", 2, fg, bg), (14, 18));
    let rows = font::glyph('1');
    for (row, bits) in rows.iter().enumerate() {
        for col in 0..font::WIDTH {
            let on = bits >> (font::WIDTH - 1 - col) & 1 == 1;
            // Every pixel of the font pixel's 2×2 square.
            for (dx, dy) in [(0, 0), (1, 1)] {
                let (x, y) = (3 + 2 + 2 * col as u32 + dx, 4 + 2 + 2 * row as u32 + dy);
                assert_eq!(*img.get_pixel(x, y), if on { fg } else { bg }, "row {row} column {col}");
            }
        }
    }
    assert_eq!(*img.get_pixel(3 + 14, 4), grey, "nothing right of the box");
    assert_eq!(*img.get_pixel(3, 4 + 18), grey, "nothing below the box");
    // Lower case is drawn in capitals; what the font lacks as '?'; text past the edge is clipped.
    assert_eq!(font::glyph('a'), font::glyph('A'));
    assert_eq!(font::glyph('é'), font::glyph('?'));
    assert_ne!(font::glyph('0'), font::glyph('O'));
    draw_text(&mut img, 30, 25, "WIDE TEXT", 3, fg, bg);
    assert_eq!(*img.get_pixel(39, 29), bg);
}

#[test]
fn detections_carry_their_label_above_the_box() {
    let grey = image::Rgb([100, 100, 100]);
    let mut img = RgbImage::from_pixel(120, 80, grey);
    let d = Detection { class: 1, score: 0.87, bbox: [20.0, 40.0, 60.0, 70.0] };
    draw_detections(&mut img, &[d], [1.0, 1.0], &["cat".into(), "dog".into()]);
    // The label box (9 pixels high at scale 1) sits on the box's top edge, in the class colour,
    // with white letters.
    let label: Vec<_> =
        (31..40).flat_map(|y| (20..90).map(move |x| (x, y))).map(|(x, y)| *img.get_pixel(x, y)).collect();
    assert!(label.iter().filter(|p| p.0 == [255, 255, 255]).count() > 30, "the letters of 'DOG 0.87'");
    assert_eq!(*img.get_pixel(20, 31), *img.get_pixel(20, 40), "label box in the class colour");
    assert_eq!(*img.get_pixel(20, 30), grey);
}

#[test]
fn labels_shrink_to_their_box_and_stay_inside_the_photo() {
    let grey = image::Rgb([100, 100, 100]);
    // 1,600 pixels wide: labels at scale 10 unless their box is narrow.
    let mut img = RgbImage::from_pixel(1600, 400, grey);
    // "DOG 0.87": 8 characters, 49 font pixels wide. A 100-pixel box allows 200 pixels: scale 4.
    let narrow = Detection { class: 1, score: 0.87, bbox: [1490.0, 200.0, 1590.0, 300.0] };
    draw_detections(&mut img, &[narrow], [1.0, 1.0], &["cat".into(), "dog".into()]);
    let colour = *img.get_pixel(1490, 250);
    let row = 200 - 9 * 4 + 1;
    let span: Vec<u32> = (0..1600).filter(|&x| *img.get_pixel(x, row) != grey).collect();
    assert_eq!(span.len(), 49 * 4, "label 4 pixels per font pixel, 196 wide");
    assert_eq!(*span.last().unwrap(), 1599, "moved left to end at the photo's right edge");
    assert_eq!(*img.get_pixel(1599, row), colour);
    assert_eq!(*img.get_pixel(1500, 200 - 9 * 4 - 1), grey, "nothing above the smaller label");
    // A wide box keeps the photo's scale (10).
    let mut img = RgbImage::from_pixel(1600, 400, grey);
    let wide = Detection { class: 1, score: 0.87, bbox: [100.0, 200.0, 900.0, 300.0] };
    draw_detections(&mut img, &[wide], [1.0, 1.0], &["cat".into(), "dog".into()]);
    let row = 200 - 9 * 10 + 1;
    assert_eq!((0..1600).filter(|&x| *img.get_pixel(x, row) != grey).count(), 490);
}

/// A network that left its range gives values that are not finite: cells holding them give no
/// box (no NaN coordinates reach the client's output), the others decode as before.
#[test]
fn cells_with_values_that_are_not_finite_give_no_box() {
    let classes = 2;
    let (h, w) = (4, 5);
    let mut values = head(h, w, classes, (1, 1), 0, 3.0, [1, 1, 2, 2]);
    // A second confident cell whose left side's bins overflowed.
    let cell = (2, 3);
    let at = |ch: usize| (ch * h + cell.0) * w + cell.1;
    values[at(64 + 1)] = 5.0;
    values[at(0)] = f32::INFINITY;
    // A third whose class logit is NaN.
    let third = (3, 0);
    values[(64 * h + third.0) * w + third.1] = f32::NAN;
    let heads = vec![Head { values, height: h, width: w, stride: 16.0 }];
    let found = decode_yolov8(&heads, classes, 16, 0.25).unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].class, 0);
    assert!(found[0].bbox.iter().all(|v| v.is_finite()));
}
