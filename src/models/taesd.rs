//! diffusers' `AutoencoderTiny` (TAESD) decoder: a plain stack of 3×3 convolutions, residual
//! `AutoencoderTinyBlock`s and nearest-neighbour upsampling. Tiny and fast: the page's default decoder
//! and its per-step preview.

use burn::tensor::{Device, Tensor};
use serde_json::json;

use crate::config::ConfigJson;
use crate::error::{Error, Result};
use crate::models::nn::{Activation, Conv2d, ConvFused};
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
        let h = conv_then(&self.convs[0], x.clone(), 1, Some(self.act), None);
        let h = conv_then(&self.convs[1], h, 1, Some(self.act), None);
        conv_then(&self.convs[2], h, 1, Some(Activation::Relu), Some(&x))
    }
}

/// `act(conv(upsample(x)) + residual)`: the upsampling, the sum and a ReLU (TAESD's activation) in the
/// convolution's own pass.
fn conv_then(conv: &Conv2d, x: Tensor<4>, upsample: usize, act: Option<Activation>, residual: Option<&Tensor<4>>) -> Tensor<4> {
    let relu = act == Some(Activation::Relu);
    let out = conv.forward_fused(x, ConvFused { upsample, residual, relu, ..ConvFused::default() });
    match act {
        Some(act) if !relu => act.forward(out),
        _ => out,
    }
}

/// One step of diffusers' `nn.Sequential`, with an upsampling and an activation folded into the
/// convolution they surround (so the CPU kernel does them in its own pass).
#[derive(Debug)]
enum Layer {
    /// `act(conv(upsample(x)))`: nearest upsampling by `upsample` first (1: none), `act` after (if any).
    Conv { conv: Conv2d, upsample: usize, act: Option<Activation> },
    Block(TinyBlock),
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
        // `index` follows diffusers' nn.Sequential (conv, act, blocks…, upsample, conv, …), so weight names
        // line up: [conv 0, act 1] is one layer here, as is [upsample, conv].
        let mut layers = vec![Layer::Conv { conv: Conv2d::load(&w, "0", [cfg.latent_channels, boc[0]], 3, 1, 1, device)?, upsample: 1, act: Some(cfg.act_fn) }];
        let mut index = 2;
        let n = cfg.num_decoder_blocks.len();
        for (i, &blocks) in cfg.num_decoder_blocks.iter().enumerate() {
            let c = boc[i];
            for _ in 0..blocks {
                layers.push(Layer::Block(TinyBlock::load(&w.sub(&index.to_string()), c, cfg.act_fn, device)?));
                index += 1;
            }
            let last = i + 1 == n;
            let upsample = if last { 1 } else { cfg.upsampling_scaling_factor };
            index += usize::from(!last);
            let name = index.to_string();
            let conv = if last { Conv2d::load(&w, &name, [c, cfg.out_channels], 3, 1, 1, device)? } else { Conv2d::load_without_bias(&w, &name, [c, c], 3, device)?.reading_upsampled() };
            layers.push(Layer::Conv { conv, upsample, act: None });
            index += 1;
        }
        Ok(Self { config: cfg, layers })
    }

    pub fn device(&self) -> Device {
        match &self.layers[0] {
            Layer::Conv { conv, .. } => conv.weight.device(),
            _ => unreachable!("the first layer is a convolution"),
        }
    }

    /// `AutoencoderTiny.decode`: latents (already divided by the scaling factor) → image in [-1, 1].
    pub fn decode(&self, z: Tensor<4>) -> Tensor<4> {
        // diffusers' soft clamp of the latents to ±3.
        let mut x = (z / 3.0).tanh() * 3.0;
        for layer in &self.layers {
            x = match layer {
                Layer::Conv { conv, upsample, act } => conv_then(conv, x, *upsample, *act, None),
                Layer::Block(block) => block.forward(x),
            };
        }
        x * 2.0 - 1.0
    }
}
