//! CLIP text encoder: transformers' `CLIPTextModel` and `CLIPTextModelWithProjection`.
//!
//! Configured from the checkpoint's own `config.json` (or the `text_config` of a full CLIPModel config);
//! weights with or without the `text_model.` prefix, stored f32, f16 or bf16.

use burn::nn::{LayerNorm, Linear};
use burn::tensor::{Bool, Device, FloatDType, Int, Tensor, TensorData};

use crate::config::ConfigJson;
use crate::error::{Error, Result};
use crate::models::nn::{Activation, Leaf, LoraTensors, apply_layer_norm, layer_norm, layer_norm_leaves, linear, linear_leaves, scaled_dot_product_attention};
use crate::weights::{SafeTensors, WeightsView};

/// Mirrors transformers' `CLIPTextConfig` (missing fields take transformers' defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct ClipTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub hidden_act: Activation,
    pub layer_norm_eps: f64,
    pub eos_token_id: usize,
    pub projection_dim: usize,
}

impl ClipTextConfig {
    pub fn from_json(config: &ConfigJson) -> Result<Self> {
        // A full CLIPModel config.json nests the text tower's settings.
        if let Some(text) = config.nested("text_config") {
            // A CLIPModel's projections are sized by its top-level `projection_dim`.
            let mut cfg = Self::from_json(&text)?;
            cfg.projection_dim = config.usize_or("projection_dim", 512)?;
            return Ok(cfg);
        }
        let c = config;
        let cfg = Self {
            vocab_size: c.positive_or("vocab_size", 49408)?,
            hidden_size: c.positive_or("hidden_size", 512)?,
            intermediate_size: c.positive_or("intermediate_size", 2048)?,
            num_hidden_layers: c.usize_or("num_hidden_layers", 12)?,
            num_attention_heads: c.positive_or("num_attention_heads", 8)?,
            max_position_embeddings: c.positive_or("max_position_embeddings", 77)?,
            hidden_act: Activation::parse(c.str_or("hidden_act", "quick_gelu")?, &c.file, "hidden_act")?,
            layer_norm_eps: c.f64_or("layer_norm_eps", 1e-5)?,
            eos_token_id: c.usize_or("eos_token_id", 49407)?,
            projection_dim: c.usize_or("projection_dim", 512)?,
        };
        if cfg.hidden_size % cfg.num_attention_heads != 0 {
            return Err(Error::config(
                &c.file,
                "num_attention_heads",
                format!("hidden_size {} is not divisible by {} heads", cfg.hidden_size, cfg.num_attention_heads),
            ));
        }
        Ok(cfg)
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// transformers' `CLIPTextConfig` JSON for a `CLIPTextModel` of this shape (full fine-tuning writes its
    /// encoders as such folders). Fields the forward pass does not read (bos / pad ids) are left to
    /// transformers' defaults.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "architectures": ["CLIPTextModel"],
            "model_type": "clip_text_model",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "max_position_embeddings": self.max_position_embeddings,
            "hidden_act": self.hidden_act.config_name(),
            "layer_norm_eps": self.layer_norm_eps,
            "eos_token_id": self.eos_token_id,
            "projection_dim": self.projection_dim,
            "torch_dtype": "float32",
        })
    }

    /// The pooled (end-of-text) position of a row exactly as transformers picks it: with the legacy eos id
    /// 2, the position of the largest id; else the first eos (0 when there is none).
    pub fn pooled_position(&self, row: &[u32]) -> usize {
        let pos = if self.eos_token_id == 2 {
            let max = row.iter().max().copied().unwrap_or(0);
            row.iter().position(|&id| id == max)
        } else {
            row.iter().position(|&id| id as usize == self.eos_token_id)
        };
        pos.unwrap_or(0)
    }

    pub(crate) fn encoder_shape(&self) -> EncoderShape {
        EncoderShape {
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            heads: self.num_attention_heads,
            act: self.hidden_act,
            eps: self.layer_norm_eps,
        }
    }
}

