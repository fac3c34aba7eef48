//! Control-CLIP fine-tuning (../shared/DESIGN.md §2): the category encoder f_c and the style encoder f_s as
//! low-rank deltas over the generator's frozen text encoder E (or as whole copies of it), and the adapter A, trained from a few
//! labelled pictures (through a frozen CLIP model) and text-only triplets; the UNet never changes.
//!
//! - [`losses`]: the formulas, in one place; [`denoise`]: the optional denoising term through the UNet.
//! - [`optim`]: AdamW exactly as `torch.optim.AdamW`, on the host.
//! - [`trainables`]: the trained tensors (PEFT-named LoRA factors or full encoder weights, the adapter's
//!   weights) and their conversion to and from autodiff leaves.
//!
//! Nothing here touches the file system: data and results cross the same byte-level seams as bundles,
//! so that the loop also builds for wasm32.

pub mod dataset;
pub mod denoise;
pub mod eval;
pub mod finetune;
#[cfg(not(target_arch = "wasm32"))]
pub mod load;
pub mod losses;
pub mod optim;
pub mod trainables;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// LoRA settings of f_c and f_s (PEFT's `LoraConfig` field names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraSettings {
    #[serde(default = "default_rank")]
    pub r: usize,
    #[serde(default = "default_alpha")]
    pub lora_alpha: f64,
    #[serde(default = "default_targets")]
    pub target_modules: Vec<String>,
}

fn default_rank() -> usize {
    8
}
fn default_alpha() -> f64 {
    16.0
}
fn default_targets() -> Vec<String> {
    ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"].map(String::from).to_vec()
}

impl Default for LoraSettings {
    fn default() -> Self {
        Self { r: default_rank(), lora_alpha: default_alpha(), target_modules: default_targets() }
    }
}

impl LoraSettings {
    /// PEFT's scaling α / r.
    pub fn scale(&self) -> f32 {
        (self.lora_alpha / self.r as f64) as f32
    }
}

/// How f_c and f_s are trained (and written): PEFT LoRA factors over E, or every weight of a copy of E.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EncoderMode {
    #[default]
    Lora,
    Full,
}

/// Which positions of a general prompt L_keep holds: DESIGN §2's `0..=eos(t)`, or all of them.
///
/// The UNet's cross-attention reads every one of the 77 positions, the padding after the end-of-text
/// token included; held only through eos, f_c's padding positions drifted by 0.68 RMS (E's context: 0.98)
/// on the default model and its pictures lost colour and category (docs/control-results.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeepPositions {
    #[default]
    ThroughEos,
    All,
}

/// Every constant of the fine-tuning, with DESIGN §2's defaults; the JSON form is `--config train.json`
/// and the `config` metadata of a `finetune-step` io file (tests/fixtures/reference_finetune.py uses the
/// same names). Unknown fields are refused, so that a misspelt weight does not silently keep its default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub w_cat: f32,
    pub w_sty: f32,
    pub w_dec: f32,
    pub w_trip: f32,
    pub w_keep_c: f32,
    pub w_keep_s: f32,
    /// Weight of L_den, the denoising term through the frozen UNet (docs/finetune.md); 0, the default,
    /// leaves it out (DESIGN §2 has no such term) and needs no UNet.
    pub w_den: f32,
    /// Pictures with a `prompt` per step for L_den.
    pub den_batch: usize,
    /// (λ_c, λ_s), the weights the UNet's decoupled cross-attention runs with in L_den.
    pub den_weights: [f32; 2],
    /// Positions of each general prompt that L_keep compares (`"through_eos"` or `"all"`).
    pub keep_positions: KeepPositions,
    /// Triplet margin m.
    pub margin: f32,
    /// τ; when absent, exp(logit_scale) of the CLIP model.
    pub temperature: Option<f32>,
    pub lr: f64,
    pub betas: [f64; 2],
    pub eps: f64,
    pub weight_decay: f64,
    /// `"lora"` (the default: `lora` below applies) or `"full"` (all of f_c's and f_s's weights).
    pub encoders: EncoderMode,
    pub lora: LoraSettings,
    /// Width of the adapter's hidden layer.
    pub adapter_dim: usize,
    pub steps: usize,
    /// Labelled pictures per step.
    pub batch: usize,
    /// Triplets of each kind (for f_s and for f_c) per step.
    pub triplets: usize,
    /// General prompts per step for L_keep.
    pub keep_prompts: usize,
    /// Linear warm-up: the learning rate at step s (1-based) is lr · min(1, s / warmup_steps).
    pub warmup_steps: usize,
    /// Clip the global gradient norm over all trainables to this value (None: no clipping).
    pub clip_grad_norm: Option<f64>,
    pub seed: u64,
    pub checkpoint_every: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            w_cat: 1.0,
            w_sty: 1.0,
            w_dec: 0.5,
            w_trip: 0.5,
            w_keep_c: 1.0,
            w_keep_s: 0.1,
            w_den: 0.0,
            den_batch: 8,
            den_weights: [0.5, 0.5],
            keep_positions: KeepPositions::ThroughEos,
            margin: 0.2,
            temperature: None,
            lr: 1e-4,
            betas: [0.9, 0.999],
            eps: 1e-8,
            weight_decay: 1e-2,
            encoders: EncoderMode::Lora,
            lora: LoraSettings::default(),
            adapter_dim: 128,
            steps: 500,
            batch: 32,
            triplets: 16,
            keep_prompts: 8,
            warmup_steps: 0,
            clip_grad_norm: None,
            seed: 0,
            checkpoint_every: 100,
        }
    }
}

