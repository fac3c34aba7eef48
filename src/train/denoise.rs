//! L_den, the denoising term: the generator's own training objective, run through its frozen UNet with the
//! decoupled cross-attention, so that gradients reach f_c, f_s and A from what the UNet draws. DESIGN §2
//! has no such term; docs/finetune.md says why it was added (the UNet reads style from context positions
//! that the CLIP-space losses never touch) and docs/control-results.md what it gave.
//!
//! ```text
//! z0  = (TAESD_enc(x) − shift_factor) · scaling_factor      per labelled picture with a prompt p, once
//! t ~ U{0, …, T−1},  ε ~ N(0, I)                            per step, from the run's generator
//! z_t = √ᾱ_t · z0 + √(1 − ᾱ_t) · ε                         diffusers' add_noise
//! ε̂  = UNet(z_t, t; λ_c · Attn(c_c) + λ_s · Attn(c_s))     c_c = f_c(p), c_s = A(f_s(p)), (λ_c, λ_s) = den_weights
//! L_den = mean over every element of (ε̂ − target)²         target = ε, or v = √ᾱ_t ε − √(1 − ᾱ_t) z0
//! ```

use burn::tensor::{Tensor, TensorData};

use crate::error::{Error, Result};
use crate::models::attention::ControlContext;
use crate::models::unet::UNet2DConditionModel;
use crate::schedulers::NoiseSchedule;

/// The frozen generator parts L_den runs through.
pub struct Denoiser {
    pub unet: UNet2DConditionModel,
    pub schedule: NoiseSchedule,
}

/// The pictures as L_den reads them, prepared once: scaled latents and prompt tokens, per picture.
#[derive(Debug, Clone, PartialEq)]
pub struct DenoiseData {
    /// [N × C × h × w], row-major.
    pub latents: Vec<f32>,
    /// [C, h, w] of one picture's latents.
    pub latent_shape: [usize; 3],
    /// Each picture's prompt (77 token ids), if labels.jsonl gives it one.
    pub prompts: Vec<Option<Vec<u32>>>,
}

impl DenoiseData {
    pub fn latent_len(&self) -> usize {
        self.latent_shape.iter().product()
    }

    /// Pictures that have a prompt.
    pub fn usable(&self) -> Vec<usize> {
        (0..self.prompts.len()).filter(|&i| self.prompts[i].is_some()).collect()
    }
}

/// One step's L_den inputs: prompts, noisy latents [B, C, h, w] at their timesteps, and the UNet's target.
#[derive(Debug, Clone)]
pub struct DenoiseBatch {
    pub prompts: Vec<Vec<u32>>,
    pub noisy: Tensor<4>,
    pub timesteps: Vec<f32>,
    pub target: Tensor<4>,
}

impl DenoiseBatch {
    /// Noises pictures `pictures` of `data` at `timesteps` with `noise` (one latent's worth per picture).
    pub fn noised(data: &DenoiseData, schedule: &NoiseSchedule, pictures: &[usize], timesteps: &[usize], noise: &[f32], device: &burn::tensor::Device) -> Self {
        let n = data.latent_len();
        let (mut noisy, mut target) = (Vec::with_capacity(pictures.len() * n), Vec::with_capacity(pictures.len() * n));
        for (row, (&i, &t)) in pictures.iter().zip(timesteps).enumerate() {
            let (x0, e) = (&data.latents[i * n..(i + 1) * n], &noise[row * n..(row + 1) * n]);
            noisy.extend(schedule.add_noise(x0, e, t));
            target.extend(schedule.target(x0, e, t));
        }
        let [c, h, w] = data.latent_shape;
        let shape = [pictures.len(), c, h, w];
        Self {
            prompts: pictures.iter().map(|&i| data.prompts[i].clone().expect("pictures with a prompt")).collect(),
            noisy: Tensor::from_data(TensorData::new(noisy, shape), device),
            timesteps: timesteps.iter().map(|&t| t as f32).collect(),
            target: Tensor::from_data(TensorData::new(target, shape), device),
        }
    }
}

/// L_den from the contexts c_c [B, 77, D] and c_s [B, 77, D] of the batch's prompts.
pub fn denoise_loss(unet: &UNet2DConditionModel, batch: &DenoiseBatch, category: Tensor<3>, style: Tensor<3>, weights: [f32; 2]) -> Result<Tensor<1>> {
    let b = batch.prompts.len();
    if b == 0 {
        return Err(Error::invalid("L_den", "no pictures in the step's batch"));
    }
    let control = ControlContext::new(category, style, &vec![(weights[0], weights[1]); b])?;
    let predicted = unet.forward_control(batch.noisy.clone(), &batch.timesteps, &control)?;
    let diff = predicted - batch.target.clone();
    Ok((diff.clone() * diff).mean())
}
