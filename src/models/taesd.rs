//! diffusers' `AutoencoderTiny` (TAESD): the decoder, a plain stack of 3×3 convolutions, residual
//! `AutoencoderTinyBlock`s and nearest-neighbour upsampling (tiny and fast: the page's default decoder and
//! its per-step preview), and the encoder, the same blocks with strided convolutions (fine-tuning's
//! denoising term encodes its pictures with it, once).

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

/// Runs a TAESD `nn.Sequential` (decoder's or encoder's) over `x`.
fn run_layers(layers: &[Layer], mut x: Tensor<4>) -> Tensor<4> {
    for layer in layers {
        x = match layer {
            Layer::Conv { conv, upsample, act } => conv_then(conv, x, *upsample, *act, None),
            Layer::Block(block) => block.forward(x),
        };
    }
    x
}

/// The device of a layer stack (its first layer is always a convolution).
fn layers_device(layers: &[Layer]) -> Device {
    match &layers[0] {
        Layer::Conv { conv, .. } => conv.weight.device(),
        Layer::Block(block) => block.convs[0].weight.device(),
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
        layers_device(&self.layers)
    }

    /// `AutoencoderTiny.decode`: latents (already divided by the scaling factor) → image in [-1, 1].
    pub fn decode(&self, z: Tensor<4>) -> Tensor<4> {
        // diffusers' soft clamp of the latents to ±3.
        run_layers(&self.layers, (z / 3.0).tanh() * 3.0) * 2.0 - 1.0
    }
}

/// The encoder's part of an `AutoencoderTiny` config.
#[derive(Debug, Clone, PartialEq)]
pub struct TinyEncoderConfig {
    pub in_channels: usize,
    pub latent_channels: usize,
    pub encoder_block_out_channels: Vec<usize>,
    pub num_encoder_blocks: Vec<usize>,
    pub act_fn: Activation,
    pub scaling_factor: f64,
    pub shift_factor: f64,
}

impl TinyEncoderConfig {
    pub fn from_json(c: &ConfigJson) -> Result<Self> {
        let num_encoder_blocks = match c.object.get("num_encoder_blocks") {
            Some(serde_json::Value::Array(a)) => c.usize_per_block("num_encoder_blocks", a.len(), None)?,
            _ => vec![1, 3, 3, 3],
        };
        let n = num_encoder_blocks.len();
        if n == 0 {
            return Err(Error::config(&c.file, "num_encoder_blocks", "is empty"));
        }
        let cfg = Self {
            in_channels: c.usize_or("in_channels", 3)?,
            latent_channels: c.usize_or("latent_channels", 4)?,
            encoder_block_out_channels: c.usize_per_block("encoder_block_out_channels", n, Some(64))?,
            num_encoder_blocks,
            act_fn: Activation::parse(c.str_or("act_fn", "relu")?, &c.file, "act_fn")?,
            scaling_factor: c.f64_or("scaling_factor", 1.0)?,
            shift_factor: c.f64_or("shift_factor", 0.0)?,
        };
        // diffusers' EncoderTiny builds each strided convolution as (c_i → c_i): it only runs when every
        // stage has the width of the one before.
        if let Some(i) = (1..n).find(|&i| cfg.encoder_block_out_channels[i] != cfg.encoder_block_out_channels[i - 1]) {
            return Err(Error::config(
                &c.file,
                "encoder_block_out_channels",
                format!("stage {i} is {} wide after a stage of {} (AutoencoderTiny's encoder needs equal widths)", cfg.encoder_block_out_channels[i], cfg.encoder_block_out_channels[i - 1]),
            ));
        }
        Ok(cfg)
    }

    /// Pixels per latent along each side.
    pub fn downscale_factor(&self) -> usize {
        1 << (self.num_encoder_blocks.len() - 1)
    }
}

/// `EncoderTiny`: [conv, blocks…] per stage (stride 2 and no bias after the first), then a convolution to
/// the latent channels.
#[derive(Debug)]
pub struct TinyEncoder {
    pub config: TinyEncoderConfig,
    layers: Vec<Layer>,
}

impl TinyEncoder {
    pub fn load(config: &ConfigJson, weights: &SafeTensors, device: &Device) -> Result<Self> {
        let cfg = TinyEncoderConfig::from_json(config)?;
        let w = WeightsView::new(weights, "encoder.layers.");
        let boc = &cfg.encoder_block_out_channels;
        let mut layers = Vec::new();
        let mut index = 0;
        for (i, &blocks) in cfg.num_encoder_blocks.iter().enumerate() {
            let c = boc[i];
            let name = index.to_string();
            let conv = if i == 0 {
                Conv2d::load(&w, &name, [cfg.in_channels, c], 3, 1, 1, device)?
            } else {
                let plain = Conv2d::load_without_bias(&w, &name, [c, c], 3, device)?;
                Conv2d::new(plain.weight, None, 2, 1)
            };
            layers.push(Layer::Conv { conv, upsample: 1, act: None });
            index += 1;
            for _ in 0..blocks {
                layers.push(Layer::Block(TinyBlock::load(&w.sub(&index.to_string()), c, cfg.act_fn, device)?));
                index += 1;
            }
        }
        let last = boc[boc.len() - 1];
        layers.push(Layer::Conv { conv: Conv2d::load(&w, &index.to_string(), [last, cfg.latent_channels], 3, 1, 1, device)?, upsample: 1, act: None });
        Ok(Self { config: cfg, layers })
    }

    pub fn device(&self) -> Device {
        layers_device(&self.layers)
    }

    /// `AutoencoderTiny.encode(x).latents` for an image in [-1, 1]: unscaled latents (the pipeline's
    /// latents are `(these − shift_factor) · scaling_factor`).
    pub fn encode(&self, x: Tensor<4>) -> Tensor<4> {
        // diffusers maps [-1, 1] to TAESD's [0, 1] first.
        run_layers(&self.layers, (x + 1.0) / 2.0)
    }

    /// The latents the UNet was trained on: `(encode(x) − shift_factor) · scaling_factor`.
    pub fn encode_scaled(&self, x: Tensor<4>) -> Tensor<4> {
        let (scale, shift) = (self.config.scaling_factor, self.config.shift_factor);
        (self.encode(x) - shift) * scale
    }
}
