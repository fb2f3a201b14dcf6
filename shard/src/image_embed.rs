//! Image embedding with a ViT-family ONNX model through ONNX Runtime.
//!
//! The preprocessing follows the model directory's `preprocess.json`
//! (written by `scripts/make-test-vit.py` for the test model, by hand for an
//! exported pretrained one; see docs/IMAGE-MODELS.md), so nothing here
//! assumes the test model:
//!
//! 1. decode JPEG, PNG or WebP with the `image` crate, refusing images over
//!    the pixel limit from their header, before decoding their bodies;
//! 2. apply the EXIF orientation (phone photos are stored sideways);
//! 3. convert to 8-bit RGB, resize so the shortest edge is
//!    `resize_shortest_edge` (the longer one `floor(long × edge / short)`, as
//!    torchvision and Hugging Face processors do), centre-crop `crop` ×
//!    `crop`;
//! 4. scale by `rescale`, subtract `mean`, divide by `std`, lay out as
//!    `[batch, 3, crop, crop]`;
//! 5. run the model and read `output_name`: already pooled (`pooling:
//!    none`), or `[batch, tokens, dim]` pooled here (`cls`: token 0; `mean`:
//!    tokens 1.., the patches), then L2-normalised.
//!
//! Decoding and resizing happen on the caller's thread (a request's blocking
//! task), so a corrupt image is refused before it queues for the model and
//! the model's batches hold only ready tensors.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use image::imageops::FilterType;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader};
use ort::value::Tensor;
use serde::Deserialize;

use crate::embed::{normalize, EmbedError, RuntimeConfig, SessionPool};

/// `preprocess.json`: how images become the model's input and which output
/// is the vector.
#[derive(Debug, Clone, Deserialize)]
pub struct Preprocess {
    /// Model name for ClusterInfo and logs (the directory name without it).
    #[serde(default)]
    pub model: Option<String>,
    pub resize_shortest_edge: u32,
    #[serde(default)]
    pub resample: Resample,
    pub crop: u32,
    #[serde(default = "default_rescale")]
    pub rescale: f32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub input_name: String,
    pub output_name: String,
    #[serde(default)]
    pub pooling: ImagePooling,
    pub dim: usize,
    #[serde(default = "default_layout")]
    pub layout: String,
    #[serde(default = "default_channel_order")]
    pub channel_order: String,
    #[serde(default = "default_dtype")]
    pub dtype: String,
}

fn default_rescale() -> f32 {
    1.0 / 255.0
}
fn default_layout() -> String {
    "NCHW".into()
}
fn default_channel_order() -> String {
    "RGB".into()
}
fn default_dtype() -> String {
    "float32".into()
}

/// The resize filter.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Resample {
    /// Triangle (Pillow's BILINEAR, widened when shrinking).
    #[default]
    Bilinear,
    /// Catmull-Rom (Pillow's BICUBIC, a = -0.5), as CLIP's processor uses.
    Bicubic,
}

impl Resample {
    fn filter(self) -> FilterType {
        match self {
            Resample::Bilinear => FilterType::Triangle,
            Resample::Bicubic => FilterType::CatmullRom,
        }
    }
}

/// How the output becomes one vector.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ImagePooling {
    /// The output is `[batch, dim]` already.
    #[default]
    None,
    /// Token 0 of `[batch, tokens, dim]`.
    Cls,
    /// Mean of tokens 1.. of `[batch, tokens, dim]` (the patch tokens).
    Mean,
}

/// Why an image could not be turned into model input: the caller's fault,
/// answered with INVALID_ARGUMENT.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ImageError {
    #[error("is not a recognised JPEG, PNG or WebP image: {0}")]
    Format(String),
    #[error("is {width}x{height} pixels; the limit is {limit} pixels")]
    TooLarge { width: u32, height: u32, limit: u64 },
    #[error("is corrupt: {0}")]
    Corrupt(String),
}

impl Preprocess {
    /// Reads and checks `model_dir/preprocess.json`.
    pub fn load(model_dir: &Path) -> Result<Self, EmbedError> {
        let path = model_dir.join("preprocess.json");
        let err = |reason: String| EmbedError::Model { path: path.clone(), reason };
        let text = std::fs::read(&path).map_err(|e| err(e.to_string()))?;
        let p: Self = serde_json::from_slice(&text).map_err(|e| err(e.to_string()))?;
        p.check().map_err(err)?;
        Ok(p)
    }

