//! Diffusion schedulers with diffusers 0.42.1's timesteps and step math: DDIM (eta = 0), Euler ancestral,
//! DPM-Solver++ 2M (with or without Karras sigmas) and LCM. See docs/schedulers.md.
//!
//! Precision follows diffusers so that results agree to a few f32 ulps: the noise schedule and the
//! per-step scalars are computed on the host, in f32 with PyTorch's operations where diffusers uses f32
//! tensors and in f64 where it uses numpy; the scalars then scale the latents as burn scalar ops in
//! diffusers' order, so a step runs on the device without read-backs.

mod ddim;
mod dpmpp_2m;
mod euler_ancestral;
mod lcm;

use std::str::FromStr;

use burn::tensor::Tensor;

use crate::config::ConfigJson;
use crate::error::{Error, Result};

pub use ddim::Ddim;
pub use dpmpp_2m::DpmPp2m;
pub use euler_ancestral::EulerAncestral;
pub use lcm::Lcm;

/// A sampler in diffusers' spirit: `set_timesteps`, then for each step `scale_model_input`, the model,
/// and `step`. Step indices count from 0 in the order of `timesteps()`.
pub trait Scheduler {
    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<()>;
    /// The model's timestep input for each step.
    fn timesteps(&self) -> &[f64];
    /// One more than the timesteps (the last is the final noise level); empty for DDIM and LCM.
    fn sigmas(&self) -> &[f64] {
        &[]
    }
    /// The scale of the initial noise: latents start as `noise * init_noise_sigma`.
    fn init_noise_sigma(&self) -> f64 {
        1.0
    }
    fn scale_model_input(&self, sample: Tensor<4>, _step_index: usize) -> Tensor<4> {
        sample
    }
    /// Whether `step` takes fresh noise (every step but the last, where it is ignored and may be `None`).
    fn needs_noise(&self) -> bool;
    /// The sample for the next step (on the last step, the denoised sample) and this step's estimate of
    /// the clean sample.
    fn step(&mut self, model_output: Tensor<4>, step_index: usize, sample: Tensor<4>, noise: Option<Tensor<4>>) -> Result<StepOutput>;
}

/// What a step returns, as diffusers' scheduler outputs do.
pub struct StepOutput {
    /// The sample for the next step.
    pub prev_sample: Tensor<4>,
    /// The step's estimate of the fully denoised sample (diffusers' `pred_original_sample`, LCM's
    /// `denoised`): what a preview shows.
    pub denoised: Tensor<4>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SchedulerKind {
    Ddim,
    EulerAncestral,
    DpmPp2m,
    Lcm,
}

impl SchedulerKind {
    pub const ALL: [SchedulerKind; 4] = [SchedulerKind::Ddim, SchedulerKind::EulerAncestral, SchedulerKind::DpmPp2m, SchedulerKind::Lcm];

    /// The CLI name.
    pub fn name(self) -> &'static str {
        match self {
            SchedulerKind::Ddim => "ddim",
            SchedulerKind::EulerAncestral => "euler-a",
            SchedulerKind::DpmPp2m => "dpmpp-2m",
            SchedulerKind::Lcm => "lcm",
        }
    }

    /// diffusers' class name (`_class_name` in scheduler_config.json).
    pub fn class_name(self) -> &'static str {
        match self {
            SchedulerKind::Ddim => "DDIMScheduler",
            SchedulerKind::EulerAncestral => "EulerAncestralDiscreteScheduler",
            SchedulerKind::DpmPp2m => "DPMSolverMultistepScheduler",
            SchedulerKind::Lcm => "LCMScheduler",
        }
    }

    pub fn from_class_name(class_name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.class_name() == class_name)
    }

    /// The kind a config file names in `_class_name`.
    pub fn from_config(config: &ConfigJson) -> Result<Self> {
        let class = config.str_or("_class_name", "")?;
        Self::from_class_name(class).ok_or_else(|| {
            let known: Vec<_> = Self::ALL.iter().map(|k| k.class_name()).collect();
            let found = if class.is_empty() { "nothing".to_string() } else { format!("`{class}`") };
            Error::config(&config.file, "_class_name", format!("found {found}, expected one of {}", known.join(", ")))
        })
    }
}

