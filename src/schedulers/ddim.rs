//! diffusers' `DDIMScheduler` with eta = 0 (deterministic), as its pipelines call it.

use burn::tensor::Tensor;

use super::{
    LINEAR_BETAS, Prediction, Scheduler, SchedulerConfig, StepOutput, TimestepSpacing, check_step_count, refuse_epsilon_at_zero_snr, spaced_timesteps,
    step_out_of_range,
};
use crate::error::Result;

pub struct Ddim {
    /// The config file, for errors.
    file: String,
    num_train_timesteps: usize,
    alphas_cumprod: Vec<f32>,
    /// The "previous" alpha product after the last step: 1, or alphas_cumprod[0] (`set_alpha_to_one`).
    final_alpha_cumprod: f32,
    spacing: TimestepSpacing,
    steps_offset: usize,
    prediction: Prediction,
    clip: Option<f32>,
    num_inference_steps: usize,
    timesteps: Vec<f64>,
}

impl Ddim {
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        let schedule = config.train_schedule(LINEAR_BETAS)?;
        config.refuse_true("thresholding", config.thresholding, false)?;
        let final_alpha_cumprod = if config.set_alpha_to_one.unwrap_or(true) { 1.0 } else { schedule.alphas_cumprod[0] };
        Ok(Self {
            file: config.file.clone(),
            num_train_timesteps: schedule.num_train_timesteps,
            alphas_cumprod: schedule.alphas_cumprod,
            final_alpha_cumprod,
            spacing: config.spacing("leading")?,
            steps_offset: config.steps_offset()?,
            prediction: config.prediction()?,
            clip: config.clip(true)?,
            num_inference_steps: 0,
            timesteps: Vec::new(),
        })
    }
}

impl Scheduler for Ddim {
    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        let n_train = self.num_train_timesteps;
        check_step_count(n, n_train)?;
        let timesteps: Vec<f64> = match self.spacing {
            TimestepSpacing::Linspace => spaced_timesteps(self.spacing, n_train, n, 0).into_iter().map(f64::round_ties_even).collect(),
            spacing => spaced_timesteps(spacing, n_train, n, self.steps_offset),
        };
        // `leading` with `steps_offset` at the full step count reaches timestep N, which diffusers'
        // step fails on (IndexError); refuse it up front.
        super::check_spaced_timesteps(n, &timesteps, n_train)?;
        refuse_epsilon_at_zero_snr(&self.file, self.prediction, &self.alphas_cumprod, &timesteps)?;
        self.num_inference_steps = n;
        self.timesteps = timesteps;
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn needs_noise(&self) -> bool {
        false
    }

    fn step(&mut self, model_output: Tensor<4>, step_index: usize, sample: Tensor<4>, _noise: Option<Tensor<4>>) -> Result<StepOutput> {
        let &t = self.timesteps.get(step_index).ok_or_else(|| step_out_of_range(step_index, self.timesteps.len()))?;
        let t = t as usize;
        // diffusers steps back by a fixed N // n whatever the spacing (with linspace that is not the
        // next timestep of the list).
        let prev_t = t.checked_sub(self.num_train_timesteps / self.num_inference_steps);
        let alpha_prod_t = self.alphas_cumprod[t];
        let alpha_prod_t_prev = prev_t.map_or(self.final_alpha_cumprod, |p| self.alphas_cumprod[p]);
        let beta_prod_t = 1.0 - alpha_prod_t;

        let (pred_original_sample, pred_epsilon) = match self.prediction {
            Prediction::Epsilon => {
                let x0 = (sample - model_output.clone().mul_scalar(beta_prod_t.sqrt())).div_scalar(alpha_prod_t.sqrt());
                (x0, model_output)
            }
            Prediction::VPrediction => {
                let x0 = sample.clone().mul_scalar(alpha_prod_t.sqrt()) - model_output.clone().mul_scalar(beta_prod_t.sqrt());
                let eps = model_output.mul_scalar(alpha_prod_t.sqrt()) + sample.mul_scalar(beta_prod_t.sqrt());
                (x0, eps)
            }
        };
        let pred_original_sample = match self.clip {
            Some(range) => pred_original_sample.clamp(-range, range),
            None => pred_original_sample,
        };
        // eta = 0: no variance term, so the direction keeps all of 1 - alpha_prod_t_prev.
        let direction = pred_epsilon.mul_scalar((1.0 - alpha_prod_t_prev).sqrt());
        let prev_sample = pred_original_sample.clone().mul_scalar(alpha_prod_t_prev.sqrt()) + direction;
        Ok(StepOutput { prev_sample, denoised: pred_original_sample })
    }
}