    fn check(&self) -> Result<(), String> {
        if self.crop == 0 || self.resize_shortest_edge < self.crop {
            return Err(format!(
                "crop {} must be positive and at most resize_shortest_edge {}",
                self.crop, self.resize_shortest_edge
            ));
        }
        if self.std.iter().any(|s| !s.is_finite() || *s == 0.0)
            || self.mean.iter().any(|m| !m.is_finite())
            || !self.rescale.is_finite()
        {
            return Err("mean, std and rescale must be finite and std non-zero".into());
        }
        if self.dim == 0 {
            return Err("dim must be positive".into());
        }
        let supported = [("layout", &self.layout, "NCHW"), ("channel_order", &self.channel_order, "RGB")];
        for (field, value, only) in supported.into_iter().chain([("dtype", &self.dtype, "float32")]) {
            if value != only {
                return Err(format!("{field} {value:?} is not supported; only {only:?}"));
            }
        }
        Ok(())
    }

    /// Values per image in the model input.
    pub fn input_len(&self) -> usize {
        3 * (self.crop as usize) * (self.crop as usize)
    }

    /// Decodes, orients, resizes, crops and normalises one image into
    /// 3 × crop × crop values, channel-major.
    pub fn pixels(&self, bytes: &[u8], max_pixels: u64) -> Result<Vec<f32>, ImageError> {
        let rgb = decode(bytes, max_pixels)?.to_rgb8();
        let (w, h) = (rgb.width().max(1), rgb.height().max(1));
        let edge = u64::from(self.resize_shortest_edge);
        let (nw, nh) = if w <= h {
            (self.resize_shortest_edge, (u64::from(h) * edge / u64::from(w)) as u32)
        } else {
            ((u64::from(w) * edge / u64::from(h)) as u32, self.resize_shortest_edge)
        };
        // A very elongated image could round its long edge below the crop.
        let (nw, nh) = (nw.max(self.crop), nh.max(self.crop));
        let resized = image::imageops::resize(&rgb, nw, nh, self.resample.filter());
        let (x0, y0) = ((nw - self.crop) / 2, (nh - self.crop) / 2);
        let c = self.crop as usize;
        let plane = c * c;
        let mut out = vec![0f32; 3 * plane];
        for y in 0..c {
            for x in 0..c {
                let p = resized.get_pixel(x0 + x as u32, y0 + y as u32);
                for ch in 0..3 {
                    let v = f32::from(p[ch]) * self.rescale;
                    out[ch * plane + y * c + x] = (v - self.mean[ch]) / self.std[ch];
                }
            }
        }
        Ok(out)
    }
}

/// Decodes an image within the pixel limit and applies its EXIF orientation.
pub fn decode(bytes: &[u8], max_pixels: u64) -> Result<DynamicImage, ImageError> {
    let format = image::guess_format(bytes).map_err(|e| ImageError::Format(e.to_string()))?;
    if !matches!(format, ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::WebP) {
        return Err(ImageError::Format(format!("{format:?}")));
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = image::Limits::default();
    // RGBA at 8 bits plus the decoder's own buffers.
    limits.max_alloc = Some(max_pixels.saturating_mul(8));
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(|e| ImageError::Corrupt(e.to_string()))?;
    let (width, height) = decoder.dimensions();
    if u64::from(width) * u64::from(height) > max_pixels {
        return Err(ImageError::TooLarge { width, height, limit: max_pixels });
    }
    if width == 0 || height == 0 {
        return Err(ImageError::Corrupt(format!("{width}x{height} pixels")));
    }
    let orientation = decoder.orientation().map_err(|e| ImageError::Corrupt(e.to_string()))?;
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| ImageError::Corrupt(e.to_string()))?;
    img.apply_orientation(orientation);
    Ok(img)
}

/// Where an image model lives and how to run it.
#[derive(Debug, Clone)]
pub struct ImageModelConfig {
    /// Directory holding `model.onnx` and `preprocess.json`.
    pub model_dir: PathBuf,
    /// Another ONNX file than `model_dir/model.onnx`.
    pub onnx_file: Option<PathBuf>,
    /// Name in ClusterInfo and logs; default: preprocess.json's `model`,
    /// else the directory's name.
    pub name: Option<String>,
    pub runtime: RuntimeConfig,
    /// Images per inference call.
    pub max_batch: usize,
}

