//! diffusers' `AutoencoderKL`, decoder side only (what generation needs): `post_quant_conv`, then the
//! `Decoder` (conv_in, mid block with one single-head attention, `UpDecoderBlock2D`s, norm, conv_out).

use burn::nn::Linear;
use burn::tensor::{DType, Device, FloatDType, Tensor};
use serde_json::json;

use crate::config::ConfigJson;
use crate::error::{Error, Result};
use crate::models::nn::{Activation, Conv2d, GroupNorm, linear, scaled_dot_product_attention};
use crate::models::unet::resnet::{ResnetBlock2D, ResnetSettings, Upsample2D};
use crate::weights::{SafeTensors, WeightsView};

/// The `AutoencoderKL` config fields the decoder uses.
#[derive(Debug, Clone, PartialEq)]
pub struct VaeConfig {
    pub out_channels: usize,
    pub latent_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub act_fn: Activation,
    pub norm_num_groups: usize,
    pub scaling_factor: f64,
    pub shift_factor: f64,
    pub use_post_quant_conv: bool,
    pub mid_block_add_attention: bool,
}

impl VaeConfig {
    pub fn from_json(c: &ConfigJson) -> Result<Self> {
        c.require_default("latents_mean", &[serde_json::Value::Null])?;
        c.require_default("latents_std", &[serde_json::Value::Null])?;
        c.require_default("norm_type", &[json!("group")])?;
        let up = c.str_list("up_block_types")?;
        if let Some(t) = up.iter().find(|t| *t != "UpDecoderBlock2D") {
            return Err(Error::config(&c.file, "up_block_types", format!("unsupported block `{t}` (supported: UpDecoderBlock2D)")));
        }
        let block_out_channels = c.usize_per_block("block_out_channels", up.len(), None)?;
        if block_out_channels.is_empty() {
            return Err(Error::config(&c.file, "block_out_channels", "is empty"));
        }
        Ok(Self {
            out_channels: c.usize_or("out_channels", 3)?,
            latent_channels: c.usize_or("latent_channels", 4)?,
            block_out_channels,
            layers_per_block: c.usize_or("layers_per_block", 1)?,
            act_fn: Activation::parse(c.str_or("act_fn", "silu")?, &c.file, "act_fn")?,
            norm_num_groups: c.positive_or("norm_num_groups", 32)?,
            scaling_factor: c.f64_or("scaling_factor", 0.18215)?,
            shift_factor: c.f64_or("shift_factor", 0.0)?,
            use_post_quant_conv: c.bool_or("use_post_quant_conv", true)?,
            mid_block_add_attention: c.bool_or("mid_block_add_attention", true)?,
        })
    }
}

/// The mid block's spatial self-attention: one head over all pixels, with its own group norm and a
/// residual connection (diffusers' `Attention` as the VAE configures it).
#[derive(Debug)]
struct SpatialAttention {
    group_norm: GroupNorm,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
}

impl SpatialAttention {
    fn load(w: &WeightsView, c: usize, groups: usize, device: &Device) -> Result<Self> {
        Ok(Self {
            group_norm: GroupNorm::load(w, "group_norm", groups, c, 1e-6, device)?,
            to_q: linear(w, "to_q", c, c, true, device)?,
            to_k: linear(w, "to_k", c, c, true, device)?,
            to_v: linear(w, "to_v", c, c, true, device)?,
            to_out: linear(w, "to_out.0", c, c, true, device)?,
        })
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let tokens = self.group_norm.forward(x.clone()).reshape([b, c, h * w]).swap_dims(1, 2);
        let (q, k, v) = (self.to_q.forward(tokens.clone()), self.to_k.forward(tokens.clone()), self.to_v.forward(tokens));
        let out = self.to_out.forward(scaled_dot_product_attention(q, k, v, 1, None));
        out.swap_dims(1, 2).reshape([b, c, h, w]) + x
    }
}

