//! Pictures in, CLIP's `pixel_values` out: PNG / JPEG decoding and transformers' `CLIPImageProcessor`
//! (its PIL backend, transformers' reference behaviour) from `preprocessor_config.json`.
//!
//! Steps, in transformers' order: convert to RGB (transparency composited onto white, grey replicated),
//! resize so that the shortest side is `size.shortest_edge` (or to `size.height × size.width`) with Pillow's
//! resampling filter, centre crop to `crop_size` (zero padding where the picture is smaller), rescale by
//! `rescale_factor`, normalise with `image_mean` / `image_std`. The resize is Pillow's own fixed-point
//! algorithm (Resample.c: 22-bit coefficients, two 8-bit passes, the vertical pass first when the height
//! shrinks by more than twice as many pixels as the width, as Pillow 13 does), so the result equals
//! Pillow's byte for byte; JPEG decoding (jpeg-decoder) may differ from libjpeg-turbo's by a few levels.

use crate::config::ConfigJson;
use crate::error::{Error, Result};

/// An 8-bit RGB picture, rows top to bottom, 3 bytes per pixel.
#[derive(Debug, Clone, PartialEq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<u8>,
}

impl RgbImage {
    /// Decodes a PNG or JPEG file (told apart by its first bytes); `name` names it in errors. As
    /// transformers' `convert_to_rgb`: alpha (or a PNG transparency chunk) is composited onto white,
    /// grey is replicated. 16-bit PNG samples keep their high byte.
    pub fn decode(name: &str, bytes: &[u8]) -> Result<Self> {
        if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
            decode_png(name, bytes)
        } else if bytes.starts_with(&[0xFF, 0xD8]) {
            decode_jpeg(name, bytes)
        } else {
            Err(Error::file(name, "is neither a PNG nor a JPEG picture"))
        }
    }
}

/// The most pixels a picture may have (a 4096 × 4096 picture, or a 12-megapixel phone photo): the header's
/// size is checked before the pixels are allocated, so a forged header cannot exhaust memory.
pub const MAX_PICTURE_PIXELS: u64 = 1 << 24;

fn check_picture_size(name: &str, width: u64, height: u64) -> Result<()> {
    if width == 0 || height == 0 || width * height > MAX_PICTURE_PIXELS {
        return Err(Error::file(name, format!("is {width} × {height} pixels; pictures must be non-empty and at most {MAX_PICTURE_PIXELS} pixels")));
    }
    Ok(())
}

fn decode_png(name: &str, bytes: &[u8]) -> Result<RgbImage> {
    let bad = |e: &dyn std::fmt::Display| Error::file(name, format!("is not a readable PNG picture: {e}"));
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().map_err(|e| bad(&e))?;
    check_picture_size(name, reader.info().width as u64, reader.info().height as u64)?;
    let size = reader.output_buffer_size().ok_or_else(|| bad(&"the picture is too large"))?;
    let mut buf = vec![0u8; size];
    let info = reader.next_frame(&mut buf).map_err(|e| bad(&e))?;
    let (width, height) = (info.width as usize, info.height as usize);
    let channels = info.color_type.samples();
    let mut pixels = Vec::with_capacity(width * height * 3);
    for row in buf.chunks(info.line_size).take(height) {
        for px in row[..width * channels].chunks(channels) {
            match channels {
                1 => pixels.extend_from_slice(&[px[0]; 3]),
                2 => pixels.extend_from_slice(&[on_white(px[0], px[1]); 3]),
                3 => pixels.extend_from_slice(px),
                _ => pixels.extend(px[..3].iter().map(|&c| on_white(c, px[3]))),
            }
        }
    }
    Ok(RgbImage { width, height, pixels })
}

fn decode_jpeg(name: &str, bytes: &[u8]) -> Result<RgbImage> {
    let mut decoder = jpeg_decoder::Decoder::new(bytes);
    decoder.read_info().map_err(|e| Error::file(name, format!("is not a readable JPEG picture: {e}")))?;
    if let Some(info) = decoder.info() {
        check_picture_size(name, info.width as u64, info.height as u64)?;
    }
    let samples = decoder.decode().map_err(|e| Error::file(name, format!("is not a readable JPEG picture: {e}")))?;
    let info = decoder.info().ok_or_else(|| Error::file(name, "has no JPEG frame header"))?;
    let (width, height) = (info.width as usize, info.height as usize);
    let pixels = match info.pixel_format {
        jpeg_decoder::PixelFormat::RGB24 => samples,
        jpeg_decoder::PixelFormat::L8 => samples.iter().flat_map(|&v| [v; 3]).collect(),
        other => return Err(Error::file(name, format!("has JPEG pixel format {other:?}; only RGB and greyscale JPEGs are supported"))),
    };
    if pixels.len() != width * height * 3 {
        return Err(Error::file(name, "decoded to an unexpected number of samples"));
    }
    Ok(RgbImage { width, height, pixels })
}

