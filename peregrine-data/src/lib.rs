//! # peregrine-data
//!
//! Input data: the CIFAR-10 binary layout (gzip or raw, one batch or the whole directory),
//! single images (PNG/JPEG), and the model's preprocessing from raw `u8` pixels to a normalised
//! `[N, C, H, W]` tensor. Used by the CLI, training and the benches.

#![warn(missing_docs)]

use std::io::Read;
use std::path::Path;

use ndarray::{Array4, ArrayD};

use peregrine_model::ir::InputSpec;
use peregrine_model::reference::Real;
use thiserror::Error;

pub mod font;
pub mod photos;
pub mod vision;

/// Result alias of this crate.
pub type Result<T, E = DataError> = std::result::Result<T, E>;

/// Failures of reading data sets and images.
#[derive(Debug, Error)]
pub enum DataError {
    /// A file could not be opened or read.
    #[error("{path}: {cause}")]
    Io {
        /// The file involved.
        path: String,
        /// The underlying I/O error.
        cause: std::io::Error,
    },
    /// A data set file or directory is malformed.
    #[error("data error: {0}")]
    Malformed(String),
    /// An image could not be decoded or does not fit the model input.
    #[error("{path}: {detail}")]
    Image {
        /// The image file.
        path: String,
        /// What is wrong with it.
        detail: String,
    },
    /// Pixels and input shape disagree.
    #[error("shape error: {0}")]
    Shape(String),
}

impl DataError {
    fn io(path: &Path, cause: std::io::Error) -> Self {
        DataError::Io { path: path.display().to_string(), cause }
    }
}

/// Bytes of one CIFAR-10 record: 1 label + 3·32·32 pixels.
pub const CIFAR_RECORD: usize = 1 + 3 * 32 * 32;

/// A set of labelled `u8` images in planar CHW layout.
#[derive(Clone, Debug)]
pub struct LabeledImages {
    /// Channels, height, width.
    pub shape: [usize; 3],
    /// `len · C · H · W` pixel bytes, planar per image.
    pub pixels: Vec<u8>,
    /// One label per image.
    pub labels: Vec<u8>,
}

impl LabeledImages {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    /// Pixels of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.shape.iter().product::<usize>();
        &self.pixels[i * n..(i + 1) * n]
    }
    /// Images `range` only.
    pub fn slice(&self, range: std::ops::Range<usize>) -> LabeledImages {
        let n = self.shape.iter().product::<usize>();
        LabeledImages {
            shape: self.shape,
            pixels: self.pixels[range.start * n..range.end * n].to_vec(),
            labels: self.labels[range].to_vec(),
        }
    }
}

/// Reads a CIFAR-10 binary batch file (`.bin` or `.bin.gz`), keeping at most `limit` images.
pub fn load_cifar10(path: impl AsRef<Path>, limit: Option<usize>) -> Result<LabeledImages> {
    let path = path.as_ref();
    if limit == Some(0) {
        return Err(DataError::Malformed("the image limit must be at least 1".into()));
    }
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut raw = Vec::new();
    let gz = path.extension().is_some_and(|e| e == "gz");
    let want = limit.map(|l| l.saturating_mul(CIFAR_RECORD) as u64).unwrap_or(u64::MAX);
    let res = if gz {
        flate2::read::GzDecoder::new(file).take(want).read_to_end(&mut raw)
    } else {
        file.take(want).read_to_end(&mut raw)
    };
    res.map_err(|e| DataError::Malformed(format!("{}: cannot read ({e})", path.display())))?;
    parse_cifar10(&raw, limit).map_err(|e| match e {
        DataError::Malformed(m) => DataError::Malformed(format!("{}: {m}", path.display())),
        other => other,
    })
}

/// Parses CIFAR-10 binary records from bytes.
pub fn parse_cifar10(raw: &[u8], limit: Option<usize>) -> Result<LabeledImages> {
    if raw.is_empty() || raw.len() % CIFAR_RECORD != 0 {
        return Err(DataError::Malformed(format!(
            "{} bytes is not a whole number of {CIFAR_RECORD}-byte CIFAR-10 records",
            raw.len()
        )));
    }
    let n = (raw.len() / CIFAR_RECORD).min(limit.unwrap_or(usize::MAX));
    let mut pixels = Vec::with_capacity(n * (CIFAR_RECORD - 1));
    let mut labels = Vec::with_capacity(n);
    for (i, rec) in raw.chunks_exact(CIFAR_RECORD).take(n).enumerate() {
        if rec[0] > 9 {
            return Err(DataError::Malformed(format!("record {i} has label {}, expected 0..=9", rec[0])));
        }
        labels.push(rec[0]);
        pixels.extend_from_slice(&rec[1..]);
    }
    Ok(LabeledImages { shape: [3, 32, 32], pixels, labels })
}