#[derive(Debug)]
pub struct VaeDecoder {
    pub config: VaeConfig,
    post_quant_conv: Option<Conv2d>,
    conv_in: Conv2d,
    mid_resnet_1: ResnetBlock2D,
    mid_attention: Option<SpatialAttention>,
    mid_resnet_2: ResnetBlock2D,
    up_blocks: Vec<(Vec<ResnetBlock2D>, Option<Upsample2D>)>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl VaeDecoder {
    pub fn load(config: &ConfigJson, weights: &SafeTensors, device: &Device) -> Result<Self> {
        Self::load_in(config, weights, device, FloatDType::F32)
    }

    /// [`Self::load`] computing in `dtype` (the group norms' statistics in f32).
    pub fn load_in(config: &ConfigJson, weights: &SafeTensors, device: &Device, dtype: FloatDType) -> Result<Self> {
        let cfg = VaeConfig::from_json(config)?;
        let root = WeightsView::new(weights, "").in_dtype(dtype);
        let w = root.sub("decoder");
        let boc = &cfg.block_out_channels;
        let top = *boc.last().expect("checked non-empty");
        let groups = cfg.norm_num_groups;
        let rs = ResnetSettings { groups, eps: 1e-6, act: cfg.act_fn, temb_channels: None, output_scale_factor: 1.0 };
        let lc = cfg.latent_channels;
        let post_quant_conv = if cfg.use_post_quant_conv { Some(Conv2d::load(&root, "post_quant_conv", [lc, lc], 1, 1, 0, device)?) } else { None };
        let conv_in = Conv2d::load(&w, "conv_in", [lc, top], 3, 1, 1, device)?;
        let mid = w.sub("mid_block");
        let mid_resnet_1 = ResnetBlock2D::load(&mid.sub("resnets.0"), top, top, rs, device)?;
        let mid_attention = if cfg.mid_block_add_attention { Some(SpatialAttention::load(&mid.sub("attentions.0"), top, groups, device)?) } else { None };
        let mid_resnet_2 = ResnetBlock2D::load(&mid.sub("resnets.1"), top, top, rs, device)?;
        let n = boc.len();
        let mut up_blocks = Vec::with_capacity(n);
        let mut c_prev = top;
        for i in 0..n {
            let c_out = boc[n - 1 - i];
            let bw = w.sub(&format!("up_blocks.{i}"));
            let resnets = (0..=cfg.layers_per_block)
                .map(|j| ResnetBlock2D::load(&bw.sub(&format!("resnets.{j}")), if j == 0 { c_prev } else { c_out }, c_out, rs, device))
                .collect::<Result<Vec<_>>>()?;
            let up = if i + 1 < n { Some(Upsample2D::load(&bw.sub("upsamplers.0"), c_out, device)?) } else { None };
            up_blocks.push((resnets, up));
            c_prev = c_out;
        }
        let conv_norm_out = GroupNorm::load(&w, "conv_norm_out", groups, boc[0], 1e-6, device)?;
        let conv_out = Conv2d::load(&w, "conv_out", [boc[0], cfg.out_channels], 3, 1, 1, device)?;
        Ok(Self { config: cfg, post_quant_conv, conv_in, mid_resnet_1, mid_attention, mid_resnet_2, up_blocks, conv_norm_out, conv_out })
    }


    pub fn device(&self) -> Device {
        self.conv_in.weight.device()
    }

    /// The float type it computes in.
    pub fn dtype(&self) -> DType {
        self.conv_in.weight.dtype()
    }

    /// `AutoencoderKL.decode`: latents *already divided by the scaling factor* (as diffusers'
    /// pipelines pass them) → image in about [-1, 1].
    pub fn decode(&self, z: Tensor<4>) -> Tensor<4> {
        let z = match &self.post_quant_conv {
            Some(conv) => conv.forward(z),
            None => z,
        };
        let mut x = self.mid_resnet_1.forward(self.conv_in.forward(z), None);
        if let Some(attn) = &self.mid_attention {
            x = attn.forward(x);
        }
        x = self.mid_resnet_2.forward(x, None);
        for (resnets, up) in &self.up_blocks {
            for resnet in resnets {
                x = resnet.forward(x, None);
            }
            if let Some(up) = up {
                x = up.forward(x, None);
            }
        }
        let act = self.config.act_fn;
        self.conv_out.forward(self.conv_norm_out.forward_then(x, act))
    }
}
