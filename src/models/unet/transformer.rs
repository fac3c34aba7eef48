//! `Transformer2DModel` (continuous input) and its `BasicTransformerBlock`: self-attention,
//! cross-attention to the text context, GEGLU feed-forward.
//!
//! Cross-attention goes through [`cross_attention`], the one seam where Control-CLIP's decoupled attention
//! ([`crate::models::attention`]) replaces the ordinary one; self-attention uses the same
//! scaled-dot-product code.

use burn::nn::{LayerNorm, Linear};
use burn::tensor::{Device, Tensor, activation};

use crate::models::attention::{ControlContext, decoupled_attention};
use crate::error::Result;
use crate::models::nn::{Conv2d, GroupNorm, apply_layer_norm, apply_linear, in_row_chunks, layer_norm, linear, scaled_dot_product_attention};
use crate::config::ConfigJson;
use crate::profile::{self, Section};
use crate::weights::{SafeTensors, WeightsView};

/// What the UNet's cross-attention layers attend to.
#[derive(Debug, Clone, Copy)]
pub enum Conditioning<'a> {
    /// One text context [B, L, D]: the unmodified UNet.
    Text(&'a Tensor<3>),
    /// Control-CLIP: category and style contexts with their per-row weights.
    Control(&'a ControlContext),
}

/// The UNet's cross-attention between image tokens `q` (already projected) and the conditioning: the
/// single seam where Control-CLIP's decoupled attention replaces the ordinary one.
fn cross_attention(attn: &Attention, q: Tensor<3>, context: Conditioning) -> Tensor<3> {
    let project = |c: &Tensor<3>| (timed(&attn.to_k, c.clone()), timed(&attn.to_v, c.clone()));
    match context {
        Conditioning::Text(c) => {
            let (k, v) = project(c);
            scaled_dot_product_attention(q, k, v, attn.heads, None)
        }
        Conditioning::Control(cc) => {
            let ((k_c, v_c), (k_s, v_s)) = (project(&cc.category), project(&cc.style));
            decoupled_attention(q, k_c, v_c, k_s, v_s, cc.weights.clone(), attn.heads)
        }
    }
}

/// `linear.forward(x)` (our CPU kernel on the CPU backend), counted as [`Section::Linear`] in a profile.
fn timed(linear: &Linear, x: Tensor<3>) -> Tensor<3> {
    profile::time(Section::Linear, || apply_linear(linear, x))
}

/// diffusers' `Attention` with the default processor (no biases on q/k/v, bias on the output).
#[derive(Debug)]
pub struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
}

impl Attention {
    fn load(w: &WeightsView, dim: usize, context_dim: usize, heads: usize, head_dim: usize, device: &Device) -> Result<Self> {
        let inner = heads * head_dim;
        Ok(Self {
            to_q: linear(w, "to_q", dim, inner, false, device)?,
            to_k: linear(w, "to_k", context_dim, inner, false, device)?,
            to_v: linear(w, "to_v", context_dim, inner, false, device)?,
            to_out: linear(w, "to_out.0", inner, dim, true, device)?,
            heads,
        })
    }

    fn self_attention(&self, x: Tensor<3>) -> Tensor<3> {
        let (q, k, v) = (timed(&self.to_q, x.clone()), timed(&self.to_k, x.clone()), timed(&self.to_v, x));
        timed(&self.to_out, scaled_dot_product_attention(q, k, v, self.heads, None))
    }

    /// Cross-attention of tokens `x` [B, L, query_dim] to the conditioning, through the output projection.
    pub fn cross_attention(&self, x: Tensor<3>, context: Conditioning) -> Tensor<3> {
        timed(&self.to_out, cross_attention(self, timed(&self.to_q, x), context))
    }

    /// One stand-alone layer, for `control-clip check cross-attention`: a config with `query_dim`,
    /// `cross_attention_dim`, `heads` and `dim_head` (diffusers' `Attention` arguments) and its weights.
    pub fn load_layer(config: &ConfigJson, weights: &SafeTensors, device: &Device) -> Result<Self> {
        let field = |name: &str| config.positive_usize(name);
        let (dim, heads, head_dim) = (field("query_dim")?, field("heads")?, field("dim_head")?);
        let context_dim = config.usize_or("cross_attention_dim", dim)?;
        Self::load(&WeightsView::new(weights, ""), dim, context_dim, heads, head_dim, device)
    }


    pub fn device(&self) -> Device {
        self.to_q.weight.device()
    }
}

/// GEGLU feed-forward: `net.2(h · gelu(gate))` with `[h, gate] = net.0.proj(x)`.
#[derive(Debug)]
struct FeedForward {
    proj: Linear,
    out: Linear,
    inner: usize,
}

