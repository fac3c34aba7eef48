//! diffusers' `DPMSolverMultistepScheduler` with `algorithm_type = "dpmsolver++"` and the midpoint
//! solver, order 1 or 2 (DPM-Solver++ 2M), with or without Karras sigmas.

use burn::tensor::Tensor;

use super::{
    LINEAR_BETAS, Prediction, Scheduler, SchedulerConfig, StepOutput, TimestepSpacing, check_step_count, np_arange, np_interp, np_linspace,
    step_out_of_range, train_sigmas,
};
use crate::error::{Error, Result};

pub struct DpmPp2m {
    num_train_timesteps: usize,
    /// Indexed by training timestep (f32, as diffusers computes them).
    train_sigmas: Vec<f32>,
    spacing: TimestepSpacing,
    steps_offset: usize,
    prediction: Prediction,
    solver_order: usize,
    lower_order_final: bool,
    euler_at_final: bool,
    karras: bool,
    /// Karras bounds from the config (else the training range).
    sigma_min: Option<f64>,
    sigma_max: Option<f64>,
    /// The last sigma: the smallest training sigma (`final_sigmas_type = "sigma_min"`) or 0.
    final_sigma: f32,
    final_sigma_is_zero: bool,
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    sigmas_f64: Vec<f64>,
    /// The previous step's data prediction, for the second-order update.
    previous_x0: Option<Tensor<4>>,
    lower_order_nums: usize,
    next_step: usize,
}

impl DpmPp2m {
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        let c = config;
        let schedule = c.train_schedule(LINEAR_BETAS)?.with_finite_terminal_sigma();
        // diffusers maps the retired "deis" / "logrho" / "bh1" / "bh2" onto dpmsolver++ / midpoint.
        match c.algorithm_type.as_deref().unwrap_or("dpmsolver++") {
            "dpmsolver++" | "deis" => {}
            other => return Err(c.error("algorithm_type", format!("`{other}` is not supported (only dpmsolver++ is implemented)"))),
        }
        match c.solver_type.as_deref().unwrap_or("midpoint") {
            "midpoint" | "logrho" | "bh1" | "bh2" => {}
            other => return Err(c.error("solver_type", format!("`{other}` is not supported (only midpoint is implemented)"))),
        }
        let solver_order = c.solver_order.unwrap_or(2);
        if !(1..=2).contains(&solver_order) {
            return Err(c.error("solver_order", format!("{solver_order} is not supported (1 or 2 is implemented)")));
        }
        c.refuse_true("thresholding", c.thresholding, false)?;
        c.refuse_true("use_exponential_sigmas", c.use_exponential_sigmas, false)?;
        c.refuse_true("use_beta_sigmas", c.use_beta_sigmas, false)?;
        c.refuse_true("use_lu_lambdas", c.use_lu_lambdas, false)?;
        c.refuse_true("use_flow_sigmas", c.use_flow_sigmas, false)?;
        c.refuse_true("use_dynamic_shifting", c.use_dynamic_shifting, false)?;
        // Only the learned variances change the model output (diffusers drops its extra channels); DDPM's
        // `fixed_small` and the like, which a DDPM training config carries over, mean nothing here.
        if let Some(v) = c.variance_type.as_deref().filter(|v| matches!(*v, "learned" | "learned_range")) {
            return Err(c.error("variance_type", format!("`{v}` is not supported (learned variances are not implemented)")));
        }
        if let Some(l) = c.lambda_min_clipped.filter(|l| *l != f64::NEG_INFINITY) {
            return Err(c.error("lambda_min_clipped", format!("{l} is not supported (only -Infinity is implemented)")));
        }
        let final_sigma_is_zero = match c.final_sigmas_type.as_deref().unwrap_or("zero") {
            "zero" => true,
            "sigma_min" => false,
            other => return Err(c.error("final_sigmas_type", format!("`{other}` is not supported (expected zero or sigma_min)"))),
        };
        let train_sigmas = train_sigmas(&schedule.alphas_cumprod);
        Ok(Self {
            num_train_timesteps: schedule.num_train_timesteps,
            final_sigma: if final_sigma_is_zero { 0.0 } else { train_sigmas[0] },
            final_sigma_is_zero,
            train_sigmas,
            spacing: c.spacing("linspace")?,
            steps_offset: c.steps_offset()?,
            prediction: c.prediction()?,
            solver_order,
            lower_order_final: c.lower_order_final.unwrap_or(true),
            euler_at_final: c.euler_at_final.unwrap_or(false),
            karras: c.use_karras_sigmas.unwrap_or(false),
            sigma_min: c.sigma_min,
            sigma_max: c.sigma_max,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
            sigmas_f64: Vec::new(),
            previous_x0: None,
            lower_order_nums: 0,
            next_step: 0,
        })
    }

    /// diffusers' `_sigma_to_t`: the fractional training timestep of `sigma`, interpolated in log sigma
    /// (numpy: the log sigmas are f32, the query f64).
    fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
        let log_sigma = sigma.max(1e-10).ln();
        let low_idx = log_sigmas.iter().rposition(|&l| log_sigma - l as f64 >= 0.0).unwrap_or(0).min(log_sigmas.len() - 2);
        let (low, high) = (log_sigmas[low_idx], log_sigmas[low_idx + 1]);
        let w = ((low as f64 - log_sigma) / (low - high) as f64).clamp(0.0, 1.0);
        (1.0 - w) * low_idx as f64 + w * (low_idx + 1) as f64
    }

    /// (alpha_t, sigma_t, lambda_t) of a sigma, in f32 as diffusers computes them on 0-d tensors.
    fn alpha_sigma_lambda(sigma: f32) -> (f32, f32, f32) {
        let alpha_t = 1.0 / (sigma * sigma + 1.0).sqrt();
        let sigma_t = sigma * alpha_t;
        (alpha_t, sigma_t, alpha_t.ln() - sigma_t.ln())
    }
}

