//! diffusers' `AutoencoderTiny` (TAESD) decoder: a plain stack of 3×3 convolutions, residual
//! `AutoencoderTinyBlock`s and nearest-neighbour upsampling. Tiny and fast: the page's default decoder
//! and its per-step preview.

use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{Device, Tensor};
use serde_json::json;

use crate::config::ConfigJson;
use crate::error::{Error, Result};
use crate::models::nn::{Activation, Conv2d};
use crate::weights::{SafeTensors, WeightsView};

#[derive(Debug, Clone, PartialEq)]
pub struct TinyDecoderConfig {
    pub out_channels: usize,
    pub latent_channels: usize,
    pub decoder_block_out_channels: Vec<usize>,
    pub num_decoder_blocks: Vec<usize>,
    pub upsampling_scaling_factor: usize,
    pub act_fn: Activation,
    pub scaling_factor: f64,
    pub shift_factor: f64,
}

impl TinyDecoderConfig {
    pub fn from_json(c: &ConfigJson) -> Result<Self> {
        c.require_default("upsample_fn", &[json!("nearest")])?;
        let num_decoder_blocks = match c.object.get("num_decoder_blocks") {
            Some(serde_json::Value::Array(a)) => c.usize_per_block("num_decoder_blocks", a.len(), None)?,
            _ => vec![3, 3, 3, 1],
        };
        let n = num_decoder_blocks.len();
        let cfg = Self {
            out_channels: c.usize_or("out_channels", 3)?,
            latent_channels: c.usize_or("latent_channels", 4)?,
            decoder_block_out_channels: c.usize_per_block("decoder_block_out_channels", n, Some(64))?,
            num_decoder_blocks,
            upsampling_scaling_factor: c.positive_or("upsampling_scaling_factor", 2)?,
            act_fn: Activation::parse(c.str_or("act_fn", "relu")?, &c.file, "act_fn")?,
            scaling_factor: c.f64_or("scaling_factor", 1.0)?,
            shift_factor: c.f64_or("shift_factor", 0.0)?,
        };
        if n == 0 {
            return Err(Error::config(&c.file, "num_decoder_blocks", "is empty"));
        }
        Ok(cfg)
    }
}

/// `AutoencoderTinyBlock`: relu(conv(act(conv(act(conv(x))))) + x).
#[derive(Debug)]
struct TinyBlock {
    convs: [Conv2d; 3],
    act: Activation,
}

impl TinyBlock {
    fn load(w: &WeightsView, c: usize, act: Activation, device: &Device) -> Result<Self> {
        let conv = |i: usize| Conv2d::load(w, &format!("conv.{i}"), [c, c], 3, 1, 1, device);
        Ok(Self { convs: [conv(0)?, conv(2)?, conv(4)?], act })
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let h = self.act.forward(self.convs[0].forward(x.clone()));
        let h = self.act.forward(self.convs[1].forward(h));
        burn::tensor::activation::relu(self.convs[2].forward(h) + x)
    }
}

#[derive(Debug)]
enum Layer {
    Conv(Conv2d),
    Act(Activation),
    Block(TinyBlock),
    Upsample(usize),
}

#[derive(Debug)]
pub struct TinyDecoder {
    pub config: TinyDecoderConfig,
    layers: Vec<Layer>,
}

impl TinyDecoder {
    pub fn load(config: &ConfigJson, weights: &SafeTensors, device: &Device) -> Result<Self> {
        let cfg = TinyDecoderConfig::from_json(config)?;
        let w = WeightsView::new(weights, "decoder.layers.");
        let boc = &cfg.decoder_block_out_channels;
        // Indices follow diffusers' nn.Sequential, so weight names line up.
        let mut layers = vec![Layer::Conv(Conv2d::load(&w, "0", [cfg.latent_channels, boc[0]], 3, 1, 1, device)?), Layer::Act(cfg.act_fn)];
        let n = cfg.num_decoder_blocks.len();
        for (i, &blocks) in cfg.num_decoder_blocks.iter().enumerate() {
            let c = boc[i];
            for _ in 0..blocks {
                layers.push(Layer::Block(TinyBlock::load(&w.sub(&layers.len().to_string()), c, cfg.act_fn, device)?));
            }
            let last = i + 1 == n;
            if !last {
                layers.push(Layer::Upsample(cfg.upsampling_scaling_factor));
            }
            let name = layers.len().to_string();
            layers.push(Layer::Conv(if last {
                Conv2d::load(&w, &name, [c, cfg.out_channels], 3, 1, 1, device)?
            } else {
                Conv2d::load_without_bias(&w, &name, [c, c], 3, device)?
            }));
        }
        Ok(Self { config: cfg, layers })
    }


    pub fn device(&self) -> Device {
        match &self.layers[0] {
            Layer::Conv(c) => c.weight.device(),
            _ => unreachable!("the first layer is a convolution"),
        }
    }

    /// `AutoencoderTiny.decode`: latents (already divided by the scaling factor) → image in [-1, 1].
    pub fn decode(&self, z: Tensor<4>) -> Tensor<4> {
        // diffusers' soft clamp of the latents to ±3.
        let mut x = (z / 3.0).tanh() * 3.0;
        for layer in &self.layers {
            x = match layer {
                Layer::Conv(conv) => conv.forward(x),
                Layer::Act(act) => act.forward(x),
                Layer::Block(block) => block.forward(x),
                Layer::Upsample(f) => {
                    let [_, _, h, w] = x.dims();
                    interpolate(x, InterpolateOptions::new(InterpolateMode::Nearest).with_output_size([h * f, w * f]))
                }
            };
        }
        x * 2.0 - 1.0
    }
}
