//! diffusers' `EulerAncestralDiscreteScheduler`: an Euler step to `sigma_down` plus fresh noise of
//! scale `sigma_up`. The noise is the caller's (the pipeline's seeded generator, or a reference's).

use burn::tensor::Tensor;

use super::{
    LINEAR_BETAS, Prediction, Scheduler, SchedulerConfig, StepOutput, TimestepSpacing, check_step_count, missing_noise, np_interp, spaced_timesteps,
    step_out_of_range, train_sigmas,
};
use crate::error::Result;

pub struct EulerAncestral {
    num_train_timesteps: usize,
    /// Indexed by training timestep.
    train_sigmas: Vec<f32>,
    spacing: TimestepSpacing,
    steps_offset: usize,
    prediction: Prediction,
    timesteps: Vec<f64>,
    /// f32 as diffusers keeps them; `sigmas_f64` is the same values for the trait.
    sigmas: Vec<f32>,
    sigmas_f64: Vec<f64>,
}

impl EulerAncestral {
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        let schedule = config.train_schedule(LINEAR_BETAS)?.with_finite_terminal_sigma();
        Ok(Self {
            num_train_timesteps: schedule.num_train_timesteps,
            train_sigmas: train_sigmas(&schedule.alphas_cumprod),
            spacing: config.spacing("linspace")?,
            steps_offset: config.steps_offset()?,
            prediction: config.prediction()?,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
            sigmas_f64: Vec::new(),
        })
    }

    /// sqrt(sigma² + 1) in f32, as PyTorch computes it on a 0-d tensor.
    fn input_scale(sigma: f32) -> f32 {
        (sigma * sigma + 1.0).sqrt()
    }
}

impl Scheduler for EulerAncestral {
    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        check_step_count(n, self.num_train_timesteps)?;
        // diffusers keeps these timesteps as f32 (fractional with linspace).
        let timesteps: Vec<f64> =
            spaced_timesteps(self.spacing, self.num_train_timesteps, n, self.steps_offset).into_iter().map(|t| t as f32 as f64).collect();
        let mut sigmas: Vec<f32> = timesteps.iter().map(|&t| np_interp(t, &self.train_sigmas) as f32).collect();
        sigmas.push(0.0);
        self.sigmas_f64 = sigmas.iter().map(|&s| s as f64).collect();
        self.sigmas = sigmas;
        self.timesteps = timesteps;
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn sigmas(&self) -> &[f64] {
        &self.sigmas_f64
    }

    fn init_noise_sigma(&self) -> f64 {
        let max = self.sigmas.iter().copied().fold(0f32, f32::max);
        match self.spacing {
            TimestepSpacing::Linspace | TimestepSpacing::Trailing => max as f64,
            TimestepSpacing::Leading => Self::input_scale(max) as f64,
        }
    }

    fn scale_model_input(&self, sample: Tensor<4>, step_index: usize) -> Tensor<4> {
        match self.sigmas.get(step_index) {
            Some(&sigma) => sample.div_scalar(Self::input_scale(sigma)),
            None => sample,
        }
    }

    fn needs_noise(&self) -> bool {
        true
    }

    fn step(&mut self, model_output: Tensor<4>, step_index: usize, sample: Tensor<4>, noise: Option<Tensor<4>>) -> Result<StepOutput> {
        if step_index >= self.timesteps.len() {
            return Err(step_out_of_range(step_index, self.timesteps.len()));
        }
        let (sigma, sigma_to) = (self.sigmas[step_index], self.sigmas[step_index + 1]);
        let pred_original_sample = match self.prediction {
            Prediction::Epsilon => sample.clone() - model_output.mul_scalar(sigma),
            Prediction::VPrediction => {
                model_output.mul_scalar(-sigma / Self::input_scale(sigma)) + sample.clone().div_scalar(sigma * sigma + 1.0)
            }
        };
        let sigma_up = (sigma_to * sigma_to * (sigma * sigma - sigma_to * sigma_to) / (sigma * sigma)).sqrt();
        let sigma_down = (sigma_to * sigma_to - sigma_up * sigma_up).sqrt();
        let derivative = (sample.clone() - pred_original_sample.clone()).div_scalar(sigma);
        let prev_sample = sample + derivative.mul_scalar(sigma_down - sigma);
        // On the last step sigma_up is 0: no noise to add.
        if sigma_up == 0.0 {
            return Ok(StepOutput { prev_sample, denoised: pred_original_sample });
        }
        let noise = noise.ok_or_else(|| missing_noise(step_index))?;
        Ok(StepOutput { prev_sample: prev_sample + noise.mul_scalar(sigma_up), denoised: pred_original_sample })
    }
}
