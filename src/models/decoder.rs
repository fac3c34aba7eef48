//! The image decoder a bundle ships: the full `AutoencoderKL` decoder or the tiny `AutoencoderTiny`
//! (TAESD) one, with the latent scaling the pipeline applies before decoding.

use burn::tensor::{Device, Tensor};

use crate::config::ConfigJson;
use crate::error::{Error, Result};
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

    pub fn decode(&self, latents: Tensor<4>) -> Tensor<4> {
        let (scale, shift) = self.scaling();
        let z = latents / scale + shift;
        match self {
            Decoder::Kl(d) => d.decode(z),
            Decoder::Tiny(d) => d.decode(z),
        }
    }
}

impl Decoder {
    /// Builds the decoder its config names (`_class_name` AutoencoderKL or AutoencoderTiny).
    pub fn load(config: &ConfigJson, weights: &SafeTensors, device: &Device) -> Result<Self> {
        match config.str_or("_class_name", "AutoencoderKL")? {
            "AutoencoderKL" => Ok(Decoder::Kl(VaeDecoder::load(config, weights, device)?)),
            "AutoencoderTiny" => Ok(Decoder::Tiny(TinyDecoder::load(config, weights, device)?)),
            other => Err(Error::config(&config.file, "_class_name", format!("`{other}` is not a decoder we support (AutoencoderKL, AutoencoderTiny)"))),
        }
    }
}