impl std::fmt::Display for SchedulerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SchedulerKind {
    type Err = Error;
    /// A CLI name (ddim, euler-a, dpmpp-2m, lcm) or a diffusers class name.
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(s) || k.class_name() == s)
            .ok_or_else(|| Error::invalid("scheduler", format!("unknown scheduler `{s}` (expected ddim, euler-a, dpmpp-2m or lcm)")))
    }
}

/// Builds the scheduler of `kind` from `config` as diffusers' `<class>.from_config(config)` would.
pub fn build(kind: SchedulerKind, config: &SchedulerConfig) -> Result<Box<dyn Scheduler>> {
    Ok(match kind {
        SchedulerKind::Ddim => Box::new(Ddim::new(config)?),
        SchedulerKind::EulerAncestral => Box::new(EulerAncestral::new(config)?),
        SchedulerKind::DpmPp2m => Box::new(DpmPp2m::new(config)?),
        SchedulerKind::Lcm => Box::new(Lcm::new(config)?),
    })
}

/// What a diffusers `scheduler_config.json` says, field by field (`None`: absent or null).
///
/// Defaults differ between scheduler classes (DDIM spaces timesteps `leading`, Euler `linspace`; LCM's
/// betas are SD's), so they are applied when a scheduler is built, as in diffusers' `from_config`: a
/// field the class does not read is ignored, and a value the class reads but we do not implement is
/// refused by name. Fields are public so that a caller can override them (e.g. `use_karras_sigmas`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SchedulerConfig {
    pub file: String,
    pub class_name: Option<String>,
    pub num_train_timesteps: Option<usize>,
    pub beta_start: Option<f64>,
    pub beta_end: Option<f64>,
    pub beta_schedule: Option<String>,
    /// Whether the file gives `trained_betas` (not implemented).
    pub trained_betas: bool,
    pub timestep_spacing: Option<String>,
    pub steps_offset: Option<usize>,
    pub prediction_type: Option<String>,
    pub set_alpha_to_one: Option<bool>,
    pub clip_sample: Option<bool>,
    pub clip_sample_range: Option<f64>,
    pub thresholding: Option<bool>,
    pub rescale_betas_zero_snr: Option<bool>,
    // DPMSolverMultistepScheduler
    pub algorithm_type: Option<String>,
    pub solver_type: Option<String>,
    pub solver_order: Option<usize>,
    pub lower_order_final: Option<bool>,
    pub euler_at_final: Option<bool>,
    pub use_karras_sigmas: Option<bool>,
    pub use_exponential_sigmas: Option<bool>,
    pub use_beta_sigmas: Option<bool>,
    pub use_lu_lambdas: Option<bool>,
    pub use_flow_sigmas: Option<bool>,
    pub use_dynamic_shifting: Option<bool>,
    pub final_sigmas_type: Option<String>,
    pub lambda_min_clipped: Option<f64>,
    pub variance_type: Option<String>,
    /// Karras bounds; DPM-Solver reads them when a config from another class (Euler) carries them.
    pub sigma_min: Option<f64>,
    pub sigma_max: Option<f64>,
    // LCMScheduler
    pub original_inference_steps: Option<usize>,
    pub timestep_scaling: Option<f64>,
}

