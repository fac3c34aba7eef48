//! CLIP vision tower: transformers' `CLIPVisionModel` / `CLIPVisionModelWithProjection`, and the whole
//! `CLIPModel` (both towers, both projections, `logit_scale`) that Control-CLIP fine-tuning reads.
//!
//! Configured from the checkpoint's config.json (or the `vision_config` of a CLIPModel config); weights
//! with or without the `vision_model.` prefix. Patch embedding (a stride-p convolution without bias), class
//! token, positions, `pre_layrnorm` (transformers' spelling), the encoder layers the text tower uses (no
//! causal mask), `post_layernorm` on the class token's final state, `visual_projection`.

use burn::nn::{LayerNorm, Linear};
use burn::tensor::{Device, Tensor};

use crate::config::ConfigJson;
use crate::error::{Error, Result};
use crate::models::clip::{ClipTextModel, EncoderLayer, EncoderShape};
use crate::models::nn::{Activation, Conv2d, layer_norm, linear};
use crate::weights::{SafeTensors, WeightsView};

/// Mirrors transformers' `CLIPVisionConfig` (missing fields take its defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct ClipVisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_channels: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub hidden_act: Activation,
    pub layer_norm_eps: f64,
    pub projection_dim: usize,
}

impl ClipVisionConfig {
    pub fn from_json(config: &ConfigJson) -> Result<Self> {
        if let Some(vision) = config.nested("vision_config") {
            // A CLIPModel's projections are sized by its top-level `projection_dim`.
            let mut cfg = Self::from_json(&vision)?;
            cfg.projection_dim = config.usize_or("projection_dim", 512)?;
            return Ok(cfg);
        }
        let c = config;
        let cfg = Self {
            hidden_size: c.positive_or("hidden_size", 768)?,
            intermediate_size: c.positive_or("intermediate_size", 3072)?,
            num_hidden_layers: c.usize_or("num_hidden_layers", 12)?,
            num_attention_heads: c.positive_or("num_attention_heads", 12)?,
            num_channels: c.positive_or("num_channels", 3)?,
            image_size: c.positive_or("image_size", 224)?,
            patch_size: c.positive_or("patch_size", 32)?,
            hidden_act: Activation::parse(c.str_or("hidden_act", "quick_gelu")?, &c.file, "hidden_act")?,
            layer_norm_eps: c.f64_or("layer_norm_eps", 1e-5)?,
            projection_dim: c.usize_or("projection_dim", 512)?,
        };
        if cfg.hidden_size % cfg.num_attention_heads != 0 {
            return Err(Error::config(&c.file, "num_attention_heads", format!("hidden_size {} is not divisible by {} heads", cfg.hidden_size, cfg.num_attention_heads)));
        }
        if cfg.image_size % cfg.patch_size != 0 {
            return Err(Error::config(&c.file, "patch_size", format!("image_size {} is not a multiple of patch_size {}", cfg.image_size, cfg.patch_size)));
        }
        Ok(cfg)
    }

    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }
}

/// What the tower returns, as transformers names it.
#[derive(Debug, Clone)]
pub struct ClipVisionOutput {
    /// [B, 1 + patches, D]: the encoder's output (no final layer norm, as transformers returns it).
    pub last_hidden_state: Tensor<3>,
    /// [B, D]: `post_layernorm` of the class token's final state.
    pub pooler_output: Tensor<2>,
    /// [B, projection_dim]: `visual_projection(pooler_output)`, when the checkpoint has the projection.
    pub image_embeds: Option<Tensor<2>>,
}

#[derive(Debug)]
pub struct ClipVisionModel {
    pub config: ClipVisionConfig,
    patch_embedding: Conv2d,
    class_embedding: Tensor<1>,
    position_embedding: Tensor<2>,
    pre_layernorm: LayerNorm,
    layers: Vec<EncoderLayer>,
    post_layernorm: LayerNorm,
    visual_projection: Option<Linear>,
}