/// One transformer encoder layer of a CLIP tower (text or vision: the same layer, the text tower adds a
/// causal mask): pre-norm self-attention and MLP, each with a residual.
#[derive(Debug)]
pub(crate) struct EncoderLayer {
    layer_norm1: LayerNorm,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    act: Activation,
    heads: usize,
}

/// The shape of a CLIP tower's encoder layers, from either tower's config.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EncoderShape {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub heads: usize,
    pub act: Activation,
    pub eps: f64,
}

impl EncoderLayer {
    pub(crate) fn load(w: &WeightsView, shape: EncoderShape, device: &Device) -> Result<Self> {
        let (d, eps) = (shape.hidden_size, shape.eps);
        let a = w.sub("self_attn");
        Ok(Self {
            layer_norm1: layer_norm(w, "layer_norm1", d, eps, device)?,
            q_proj: linear(&a, "q_proj", d, d, true, device)?,
            k_proj: linear(&a, "k_proj", d, d, true, device)?,
            v_proj: linear(&a, "v_proj", d, d, true, device)?,
            out_proj: linear(&a, "out_proj", d, d, true, device)?,
            layer_norm2: layer_norm(w, "layer_norm2", d, eps, device)?,
            fc1: linear(w, "mlp.fc1", d, shape.intermediate_size, true, device)?,
            fc2: linear(w, "mlp.fc2", shape.intermediate_size, d, true, device)?,
            act: shape.act,
            heads: shape.heads,
        })
    }

    /// Every parameter under `prefix` (`<prefix>.layer_norm1.weight`, `<prefix>.self_attn.q_proj.weight`, …).
    pub(crate) fn leaves(&self, prefix: &str, out: &mut Vec<(String, Leaf)>) {
        layer_norm_leaves(&self.layer_norm1, &format!("{prefix}.layer_norm1"), out);
        for (layer, name) in [(&self.q_proj, "q_proj"), (&self.k_proj, "k_proj"), (&self.v_proj, "v_proj"), (&self.out_proj, "out_proj")] {
            linear_leaves(layer, &format!("{prefix}.self_attn.{name}"), out);
        }
        layer_norm_leaves(&self.layer_norm2, &format!("{prefix}.layer_norm2"), out);
        linear_leaves(&self.fc1, &format!("{prefix}.mlp.fc1"), out);
        linear_leaves(&self.fc2, &format!("{prefix}.mlp.fc2"), out);
    }

    /// `mask` is additive ([1, 1, L, L]); `lora` adds trainable low-rank factors to the layer's linear
    /// maps (their paths are `<prefix>.self_attn.q_proj`, …, `<prefix>.mlp.fc2`).
    pub(crate) fn forward(&self, x: Tensor<3>, mask: Option<Tensor<4>>, lora: Option<(&LoraTensors, &str)>) -> Tensor<3> {
        let lin = |layer: &Linear, name: &str, x: Tensor<3>| match lora {
            Some((l, prefix)) => l.forward(layer, &format!("{prefix}.{name}"), x),
            None => layer.forward(x),
        };
        let h = apply_layer_norm(&self.layer_norm1, x.clone());
        let (q, k, v) = (lin(&self.q_proj, "self_attn.q_proj", h.clone()), lin(&self.k_proj, "self_attn.k_proj", h.clone()), lin(&self.v_proj, "self_attn.v_proj", h));
        let x = x + lin(&self.out_proj, "self_attn.out_proj", scaled_dot_product_attention(q, k, v, self.heads, mask));
        let h = self.act.forward(lin(&self.fc1, "mlp.fc1", apply_layer_norm(&self.layer_norm2, x.clone())));
        x + lin(&self.fc2, "mlp.fc2", h)
    }
}

/// What the encoder returns, as transformers names it.
#[derive(Debug, Clone)]
pub struct ClipTextOutput {
    /// [B, L, D]: the context the UNet attends to (after `clip_skip`, with the final layer norm).
    pub last_hidden_state: Tensor<3>,
    /// [B, D]: the final hidden state at the end-of-text position.
    pub pooler_output: Tensor<2>,
    /// [B, projection_dim]: `text_projection(pooler_output)`, for `CLIPTextModelWithProjection`.
    pub text_embeds: Option<Tensor<2>>,
}