/// Largest image side accepted (pixels).
pub const MAX_IMAGE_SIDE: u32 = 8192;
/// Decoded bytes allowed per byte of image file (deflate and JPEG cannot expand much more), so
/// a small file whose header claims a huge image is refused before its buffer is allocated.
pub const MAX_EXPANSION: u64 = 4096;

/// Loads a PNG or JPEG image as planar RGB `u8`, resized to the model input when it allows it.
/// Images above [`MAX_IMAGE_SIDE`] on a side, or whose decoded size exceeds [`MAX_EXPANSION`]
/// times the file's size (plus 1 MiB), are refused before decoding.
pub fn load_image(path: impl AsRef<Path>, input: &InputSpec) -> Result<Vec<u8>> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    decode_image(&bytes, &path.display().to_string(), input)
}

/// Decodes a PNG or JPEG file as RGB at its own size, under the same limits as [`load_image`].
pub fn load_rgb(path: impl AsRef<Path>) -> Result<image::RgbImage> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    decode_rgb(&bytes, &path.display().to_string())
}

fn decode_rgb(bytes: &[u8], name: &str) -> Result<image::RgbImage> {
    let path = std::path::Path::new(name);
    let file_len = bytes.len() as u64;
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| DataError::io(path, e))?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(file_len.saturating_mul(MAX_EXPANSION).saturating_add(1 << 20));
    reader.limits(limits);
    let img = reader.decode().map_err(|e| DataError::Image {
        path: name.to_string(),
        detail: match e {
            image::ImageError::Limits(_) => format!(
                "its header claims an image larger than this {file_len}-byte file can hold or than {MAX_IMAGE_SIDE} pixels a side ({e})"
            ),
            e => format!("cannot decode image ({e})"),
        },
    })?;
    Ok(img.to_rgb8())
}

/// [`load_image`] on the bytes of an image file; `name` names it in errors.
pub fn decode_image(bytes: &[u8], name: &str, input: &InputSpec) -> Result<Vec<u8>> {
    let rgb = decode_rgb(bytes, name)?;
    let (c, h, w) = (input.shape[0], input.shape[1], input.shape[2]);
    if c != 3 {
        return Err(DataError::Image {
            path: name.to_string(),
            detail: format!("image input for a model with {c} channels (RGB needs 3)"),
        });
    }
    let rgb = if rgb.dimensions() == (w as u32, h as u32) {
        rgb
    } else if input.preprocess.resize {
        image::imageops::resize(&rgb, w as u32, h as u32, image::imageops::FilterType::Triangle)
    } else {
        return Err(DataError::Image {
            path: name.to_string(),
            detail: format!("image is {}×{}, the model takes {w}×{h} and does not resize", rgb.width(), rgb.height()),
        });
    };
    let mut planar = vec![0u8; 3 * h * w];
    for (x, y, p) in rgb.enumerate_pixels() {
        for ch in 0..3 {
            planar[ch * h * w + y as usize * w + x as usize] = p[ch];
        }
    }
    Ok(planar)
}

/// Calibration images for a model: a CIFAR-10 batch file, one PNG/JPEG image, or a directory
/// of them (sorted by name), each resized to the model input; at most `limit`. Returns the
/// planar pixels and the image count.
pub fn calibration_pixels(path: &Path, input: &InputSpec, limit: usize) -> Result<(Vec<u8>, usize)> {
    if !path.is_dir() && !is_image_file(path) {
        let data = load_cifar10(path, Some(limit))?;
        return Ok((data.pixels.clone(), data.len()));
    }
    let files = image_files(path)?;
    let mut pixels = Vec::new();
    for f in files.iter().take(limit.max(1)) {
        pixels.extend(load_image(f, input)?);
    }
    Ok((pixels, files.len().min(limit.max(1))))
}

/// Whether `path` names a PNG or JPEG file (by its extension).
pub fn is_image_file(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
}

