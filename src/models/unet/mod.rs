//! diffusers' `UNet2DConditionModel`, configured from its own `config.json`: SD 1.x, the distilled
//! UNets (BK-SDM, segmind tiny/small-sd, SDXS) and our own small models load without code changes.

mod blocks;
mod embeddings;
pub(crate) mod resnet;
pub mod transformer;

use burn::tensor::{DType, Device, FloatDType, Tensor};
use serde_json::json;

use crate::config::ConfigJson;
use crate::error::{Error, Result};
use crate::models::nn::{Activation, Conv2d, GroupNorm, cast_to};
use crate::weights::{SafeTensors, WeightsView};
use blocks::{BlockShape, DownBlock, MidBlock, UpBlock};
use embeddings::{TimestepEmbedding, sinusoidal};
use resnet::ResnetSettings;
pub use transformer::Conditioning;
use crate::models::attention::ControlContext;
use transformer::TransformerSettings;

/// The `UNet2DConditionModel` config fields we use (others must have their default values).
#[derive(Debug, Clone, PartialEq)]
pub struct UNetConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub sample_size: usize,
    pub center_input_sample: bool,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f32,
    pub down_block_types: Vec<String>,
    pub mid_block: bool,
    pub up_block_types: Vec<String>,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: Vec<usize>,
    pub downsample_padding: usize,
    pub mid_block_scale_factor: f64,
    pub act_fn: Activation,
    pub norm_num_groups: usize,
    pub norm_eps: f64,
    pub cross_attention_dim: usize,
    pub transformer_layers_per_block: Vec<usize>,
    /// Heads per down block (diffusers' legacy naming: `attention_head_dim` holds head *counts* when
    /// `num_attention_heads` is absent).
    pub num_attention_heads: Vec<usize>,
    pub use_linear_projection: bool,
    pub conv_in_kernel: usize,
    pub conv_out_kernel: usize,
}

const CROSS_DOWN: &str = "CrossAttnDownBlock2D";
const PLAIN_DOWN: &str = "DownBlock2D";
const CROSS_UP: &str = "CrossAttnUpBlock2D";
const PLAIN_UP: &str = "UpBlock2D";
const CROSS_MID: &str = "UNetMidBlock2DCrossAttn";