impl SchedulerConfig {
    pub fn from_json(c: &ConfigJson) -> Result<Self> {
        Ok(Self {
            file: c.file.clone(),
            class_name: c.opt_string("_class_name")?,
            num_train_timesteps: c.opt_usize("num_train_timesteps")?,
            beta_start: c.opt_f64("beta_start")?,
            beta_end: c.opt_f64("beta_end")?,
            beta_schedule: c.opt_string("beta_schedule")?,
            trained_betas: c.has("trained_betas"),
            timestep_spacing: c.opt_string("timestep_spacing")?,
            steps_offset: c.opt_usize("steps_offset")?,
            prediction_type: c.opt_string("prediction_type")?,
            set_alpha_to_one: c.opt_bool("set_alpha_to_one")?,
            clip_sample: c.opt_bool("clip_sample")?,
            clip_sample_range: c.opt_f64("clip_sample_range")?,
            thresholding: c.opt_bool("thresholding")?,
            rescale_betas_zero_snr: c.opt_bool("rescale_betas_zero_snr")?,
            algorithm_type: c.opt_string("algorithm_type")?,
            solver_type: c.opt_string("solver_type")?,
            solver_order: c.opt_usize("solver_order")?,
            lower_order_final: c.opt_bool("lower_order_final")?,
            euler_at_final: c.opt_bool("euler_at_final")?,
            use_karras_sigmas: c.opt_bool("use_karras_sigmas")?,
            use_exponential_sigmas: c.opt_bool("use_exponential_sigmas")?,
            use_beta_sigmas: c.opt_bool("use_beta_sigmas")?,
            use_lu_lambdas: c.opt_bool("use_lu_lambdas")?,
            use_flow_sigmas: c.opt_bool("use_flow_sigmas")?,
            use_dynamic_shifting: c.opt_bool("use_dynamic_shifting")?,
            final_sigmas_type: c.opt_string("final_sigmas_type")?,
            lambda_min_clipped: c.opt_f64_or_infinite("lambda_min_clipped")?,
            variance_type: c.opt_string("variance_type")?,
            sigma_min: c.opt_f64("sigma_min")?,
            sigma_max: c.opt_f64("sigma_max")?,
            original_inference_steps: c.opt_usize("original_inference_steps")?,
            timestep_scaling: c.opt_f64("timestep_scaling")?,
        })
    }