impl FeedForward {
    fn load(w: &WeightsView, dim: usize, device: &Device) -> Result<Self> {
        let inner = dim * 4;
        Ok(Self { proj: linear(w, "net.0.proj", dim, inner * 2, true, device)?, out: linear(w, "net.2", inner, dim, true, device)?, inner })
    }

    /// Split along the tokens where the projection's [B, L, 2·inner] output would not fit one binding
    /// (SD 1.5 at 768²: 189 MB in f32); every token's feed-forward is independent of the others.
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        in_row_chunks(x, 2 * self.inner * 4, |x| {
            let h = timed(&self.proj, x);
            let [b, l, _] = h.dims();
            let hidden = h.clone().slice([0..b, 0..l, 0..self.inner]);
            let gate = h.slice([0..b, 0..l, self.inner..self.inner * 2]);
            timed(&self.out, hidden * activation::gelu(gate))
        })
    }
}

#[derive(Debug)]
struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff: FeedForward,
}

impl BasicTransformerBlock {
    fn load(w: &WeightsView, dim: usize, context_dim: usize, heads: usize, device: &Device) -> Result<Self> {
        let head_dim = dim / heads;
        Ok(Self {
            norm1: layer_norm(w, "norm1", dim, 1e-5, device)?,
            attn1: Attention::load(&w.sub("attn1"), dim, dim, heads, head_dim, device)?,
            norm2: layer_norm(w, "norm2", dim, 1e-5, device)?,
            attn2: Attention::load(&w.sub("attn2"), dim, context_dim, heads, head_dim, device)?,
            norm3: layer_norm(w, "norm3", dim, 1e-5, device)?,
            ff: FeedForward::load(&w.sub("ff"), dim, device)?,
        })
    }

    fn forward(&self, x: Tensor<3>, context: Conditioning) -> Tensor<3> {
        let norm = |n: &LayerNorm, x: &Tensor<3>| profile::time(Section::Norm, || apply_layer_norm(n, x.clone()));
        let x = self.attn1.self_attention(norm(&self.norm1, &x)) + x;
        let x = self.attn2.cross_attention(norm(&self.norm2, &x), context) + x;
        self.ff.forward(norm(&self.norm3, &x)) + x
    }
}

/// Projection in and out of the token layout: a 1×1 convolution, or a linear layer
/// (`use_linear_projection`, applied after flattening).
#[derive(Debug)]
enum Projection {
    Conv(Conv2d),
    Linear(Linear),
}

#[derive(Debug)]
pub struct Transformer2DModel {
    norm: GroupNorm,
    proj_in: Projection,
    blocks: Vec<BasicTransformerBlock>,
    proj_out: Projection,
}

/// How a UNet configures its transformers.
#[derive(Debug, Clone, Copy)]
pub struct TransformerSettings {
    pub groups: usize,
    pub context_dim: usize,
    pub use_linear_projection: bool,
}

impl Transformer2DModel {
    pub fn load(w: &WeightsView, channels: usize, heads: usize, layers: usize, s: TransformerSettings, device: &Device) -> Result<Self> {
        // Token width: heads × (channels / heads), as diffusers computes it.
        let inner = heads * (channels / heads);
        let proj = |name: &str, c_in: usize, c_out: usize| -> Result<Projection> {
            Ok(if s.use_linear_projection {
                Projection::Linear(linear(w, name, c_in, c_out, true, device)?)
            } else {
                Projection::Conv(Conv2d::load(w, name, [c_in, c_out], 1, 1, 0, device)?)
            })
        };
        Ok(Self {
            norm: GroupNorm::load(w, "norm", s.groups, channels, 1e-6, device)?,
            proj_in: proj("proj_in", channels, inner)?,
            blocks: (0..layers)
                .map(|i| BasicTransformerBlock::load(&w.sub(&format!("transformer_blocks.{i}")), inner, s.context_dim, heads, device))
                .collect::<Result<_>>()?,
            proj_out: proj("proj_out", inner, channels)?,
        })
    }

    pub fn forward(&self, x: Tensor<4>, context: Conditioning) -> Tensor<4> {
        let [b, _, h, w] = x.dims();
        let to_tokens = |t: Tensor<4>| {
            let c = t.dims()[1];
            t.reshape([b, c, h * w]).swap_dims(1, 2)
        };
        let normed = self.norm.forward(x.clone());
        let mut tokens = match &self.proj_in {
            Projection::Conv(conv) => to_tokens(conv.forward(normed)),
            Projection::Linear(lin) => timed(lin, to_tokens(normed)),
        };
        for block in &self.blocks {
            tokens = block.forward(tokens, context);
        }
        let from_tokens = |t: Tensor<3>| {
            let c = t.dims()[2];
            t.swap_dims(1, 2).reshape([b, c, h, w])
        };
        let out = match &self.proj_out {
            Projection::Conv(conv) => conv.forward(from_tokens(tokens)),
            Projection::Linear(lin) => from_tokens(timed(lin, tokens)),
        };
        out + x
    }
}