#[derive(Debug)]
pub struct ClipTextModel {
    pub config: ClipTextConfig,
    token_embedding: TokenEmbedding,
    position_embedding: Tensor<2>,
    layers: Vec<EncoderLayer>,
    final_layer_norm: LayerNorm,
    text_projection: Option<Linear>,
}

impl ClipTextModel {
    /// Builds the model from a parsed config and a weights file. The `text_model.` prefix is optional;
    /// `text_projection.weight` (at the root) makes it a `CLIPTextModelWithProjection`.
    pub fn load(config: &ConfigJson, weights: &SafeTensors, device: &Device) -> Result<Self> {
        Self::load_with_deltas(config, weights, None, device)
    }

    /// As [`Self::load`], with low-rank deltas merged into the weights (a Control-CLIP encoder stored as
    /// deltas over E).
    pub fn load_with_deltas(config: &ConfigJson, weights: &SafeTensors, deltas: Option<&crate::weights::LowRankDeltas>, device: &Device) -> Result<Self> {
        Self::from_weights(ClipTextConfig::from_json(config)?, weights, deltas, device)
    }

    /// As [`Self::load_with_deltas`], from a parsed config. On an autodiff device every parameter of the
    /// text model is a leaf that requires gradients (full fine-tuning reads them through
    /// [`Self::leaves`]).
    pub fn from_weights(cfg: ClipTextConfig, weights: &SafeTensors, deltas: Option<&crate::weights::LowRankDeltas>, device: &Device) -> Result<Self> {
        Self::from_weights_in(cfg, weights, deltas, device, FloatDType::F32)
    }

    /// As [`Self::load_with_deltas`], computing in `dtype` (the layer norms' statistics stay f32).
    pub fn load_in(
        config: &ConfigJson,
        weights: &SafeTensors,
        deltas: Option<&crate::weights::LowRankDeltas>,
        device: &Device,
        dtype: FloatDType,
    ) -> Result<Self> {
        Self::from_weights_in(ClipTextConfig::from_json(config)?, weights, deltas, device, dtype)
    }