/// A loaded image model with a pool of ORT sessions.
pub struct ImageEmbedder {
    pool: SessionPool,
    preprocess: Preprocess,
    name: String,
    max_batch: usize,
    /// `vitrine_embed_requests_total{provider, modality="image"}`.
    requests: prometheus::IntCounter,
    preprocess_seconds: prometheus::Histogram,
}

impl std::fmt::Debug for ImageEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageEmbedder").field("name", &self.name).field("dimension", &self.preprocess.dim).finish()
    }
}

impl ImageEmbedder {
    /// Loads `preprocess.json` and the model, and runs one probe inference
    /// on a blank image to check the output against `dim`.
    pub fn load(cfg: &ImageModelConfig) -> Result<Arc<Self>, EmbedError> {
        let preprocess = Preprocess::load(&cfg.model_dir)?;
        let model_path = cfg.onnx_file.clone().unwrap_or_else(|| cfg.model_dir.join("model.onnx"));
        let pool = SessionPool::load(&cfg.runtime, &model_path)?;
        let name = cfg.name.clone().or_else(|| preprocess.model.clone()).unwrap_or_else(|| {
            cfg.model_dir.file_name().map_or_else(|| "image-model".into(), |n| n.to_string_lossy().into_owned())
        });
        let metrics = crate::metrics::get();
        let embedder = Self {
            requests: metrics.embed_requests.with_label_values(&[pool.provider(), "image"]),
            preprocess_seconds: metrics.image_preprocess_seconds.clone(),
            pool,
            preprocess,
            name,
            max_batch: cfg.max_batch.max(1),
        };
        let model_err = |reason: String| EmbedError::Model { path: model_path.clone(), reason };
        let blank = vec![0f32; embedder.preprocess.input_len()];
        embedder.embed_chunk(&[blank.as_slice()]).map_err(|e| model_err(format!("probe inference failed: {e}")))?;
        tracing::info!(model = %embedder.name, dimension = embedder.preprocess.dim, sessions = embedder.pool.len(),
            provider = %embedder.pool.provider(), output = %embedder.preprocess.output_name,
            pooling = ?embedder.preprocess.pooling, "image model loaded");
        Ok(Arc::new(embedder))
    }

