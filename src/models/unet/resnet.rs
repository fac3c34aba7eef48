//! `ResnetBlock2D` (time-embedding "default" form), `Downsample2D`, `Upsample2D`.

use burn::nn::Linear;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{Device, Tensor};

use crate::error::Result;
use crate::models::nn::{Activation, Conv2d, ConvFused, GroupNorm, linear};
use crate::weights::WeightsView;

/// What every resnet of one model shares.
#[derive(Debug, Clone, Copy)]
pub struct ResnetSettings {
    pub groups: usize,
    pub eps: f64,
    pub act: Activation,
    /// Width of the time embedding, or None for the decoders (no time input).
    pub temb_channels: Option<usize>,
    pub output_scale_factor: f64,
}

#[derive(Debug)]
pub struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Option<Linear>,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
    act: Activation,
    output_scale_factor: f64,
}

impl ResnetBlock2D {
    pub fn load(w: &WeightsView, c_in: usize, c_out: usize, s: ResnetSettings, device: &Device) -> Result<Self> {
        Ok(Self {
            norm1: GroupNorm::load(w, "norm1", s.groups, c_in, s.eps, device)?,
            conv1: Conv2d::load(w, "conv1", [c_in, c_out], 3, 1, 1, device)?,
            time_emb_proj: match s.temb_channels {
                Some(t) => Some(linear(w, "time_emb_proj", t, c_out, true, device)?),
                None => None,
            },
            norm2: GroupNorm::load(w, "norm2", s.groups, c_out, s.eps, device)?,
            conv2: Conv2d::load(w, "conv2", [c_out, c_out], 3, 1, 1, device)?,
            conv_shortcut: if c_in != c_out { Some(Conv2d::load(w, "conv_shortcut", [c_in, c_out], 1, 1, 0, device)?) } else { None },
            act: s.act,
            output_scale_factor: s.output_scale_factor,
        })
    }

    /// `temb` is the (not yet activated) time embedding [B, T], or None in the decoders.
    pub fn forward(&self, x: Tensor<4>, temb: Option<&Tensor<2>>) -> Tensor<4> {
        let mut h = self.conv1.forward(self.norm1.forward_then(x.clone(), self.act));
        if let (Some(proj), Some(temb)) = (&self.time_emb_proj, temb) {
            let [b, c] = [h.dims()[0], h.dims()[1]];
            h = h + proj.forward(self.act.forward(temb.clone())).reshape([b, c, 1, 1]);
        }
        let x = match &self.conv_shortcut {
            Some(conv) => conv.forward(x),
            None => x,
        };
        // The skip sum inside conv2's pass (its output starts as x + bias).
        let out = self.conv2.forward_fused(self.norm2.forward_then(h, self.act), ConvFused { residual: Some(&x), ..ConvFused::default() });
        if self.output_scale_factor == 1.0 { out } else { out / self.output_scale_factor }
    }
}

/// Strided 3×3 convolution; with `padding` 0 diffusers pads right and bottom by one first.
#[derive(Debug)]
pub struct Downsample2D {
    conv: Conv2d,
    pad_right_bottom: bool,
}

impl Downsample2D {
    pub fn load(w: &WeightsView, channels: usize, padding: usize, device: &Device) -> Result<Self> {
        Ok(Self { conv: Conv2d::load(w, "conv", [channels, channels], 3, 2, padding, device)?, pad_right_bottom: padding == 0 })
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = if self.pad_right_bottom { x.pad((0, 1, 0, 1), burn::tensor::ops::PadMode::Constant(0.0)) } else { x };
        self.conv.forward(x)
    }
}

/// Nearest-neighbour ×2 (or to the skip connection's size) then a 3×3 convolution.
#[derive(Debug)]
pub struct Upsample2D {
    conv: Conv2d,
}

impl Upsample2D {
    pub fn load(w: &WeightsView, channels: usize, device: &Device) -> Result<Self> {
        Ok(Self { conv: Conv2d::load(w, "conv", [channels, channels], 3, 1, 1, device)?.reading_upsampled() })
    }

    pub fn forward(&self, x: Tensor<4>, size: Option<[usize; 2]>) -> Tensor<4> {
        let [_, _, h, w] = x.dims();
        match size {
            Some(size) if size != [h * 2, w * 2] => self.conv.forward(interpolate(x, InterpolateOptions::new(InterpolateMode::Nearest).with_output_size(size))),
            // The usual ×2, read through by the convolution instead of materialised.
            _ => self.conv.forward_fused(x, ConvFused { upsample: 2, ..ConvFused::default() }),
        }
    }
}