impl TrainConfig {
    /// Parses and checks a training config; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Self> {
        crate::config::refuse_duplicate_keys(file, text)?;
        let cfg: Self = serde_json::from_str(text).map_err(|e| Error::file(file, format!("is not a valid training config: {e}")))?;
        cfg.validate(file)?;
        Ok(cfg)
    }

    pub fn validate(&self, file: &str) -> Result<()> {
        let bad = |field: &str, message: &str| Err(Error::config(file, field, message));
        let weights = [
            ("w_cat", self.w_cat),
            ("w_sty", self.w_sty),
            ("w_dec", self.w_dec),
            ("w_trip", self.w_trip),
            ("w_keep_c", self.w_keep_c),
            ("w_keep_s", self.w_keep_s),
            ("w_den", self.w_den),
            ("margin", self.margin),
        ];
        for (field, v) in weights {
            if !(v.is_finite() && v >= 0.0) {
                return bad(field, "must be a finite number ≥ 0");
            }
        }
        if self.den_weights.iter().any(|w| !w.is_finite()) {
            return bad("den_weights", "must be two finite numbers (λ_c, λ_s)");
        }
        if self.temperature.is_some_and(|t| !(t.is_finite() && t > 0.0)) {
            return bad("temperature", "must be a positive number");
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("lr", "must be a positive number");
        }
        if self.betas.iter().any(|b| !(0.0..1.0).contains(b)) {
            return bad("betas", "each must be in [0, 1)");
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return bad("eps", "must be a positive number");
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad("weight_decay", "must be a finite number ≥ 0");
        }
        // Sizes and per-step counts are bounded as model configs' integers are (a LoRA rank or an adapter
        // width of 10^12 aborted on allocation): refused by file and field before anything is built.
        for (field, value) in [("lora.r", self.lora.r), ("adapter_dim", self.adapter_dim), ("batch", self.batch), ("triplets", self.triplets), ("den_batch", self.den_batch)] {
            crate::config::bounded_integer(file, field, value as u64)?;
        }
        if self.lora.r == 0 {
            return bad("lora.r", "must be at least 1");
        }
        if !(self.lora.lora_alpha.is_finite() && self.lora.lora_alpha > 0.0) {
            return bad("lora.lora_alpha", "must be a positive number");
        }
        const KNOWN: [&str; 6] = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"];
        if self.lora.target_modules.is_empty() {
            return bad("lora.target_modules", "must name at least one layer kind");
        }
        if let Some(t) = self.lora.target_modules.iter().find(|t| !KNOWN.contains(&t.as_str())) {
            return Err(Error::config(file, "lora.target_modules", format!("unknown layer kind `{t}` (expected some of {})", KNOWN.join(", "))));
        }
        if self.adapter_dim == 0 {
            return bad("adapter_dim", "must be at least 1");
        }
        if self.batch == 0 {
            return bad("batch", "must be at least 1");
        }
        if self.w_den > 0.0 && self.den_batch == 0 {
            return bad("den_batch", "must be at least 1 when w_den is on");
        }
        if self.keep_prompts == 0 {
            return bad("keep_prompts", "must be at least 1");
        }
        if self.checkpoint_every == 0 {
            return bad("checkpoint_every", "must be at least 1");
        }
        if self.clip_grad_norm.is_some_and(|c| !(c.is_finite() && c > 0.0)) {
            return bad("clip_grad_norm", "must be a positive number");
        }
        Ok(())
    }

    /// The learning rate of step `step` (1-based), after the warm-up.
    pub fn lr_at(&self, step: usize) -> f64 {
        if self.warmup_steps == 0 { self.lr } else { self.lr * (step as f64 / self.warmup_steps as f64).min(1.0) }
    }
}