    /// Output dimension.
    pub fn dimension(&self) -> usize {
        self.preprocess.dim
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The execution provider in use (`cpu`, `cuda:N`).
    pub fn execution_provider(&self) -> &str {
        self.pool.provider()
    }

    pub fn preprocess(&self) -> &Preprocess {
        &self.preprocess
    }

    /// Decodes and preprocesses one image (timed in
    /// `vitrine_image_preprocess_seconds`).
    pub fn pixels(&self, bytes: &[u8], max_pixels: u64) -> Result<Vec<f32>, ImageError> {
        let started = Instant::now();
        let out = self.preprocess.pixels(bytes, max_pixels);
        self.preprocess_seconds.observe(started.elapsed().as_secs_f64());
        out
    }

    /// Embeds preprocessed images (each [`Preprocess::input_len`] values);
    /// one unit vector per image, in order.
    pub fn embed(&self, images: &[&[f32]]) -> Result<Vec<Vec<f32>>, EmbedError> {
        self.requests.inc_by(images.len() as u64);
        let mut out = Vec::with_capacity(images.len());
        for chunk in images.chunks(self.max_batch) {
            out.extend(self.embed_chunk(chunk)?);
        }
        Ok(out)
    }

    fn embed_chunk(&self, images: &[&[f32]]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let p = &self.preprocess;
        let per = p.input_len();
        let batch = images.len();
        let mut input = Vec::with_capacity(batch * per);
        for img in images {
            if img.len() != per {
                return Err(EmbedError::Inference(format!("image tensor has {} values; expected {per}", img.len())));
            }
            input.extend_from_slice(img);
        }
        let inf = |e: ort::Error| EmbedError::Inference(e.to_string());
        let c = i64::from(p.crop);
        let tensor = Tensor::from_array((vec![batch as i64, 3, c, c], input)).map_err(inf)?;
        self.pool.with(|session| {
            let outputs = session.run(ort::inputs![p.input_name.as_str() => tensor]).map_err(inf)?;
            let output = outputs.get(p.output_name.as_str()).ok_or_else(|| {
                EmbedError::Inference(format!(
                    "the model has no output {:?} (preprocess.json output_name)",
                    p.output_name
                ))
            })?;
            let (shape, values) = output.try_extract_tensor::<f32>().map_err(inf)?;
            pool_output(shape, values, batch, p.pooling, p.dim)
        })
    }
}

/// One unit vector per image from the model output, as `pooling` says.
fn pool_output(
    shape: &[i64],
    values: &[f32],
    batch: usize,
    pooling: ImagePooling,
    dim: usize,
) -> Result<Vec<Vec<f32>>, EmbedError> {
    let dims: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
    let expected = match pooling {
        ImagePooling::None => "[batch, dim]",
        _ => "[batch, tokens, dim]",
    };
    let ok = match (pooling, dims.as_slice()) {
        (ImagePooling::None, [b, d]) => *b == batch && *d == dim,
        (ImagePooling::Cls, [b, t, d]) => *b == batch && *t >= 1 && *d == dim,
        (ImagePooling::Mean, [b, t, d]) => *b == batch && *t >= 2 && *d == dim,
        _ => false,
    };
    if !ok || values.len() != dims.iter().product::<usize>() {
        return Err(EmbedError::Inference(format!(
            "model output has shape {shape:?}; preprocess.json (pooling {pooling:?}, dim {dim}) expects {expected} \
             with batch {batch}"
        )));
    }
    let per = values.len() / batch.max(1);
    Ok((0..batch)
        .map(|b| {
            let one = &values[b * per..(b + 1) * per];
            let mut v = match pooling {
                ImagePooling::None | ImagePooling::Cls => one[..dim].to_vec(),
                ImagePooling::Mean => {
                    let tokens = per / dim;
                    let mut acc = vec![0f32; dim];
                    for t in 1..tokens {
                        for (a, x) in acc.iter_mut().zip(&one[t * dim..(t + 1) * dim]) {
                            *a += x;
                        }
                    }
                    acc
                }
            };
            normalize(&mut v);
            v
        })
        .collect())
}

/// The fetched test model's directory, relative to a repository root.
pub fn default_test_model_dir(root: &Path) -> PathBuf {
    root.join(".cache/models/test-vit")
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageEncoder, Rgb, RgbImage};

    fn settings(crop: u32, edge: u32) -> Preprocess {
        serde_json::from_value(serde_json::json!({
            "resize_shortest_edge": edge, "crop": crop, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
            "input_name": "pixel_values", "output_name": "image_embeds", "dim": 4
        }))
        .expect("settings")
    }

    fn png(img: &RgbImage) -> Vec<u8> {
        let mut out = Vec::new();
        image::codecs::png::PngEncoder::new(&mut out)
            .write_image(img.as_raw(), img.width(), img.height(), image::ExtendedColorType::Rgb8)
            .expect("png");
        out
    }