impl UNetConfig {
    pub fn from_json(c: &ConfigJson) -> Result<Self> {
        // Options of other UNet variants that we do not implement: refused by name, never ignored.
        let null = serde_json::Value::Null;
        for field in [
            "class_embed_type",
            "addition_embed_type",
            "encoder_hid_dim",
            "encoder_hid_dim_type",
            "time_cond_proj_dim",
            "num_class_embeds",
            "projection_class_embeddings_input_dim",
            "timestep_post_act",
            "time_embedding_dim",
            "time_embedding_act_fn",
            "cross_attention_norm",
            "addition_time_embed_dim",
            "reverse_transformer_layers_per_block",
        ] {
            c.require_default(field, std::slice::from_ref(&null))?;
        }
        c.require_default("dual_cross_attention", &[json!(false)])?;
        c.require_default("only_cross_attention", &[json!(false)])?;
        c.require_default("mid_block_only_cross_attention", &[json!(false)])?;
        c.require_default("resnet_time_scale_shift", &[json!("default")])?;
        c.require_default("time_embedding_type", &[json!("positional")])?;
        c.require_default("attention_type", &[json!("default")])?;
        c.require_default("resnet_out_scale_factor", &[json!(1.0), json!(1)])?;
        c.require_default("resnet_skip_time_act", &[json!(false)])?;
        c.require_default("class_embeddings_concat", &[json!(false)])?;

        let down_block_types = c.str_list("down_block_types")?;
        let up_block_types = c.str_list("up_block_types")?;
        let n = down_block_types.len();
        if n == 0 {
            return Err(Error::config(&c.file, "down_block_types", "is empty"));
        }
        if up_block_types.len() != n {
            return Err(Error::config(&c.file, "up_block_types", format!("has {} entries, down_block_types has {n}", up_block_types.len())));
        }
        for t in &down_block_types {
            if t != CROSS_DOWN && t != PLAIN_DOWN {
                return Err(Error::config(&c.file, "down_block_types", format!("unsupported block `{t}` (supported: {CROSS_DOWN}, {PLAIN_DOWN})")));
            }
        }
        for t in &up_block_types {
            if t != CROSS_UP && t != PLAIN_UP {
                return Err(Error::config(&c.file, "up_block_types", format!("unsupported block `{t}` (supported: {CROSS_UP}, {PLAIN_UP})")));
            }
        }
        let mid_block = match c.opt_str("mid_block_type")? {
            None => !c.object.contains_key("mid_block_type"),
            Some(CROSS_MID) => true,
            Some(other) => {
                return Err(Error::config(&c.file, "mid_block_type", format!("unsupported block `{other}` (supported: {CROSS_MID} or null)")));
            }
        };
        let block_out_channels = c.usize_per_block("block_out_channels", n, None)?;
        // `num_attention_heads` wins; else `attention_head_dim` (which SD configs use for head counts).
        let heads = if c.object.get("num_attention_heads").is_some_and(|v| !v.is_null()) {
            c.usize_per_block("num_attention_heads", n, None)?
        } else {
            c.usize_per_block("attention_head_dim", n, Some(8))?
        };
        let cross_attention_dim = match c.object.get("cross_attention_dim") {
            Some(v) if v.is_array() => {
                let dims = c.usize_per_block("cross_attention_dim", n, None)?;
                if dims.iter().any(|&d| d != dims[0]) {
                    return Err(Error::config(&c.file, "cross_attention_dim", "different context widths per block are not supported"));
                }
                dims[0]
            }
            _ => c.usize_or("cross_attention_dim", 1280)?,
        };
        let cfg = Self {
            in_channels: c.usize_or("in_channels", 4)?,
            out_channels: c.usize_or("out_channels", 4)?,
            sample_size: c.usize_or("sample_size", 64)?,
            center_input_sample: c.bool_or("center_input_sample", false)?,
            flip_sin_to_cos: c.bool_or("flip_sin_to_cos", true)?,
            freq_shift: c.f64_or("freq_shift", 0.0)? as f32,
            down_block_types,
            mid_block,
            up_block_types,
            block_out_channels,
            layers_per_block: c.usize_per_block("layers_per_block", n, Some(2))?,
            downsample_padding: c.usize_or("downsample_padding", 1)?,
            mid_block_scale_factor: c.f64_or("mid_block_scale_factor", 1.0)?,
            act_fn: Activation::parse(c.str_or("act_fn", "silu")?, &c.file, "act_fn")?,
            norm_num_groups: c.positive_or("norm_num_groups", 32)?,
            norm_eps: c.f64_or("norm_eps", 1e-5)?,
            cross_attention_dim,
            transformer_layers_per_block: c.usize_per_block("transformer_layers_per_block", n, Some(1))?,
            num_attention_heads: heads,
            use_linear_projection: c.bool_or("use_linear_projection", false)?,
            conv_in_kernel: c.usize_or("conv_in_kernel", 3)?,
            conv_out_kernel: c.usize_or("conv_out_kernel", 3)?,
        };
        for (field, k) in [("conv_in_kernel", cfg.conv_in_kernel), ("conv_out_kernel", cfg.conv_out_kernel)] {
            if k % 2 == 0 {
                return Err(Error::config(&c.file, field, format!("even kernel size {k} is not supported")));
            }
        }
        if cfg.num_attention_heads.contains(&0) {
            return Err(Error::config(&c.file, "attention_head_dim", "head counts must be positive"));
        }
        Ok(cfg)
    }

