//! Low-rank deltas (LoRA) over a model's linear layers, in PEFT's layout: how Control-CLIP's f_c and f_s
//! are stored over E.
//!
//! A delta file is `adapter_config.json` (`r`, `lora_alpha`, optional `use_rslora`; `use_dora` and
//! per-layer rank/alpha patterns are refused) plus safetensors with `<module path>.lora_A.weight`
//! [r, in] and `<module path>.lora_B.weight` [out, r] for each adapted linear layer. Module paths may
//! carry PEFT's `base_model.model.` and a `text_encoder.` / `text_model.` prefix. The deltas are added to
//! the base weights as they are read ([`super::WeightsView::with_deltas`]):
//! `W' = W + (alpha / r) · B · A` (alpha / sqrt(r) with rsLoRA).

use std::collections::BTreeMap;

use crate::config::ConfigJson;
use crate::error::{Error, Result};
use crate::weights::SafeTensors;

/// One adapted layer's factors, row-major: `a` is [rank, d_in], `b` is [d_out, rank].
#[derive(Debug, Clone)]
struct Factors {
    a: Vec<f32>,
    b: Vec<f32>,
    rank: usize,
    d_in: usize,
    d_out: usize,
}

/// Low-rank deltas for some of a model's linear layers.
#[derive(Debug, Clone)]
pub struct LowRankDeltas {
    name: String,
    scale: f32,
    layers: BTreeMap<String, Factors>,
}

/// The module path a weight or LoRA key refers to, without the prefixes checkpoints differ in:
/// `base_model.model.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight` and
/// `text_model.encoder.layers.0.self_attn.q_proj.weight` both give `encoder.layers.0.self_attn.q_proj`.
fn module_path(key: &str) -> &str {
    let mut k = key;
    for suffix in [".weight", ".lora_A", ".lora_B", ".default"] {
        k = k.strip_suffix(suffix).unwrap_or(k);
    }
    loop {
        let before = k;
        for prefix in ["base_model.model.", "text_encoder.", "text_model."] {
            k = k.strip_prefix(prefix).unwrap_or(k);
        }
        if k == before {
            return k;
        }
    }
}

impl LowRankDeltas {
    pub fn load(config: &ConfigJson, weights: &SafeTensors) -> Result<Self> {
        let peft_type = config.str_or("peft_type", "LORA")?;
        if peft_type != "LORA" {
            return Err(Error::config(&config.file, "peft_type", format!("`{peft_type}` is not supported (only LORA)")));
        }
        if config.bool_or("use_dora", false)? {
            return Err(Error::config(&config.file, "use_dora", "DoRA deltas are not supported (only plain LoRA)"));
        }
        for field in ["rank_pattern", "alpha_pattern"] {
            if config.object.get(field).and_then(|v| v.as_object()).is_some_and(|m| !m.is_empty()) {
                return Err(Error::config(&config.file, field, "per-layer ranks / alphas are not supported"));
            }
        }
        let rank = config.positive_usize("r")?;
        let alpha = config.f64_or("lora_alpha", rank as f64)?;
        let scale = if config.bool_or("use_rslora", false)? { alpha / (rank as f64).sqrt() } else { alpha / rank as f64 };

        let name = weights.name().to_string();
        let mut layers = BTreeMap::new();
        for key in weights.keys() {
            let Some(stem) = key.strip_suffix(".lora_A.weight").or_else(|| key.strip_suffix(".lora_A.default.weight")) else {
                if !key.contains(".lora_B.") {
                    return Err(Error::tensor(&name, key, "is neither a lora_A nor a lora_B weight"));
                }
                continue;
            };
            let b_key = if key.ends_with(".default.weight") { format!("{stem}.lora_B.default.weight") } else { format!("{stem}.lora_B.weight") };
            let (a_shape, a) = weights.f32(key)?;
            let (b_shape, b) = weights.f32(&b_key)?;
            if a_shape.len() != 2 || a_shape[0] != rank {
                return Err(Error::tensor(&name, key, format!("expected shape [{rank}, d_in] (r = {rank}), found {a_shape:?}")));
            }
            if b_shape.len() != 2 || b_shape[1] != rank {
                return Err(Error::tensor(&name, &b_key, format!("expected shape [d_out, {rank}] (r = {rank}), found {b_shape:?}")));
            }
            let factors = Factors { a, b, rank, d_in: a_shape[1], d_out: b_shape[0] };
            if layers.insert(module_path(key).to_string(), factors).is_some() {
                return Err(Error::tensor(&name, key, "a second delta for the same layer"));
            }
        }
        // Every lora_B needs its lora_A.
        for key in weights.keys().filter(|k| k.contains(".lora_B.")) {
            if !layers.contains_key(module_path(key)) {
                return Err(Error::tensor(&name, key, "has no matching lora_A weight"));
            }
        }
        if layers.is_empty() {
            return Err(Error::file(&name, "holds no lora_A / lora_B weights"));
        }
        Ok(Self { name, scale: scale as f32, layers })
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_dir(dir: &std::path::Path) -> Result<Self> {
        let config = ConfigJson::read(&dir.join("adapter_config.json"))?;
        let weights = super::read_weights(dir, None)?;
        Self::load(&config, &weights)
    }

    /// Adds the delta for `key` (a weight of the base model, PyTorch layout [d_out, d_in]) to `values`.
    /// Keys without a delta are left alone.
    pub fn apply(&self, key: &str, shape: &[usize], values: &mut [f32]) -> Result<()> {
        let Some(f) = self.layers.get(module_path(key)).filter(|_| key.ends_with(".weight")) else {
            return Ok(());
        };
        if shape != [f.d_out, f.d_in] {
            return Err(Error::tensor(
                &self.name,
                module_path(key),
                format!("the delta is [{}, {}] but the base weight `{key}` has shape {shape:?}", f.d_out, f.d_in),
            ));
        }
        // W[o, i] += scale · Σ_r B[o, r] · A[r, i]
        for o in 0..f.d_out {
            let row = &mut values[o * f.d_in..(o + 1) * f.d_in];
            for r in 0..f.rank {
                let coef = self.scale * f.b[o * f.rank + r];
                for (w, a) in row.iter_mut().zip(&f.a[r * f.d_in..(r + 1) * f.d_in]) {
                    *w += coef * a;
                }
            }
        }
        Ok(())
    }

    /// PEFT's scaling (α / r, or α / √r with rsLoRA).
    pub fn scale(&self) -> f32 {
        self.scale
    }

    /// Each adapted layer: module path (`encoder.layers.0.self_attn.q_proj`), A [rank, d_in] and B [d_out,
    /// rank] row-major, rank, d_in, d_out.
    pub fn factors(&self) -> impl Iterator<Item = (&str, &[f32], &[f32], usize, usize, usize)> {
        self.layers.iter().map(|(path, f)| (path.as_str(), &f.a[..], &f.b[..], f.rank, f.d_in, f.d_out))
    }

    /// Refuses deltas for layers the base model does not have (a delta for another model).
    pub fn check_targets(&self, base: &SafeTensors) -> Result<()> {
        let known: std::collections::BTreeSet<&str> = base.keys().filter(|k| k.ends_with(".weight")).map(module_path).collect();
        match self.layers.keys().find(|path| !known.contains(path.as_str())) {
            Some(path) => Err(Error::tensor(&self.name, path, format!("the base encoder ({}) has no such layer", base.name()))),
            None => Ok(()),
        }
    }
}