    /// Left half red, right half blue.
    fn halves(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, _| if x < w / 2 { Rgb([255, 0, 0]) } else { Rgb([0, 0, 255]) })
    }

    #[test]
    fn pixels_are_resized_cropped_and_normalised_channel_major() {
        // 8x4 → shortest edge 4 stays, crop the centre 4x4: columns 2..6.
        let p = settings(4, 4);
        let px = p.pixels(&png(&halves(8, 4)), 1 << 20).expect("pixels");
        assert_eq!(px.len(), 3 * 16);
        let at = |ch: usize, y: usize, x: usize| px[ch * 16 + y * 4 + x];
        // Red: (1 - 0.5) / 0.5 = 1 on the left, -1 on the right; blue the reverse.
        assert_eq!((at(0, 0, 0), at(0, 3, 1), at(0, 2, 2), at(0, 1, 3)), (1.0, 1.0, -1.0, -1.0));
        assert_eq!((at(2, 0, 0), at(2, 3, 3)), (-1.0, 1.0));
        assert!(px.iter().skip(16).take(16).all(|g| *g == -1.0), "no green anywhere");
    }

    #[test]
    fn exif_orientation_is_applied() {
        // A 4x8 image stored rotated: displayed, it must be the 8x4 halves
        // image. Orientation 6 means "rotate 90° clockwise to display", so
        // store the display image rotated 90° counter-clockwise.
        let display = halves(8, 4);
        let stored = image::imageops::rotate270(&display);
        let mut jpeg = Vec::new();
        let mut enc = image::codecs::png::PngEncoder::new(&mut jpeg);
        enc.set_exif_metadata(exif_orientation(6)).expect("exif");
        enc.write_image(stored.as_raw(), stored.width(), stored.height(), image::ExtendedColorType::Rgb8).expect("png");
        let img = decode(&jpeg, 1 << 20).expect("decode");
        assert_eq!((img.width(), img.height()), (8, 4));
        assert_eq!(img.to_rgb8(), display);
        let p = settings(4, 4);
        assert_eq!(p.pixels(&jpeg, 1 << 20), p.pixels(&png(&display), 1 << 20));
        // Without the tag the stored pixels are used as they are.
        assert_ne!(p.pixels(&png(&stored), 1 << 20), p.pixels(&png(&display), 1 << 20));
    }

    /// A little-endian TIFF block with one Orientation entry.
    fn exif_orientation(value: u16) -> Vec<u8> {
        let mut b = b"II*\0".to_vec();
        b.extend(8u32.to_le_bytes()); // IFD at 8
        b.extend(1u16.to_le_bytes()); // one entry
        b.extend(0x0112u16.to_le_bytes()); // Orientation
        b.extend(3u16.to_le_bytes()); // SHORT
        b.extend(1u32.to_le_bytes()); // count
        b.extend(value.to_le_bytes());
        b.extend([0, 0]);
        b.extend(0u32.to_le_bytes()); // no next IFD
        b
    }

    #[test]
    fn bad_images_are_refused_with_reasons() {
        let p = settings(4, 4);
        assert!(matches!(p.pixels(b"not an image", 1 << 20), Err(ImageError::Format(_))));
        let good = png(&halves(64, 64));
        assert!(matches!(p.pixels(&good, 1000), Err(ImageError::TooLarge { width: 64, height: 64, limit: 1000 })));
        let truncated = &good[..good.len() / 2];
        assert!(matches!(p.pixels(truncated, 1 << 20), Err(ImageError::Corrupt(_))));
        let gif = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;";
        assert!(matches!(p.pixels(gif, 1 << 20), Err(ImageError::Format(_))));
    }

    #[test]
    fn settings_are_checked() {
        let mut p = settings(4, 4);
        assert!(p.check().is_ok());
        p.crop = 5;
        assert!(p.check().unwrap_err().contains("at most resize_shortest_edge"));
        let mut p = settings(4, 4);
        p.std[1] = 0.0;
        assert!(p.check().is_err());
        let mut p = settings(4, 4);
        p.layout = "NHWC".into();
        assert!(p.check().unwrap_err().contains("layout"));
    }

    #[test]
    fn outputs_are_pooled_as_configured() {
        // Two images, three tokens of dim 2.
        let v = [1.0, 0.0, 3.0, 4.0, 3.0, 4.0, /* second */ 0.0, 2.0, 1.0, 0.0, 0.0, 1.0];
        let cls = pool_output(&[2, 3, 2], &v, 2, ImagePooling::Cls, 2).expect("cls");
        assert_eq!(cls, vec![vec![1.0, 0.0], vec![0.0, 1.0]]);
        let mean = pool_output(&[2, 3, 2], &v, 2, ImagePooling::Mean, 2).expect("mean");
        assert_eq!(mean[0], vec![0.6, 0.8]);
        let s = std::f32::consts::FRAC_1_SQRT_2;
        assert!((mean[1][0] - s).abs() < 1e-6 && (mean[1][1] - s).abs() < 1e-6);
        let none = pool_output(&[2, 2], &[3.0, 4.0, 0.0, 5.0], 2, ImagePooling::None, 2).expect("none");
        assert_eq!(none, vec![vec![0.6, 0.8], vec![0.0, 1.0]]);
        let err = pool_output(&[2, 3, 2], &v, 2, ImagePooling::None, 2).unwrap_err().to_string();
        assert!(err.contains("expects [batch, dim]"), "{err}");
        assert!(pool_output(&[2, 2], &[0.0; 4], 2, ImagePooling::None, 3).is_err(), "dim mismatch");
    }
}