impl Scheduler for DpmPp2m {
    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        let n_train = self.num_train_timesteps;
        check_step_count(n, n_train)?;
        // lambda_min_clipped = -inf clips nothing: the last timestep is the full range.
        let last_timestep = n_train;
        let mut timesteps: Vec<f64> = match self.spacing {
            TimestepSpacing::Linspace => {
                let mut t: Vec<f64> = np_linspace(0.0, (last_timestep - 1) as f64, n + 1, true).into_iter().map(f64::round_ties_even).collect();
                t.reverse();
                t.pop();
                t
            }
            TimestepSpacing::Leading => {
                let ratio = last_timestep / (n + 1);
                (1..=n).rev().map(|i| (i * ratio + self.steps_offset) as f64).collect()
            }
            TimestepSpacing::Trailing => np_arange(last_timestep as f64, 0.0, -(n_train as f64 / n as f64))
                .into_iter()
                .map(|t| t.round_ties_even() - 1.0)
                .collect(),
        };
        if !self.karras {
            super::check_spaced_timesteps(n, &timesteps, n_train)?;
        }
        let mut sigmas: Vec<f32> = if self.karras {
            let sigma_min = self.sigma_min.unwrap_or(self.train_sigmas[0] as f64);
            let sigma_max = self.sigma_max.unwrap_or(self.train_sigmas[n_train - 1] as f64);
            let rho = 7.0;
            let (min_inv_rho, max_inv_rho) = (sigma_min.powf(1.0 / rho), sigma_max.powf(1.0 / rho));
            let karras: Vec<f64> =
                np_linspace(0.0, 1.0, n, true).into_iter().map(|ramp| (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)).powf(rho)).collect();
            let log_sigmas: Vec<f32> = self.train_sigmas.iter().map(|s| s.ln()).collect();
            timesteps = karras.iter().map(|&s| Self::sigma_to_t(s, &log_sigmas).round_ties_even()).collect();
            karras.into_iter().map(|s| s as f32).collect()
        } else {
            timesteps.iter().map(|&t| np_interp(t, &self.train_sigmas) as f32).collect()
        };
        sigmas.push(self.final_sigma);
        self.sigmas_f64 = sigmas.iter().map(|&s| s as f64).collect();
        self.sigmas = sigmas;
        self.timesteps = timesteps;
        self.previous_x0 = None;
        self.lower_order_nums = 0;
        self.next_step = 0;
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn sigmas(&self) -> &[f64] {
        &self.sigmas_f64
    }

    fn needs_noise(&self) -> bool {
        false
    }

    fn step(&mut self, model_output: Tensor<4>, step_index: usize, sample: Tensor<4>, _noise: Option<Tensor<4>>) -> Result<StepOutput> {
        let steps = self.timesteps.len();
        if step_index >= steps {
            return Err(step_out_of_range(step_index, steps));
        }
        // A multistep solver carries the previous prediction: steps go in order; step 0 starts afresh.
        if step_index == 0 {
            self.previous_x0 = None;
            self.lower_order_nums = 0;
        } else if step_index != self.next_step {
            return Err(Error::invalid(
                "step_index",
                format!("DPM-Solver++ steps must be taken in order: expected step {}, got {step_index}", self.next_step),
            ));
        }
        let lower_order_final = step_index == steps - 1
            && (self.euler_at_final || (self.lower_order_final && steps < 15) || self.final_sigma_is_zero);

        let (alpha_s0, sigma_s0, lambda_s0) = Self::alpha_sigma_lambda(self.sigmas[step_index]);
        let (alpha_t, sigma_t, lambda_t) = Self::alpha_sigma_lambda(self.sigmas[step_index + 1]);
        // The data prediction x0 (dpmsolver++ works on it rather than on the noise).
        let x0 = match self.prediction {
            Prediction::Epsilon => (sample.clone() - model_output.mul_scalar(sigma_s0)).div_scalar(alpha_s0),
            Prediction::VPrediction => sample.clone().mul_scalar(alpha_s0) - model_output.mul_scalar(sigma_s0),
        };
        // With a final sigma of 0, lambda_t and h are +inf and exp(-h) = 0: the update returns x0.
        let h = lambda_t - lambda_s0;
        let coefficient = alpha_t * ((-h).exp() - 1.0);
        let first_order = self.solver_order == 1 || self.lower_order_nums < 1 || lower_order_final;
        let prev_sample = match (&self.previous_x0, first_order) {
            (Some(previous), false) => {
                let (_, _, lambda_s1) = Self::alpha_sigma_lambda(self.sigmas[step_index - 1]);
                let r0 = (lambda_s0 - lambda_s1) / h;
                let d1 = (x0.clone() - previous.clone()).mul_scalar(1.0 / r0);
                sample.mul_scalar(sigma_t / sigma_s0) - x0.clone().mul_scalar(coefficient) - d1.mul_scalar(0.5 * coefficient)
            }
            _ => sample.mul_scalar(sigma_t / sigma_s0) - x0.clone().mul_scalar(coefficient),
        };
        self.previous_x0 = Some(x0.clone());
        self.lower_order_nums = (self.lower_order_nums + 1).min(self.solver_order);
        self.next_step = step_index + 1;
        Ok(StepOutput { prev_sample, denoised: x0 })
    }
}
