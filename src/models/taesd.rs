//! diffusers' `AutoencoderTiny` (TAESD): the decoder, a plain stack of 3×3 convolutions, residual
//! `AutoencoderTinyBlock`s and nearest-neighbour upsampling (tiny and fast: the page's default decoder and
//! its per-step preview), and the encoder, the same blocks with strided convolutions (fine-tuning's
//! denoising term encodes its pictures with it, once).

use burn::tensor::{DType, Device, FloatDType, Tensor};
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

    /// Pixels per latent along each side.
    pub fn upscale_factor(&self) -> usize {
        self.upsampling_scaling_factor.pow(self.num_decoder_blocks.len() as u32 - 1)
    }

    /// Latent rows of context a band needs on either side: the decoder's receptive radius (one pixel per
    /// 3×3 convolution, at the resolution it runs at), in latent rows, rounded up.
    pub fn halo_rows(&self) -> usize {
        let u = self.upsampling_scaling_factor as f64;
        let n = self.num_decoder_blocks.len();
        let mut radius = 1.0; // the first convolution, on the latents
        for (i, &blocks) in self.num_decoder_blocks.iter().enumerate() {
            // The blocks run at u^i; the convolution after them reads the upsampled picture (u^(i+1)),
            // except the last stage's, which makes the output at u^i.
            let after = if i + 1 < n { u.powi(i as i32 + 1) } else { u.powi(i as i32) };
            radius += (3 * blocks) as f64 / u.powi(i as i32) + 1.0 / after;
        }
        radius.ceil() as usize
    }

    /// Bytes per latent row (batch `b`, latent width `w`) of the decoder's widest activation: a stage's
    /// channels at its resolution, and the upsampled input of the convolution that starts it.
    pub fn bytes_per_latent_row(&self, b: usize, w: usize) -> u64 {
        let u = self.upsampling_scaling_factor as u64;
        let widest = self.decoder_block_out_channels.iter().enumerate().map(|(i, &c)| {
            // Stage i runs at u^i; the convolution starting stage i+1 reads stage i's channels at u^(i+1).
            let at = |stage: usize| u.pow(stage as u32 * 2);
            let next = if i + 1 < self.num_decoder_blocks.len() { at(i + 1) } else { at(i) };
            (c.max(self.out_channels) as u64) * next
        });
        widest.max().unwrap_or(0) * (b * w) as u64 * 4
    }

    /// The most latent rows one band may hold under a binding `limit`, context included on both sides;
    /// `None` when not even one row fits.
    pub fn band_rows(&self, b: usize, w: usize, limit: u64) -> Option<usize> {
        let rows = (limit / self.bytes_per_latent_row(b, w).max(1)) as usize;
        rows.checked_sub(2 * self.halo_rows()).filter(|&r| r >= 1)
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
        Self::load_in(config, weights, device, FloatDType::F32)
    }

    /// [`Self::load`] computing in `dtype`.
    pub fn load_in(config: &ConfigJson, weights: &SafeTensors, device: &Device, dtype: FloatDType) -> Result<Self> {
        let cfg = TinyDecoderConfig::from_json(config)?;
        let w = WeightsView::new(weights, "decoder.layers.").in_dtype(dtype);
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

    /// The float type it computes in.
    pub fn dtype(&self) -> DType {
        match &self.layers[0] {
            Layer::Conv { conv, .. } => conv.weight.dtype(),
            Layer::Block(block) => block.convs[0].weight.dtype(),
        }
    }

    /// `AutoencoderTiny.decode`: latents (already divided by the scaling factor) → image in [-1, 1].
    /// Decoded in bands of latent rows where the widest activation would not fit one binding of the device
    /// (64 channels at 768² are 151 MB in f32): each band carries [`TinyDecoderConfig::halo_rows`] rows of context on
    /// either side, as many as reach its output through every convolution, so the result is the same.
    pub fn decode(&self, z: Tensor<4>) -> Tensor<4> {
        // diffusers' soft clamp of the latents to ±3.
        let z = (z / 3.0).tanh() * 3.0;
        let [b, c, h, w] = z.dims();
        let band = match crate::device::binding_limit(&z.device()) {
            Some(limit) => self.config.band_rows(b, w, limit).unwrap_or(1),
            None => h,
        };
        if band >= h {
            return run_layers(&self.layers, z) * 2.0 - 1.0;
        }
        let (halo, f) = (self.config.halo_rows(), self.config.upscale_factor());
        let parts = (0..h)
            .step_by(band)
            .map(|start| {
                let end = (start + band).min(h);
                let (from, to) = (start.saturating_sub(halo), (end + halo).min(h));
                let out = run_layers(&self.layers, z.clone().slice([0..b, 0..c, from..to, 0..w]));
                let [ob, oc, _, ow] = out.dims();
                out.slice([0..ob, 0..oc, (start - from) * f..(end - from) * f, 0..ow])
            })
            .collect();
        Tensor::cat(parts, 2) * 2.0 - 1.0
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