impl ClipVisionModel {
    pub fn load(config: &ConfigJson, weights: &SafeTensors, device: &Device) -> Result<Self> {
        let cfg = ClipVisionConfig::from_json(config)?;
        let prefix = if weights.keys().any(|k| k.starts_with("vision_model.")) { "vision_model." } else { "" };
        let w = WeightsView::new(weights, prefix);
        let (d, p) = (cfg.hidden_size, cfg.patch_size);
        let patch_weight = w.tensor("embeddings.patch_embedding.weight", [d, cfg.num_channels, p, p], device)?;
        let patches = cfg.grid() * cfg.grid();
        let shape = EncoderShape {
            hidden_size: d,
            intermediate_size: cfg.intermediate_size,
            heads: cfg.num_attention_heads,
            act: cfg.hidden_act,
            eps: cfg.layer_norm_eps,
        };
        let root = WeightsView::new(weights, "");
        Ok(Self {
            patch_embedding: Conv2d::new(patch_weight, None, p, 0),
            class_embedding: w.tensor("embeddings.class_embedding", [d], device)?,
            position_embedding: w.tensor("embeddings.position_embedding.weight", [patches + 1, d], device)?,
            pre_layernorm: layer_norm(&w, "pre_layrnorm", d, cfg.layer_norm_eps, device)?,
            layers: (0..cfg.num_hidden_layers)
                .map(|i| EncoderLayer::load(&w.sub(&format!("encoder.layers.{i}")), shape, device))
                .collect::<Result<_>>()?,
            post_layernorm: layer_norm(&w, "post_layernorm", d, cfg.layer_norm_eps, device)?,
            visual_projection: match root.contains("visual_projection.weight") {
                true => Some(linear(&root, "visual_projection", d, cfg.projection_dim, false, device)?),
                false => None,
            },
            config: cfg,
        })
    }

    pub fn device(&self) -> Device {
        self.class_embedding.device()
    }

    pub fn has_projection(&self) -> bool {
        self.visual_projection.is_some()
    }

    /// `pixel_values` [B, C, S, S] (S = image_size, as the image processor makes them) → outputs.
    pub fn forward(&self, pixel_values: Tensor<4>) -> Result<ClipVisionOutput> {
        let cfg = &self.config;
        let [b, c, h, w] = pixel_values.dims();
        if c != cfg.num_channels || h != cfg.image_size || w != cfg.image_size {
            return Err(Error::invalid(
                "pixel_values",
                format!("shape [{b}, {c}, {h}, {w}], the vision tower takes [B, {}, {s}, {s}]", cfg.num_channels, s = cfg.image_size),
            ));
        }
        let d = cfg.hidden_size;
        let patches = cfg.grid() * cfg.grid();
        let x = self.patch_embedding.forward(pixel_values).reshape([b, d, patches]).swap_dims(1, 2);
        let class = self.class_embedding.clone().reshape([1, 1, d]).expand([b, 1, d]);
        let x = Tensor::cat(vec![class, x], 1) + self.position_embedding.clone().unsqueeze::<3>();
        let mut x = self.pre_layernorm.forward(x);
        for layer in &self.layers {
            x = layer.forward(x, None, None);
        }
        let pooler_output = self.post_layernorm.forward(x.clone().slice([0..b, 0..1, 0..d]).reshape([b, d]));
        let image_embeds = self.visual_projection.as_ref().map(|p| p.forward(pooler_output.clone()));
        Ok(ClipVisionOutput { last_hidden_state: x, pooler_output, image_embeds })
    }
}

/// A whole transformers `CLIPModel` folder: the text tower with `text_projection`, the vision tower with
/// `visual_projection`, and `logit_scale` (τ = exp of it).
#[derive(Debug)]
pub struct ClipModel {
    pub text: ClipTextModel,
    pub vision: ClipVisionModel,
    pub logit_scale: f32,
}

impl ClipModel {
    pub fn load(config: &ConfigJson, weights: &SafeTensors, device: &Device) -> Result<Self> {
        let text = ClipTextModel::load(config, weights, device)?;
        let vision = ClipVisionModel::load(config, weights, device)?;
        if !text.has_projection() || !vision.has_projection() {
            return Err(Error::file(weights.name(), "is not a whole CLIPModel: it needs `text_projection.weight` and `visual_projection.weight`"));
        }
        let (shape, values) = weights.f32("logit_scale")?;
        if values.len() != 1 || !values[0].is_finite() {
            return Err(Error::tensor(weights.name(), "logit_scale", format!("expected one finite value, found shape {shape:?}")));
        }
        Ok(Self { text, vision, logit_scale: values[0] })
    }
}
