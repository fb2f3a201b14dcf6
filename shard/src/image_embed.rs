//! Image embedding with a ViT-family ONNX model through ONNX Runtime.
//!
//! WIP (branch `vit-model`, not compiled yet): the preprocessing follows the
//! model directory's `preprocess.json` (written by `scripts/make-test-vit.py`
//! for the test model, by hand for an exported pretrained one; see
//! docs/IMAGE-MODELS.md), so nothing here assumes the test model:
//!
//! 1. decode JPEG, PNG or WebP with the `image` crate, refusing images over
//!    the pixel limit before decoding their bodies;
//! 2. apply the EXIF orientation (phone photos are stored sideways);
//! 3. resize so the shortest edge is `resize_shortest_edge` (Triangle, the
//!    `image` crate's bilinear), centre-crop `crop` × `crop`;
//! 4. scale to [0, 1] (`rescale`), subtract `mean`, divide by `std`, lay out
//!    as `[batch, 3, crop, crop]` RGB;
//! 5. run the model and read `output_name`: already pooled (`pooling:
//!    none`), or `[batch, tokens, dim]` pooled here (`cls`: token 0; `mean`:
//!    tokens 1..), then L2-normalised.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader};
use serde::Deserialize;

/// `preprocess.json`: how images become the model's input.
#[derive(Debug, Clone, Deserialize)]
pub struct Preprocess {
    pub resize_shortest_edge: u32,
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
}

fn default_rescale() -> f32 {
    1.0 / 255.0
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
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image is not a recognised JPEG, PNG or WebP: {0}")]
    Format(String),
    #[error("image is {width}x{height} pixels; the limit is {limit} pixels")]
    TooLarge { width: u32, height: u32, limit: u64 },
    #[error("image is corrupt: {0}")]
    Corrupt(String),
}

impl Preprocess {
    pub fn load(model_dir: &Path) -> Result<Self, (PathBuf, String)> {
        let path = model_dir.join("preprocess.json");
        let text = std::fs::read(&path).map_err(|e| (path.clone(), e.to_string()))?;
        let p: Self = serde_json::from_slice(&text).map_err(|e| (path.clone(), e.to_string()))?;
        if p.crop == 0 || p.resize_shortest_edge < p.crop || p.std.iter().any(|s| *s == 0.0) || p.dim == 0 {
            return Err((path, "crop must be positive and at most resize_shortest_edge, std non-zero, dim positive".into()));
        }
        Ok(p)
    }

    /// Decodes, orients, resizes, crops and normalises one image into
    /// `out` (3 × crop × crop values, channel-major).
    pub fn pixels(&self, bytes: &[u8], max_pixels: u64, out: &mut Vec<f32>) -> Result<(), ImageError> {
        let img = decode(bytes, max_pixels)?;
        let (w, h) = (img.width(), img.height());
        let short = w.min(h).max(1);
        let scale = self.resize_shortest_edge as f64 / short as f64;
        let (nw, nh) = (
            ((w as f64 * scale).floor() as u32).max(self.crop),
            ((h as f64 * scale).floor() as u32).max(self.crop),
        );
        let resized = img.resize_exact(nw, nh, FilterType::Triangle).to_rgb8();
        let (x0, y0) = ((nw - self.crop) / 2, (nh - self.crop) / 2);
        let c = self.crop as usize;
        let start = out.len();
        out.resize(start + 3 * c * c, 0.0);
        for y in 0..c {
            for x in 0..c {
                let p = resized.get_pixel(x0 + x as u32, y0 + y as u32);
                for ch in 0..3 {
                    let v = f32::from(p[ch]) * self.rescale;
                    out[start + ch * c * c + y * c + x] = (v - self.mean[ch]) / self.std[ch];
                }
            }
        }
        Ok(())
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
    limits.max_alloc = Some(max_pixels.saturating_mul(4));
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(|e| ImageError::Corrupt(e.to_string()))?;
    let (width, height) = decoder.dimensions();
    if u64::from(width) * u64::from(height) > max_pixels {
        return Err(ImageError::TooLarge { width, height, limit: max_pixels });
    }
    let orientation = decoder.orientation().map_err(|e| ImageError::Corrupt(e.to_string()))?;
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| ImageError::Corrupt(e.to_string()))?;
    img.apply_orientation(orientation);
    Ok(img)
}

// TODO(next): ImageEmbedder (session pool as in embed.rs, input
// `preprocess.input_name` [n, 3, crop, crop], output pooled per
// `preprocess.pooling`, L2-normalised), a parity test against
// tests/data/test-vit/reference.npy (cosine ≥ 0.9999, JPEG decoders differ
// slightly), EXIF test with a rotated copy of a catalogue photo, fusion
// (weighted concatenation of normalised per-modality vectors, weights
// renormalised when a modality is missing), per-modality vectors kept in
// the WAL/snapshot, image queries in Embed.