    /// How much smaller the deepest feature map is than the input.
    pub fn downscale_factor(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }
}

#[derive(Debug)]
pub struct UNet2DConditionModel {
    pub config: UNetConfig,
    conv_in: Conv2d,
    time_embedding: TimestepEmbedding,
    down_blocks: Vec<DownBlock>,
    mid_block: Option<MidBlock>,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl UNet2DConditionModel {
    pub fn load(config: &ConfigJson, weights: &SafeTensors, device: &Device) -> Result<Self> {
        Self::load_in(config, weights, device, FloatDType::F32)
    }

    /// [`Self::load`] computing in `dtype` (normalisation statistics in f32; the prediction is f32).
    pub fn load_in(config: &ConfigJson, weights: &SafeTensors, device: &Device, dtype: FloatDType) -> Result<Self> {
        let cfg = UNetConfig::from_json(config)?;
        let w = WeightsView::new(weights, "").in_dtype(dtype);
        let boc = &cfg.block_out_channels;
        let n = boc.len();
        let temb = boc[0] * 4;
        let rs = ResnetSettings {
            groups: cfg.norm_num_groups,
            eps: cfg.norm_eps,
            act: cfg.act_fn,
            temb_channels: Some(temb),
            output_scale_factor: 1.0,
        };
        let ts = TransformerSettings {
            groups: cfg.norm_num_groups,
            context_dim: cfg.cross_attention_dim,
            use_linear_projection: cfg.use_linear_projection,
        };
        let conv_in = Conv2d::load(&w, "conv_in", [cfg.in_channels, boc[0]], cfg.conv_in_kernel, 1, cfg.conv_in_kernel / 2, device)?;
        let time_embedding = TimestepEmbedding::load(&w.sub("time_embedding"), boc[0], temb, cfg.act_fn, device)?;

        let mut down_blocks = Vec::with_capacity(n);
        let mut c_in = boc[0];
        for i in 0..n {
            let shape = BlockShape {
                layers: cfg.layers_per_block[i],
                heads: (cfg.down_block_types[i] == CROSS_DOWN).then_some(cfg.num_attention_heads[i]),
                transformer_layers: cfg.transformer_layers_per_block[i],
            };
            let downsample = (i + 1 < n).then_some(cfg.downsample_padding);
            down_blocks.push(DownBlock::load(&w.sub(&format!("down_blocks.{i}")), c_in, boc[i], shape, downsample, rs, ts, device)?);
            c_in = boc[i];
        }

        let mid_block = if cfg.mid_block {
            let mid_rs = ResnetSettings { output_scale_factor: cfg.mid_block_scale_factor, ..rs };
            Some(MidBlock::load(&w.sub("mid_block"), boc[n - 1], cfg.num_attention_heads[n - 1], cfg.transformer_layers_per_block[n - 1], mid_rs, ts, device)?)
        } else {
            None
        };

        let mut up_blocks = Vec::with_capacity(n);
        let mut c_prev = boc[n - 1];
        for i in 0..n {
            let r = n - 1 - i; // the matching down block
            let shape = BlockShape {
                layers: cfg.layers_per_block[r] + 1,
                heads: (cfg.up_block_types[i] == CROSS_UP).then_some(cfg.num_attention_heads[r]),
                transformer_layers: cfg.transformer_layers_per_block[r],
            };
            let c_skip_last = boc[r.saturating_sub(1)];
            up_blocks.push(UpBlock::load(&w.sub(&format!("up_blocks.{i}")), c_prev, boc[r], c_skip_last, shape, i + 1 < n, rs, ts, device)?);
            c_prev = boc[r];
        }

        let conv_norm_out = GroupNorm::load(&w, "conv_norm_out", cfg.norm_num_groups, boc[0], cfg.norm_eps, device)?;
        let conv_out = Conv2d::load(&w, "conv_out", [boc[0], cfg.out_channels], cfg.conv_out_kernel, 1, cfg.conv_out_kernel / 2, device)?;
        Ok(Self { config: cfg, conv_in, time_embedding, down_blocks, mid_block, up_blocks, conv_norm_out, conv_out })
    }


    pub fn device(&self) -> Device {
        self.conv_in.weight.device()
    }

    /// Predicts noise (or v) for `sample` [B, C, H, W] at `timesteps` (one per batch row) given the
    /// text `context` [B, L, cross_attention_dim]. Inputs of any float type are cast to the UNet's; the
    /// prediction is f32 (the scheduler's arithmetic and guidance stay f32).
    pub fn forward(&self, sample: Tensor<4>, timesteps: &[f32], context: &Tensor<3>) -> Result<Tensor<4>> {
        self.forward_conditioned(sample, timesteps, Conditioning::Text(context))
    }

    /// As [`Self::forward`], with Control-CLIP's decoupled cross-attention over the category and style
    /// contexts in every cross-attention layer.
    pub fn forward_control(&self, sample: Tensor<4>, timesteps: &[f32], control: &ControlContext) -> Result<Tensor<4>> {
        self.forward_conditioned(sample, timesteps, Conditioning::Control(control))
    }

    pub fn forward_conditioned(&self, sample: Tensor<4>, timesteps: &[f32], context: Conditioning) -> Result<Tensor<4>> {
        let [b, c, h, w] = sample.dims();
        let cfg = &self.config;
        if c != cfg.in_channels {
            return Err(Error::invalid("sample", format!("{c} channels, the UNet takes {}", cfg.in_channels)));
        }
        let f = cfg.downscale_factor();
        if h % f != 0 || w % f != 0 {
            return Err(Error::invalid("sample", format!("{h}×{w} latents are not a multiple of {f} (the UNet's downscale factor)")));
        }
        if timesteps.len() != b {
            return Err(Error::invalid("timesteps", format!("{} timesteps for a batch of {b}", timesteps.len())));
        }
        let contexts = match context {
            Conditioning::Text(t) => vec![("context", t)],
            Conditioning::Control(cc) => vec![("category context", &cc.category), ("style context", &cc.style)],
        };
        for (what, t) in contexts {
            let [cb, _, cd] = t.dims();
            if cb != b || cd != cfg.cross_attention_dim {
                return Err(Error::invalid(what, format!("shape {:?}, expected [{b}, L, {}]", t.dims(), cfg.cross_attention_dim)));
            }
        }
        let device = sample.device();
        let dtype = self.conv_in.weight.dtype();
        let (text, control);
        let context = match context {
            Conditioning::Text(t) => {
                text = cast_to(t.clone(), dtype);
                Conditioning::Text(&text)
            }
            Conditioning::Control(cc) => {
                control = ControlContext { category: cast_to(cc.category.clone(), dtype), style: cast_to(cc.style.clone(), dtype), weights: cc.weights.clone() };
                Conditioning::Control(&control)
            }
        };
        let sample = if cfg.center_input_sample { sample * 2.0 - 1.0 } else { sample };
        let sample = cast_to(sample, dtype);
        let t = cast_to(sinusoidal(timesteps, cfg.block_out_channels[0], cfg.flip_sin_to_cos, cfg.freq_shift, &device), dtype);
        let temb = self.time_embedding.forward(t);

        let mut x = self.conv_in.forward(sample);
        let mut skips = vec![x.clone()];
        for block in &self.down_blocks {
            x = block.forward(x, &temb, context, &mut skips);
        }
        if let Some(mid) = &self.mid_block {
            x = mid.forward(x, &temb, context);
        }
        for block in &self.up_blocks {
            x = block.forward(x, &temb, context, &mut skips);
        }
        let x = self.conv_norm_out.forward_then(x, cfg.act_fn);
        Ok(cast_to(self.conv_out.forward(x), DType::F32))
    }
}