    /// As [`Self::from_weights`], with the weights (and so the activations) in `dtype`.
    pub fn from_weights_in(
        cfg: ClipTextConfig,
        weights: &SafeTensors,
        deltas: Option<&crate::weights::LowRankDeltas>,
        device: &Device,
        dtype: FloatDType,
    ) -> Result<Self> {
        let prefix = if weights.keys().any(|k| k.starts_with("text_model.")) { "text_model." } else { "" };
        let w = WeightsView::new(weights, prefix).with_deltas(deltas).in_dtype(dtype);
        let d = cfg.hidden_size;
        let token_embedding = TokenEmbedding::load(&w, "embeddings.token_embedding.weight", [cfg.vocab_size, d], device)?;
        let position_embedding =
            w.tensor("embeddings.position_embedding.weight", [cfg.max_position_embeddings, d], device)?;
        // burn's Param marks the layers' weights; the embeddings are plain tensors.
        let position_embedding = if device.is_autodiff() { position_embedding.require_grad() } else { position_embedding };
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| EncoderLayer::load(&w.sub(&format!("encoder.layers.{i}")), cfg.encoder_shape(), device))
            .collect::<Result<Vec<_>>>()?;
        let final_layer_norm = layer_norm(&w, "final_layer_norm", d, cfg.layer_norm_eps, device)?;
        let root = WeightsView::new(weights, "").with_deltas(deltas).in_dtype(dtype);
        let text_projection = if root.contains("text_projection.weight") {
            Some(linear(&root, "text_projection", d, cfg.projection_dim, false, device)?)
        } else {
            None
        };
        Ok(Self { config: cfg, token_embedding, position_embedding, layers, final_layer_norm, text_projection })
    }

    /// Every parameter of the text model (not `text_projection`) under its transformers name
    /// (`text_model.embeddings.token_embedding.weight`, …, `text_model.final_layer_norm.bias`), in
    /// state-dict order.
    pub fn leaves(&self) -> Vec<(String, Leaf)> {
        let mut out = vec![
            ("text_model.embeddings.token_embedding.weight".to_string(), Leaf::Matrix(self.token_embedding.table())),
            ("text_model.embeddings.position_embedding.weight".to_string(), Leaf::Matrix(self.position_embedding.clone())),
        ];
        for (i, layer) in self.layers.iter().enumerate() {
            layer.leaves(&format!("text_model.encoder.layers.{i}"), &mut out);
        }
        layer_norm_leaves(&self.final_layer_norm, "text_model.final_layer_norm", &mut out);
        out
    }

    pub fn has_projection(&self) -> bool {
        self.text_projection.is_some()
    }

    pub fn device(&self) -> Device {
        self.position_embedding.device()
    }

    /// `text_projection` applied to pooled rows [B, D] → [B, projection_dim]; None without a projection.
    pub fn project(&self, pooled: Tensor<2>) -> Option<Tensor<2>> {
        self.text_projection.as_ref().map(|p| p.forward(pooled))
    }

    /// The pooled (end-of-text) row of each prompt of a hidden state [B, L, D] → [B, D].
    pub fn pooled_rows(&self, hidden: Tensor<3>, input_ids: &[Vec<u32>]) -> Tensor<2> {
        let [b, l, d] = hidden.dims();
        let rows: Vec<i32> = input_ids.iter().enumerate().map(|(r, ids)| (r * l + self.config.pooled_position(ids)) as i32).collect();
        let rows = Tensor::<1, Int>::from_data(TensorData::new(rows, [b]), &hidden.device());
        hidden.reshape([b * l, d]).select(0, rows)
    }

    /// Token ids → outputs. `clip_skip` = k uses the hidden state k layers before the last (0 = the
    /// last), through the final layer norm, as diffusers' `clip_skip` does; the pooled output and the
    /// projection always come from the last layer, as in transformers.
    pub fn forward(&self, input_ids: &[Vec<u32>], clip_skip: usize) -> Result<ClipTextOutput> {
        self.forward_tuned(input_ids, clip_skip, None)
    }

    /// [`Self::forward`] with trainable low-rank factors on the encoder's linear layers (fine-tuning
    /// f_c or f_s over E's frozen weights); their paths are `encoder.layers.<i>.self_attn.q_proj`, ….
    pub fn forward_tuned(&self, input_ids: &[Vec<u32>], clip_skip: usize, lora: Option<&LoraTensors>) -> Result<ClipTextOutput> {
        let cfg = &self.config;
        let b = input_ids.len();
        let l = input_ids.first().map_or(0, Vec::len);
        if b == 0 || l == 0 {
            return Err(Error::invalid("input_ids", "empty batch"));
        }
        if input_ids.iter().any(|row| row.len() != l) {
            return Err(Error::invalid("input_ids", "rows of different lengths"));
        }
        if l > cfg.max_position_embeddings {
            return Err(Error::invalid(
                "input_ids",
                format!("{l} positions, the model has {}", cfg.max_position_embeddings),
            ));
        }
        if let Some(bad) = input_ids.iter().flatten().find(|&&id| id as usize >= cfg.vocab_size) {
            return Err(Error::invalid("input_ids", format!("token id {bad} is outside the vocabulary ({})", cfg.vocab_size)));
        }
        if clip_skip >= cfg.num_hidden_layers.max(1) {
            return Err(Error::invalid(
                "clip_skip",
                format!("{clip_skip} would skip every one of the {} layers", cfg.num_hidden_layers),
            ));
        }
        let device = self.device();
        let d = cfg.hidden_size;
        let flat: Vec<u32> = input_ids.iter().flatten().copied().collect();
        let tokens = self.token_embedding.lookup(&flat).reshape([b, l, d]);
        let positions = self.position_embedding.clone().slice([0..l]).unsqueeze::<3>();
        let mut x = tokens + positions;

        let mask = causal_mask(l, &device);
        let keep_at = cfg.num_hidden_layers - clip_skip;
        let mut skipped = None;
        for (i, layer) in self.layers.iter().enumerate() {
            if i == keep_at && clip_skip > 0 {
                skipped = Some(x.clone());
            }
            let prefix = format!("encoder.layers.{i}");
            x = layer.forward(x, Some(mask.clone()), lora.map(|l| (l, prefix.as_str())));
        }
        let last = apply_layer_norm(&self.final_layer_norm, x);
        let last_hidden_state = match skipped {
            Some(h) => apply_layer_norm(&self.final_layer_norm, h),
            None => last.clone(),
        };

        let pooler_output = self.pooled_rows(last, input_ids);
        let text_embeds = self.text_projection.as_ref().map(|p| p.forward(pooler_output.clone()));
        Ok(ClipTextOutput { last_hidden_state, pooler_output, text_embeds })
    }
}

