//! The adapter A on the style branch: `A(h) = h + W2 · act(W1 · LN(h))`. Training starts it with W2 = 0,
//! so that A begins as the identity; a bundle without an adapter uses the identity.
//!
//! Files: `config.json` (`hidden_size`, `adapter_dim`, optional `layer_norm_eps` = 1e-5 and
//! `hidden_act` = "gelu") and safetensors with `norm.{weight,bias}`, `fc1.{weight,bias}`, `fc2.{weight,bias}`
//! in PyTorch layout (tests/fixtures/fixtures_control.py writes one).

use burn::nn::{LayerNorm, Linear};
use burn::tensor::{Device, Tensor};

use crate::config::ConfigJson;
use crate::error::{Error, Result};
use crate::models::nn::{Activation, layer_norm, linear};
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

#[derive(Debug)]
pub struct Adapter {
    pub config: AdapterConfig,
    norm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl Adapter {
    pub fn load(config: &ConfigJson, weights: &SafeTensors, device: &Device) -> Result<Self> {
        let cfg = AdapterConfig::from_json(config)?;
        let w = WeightsView::new(weights, "");
        let (d, h) = (cfg.hidden_size, cfg.adapter_dim);
        Ok(Self {
            norm: layer_norm(&w, "norm", d, cfg.layer_norm_eps, device)?,
            fc1: linear(&w, "fc1", d, h, true, device)?,
            fc2: linear(&w, "fc2", h, d, true, device)?,
            config: cfg,
        })
    }


    /// [B, L, D] → [B, L, D].
    pub fn forward(&self, h: Tensor<3>) -> Result<Tensor<3>> {
        let d = h.dims()[2];
        if d != self.config.hidden_size {
            return Err(Error::invalid("adapter input", format!("width {d}, the adapter takes {}", self.config.hidden_size)));
        }
        let inner = self.config.hidden_act.forward(self.fc1.forward(self.norm.forward(h.clone())));
        Ok(h + self.fc2.forward(inner))
    }
}

impl crate::models::ModelFolder for Adapter {
    fn from_parts(config: &ConfigJson, weights: &SafeTensors, device: &Device) -> Result<Self> {
        Self::load(config, weights, device)
    }
}