    /// Parses the text of a scheduler_config.json (Python's `Infinity` / `NaN` included).
    pub fn parse(file: impl Into<String>, text: &str) -> Result<Self> {
        Self::from_json(&ConfigJson::parse(file, text)?)
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn read(path: &std::path::Path) -> Result<Self> {
        Self::from_json(&ConfigJson::read(path)?)
    }

    /// `steps_offset`, which must leave room below `num_train_timesteps` (a larger one puts every
    /// timestep past the schedule's end: refused by file and field rather than as a step count).
    fn steps_offset(&self) -> Result<usize> {
        let n = self.num_train_timesteps.unwrap_or(1000);
        match self.steps_offset.unwrap_or(0) {
            o if o >= n => Err(self.error("steps_offset", format!("{o} is not below num_train_timesteps ({n})"))),
            o => Ok(o),
        }
    }

    /// The kind `_class_name` names, if it is one implemented here.
    pub fn kind(&self) -> Option<SchedulerKind> {
        self.class_name.as_deref().and_then(SchedulerKind::from_class_name)
    }

    fn error(&self, field: &str, message: impl Into<String>) -> Error {
        Error::config(&self.file, field, message)
    }

    /// Refuses a boolean option we do not implement when the file turns it on.
    fn refuse_true(&self, field: &str, value: Option<bool>, default: bool) -> Result<()> {
        if value.unwrap_or(default) {
            return Err(self.error(field, "`true` is not supported (only `false` is implemented)"));
        }
        Ok(())
    }

    /// betas → alphas_cumprod exactly as diffusers computes them in f32 (see [`alphas_cumprod`]).
    fn train_schedule(&self, defaults: BetaDefaults) -> Result<TrainSchedule> {
        if self.trained_betas {
            return Err(self.error("trained_betas", "explicit betas are not supported; use beta_schedule"));
        }
        let n = self.num_train_timesteps.unwrap_or(1000);
        if n < 2 {
            return Err(self.error("num_train_timesteps", format!("must be at least 2, found {n}")));
        }
        let start = self.beta_start.unwrap_or(defaults.start);
        let end = self.beta_end.unwrap_or(defaults.end);
        let betas = match self.beta_schedule.as_deref().unwrap_or(defaults.schedule) {
            "linear" => torch_linspace_f32(start, end, n),
            "scaled_linear" => torch_linspace_f32(start.sqrt(), end.sqrt(), n).into_iter().map(|b| b * b).collect(),
            other => {
                return Err(self.error("beta_schedule", format!("`{other}` is not supported (expected linear or scaled_linear)")));
            }
        };
        let alphas_cumprod = alphas_cumprod(&betas);
        if let Some(t) = alphas_cumprod.iter().position(|a| !(*a > 0.0 && *a < 1.0)) {
            return Err(self.error("beta_end", format!("the betas give alphas_cumprod[{t}] = {} outside (0, 1)", alphas_cumprod[t])));
        }
        if !self.rescale_betas_zero_snr.unwrap_or(false) {
            return Ok(TrainSchedule { num_train_timesteps: n, alphas_cumprod, zero_terminal_snr: false });
        }
        let rescaled_betas = rescale_zero_terminal_snr(&alphas_cumprod);
        let alphas_cumprod = self::alphas_cumprod(&rescaled_betas);
        // The rescaled product ends at exactly 0; f32 can also flatten the tail of a schedule so that an
        // earlier entry reaches 0 and the next betas are 0 / 0 (diffusers would carry the NaNs on).
        if let Some(t) = alphas_cumprod[..n - 1].iter().position(|a| !(*a > 0.0 && *a < 1.0)) {
            return Err(self.error(
                "rescale_betas_zero_snr",
                format!("rescaling these betas to zero terminal SNR gives alphas_cumprod[{t}] = {} outside (0, 1)", alphas_cumprod[t]),
            ));
        }
        Ok(TrainSchedule { num_train_timesteps: n, alphas_cumprod, zero_terminal_snr: true })
    }

    fn spacing(&self, default: &str) -> Result<TimestepSpacing> {
        match self.timestep_spacing.as_deref().unwrap_or(default) {
            "leading" => Ok(TimestepSpacing::Leading),
            "trailing" => Ok(TimestepSpacing::Trailing),
            "linspace" => Ok(TimestepSpacing::Linspace),
            other => Err(self.error("timestep_spacing", format!("`{other}` is not supported (expected leading, trailing or linspace)"))),
        }
    }

    fn prediction(&self) -> Result<Prediction> {
        match self.prediction_type.as_deref().unwrap_or("epsilon") {
            "epsilon" => Ok(Prediction::Epsilon),
            "v_prediction" => Ok(Prediction::VPrediction),
            other => Err(self.error("prediction_type", format!("`{other}` is not supported (expected epsilon or v_prediction)"))),
        }
    }

    /// `clip_sample_range` when `clip_sample` is on (DDIM, LCM).
    fn clip(&self, default: bool) -> Result<Option<f32>> {
        if !self.clip_sample.unwrap_or(default) {
            return Ok(None);
        }
        let range = self.clip_sample_range.unwrap_or(1.0);
        if !(range > 0.0) {
            return Err(self.error("clip_sample_range", format!("must be positive, found {range}")));
        }
        Ok(Some(range as f32))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestepSpacing {
    Leading,
    Trailing,
    Linspace,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prediction {
    Epsilon,
    VPrediction,
}

/// What training against a UNet needs from its scheduler config: ᾱ_t per training timestep and what the
/// UNet predicts. [`Self::add_noise`] and [`Self::target`] are diffusers' `add_noise` and (for
/// v-prediction) `get_velocity`, elementwise in f32.
#[derive(Debug, Clone, PartialEq)]
pub struct NoiseSchedule {
    pub alphas_cumprod: Vec<f32>,
    pub prediction: Prediction,
}

impl NoiseSchedule {
    pub fn num_train_timesteps(&self) -> usize {
        self.alphas_cumprod.len()
    }

    /// √ᾱ_t · x0 + √(1 − ᾱ_t) · ε.
    pub fn add_noise(&self, x0: &[f32], noise: &[f32], t: usize) -> Vec<f32> {
        let a = self.alphas_cumprod[t];
        let (s, n) = (a.sqrt(), (1.0 - a).sqrt());
        x0.iter().zip(noise).map(|(&x, &e)| s * x + n * e).collect()
    }

    /// What the UNet should output for that noisy sample: ε, or v = √ᾱ_t · ε − √(1 − ᾱ_t) · x0.
    pub fn target(&self, x0: &[f32], noise: &[f32], t: usize) -> Vec<f32> {
        match self.prediction {
            Prediction::Epsilon => noise.to_vec(),
            Prediction::VPrediction => {
                let a = self.alphas_cumprod[t];
                let (s, n) = (a.sqrt(), (1.0 - a).sqrt());
                x0.iter().zip(noise).map(|(&x, &e)| s * e - n * x).collect()
            }
        }
    }
}

impl SchedulerConfig {
    /// The training noise schedule this config describes, with its class's beta defaults (LCM's are
    /// SD's, the others' diffusers' linear 1e-4–0.02); with `rescale_betas_zero_snr` the last ᾱ is 0, as
    /// diffusers trains.
    pub fn noise_schedule(&self) -> Result<NoiseSchedule> {
        let defaults = if self.kind() == Some(SchedulerKind::Lcm) { lcm::SD_BETAS } else { LINEAR_BETAS };
        Ok(NoiseSchedule { alphas_cumprod: self.train_schedule(defaults)?.alphas_cumprod, prediction: self.prediction()? })
    }
}

/// A class's defaults for the beta fields.
#[derive(Clone, Copy)]
struct BetaDefaults {
    start: f64,
    end: f64,
    schedule: &'static str,
}

/// DDIM's, Euler's and DPM-Solver's defaults; LCM defaults to SD's scaled_linear 0.00085–0.012.
const LINEAR_BETAS: BetaDefaults = BetaDefaults { start: 0.0001, end: 0.02, schedule: "linear" };

struct TrainSchedule {
    num_train_timesteps: usize,
    /// Indexed by training timestep. With `rescale_betas_zero_snr` the last entry is exactly 0.
    alphas_cumprod: Vec<f32>,
    zero_terminal_snr: bool,
}

impl TrainSchedule {
    /// Euler's and DPM-Solver's `alphas_cumprod[-1] = 2**-24` after rescaling to zero terminal SNR, so
    /// that the first sigma is finite (sqrt(2^24 - 1) ≈ 4096); DDIM and LCM keep the exact 0.
    fn with_finite_terminal_sigma(mut self) -> Self {
        if self.zero_terminal_snr {
            *self.alphas_cumprod.last_mut().expect("at least 2 timesteps") = 2f32.powi(-24);
        }
        self
    }
}

/// `torch.linspace(start, end, steps, dtype=float32)` bit for bit: PyTorch's CPU kernel takes an f32
/// step and computes each value from the nearer end as one fused multiply-add.
fn torch_linspace_f32(start: f64, end: f64, steps: usize) -> Vec<f32> {
    let (start, end) = (start as f32, end as f32);
    if steps == 1 {
        return vec![start];
    }
    let step = (end - start) / (steps - 1) as f32;
    let halfway = steps / 2;
    (0..steps)
        .map(|i| if i < halfway { step.mul_add(i as f32, start) } else { (-step).mul_add((steps - 1 - i) as f32, end) })
        .collect()
}

/// `torch.cumprod(1.0 - betas)` in f32: the CPU kernel accumulates in f64 and rounds each output.
fn alphas_cumprod(betas: &[f32]) -> Vec<f32> {
    let mut product = 1f64;
    betas
        .iter()
        .map(|&b| {
            product *= (1.0f32 - b) as f64;
            product as f32
        })
        .collect()
}

/// diffusers' `rescale_zero_terminal_snr` (Lin et al. 2023, Algorithm 1) in f32 with PyTorch's order of
/// operations, from the betas' `alphas_cumprod`; returns the rescaled betas. sqrt(alphas_cumprod) is
/// shifted so that its last entry is exactly 0 and scaled so that its first keeps its value; the betas are
/// then recovered from the ratios of consecutive squares (the last is 1).
fn rescale_zero_terminal_snr(alphas_cumprod: &[f32]) -> Vec<f32> {
    let sqrt: Vec<f32> = alphas_cumprod.iter().map(|a| a.sqrt()).collect();
    let (first, last) = (sqrt[0], sqrt[sqrt.len() - 1]);
    let scale = first / (first - last);
    let alphas_bar: Vec<f32> = sqrt.iter().map(|&s| (s - last) * scale).map(|s| s * s).collect();
    std::iter::once(alphas_bar[0]).chain(alphas_bar.windows(2).map(|w| w[1] / w[0])).map(|alpha| 1.0 - alpha).collect()
}

/// `((1 - alphas_cumprod) / alphas_cumprod) ** 0.5` in f32, indexed by training timestep.
fn train_sigmas(alphas_cumprod: &[f32]) -> Vec<f32> {
    alphas_cumprod.iter().map(|&a| ((1.0 - a) / a).sqrt()).collect()
}

/// `np.linspace(start, stop, num, endpoint)` in f64.
fn np_linspace(start: f64, stop: f64, num: usize, endpoint: bool) -> Vec<f64> {
    let div = if endpoint { num.saturating_sub(1) } else { num };
    let step = (stop - start) / div.max(1) as f64;
    let mut values: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    if endpoint && num > 1 {
        values[num - 1] = stop;
    }
    values
}

/// `np.arange(start, stop, step)` for a float step: numpy fills `start + i * (a[1] - a[0])`.
fn np_arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil().max(0.0) as usize;
    let delta = (start + step) - start;
    (0..len).map(|i| if i == 1 { start + step } else { start + i as f64 * delta }).collect()
}

/// `np.interp(x, arange(len(fp)), fp)`.
fn np_interp(x: f64, fp: &[f32]) -> f64 {
    let last = fp.len() - 1;
    if x <= 0.0 {
        return fp[0] as f64;
    }
    if x >= last as f64 {
        return fp[last] as f64;
    }
    let j = x.floor() as usize;
    if j as f64 == x {
        return fp[j] as f64;
    }
    let slope = fp[j + 1] as f64 - fp[j] as f64;
    slope * (x - j as f64) + fp[j] as f64
}

/// The timesteps the `leading` / `trailing` / `linspace` spacings give (DDIM's and Euler's formulas;
/// DPM-Solver has its own), before any conversion to integers.
/// Refuses spaced timesteps a multistep sampler cannot run: one past the last training timestep (`leading`
/// spacing with `steps_offset` at nearly the full step count) or one repeated (so a step of length zero,
/// which DPM-Solver divides by). diffusers runs into an IndexError or NaN latents there.
fn check_spaced_timesteps(n: usize, timesteps: &[f64], num_train: usize) -> Result<()> {
    if let Some(t) = timesteps.iter().find(|&&t| t > (num_train - 1) as f64) {
        return Err(Error::invalid("num_inference_steps", format!("{n} steps give timestep {t}, past the last training timestep ({}); use fewer steps", num_train - 1)));
    }
    if let Some(w) = timesteps.windows(2).find(|w| w[0] == w[1]) {
        return Err(Error::invalid("num_inference_steps", format!("{n} steps repeat timestep {} (a step of length zero); use fewer steps", w[0])));
    }
    Ok(())
}

fn spaced_timesteps(spacing: TimestepSpacing, num_train: usize, n: usize, steps_offset: usize) -> Vec<f64> {
    match spacing {
        TimestepSpacing::Linspace => np_linspace(0.0, (num_train - 1) as f64, n, true).into_iter().rev().collect(),
        TimestepSpacing::Leading => {
            let ratio = num_train / n;
            (0..n).rev().map(|i| (i * ratio + steps_offset) as f64).collect()
        }
        TimestepSpacing::Trailing => {
            np_arange(num_train as f64, 0.0, -(num_train as f64 / n as f64)).into_iter().map(|t| t.round_ties_even() - 1.0).collect()
        }
    }
}

/// DDIM and LCM keep `alphas_cumprod` = 0 at the terminal timestep of a zero-terminal-SNR schedule, where
/// an epsilon prediction's clean-sample estimate divides by sqrt(0): diffusers returns inf / NaN there;
/// we refuse the schedule by name instead.
fn refuse_epsilon_at_zero_snr(file: &str, prediction: Prediction, alphas_cumprod: &[f32], timesteps: &[f64]) -> Result<()> {
    if prediction != Prediction::Epsilon {
        return Ok(());
    }
    match timesteps.iter().find(|&&t| alphas_cumprod[t as usize] == 0.0) {
        Some(t) => Err(Error::config(
            file,
            "prediction_type",
            format!(
                "`epsilon` cannot be sampled at timestep {t}, where rescale_betas_zero_snr makes alphas_cumprod 0 (the clean-sample \
                 estimate divides by 0; diffusers returns inf / NaN): zero-terminal-SNR models predict `v_prediction`"
            ),
        )),
        None => Ok(()),
    }
}

/// Refuses the step counts diffusers refuses.
fn check_step_count(n: usize, num_train: usize) -> Result<()> {
    if n == 0 {
        return Err(Error::invalid("num_inference_steps", "must be at least 1"));
    }
    if n > num_train {
        return Err(Error::invalid("num_inference_steps", format!("{n} is more than the {num_train} training timesteps")));
    }
    Ok(())
}

fn step_out_of_range(step_index: usize, steps: usize) -> Error {
    Error::invalid("step_index", format!("step {step_index} is out of range: {steps} timesteps (call set_timesteps first)"))
}

fn missing_noise(step_index: usize) -> Error {
    Error::invalid("noise", format!("step {step_index} of a stochastic scheduler needs noise"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numpy_arange_and_linspace() {
        assert_eq!(np_arange(1000.0, 0.0, -250.0), vec![1000.0, 750.0, 500.0, 250.0]);
        assert_eq!(np_linspace(0.0, 1.0, 3, true), vec![0.0, 0.5, 1.0]);
        assert_eq!(np_linspace(0.0, 50.0, 4, false), vec![0.0, 12.5, 25.0, 37.5]);
    }

    #[test]
    fn zero_terminal_snr_rescale() {
        let plain = SchedulerConfig::default().train_schedule(LINEAR_BETAS).unwrap().alphas_cumprod;
        let config = SchedulerConfig { rescale_betas_zero_snr: Some(true), ..Default::default() };
        let schedule = config.train_schedule(LINEAR_BETAS).unwrap();
        let rescaled = schedule.alphas_cumprod.clone();
        // sqrt(alphas_cumprod) shifted to end at exactly 0 and scaled to keep its first value.
        assert_eq!(rescaled[999], 0.0);
        assert!(rescaled.windows(2).all(|w| w[1] < w[0]) && rescaled[0] < 1.0);
        let (first, last) = (plain[0].sqrt() as f64, plain[999].sqrt() as f64);
        for t in [0, 1, 250, 500, 750, 998] {
            let expected = ((plain[t].sqrt() as f64 - last) * first / (first - last)).powi(2);
            let rel = (rescaled[t] as f64 - expected).abs() / expected;
            assert!(rel < 1e-4, "alphas_cumprod[{t}] = {} vs {expected} ({rel:.2e})", rescaled[t]);
        }
        // Euler and DPM-Solver: alphas_cumprod[-1] = 2**-24, so the first sigma is sqrt(2^24 - 1).
        let finite = schedule.with_finite_terminal_sigma();
        assert_eq!(finite.alphas_cumprod[999], 2f32.powi(-24));
        assert_eq!(train_sigmas(&finite.alphas_cumprod)[999], 16_777_215f32.sqrt());
        assert_eq!(finite.alphas_cumprod[..999], rescaled[..999]);
        // Without rescaling nothing changes.
        let unchanged = SchedulerConfig::default().train_schedule(LINEAR_BETAS).unwrap().with_finite_terminal_sigma();
        assert_eq!(unchanged.alphas_cumprod, plain);
    }
}