/// One channel of a pixel with alpha `a` composited onto opaque white exactly as Pillow's
/// `alpha_composite` does (integer arithmetic, 7 extra bits of precision).
fn on_white(c: u8, a: u8) -> u8 {
    if a == 0 {
        return 255;
    }
    let (c, a) = (c as u32, a as u32);
    let blend = 255 * (255 - a);
    let out_a255 = a * 255 + blend;
    let coef1 = a * 255 * 255 * 128 / out_a255;
    let coef2 = 255 * 128 - coef1;
    let tmp = c * coef1 + 255 * coef2 + (0x80 << 7);
    ((((tmp >> 8) + tmp) >> 8) >> 7) as u8
}

/// Pillow's resampling filters, by the numbers configs store (`resample`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resample {
    Lanczos,
    Bilinear,
    Bicubic,
    Box,
    Hamming,
}

impl Resample {
    pub fn from_pil(value: i64, file: &str) -> Result<Self> {
        Ok(match value {
            1 => Resample::Lanczos,
            2 => Resample::Bilinear,
            3 => Resample::Bicubic,
            4 => Resample::Box,
            5 => Resample::Hamming,
            0 => return Err(Error::config(file, "resample", "0 (nearest) is not supported; use 2 (bilinear) or 3 (bicubic)")),
            other => return Err(Error::config(file, "resample", format!("unknown PIL resampling filter {other} (expected 1–5)"))),
        })
    }

    /// Pillow's filter support (in source pixels at scale 1) and kernel.
    fn support(self) -> f64 {
        match self {
            Resample::Box => 0.5,
            Resample::Bilinear | Resample::Hamming => 1.0,
            Resample::Bicubic => 2.0,
            Resample::Lanczos => 3.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        fn sinc(x: f64) -> f64 {
            if x == 0.0 { 1.0 } else { (x * std::f64::consts::PI).sin() / (x * std::f64::consts::PI) }
        }
        match self {
            Resample::Box => (x > -0.5 && x <= 0.5) as u8 as f64,
            Resample::Bilinear => (1.0 - x.abs()).max(0.0),
            Resample::Hamming => {
                let x = x.abs();
                if x == 0.0 {
                    1.0
                } else if x >= 1.0 {
                    0.0
                } else {
                    // Pillow writes these constants as C floats.
                    let px = x * std::f64::consts::PI;
                    px.sin() / px * (0.54f32 as f64 + 0.46f32 as f64 * px.cos())
                }
            }
            Resample::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Resample::Lanczos => {
                if (-3.0..3.0).contains(&x) { sinc(x) * sinc(x / 3.0) } else { 0.0 }
            }
        }
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// For each output position: the first source index and the fixed-point weights (Pillow's
/// `precompute_coeffs` + `normalize_coeffs_8bpc`).
fn coefficients(in_size: usize, out_size: usize, filter: Resample) -> Vec<(usize, Vec<i32>)> {
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = filter.support() * filter_scale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let mut w: Vec<f64> = (xmin..xmax).map(|x| filter.weight((x as f64 - center + 0.5) / filter_scale)).collect();
            let total: f64 = w.iter().sum();
            if total != 0.0 {
                w.iter_mut().for_each(|v| *v /= total);
            }
            let fixed = w
                .iter()
                .map(|&v| {
                    let v = v * (1u32 << PRECISION_BITS) as f64;
                    (if v < 0.0 { v - 0.5 } else { v + 0.5 }) as i32
                })
                .collect();
            (xmin, fixed)
        })
        .collect()
}

fn clip8(sum: i64) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// One resampling pass along x (`horizontal`) or y, on an RGB picture.
fn resample_pass(img: &RgbImage, size: usize, horizontal: bool, filter: Resample) -> RgbImage {
    let (w, h) = if horizontal { (size, img.height) } else { (img.width, size) };
    let coeffs = coefficients(if horizontal { img.width } else { img.height }, size, filter);
    let mut pixels = vec![0u8; w * h * 3];
    for y in 0..h {
        for x in 0..w {
            let (start, k) = &coeffs[if horizontal { x } else { y }];
            for c in 0..3 {
                let mut sum: i64 = 1 << (PRECISION_BITS - 1);
                for (i, &kk) in k.iter().enumerate() {
                    let (sx, sy) = if horizontal { (start + i, y) } else { (x, start + i) };
                    sum += img.pixels[(sy * img.width + sx) * 3 + c] as i64 * kk as i64;
                }
                pixels[(y * w + x) * 3 + c] = clip8(sum);
            }
        }
    }
    RgbImage { width: w, height: h, pixels }
}

/// `Image.resize((width, height), filter)` exactly as Pillow 13 computes it.
pub fn resize(img: &RgbImage, width: usize, height: usize, filter: Resample) -> RgbImage {
    let need_h = width != img.width;
    let need_v = height != img.height;
    // Pillow 13: vertical first when the height shrinks by more than twice as many pixels as the width.
    let vertical_first = height < img.height && (img.height - height) as i64 > 2 * (img.width as i64 - width as i64);
    let mut out = img.clone();
    if vertical_first {
        if need_v {
            out = resample_pass(&out, height, false, filter);
        }
        if need_h {
            out = resample_pass(&out, width, true, filter);
        }
    } else {
        // Pillow's horizontal-first pass only touches the rows the vertical pass reads; resampling every row
        // gives the same values for those rows.
        if need_h {
            out = resample_pass(&out, width, true, filter);
        }
        if need_v {
            out = resample_pass(&out, height, false, filter);
        }
    }
    out
}

/// Target size of a `size` entry: the shortest side, or an exact height × width.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ResizeTo {
    ShortestEdge(usize),
    Exact { height: usize, width: usize },
}

