//! Decoupled cross-attention (DESIGN.md §2): each cross-attention layer of the frozen UNet attends to the
//! category context and to the style context separately and mixes the two results with the user's weights,
//! before its output projection:
//!
//! ```text
//! λ_c · Attn(q, k_c, v_c) + λ_s · Attn(q, k_s, v_s),   k_· = W_k c_·,  v_· = W_v c_·
//! ```
//!
//! The weights are per batch row, [B, 2], so that the unconditional half of a classifier-free-guidance
//! batch runs ordinary attention on E(negative prompt) with weights (1, 0) in the same pass.
//! [`decoupled_attention_reference`] is the formula in tensor ops (the CPU backend runs it, and it is what
//! the fused WGSL kernel in src/kernels/ is tested against); [`decoupled_attention`] picks the kernel on
//! wgpu devices.

use burn::tensor::{Tensor, TensorData};

use crate::error::{Error, Result};
use crate::models::nn::scaled_dot_product_attention;

/// What the UNet's cross-attention layers attend to under Control-CLIP: category and style contexts
/// ([B, L_c, D] and [B, L_s, D]) and per-row weights [B, 2] = (λ_c, λ_s).
#[derive(Debug, Clone)]
pub struct ControlContext {
    pub category: Tensor<3>,
    pub style: Tensor<3>,
    pub weights: Tensor<2>,
}

impl ControlContext {
    /// Builds the context from per-row weights, checking that the shapes agree.
    pub fn new(category: Tensor<3>, style: Tensor<3>, weights: &[(f32, f32)]) -> Result<Self> {
        let [b, _, d] = category.dims();
        let [bs, _, ds] = style.dims();
        if bs != b || ds != d {
            return Err(Error::invalid("style context", format!("shape {:?} does not fit the category context {:?}", style.dims(), category.dims())));
        }
        if weights.len() != b {
            return Err(Error::invalid("control weights", format!("{} weight pairs for a batch of {b}", weights.len())));
        }
        if let Some((c, s)) = weights.iter().find(|(c, s)| !c.is_finite() || !s.is_finite()) {
            return Err(Error::invalid("control weights", format!("({c}, {s}) is not a pair of finite numbers")));
        }
        let flat: Vec<f32> = weights.iter().flat_map(|&(c, s)| [c, s]).collect();
        let weights = Tensor::from_data(TensorData::new(flat, [b, 2]), &category.device());
        Ok(Self { category, style, weights })
    }

    pub fn batch(&self) -> usize {
        self.category.dims()[0]
    }

    pub fn width(&self) -> usize {
        self.category.dims()[2]
    }
}

/// The formula in tensor ops: two attentions and their weighted sum. q [B, Lq, H·d], k_·/v_· [B, L_·, H·d],
/// weights [B, 2].
pub fn decoupled_attention_reference(
    q: Tensor<3>,
    k_c: Tensor<3>,
    v_c: Tensor<3>,
    k_s: Tensor<3>,
    v_s: Tensor<3>,
    weights: Tensor<2>,
    heads: usize,
) -> Tensor<3> {
    let b = weights.dims()[0];
    let weights = crate::models::nn::cast_to(weights, q.dtype());
    let w_c = weights.clone().slice([0..b, 0..1]).reshape([b, 1, 1]);
    let w_s = weights.slice([0..b, 1..2]).reshape([b, 1, 1]);
    scaled_dot_product_attention(q.clone(), k_c, v_c, heads, None) * w_c + scaled_dot_product_attention(q, k_s, v_s, heads, None) * w_s
}

/// Decoupled cross-attention on whatever backend `q` lives on: the fused WGSL kernel
/// (shaders/decoupled_attention.wgsl) on wgpu devices, the reference elsewhere, and the reference also
/// for a layout the kernel declines (a head dim too large for its workgroup memory).
pub fn decoupled_attention(
    q: Tensor<3>,
    k_c: Tensor<3>,
    v_c: Tensor<3>,
    k_s: Tensor<3>,
    v_s: Tensor<3>,
    weights: Tensor<2>,
    heads: usize,
) -> Tensor<3> {
    // Every operand must be untracked: under fine-tuning's denoising term the image tokens are plain and the
    // contexts carry gradients.
    let tracked = [&q, &k_c, &v_c, &k_s, &v_s].iter().any(|t| t.is_autodiff()) || weights.is_autodiff();
    if !tracked && crate::kernels::fused_attention_available(&q.device()) {
        let fused = crate::kernels::decoupled_attention_fused(
            q.clone(),
            k_c.clone(),
            v_c.clone(),
            k_s.clone(),
            v_s.clone(),
            weights.clone(),
            heads,
        );
        if let Ok(out) = fused {
            return out;
        }
    }
    decoupled_attention_reference(q, k_c, v_c, k_s, v_s, weights, heads)
}
