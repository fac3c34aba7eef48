//! Timestep embedding: diffusers' `Timesteps` (sinusoidal) and `TimestepEmbedding` (two linears).

use burn::nn::Linear;
use burn::tensor::{Device, Tensor, TensorData};

use crate::error::Result;
use crate::models::nn::{Activation, linear};
use crate::weights::WeightsView;

/// `get_timestep_embedding` with `max_period` 10000 and scale 1, computed on the host in f32 in the
/// same order as diffusers (the timestep is one number per batch row; nothing to gain on the GPU).
pub fn sinusoidal(timesteps: &[f32], dim: usize, flip_sin_to_cos: bool, freq_shift: f32, device: &Device) -> Tensor<2> {
    let half = dim / 2;
    let freqs: Vec<f32> = (0..half)
        .map(|i| (-(10000f32.ln()) * i as f32 / (half as f32 - freq_shift)).exp())
        .collect();
    let mut data = Vec::with_capacity(timesteps.len() * dim);
    for &t in timesteps {
        let args: Vec<f32> = freqs.iter().map(|f| t * f).collect();
        let (sin, cos): (Vec<f32>, Vec<f32>) = args.iter().map(|a| (a.sin(), a.cos())).unzip();
        let (first, second) = if flip_sin_to_cos { (cos, sin) } else { (sin, cos) };
        data.extend(first);
        data.extend(second);
        if dim % 2 == 1 {
            data.push(0.0);
        }
    }
    Tensor::from_data(TensorData::new(data, [timesteps.len(), dim]), device)
}

#[derive(Debug)]
pub struct TimestepEmbedding {
    linear_1: Linear,
    linear_2: Linear,
    act: Activation,
}

impl TimestepEmbedding {
    pub fn load(w: &WeightsView, d_in: usize, d_out: usize, act: Activation, device: &Device) -> Result<Self> {
        Ok(Self { linear_1: linear(w, "linear_1", d_in, d_out, true, device)?, linear_2: linear(w, "linear_2", d_out, d_out, true, device)?, act })
    }

    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.linear_2.forward(self.act.forward(self.linear_1.forward(x)))
    }
}