/// transformers' `CLIPImageProcessor` settings (`preprocessor_config.json`), with its defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageProcessor {
    pub do_resize: bool,
    pub size: ResizeTo,
    pub resample: Resample,
    pub do_center_crop: bool,
    pub crop_size: (usize, usize),
    pub do_rescale: bool,
    pub rescale_factor: f64,
    pub do_normalize: bool,
    pub image_mean: [f32; 3],
    pub image_std: [f32; 3],
}

impl ImageProcessor {
    pub fn from_json(c: &ConfigJson) -> Result<Self> {
        let size = match c.object.get("size") {
            None => ResizeTo::ShortestEdge(224),
            Some(v) if v.is_u64() => ResizeTo::ShortestEdge(positive(c, "size", v)?),
            Some(v) => match (v.get("shortest_edge"), v.get("height"), v.get("width")) {
                (Some(s), _, _) => ResizeTo::ShortestEdge(positive(c, "size.shortest_edge", s)?),
                (None, Some(h), Some(w)) => ResizeTo::Exact { height: positive(c, "size.height", h)?, width: positive(c, "size.width", w)? },
                _ => return Err(Error::config(&c.file, "size", "expected a number, {\"shortest_edge\": N} or {\"height\": H, \"width\": W}")),
            },
        };
        let crop_size = match c.object.get("crop_size") {
            None => (224, 224),
            Some(v) if v.is_u64() => {
                let s = positive(c, "crop_size", v)?;
                (s, s)
            }
            Some(v) => match (v.get("height"), v.get("width")) {
                (Some(h), Some(w)) => (positive(c, "crop_size.height", h)?, positive(c, "crop_size.width", w)?),
                _ => return Err(Error::config(&c.file, "crop_size", "expected a number or {\"height\": H, \"width\": W}")),
            },
        };
        let triple = |field: &str, default: [f32; 3]| -> Result<[f32; 3]> {
            match c.object.get(field) {
                None => Ok(default),
                Some(v) => {
                    let values: Option<Vec<f32>> = v.as_array().map(|a| a.iter().filter_map(|x| x.as_f64().map(|x| x as f32)).collect());
                    match values {
                        Some(values) if values.len() == 3 => Ok([values[0], values[1], values[2]]),
                        _ => Err(Error::config(&c.file, field, "expected three numbers (one per RGB channel)")),
                    }
                }
            }
        };
        let image_std = triple("image_std", [0.26862954, 0.2613026, 0.2757771])?;
        if image_std.iter().any(|&s| !(s.is_finite() && s != 0.0)) {
            return Err(Error::config(&c.file, "image_std", "every value must be a non-zero number"));
        }
        Ok(Self {
            do_resize: c.bool_or("do_resize", true)?,
            size,
            resample: Resample::from_pil(c.object.get("resample").and_then(|v| v.as_i64()).unwrap_or(3), &c.file)?,
            do_center_crop: c.bool_or("do_center_crop", true)?,
            crop_size,
            do_rescale: c.bool_or("do_rescale", true)?,
            rescale_factor: c.f64_or("rescale_factor", 1.0 / 255.0)?,
            do_normalize: c.bool_or("do_normalize", true)?,
            image_mean: triple("image_mean", [0.48145466, 0.4578275, 0.40821073])?,
            image_std,
        })
    }

    /// The output's [height, width] (what the vision tower must accept).
    pub fn output_size(&self, img: &RgbImage) -> (usize, usize) {
        if self.do_center_crop {
            return self.crop_size;
        }
        if self.do_resize { self.resized_size(img) } else { (img.height, img.width) }
    }