/// The PNG and JPEG files of a directory (sorted by name), or `path` itself when it is one; an
/// error when there are none.
pub fn image_files(path: &Path) -> Result<Vec<std::path::PathBuf>> {
    if !path.is_dir() {
        if is_image_file(path) {
            return Ok(vec![path.to_path_buf()]);
        }
        return Err(DataError::Image {
            path: path.display().to_string(),
            detail: "neither a directory nor a PNG or JPEG file".into(),
        });
    }
    let mut files: Vec<_> = std::fs::read_dir(path)
        .map_err(|e| DataError::io(path, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| is_image_file(p))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(DataError::Shape(format!("{} holds no PNG or JPEG image", path.display())));
    }
    Ok(files)
}

/// Turns planar `u8` images into the normalised `[N, C, H, W]` model input.
pub fn preprocess<T: Real>(pixels: &[u8], count: usize, input: &InputSpec) -> Result<ArrayD<T>> {
    let (c, h, w) = (input.shape[0], input.shape[1], input.shape[2]);
    if pixels.len() != count * c * h * w {
        return Err(DataError::Shape(format!("{} pixel bytes for {count} images of {c}×{h}×{w}", pixels.len())));
    }
    let p = &input.preprocess;
    let scale: Vec<f64> = p.std.iter().map(|s| 1.0 / (255.0 * *s as f64)).collect();
    let shift: Vec<f64> = p.mean.iter().zip(&p.std).map(|(m, s)| -(*m as f64) / *s as f64).collect();
    let data: Vec<T> = pixels
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let ch = (i / (h * w)) % c;
            T::of(v as f64 * scale[ch] + shift[ch])
        })
        .collect();
    Ok(Array4::from_shape_vec((count, c, h, w), data).expect("sized").into_dyn())
}

/// A CIFAR-10 training split with its optional test split.
#[derive(Clone, Debug)]
pub struct Cifar10Split {
    /// Training images (`data_batch_1` … `data_batch_5`, or the one file given).
    pub train: LabeledImages,
    /// Test images (`test_batch`), when the directory has them.
    pub test: Option<LabeledImages>,
}

/// The batch file `stem.bin.gz` or `stem.bin` in `dir`, if present.
pub fn batch_file(dir: &Path, stem: &str) -> Option<std::path::PathBuf> {
    [format!("{stem}.bin.gz"), format!("{stem}.bin")].into_iter().map(|f| dir.join(f)).find(|p| p.exists())
}

/// Training and test images from a CIFAR-10 directory (`data_batch_1..5`, `test_batch`, each
/// `.bin` or `.bin.gz`), at most `limit` training images; a single batch file is the training
/// set alone.
pub fn load_cifar10_split(data: &Path, limit: Option<usize>) -> Result<Cifar10Split> {
    if data.is_file() {
        return Ok(Cifar10Split { train: load_cifar10(data, limit)?, test: None });
    }
    if !data.is_dir() {
        return Err(DataError::Malformed(format!("{}: no such file or directory", data.display())));
    }
    let Some(first) = batch_file(data, "data_batch_1") else {
        return Err(DataError::Malformed(format!(
            "{}: no data_batch_1.bin(.gz); expected the CIFAR-10 binary layout",
            data.display()
        )));
    };
    let mut train = load_cifar10(&first, limit)?;
    for k in 2..=5 {
        let have = train.len();
        if limit.is_some_and(|l| have >= l) {
            break;
        }
        let Some(file) = batch_file(data, &format!("data_batch_{k}")) else { break };
        let part = load_cifar10(&file, limit.map(|l| l - have))?;
        train.pixels.extend_from_slice(&part.pixels);
        train.labels.extend_from_slice(&part.labels);
    }
    let test = batch_file(data, "test_batch").map(|f| load_cifar10(f, None)).transpose()?;
    Ok(Cifar10Split { train, test })
}

/// Preprocessed images as one `f64` vector each (`C·H·W` values in C-H-W order).
pub fn preprocessed_rows(images: &LabeledImages, input: &InputSpec) -> Result<Vec<Vec<f64>>> {
    let x = preprocess::<f64>(&images.pixels, images.len(), input)?;
    let per = x.len() / images.len().max(1);
    Ok(x.into_raw_vec_and_offset().0.chunks(per.max(1)).map(|c| c.to_vec()).collect())
}
