//! diffusers' `LCMScheduler` (latent consistency models): each step predicts the denoised sample and,
//! except on the last step, re-noises it to the next timestep with the caller's noise.
//!
//! Like diffusers, LCM ignores `timestep_spacing` and `steps_offset`: its timesteps are a subset of the
//! `original_inference_steps` schedule it was distilled on.

use burn::tensor::Tensor;

use super::{BetaDefaults, Prediction, Scheduler, SchedulerConfig, StepOutput, missing_noise, refuse_epsilon_at_zero_snr, step_out_of_range};
use crate::error::{Error, Result};

/// LCM's defaults are Stable Diffusion's betas.
pub(super) const SD_BETAS: BetaDefaults = BetaDefaults { start: 0.00085, end: 0.012, schedule: "scaled_linear" };

pub struct Lcm {
    /// The config file, for errors.
    file: String,
    num_train_timesteps: usize,
    alphas_cumprod: Vec<f32>,
    original_inference_steps: usize,
    timestep_scaling: f32,
    prediction: Prediction,
    clip: Option<f32>,
    timesteps: Vec<f64>,
}

impl Lcm {
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        let schedule = config.train_schedule(SD_BETAS)?;
        config.refuse_true("thresholding", config.thresholding, false)?;
        // set_alpha_to_one only matters for a timestep below 0, which LCM's schedule never reaches.
        let original_inference_steps = config.original_inference_steps.unwrap_or(50);
        if original_inference_steps == 0 || original_inference_steps > schedule.num_train_timesteps {
            return Err(config.error(
                "original_inference_steps",
                format!("must be between 1 and num_train_timesteps ({}), found {original_inference_steps}", schedule.num_train_timesteps),
            ));
        }
        Ok(Self {
            file: config.file.clone(),
            num_train_timesteps: schedule.num_train_timesteps,
            alphas_cumprod: schedule.alphas_cumprod,
            original_inference_steps,
            timestep_scaling: config.timestep_scaling.unwrap_or(10.0) as f32,
            prediction: config.prediction()?,
            clip: config.clip(false)?,
            timesteps: Vec::new(),
        })
    }

    /// c_skip and c_out of the consistency boundary condition, in f32 as diffusers computes them on the
    /// timestep tensor.
    fn boundary_scalings(&self, timestep: f64) -> (f32, f32) {
        const SIGMA_DATA_SQUARED: f32 = 0.25;
        let scaled = timestep as f32 * self.timestep_scaling;
        let c_skip = SIGMA_DATA_SQUARED / (scaled * scaled + SIGMA_DATA_SQUARED);
        let c_out = scaled / (scaled * scaled + SIGMA_DATA_SQUARED).sqrt();
        (c_skip, c_out)
    }
}

impl Scheduler for Lcm {
    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        let original_steps = self.original_inference_steps;
        if n == 0 || n > original_steps {
            return Err(Error::invalid(
                "num_inference_steps",
                format!("{n} is not between 1 and the {original_steps} original_inference_steps LCM was distilled with"),
            ));
        }
        let k = self.num_train_timesteps / original_steps;
        // The distillation schedule k-1, 2k-1, ..., descending; take n evenly spaced (floored) entries.
        let origin: Vec<usize> = (1..=original_steps).rev().map(|i| i * k - 1).collect();
        let step = origin.len() as f64 / n as f64;
        let timesteps: Vec<f64> = (0..n).map(|i| origin[(i as f64 * step).floor() as usize] as f64).collect();
        refuse_epsilon_at_zero_snr(&self.file, self.prediction, &self.alphas_cumprod, &timesteps)?;
        self.timesteps = timesteps;
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn needs_noise(&self) -> bool {
        true
    }

    fn step(&mut self, model_output: Tensor<4>, step_index: usize, sample: Tensor<4>, noise: Option<Tensor<4>>) -> Result<StepOutput> {
        let &t = self.timesteps.get(step_index).ok_or_else(|| step_out_of_range(step_index, self.timesteps.len()))?;
        let alpha_prod_t = self.alphas_cumprod[t as usize];
        let beta_prod_t = 1.0 - alpha_prod_t;
        let (c_skip, c_out) = self.boundary_scalings(t);
        let pred_original_sample = match self.prediction {
            Prediction::Epsilon => (sample.clone() - model_output.mul_scalar(beta_prod_t.sqrt())).div_scalar(alpha_prod_t.sqrt()),
            Prediction::VPrediction => sample.clone().mul_scalar(alpha_prod_t.sqrt()) - model_output.mul_scalar(beta_prod_t.sqrt()),
        };
        let pred_original_sample = match self.clip {
            Some(range) => pred_original_sample.clamp(-range, range),
            None => pred_original_sample,
        };
        let denoised = pred_original_sample.mul_scalar(c_out) + sample.mul_scalar(c_skip);
        let Some(&prev_t) = self.timesteps.get(step_index + 1) else {
            return Ok(StepOutput { prev_sample: denoised.clone(), denoised });
        };
        let alpha_prod_t_prev = self.alphas_cumprod[prev_t as usize];
        let beta_prod_t_prev = 1.0 - alpha_prod_t_prev;
        let noise = noise.ok_or_else(|| missing_noise(step_index))?;
        Ok(StepOutput { prev_sample: denoised.clone().mul_scalar(alpha_prod_t_prev.sqrt()) + noise.mul_scalar(beta_prod_t_prev.sqrt()), denoised })
    }
}