    /// transformers' `get_resize_output_image_size` (default_to_square = False): the shortest side becomes
    /// the target, the other is scaled and truncated.
    fn resized_size(&self, img: &RgbImage) -> (usize, usize) {
        match self.size {
            ResizeTo::Exact { height, width } => (height, width),
            ResizeTo::ShortestEdge(s) => {
                let (short, long) = if img.width <= img.height { (img.width, img.height) } else { (img.height, img.width) };
                // In u64 / f64: s · long overflows a 32-bit usize (wasm) for a thin picture; the cast saturates.
                let new_long = ((s as u64 * long as u64) as f64 / short as f64) as usize;
                if img.width <= img.height { (new_long, s) } else { (s, new_long) }
            }
        }
    }

    /// Refuses a picture whose resized size (before any center crop) would exceed [`MAX_PICTURE_PIXELS`]:
    /// the pixel bound of decoding holds for the picture, not for what a shortest-edge resize makes of a
    /// thin one (1 × 16,777,216 pixels resized to a shortest edge of 224 is 224 × 3.8 billion: 6.4 GB of
    /// pixels before the crop). `name` names the picture.
    pub fn check(&self, name: &str, img: &RgbImage) -> Result<()> {
        if self.do_resize {
            let (h, w) = self.resized_size(img);
            if (h as u64).saturating_mul(w as u64) > MAX_PICTURE_PIXELS {
                return Err(Error::file(
                    name,
                    format!("is {} × {} pixels, which resizing to the vision tower's input would make {w} × {h}: more than {MAX_PICTURE_PIXELS} pixels (the aspect ratio is too extreme)", img.width, img.height),
                ));
            }
        }
        Ok(())
    }

    /// `pixel_values` of one picture: [3, H, W] row-major. Callers [`Self::check`] the picture first.
    pub fn preprocess(&self, img: &RgbImage) -> Vec<f32> {
        let mut img = img.clone();
        if self.do_resize {
            let (h, w) = self.resized_size(&img);
            img = resize(&img, w, h, self.resample);
        }
        if self.do_center_crop {
            img = center_crop(&img, self.crop_size);
        }
        let (h, w) = (img.height, img.width);
        let mut out = vec![0f32; 3 * h * w];
        for c in 0..3 {
            for i in 0..h * w {
                let v = img.pixels[i * 3 + c];
                // As numpy: rescale in f64, store f32, normalise in f32.
                let mut x = if self.do_rescale { (v as f64 * self.rescale_factor) as f32 } else { v as f32 };
                if self.do_normalize {
                    x = (x - self.image_mean[c]) / self.image_std[c];
                }
                out[c * h * w + i] = x;
            }
        }
        out
    }
}

fn positive(c: &ConfigJson, field: &str, v: &serde_json::Value) -> Result<usize> {
    match v.as_u64() {
        Some(n) if n > 0 => Ok(n as usize),
        _ => Err(Error::config(&c.file, field, format!("expected a positive whole number, found {v}"))),
    }
}

/// transformers' `center_crop`: the window starts at ⌊(size − crop) / 2⌋; where the picture is smaller
/// than the crop the rest is zero.
fn center_crop(img: &RgbImage, (crop_h, crop_w): (usize, usize)) -> RgbImage {
    let (h, w) = (img.height as i64, img.width as i64);
    // transformers pads a smaller picture (centred) and moves the window by the same amount, so in the
    // picture's own coordinates the window always starts here; outside the picture is zero.
    let top = (h - crop_h as i64).div_euclid(2);
    let left = (w - crop_w as i64).div_euclid(2);
    let mut pixels = vec![0u8; crop_h * crop_w * 3];
    for y in 0..crop_h {
        for x in 0..crop_w {
            let (sy, sx) = (y as i64 + top, x as i64 + left);
            if (0..h).contains(&sy) && (0..w).contains(&sx) {
                let (s, d) = (((sy * w + sx) * 3) as usize, (y * crop_w + x) * 3);
                pixels[d..d + 3].copy_from_slice(&img.pixels[s..s + 3]);
            }
        }
    }
    RgbImage { width: crop_w, height: crop_h, pixels }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_to_the_same_size_is_the_identity() {
        let img = RgbImage { width: 3, height: 2, pixels: (0..18).map(|v| v as u8 * 13).collect() };
        assert_eq!(resize(&img, 3, 2, Resample::Bicubic), img);
    }

    #[test]
    fn compositing_onto_white() {
        assert_eq!(on_white(0, 0), 255);
        assert_eq!(on_white(17, 255), 17);
        assert_eq!(on_white(0, 128), 127);
    }
}
