//! The image decoder a bundle ships: the full `AutoencoderKL` decoder or the tiny `AutoencoderTiny`
//! (TAESD) one, with the latent scaling the pipeline applies before decoding.

use burn::tensor::{DType, Device, FloatDType, Tensor};

use crate::config::ConfigJson;
use crate::error::{Error, Result};
use crate::models::nn::cast_to;
use crate::models::taesd::TinyDecoder;
use crate::models::vae::VaeDecoder;
use crate::weights::SafeTensors;

/// The image decoder a bundle ships: the full AutoencoderKL decoder or the tiny TAESD one.
#[derive(Debug)]
pub enum Decoder {
    Kl(VaeDecoder),
    Tiny(TinyDecoder),
}

impl Decoder {
    /// Latent scaling as the pipeline applies it: `decode(latents / scaling_factor + shift_factor)`.
    pub fn scaling(&self) -> (f64, f64) {
        match self {
            Decoder::Kl(d) => (d.config.scaling_factor, d.config.shift_factor),
            Decoder::Tiny(d) => (d.config.scaling_factor, d.config.shift_factor),
        }
    }

    /// How many pixels one latent covers per side.
    pub fn scale_factor(&self) -> usize {
        match self {
            Decoder::Kl(d) => 1 << (d.config.block_out_channels.len() - 1),
            Decoder::Tiny(d) => d.config.upscale_factor(),
        }
    }

    /// The float type it computes in.
    pub fn dtype(&self) -> DType {
        match self {
            Decoder::Kl(d) => d.dtype(),
            Decoder::Tiny(d) => d.dtype(),
        }
    }

    /// Latents (any float type; scaled in theirs) → image in about [-1, 1], f32.
    pub fn decode(&self, latents: Tensor<4>) -> Tensor<4> {
        let (scale, shift) = self.scaling();
        let z = cast_to(latents / scale + shift, self.dtype());
        let image = match self {
            Decoder::Kl(d) => d.decode(z),
            Decoder::Tiny(d) => d.decode(z),
        };
        cast_to(image, DType::F32)
    }
}

impl Decoder {
    /// Builds the decoder its config names (`_class_name` AutoencoderKL or AutoencoderTiny).
    pub fn load(config: &ConfigJson, weights: &SafeTensors, device: &Device) -> Result<Self> {
        Self::load_in(config, weights, device, FloatDType::F32)
    }

    /// [`Self::load`] computing in `dtype` (the image it decodes is f32 either way).
    pub fn load_in(config: &ConfigJson, weights: &SafeTensors, device: &Device, dtype: FloatDType) -> Result<Self> {
        match config.str_or("_class_name", "AutoencoderKL")? {
            "AutoencoderKL" => Ok(Decoder::Kl(VaeDecoder::load_in(config, weights, device, dtype)?)),
            "AutoencoderTiny" => Ok(Decoder::Tiny(TinyDecoder::load_in(config, weights, device, dtype)?)),
            other => Err(Error::config(&config.file, "_class_name", format!("`{other}` is not a decoder we support (AutoencoderKL, AutoencoderTiny)"))),
        }
    }
}
