//! The adapter A on the style branch: `A(h) = h + W2 · act(W1 · LN(h))`. Training starts it with W2 = 0,
//! so that A begins as the identity; a bundle without an adapter uses the identity.
//!
//! Files: `config.json` (`hidden_size`, `adapter_dim`, optional `layer_norm_eps` = 1e-5 and
//! `hidden_act` = "gelu") and safetensors with `norm.{weight,bias}`, `fc1.{weight,bias}`, `fc2.{weight,bias}`
//! in PyTorch layout (tests/fixtures/fixtures_control.py writes one).

use burn::tensor::{Device, FloatDType, Tensor};

use crate::config::ConfigJson;
use crate::error::{Error, Result};
use crate::device::cast_to;
use crate::models::nn::{Activation, in_f32};
use crate::weights::{SafeTensors, WeightsView};

#[derive(Debug, Clone, PartialEq)]
pub struct AdapterConfig {
    pub hidden_size: usize,
    pub adapter_dim: usize,
    pub layer_norm_eps: f64,
    pub hidden_act: Activation,
}

impl AdapterConfig {
    pub fn from_json(c: &ConfigJson) -> Result<Self> {
        Ok(Self {
            hidden_size: c.positive_usize("hidden_size")?,
            adapter_dim: c.positive_usize("adapter_dim")?,
            layer_norm_eps: c.f64_or("layer_norm_eps", 1e-5)?,
            hidden_act: Activation::parse(c.str_or("hidden_act", "gelu")?, &c.file, "hidden_act")?,
        })
    }
}

/// A's weights as tensors: `fc1_t` and `fc2_t` are the transposes of PyTorch's `fc1.weight` [h, d] and
/// `fc2.weight` [d, h] (so the products are plain matmuls). Kept as bare tensors so that fine-tuning can
/// build the same adapter from autodiff leaves.
#[derive(Debug, Clone)]
pub struct Adapter {
    pub config: AdapterConfig,
    pub norm_weight: Tensor<1>,
    pub norm_bias: Tensor<1>,
    pub fc1_t: Tensor<2>,
    pub fc1_bias: Tensor<1>,
    pub fc2_t: Tensor<2>,
    pub fc2_bias: Tensor<1>,
}

impl Adapter {
    pub fn load(config: &ConfigJson, weights: &SafeTensors, device: &Device) -> Result<Self> {
        Self::load_in(config, weights, device, FloatDType::F32)
    }

    /// [`Self::load`] with the weights in `dtype` (the norm's parameters stay f32, as its statistics).
    pub fn load_in(config: &ConfigJson, weights: &SafeTensors, device: &Device, dtype: FloatDType) -> Result<Self> {
        let cfg = AdapterConfig::from_json(config)?;
        let w = WeightsView::new(weights, "").in_dtype(dtype);
        let (d, h) = (cfg.hidden_size, cfg.adapter_dim);
        Ok(Self {
            norm_weight: w.tensor_f32("norm.weight", [d], device)?,
            norm_bias: w.tensor_f32("norm.bias", [d], device)?,
            fc1_t: w.tensor::<2>("fc1.weight", [h, d], device)?.transpose(),
            fc1_bias: w.tensor("fc1.bias", [h], device)?,
            fc2_t: w.tensor::<2>("fc2.weight", [d, h], device)?.transpose(),
            fc2_bias: w.tensor("fc2.bias", [d], device)?,
            config: cfg,
        })
    }

    /// [B, L, D] → [B, L, D]: `h + fc2(act(fc1(LN(h))))`.
    pub fn forward(&self, h: Tensor<3>) -> Result<Tensor<3>> {
        let d = h.dims()[2];
        if d != self.config.hidden_size {
            return Err(Error::invalid("adapter input", format!("width {d}, the adapter takes {}", self.config.hidden_size)));
        }
        // E's context in the pipeline's precision may meet an adapter read in another (from a folder).
        let h = cast_to(h, self.fc1_t.dtype());
        let normed = in_f32(h.clone(), |h| {
            layer_norm_values(h, self.config.layer_norm_eps) * self.norm_weight.clone().unsqueeze::<3>() + self.norm_bias.clone().unsqueeze::<3>()
        });
        let inner = self.config.hidden_act.forward(normed.matmul(self.fc1_t.clone().unsqueeze::<3>()) + self.fc1_bias.clone().unsqueeze::<3>());
        Ok(h + inner.matmul(self.fc2_t.clone().unsqueeze::<3>()) + self.fc2_bias.clone().unsqueeze::<3>())
    }
}

/// (x − mean) / sqrt(var + eps) over the last dimension (biased variance, as `nn.LayerNorm`).
fn layer_norm_values(x: Tensor<3>, eps: f64) -> Tensor<3> {
    let centred = x.clone() - x.mean_dim(2);
    let var = (centred.clone() * centred.clone()).mean_dim(2);
    centred / (var + eps).sqrt()
}

impl crate::models::ModelFolder for Adapter {
    fn from_parts(config: &ConfigJson, weights: &SafeTensors, device: &Device) -> Result<Self> {
        Self::load(config, weights, device)
    }

    fn from_parts_in(config: &ConfigJson, weights: &SafeTensors, device: &Device, dtype: FloatDType) -> Result<Self> {
        Self::load_in(config, weights, device, dtype)
    }
}