/// The token embedding [vocab, D], held in blocks of rows where one buffer binding of the device cannot
/// hold it whole (an SD text encoder's 49,408 × 768 table is 152 MB in f32, over WebGPU's default
/// 128 MiB `maxStorageBufferBindingSize`); a lookup reads each token's row from its block.
#[derive(Debug, Clone)]
struct TokenEmbedding {
    blocks: Vec<Tensor<2>>,
    /// Rows per block (the last may hold fewer).
    rows: usize,
}

impl TokenEmbedding {
    fn load(w: &WeightsView, name: &str, [vocab, d]: [usize; 2], device: &Device) -> Result<Self> {
        let values = w.f32_of(name, &[vocab, d])?;
        let bytes = burn::tensor::DType::from(w.dtype).size() as u64;
        let rows = match crate::device::binding_limit(device) {
            Some(limit) => ((limit / (bytes * d.max(1) as u64)) as usize).clamp(1, vocab.max(1)),
            None => vocab.max(1),
        };
        let blocks = values
            .chunks(rows * d)
            .map(|block| {
                let t = w.create::<2>(block.to_vec(), [block.len() / d.max(1), d], device);
                // Fine-tuning reads the table's gradient (`ClipTextModel::leaves`); it runs on the CPU
                // backend, which binds nothing, so the table is one block there.
                if device.is_autodiff() { t.require_grad() } else { t }
            })
            .collect();
        Ok(Self { blocks, rows })
    }

    /// The whole table (one block: the tensor itself).
    fn table(&self) -> Tensor<2> {
        match self.blocks.as_slice() {
            [one] => one.clone(),
            blocks => Tensor::cat(blocks.to_vec(), 0),
        }
    }

    /// The rows of `ids` (already checked against the vocabulary) → [ids.len(), D], in order.
    fn lookup(&self, ids: &[u32]) -> Tensor<2> {
        let device = self.blocks[0].device();
        let index = |v: Vec<i32>| {
            let n = v.len();
            Tensor::<1, Int>::from_data(TensorData::new(v, [n]), &device)
        };
        if let [one] = self.blocks.as_slice() {
            return one.clone().select(0, index(ids.iter().map(|&id| id as i32).collect()));
        }
        // Each block gives the rows of its tokens; one gather then puts them back in the prompt's order.
        let mut parts = Vec::new();
        let mut order = vec![0i32; ids.len()];
        let mut next = 0;
        for (k, block) in self.blocks.iter().enumerate() {
            let (start, end) = (k * self.rows, (k + 1) * self.rows);
            let local: Vec<i32> = ids
                .iter()
                .enumerate()
                .filter(|&(_, &id)| (start..end).contains(&(id as usize)))
                .map(|(position, &id)| {
                    order[position] = next;
                    next += 1;
                    (id as usize - start) as i32
                })
                .collect();
            if !local.is_empty() {
                parts.push(block.clone().select(0, index(local)));
            }
        }
        Tensor::cat(parts, 0).select(0, index(order))
    }
}

/// Additive causal mask [1, 1, L, L]: 0 on and below the diagonal, f32::MIN above (as transformers).
fn causal_mask(l: usize, device: &Device) -> Tensor<4> {
    let upper = Tensor::<2, Bool>::from_data(
        TensorData::new((0..l * l).map(|i| i % l > i / l).collect::<Vec<bool>>(), [l, l]),
        device,
    );
    Tensor::<2>::zeros([l, l], device).mask_fill(upper, f32::MIN).reshape([1, 1, l, l])
}
