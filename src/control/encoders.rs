//! The category encoder f_c and the style encoder f_s: CLIP text models of E's architecture, loaded
//! either as full weights or as low-rank deltas over E's weights (PEFT's LoRA layout), so that a bundle
//! can ship two small delta files instead of two more encoders.
//!
//! A delta file is `adapter_config.json` (`r`, `lora_alpha`, optional `use_rslora`; `use_dora` and
//! per-layer rank/alpha patterns are refused) plus safetensors with `<module path>.lora_A.weight`
//! [r, in] and `<module path>.lora_B.weight` [out, r] for each adapted linear layer. Module paths may
//! carry PEFT's `base_model.model.` and a `text_encoder.` / `text_model.` prefix. The deltas are merged
//! into E's weights when the encoder is built: `W' = W + (alpha / r) · B · A` (alpha / sqrt(r) with
//! rsLoRA), so running f_c costs exactly what running E costs.

use std::collections::BTreeMap;

use burn::tensor::{Device, Tensor};

use crate::config::ConfigJson;
use crate::control::adapter::Adapter;
use crate::error::{Error, Result};
use crate::models::clip::ClipTextModel;
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
        let rank = config.positive("r", config.usize("r")?)?;
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
        let weights = SafeTensors::read(&crate::models::clip::find_weights_file(dir)?)?;
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

    /// Refuses deltas for layers the base model does not have (a delta for another model).
    pub fn check_targets(&self, base: &SafeTensors) -> Result<()> {
        let known: std::collections::BTreeSet<&str> = base.keys().filter(|k| k.ends_with(".weight")).map(module_path).collect();
        match self.layers.keys().find(|path| !known.contains(path.as_str())) {
            Some(path) => Err(Error::tensor(&self.name, path, format!("the base encoder ({}) has no such layer", base.name()))),
            None => Ok(()),
        }
    }
}

/// How a Control-CLIP encoder is stored.
pub enum EncoderSource {
    /// A full CLIP text model: config and weights.
    Full(ConfigJson, SafeTensors),
    /// Low-rank deltas over E's weights.
    Deltas(LowRankDeltas),
}

impl EncoderSource {
    /// Reads a folder: `adapter_config.json` makes it deltas, `config.json` a full model.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_dir(dir: &std::path::Path) -> Result<Self> {
        if dir.join("adapter_config.json").exists() {
            Ok(EncoderSource::Deltas(LowRankDeltas::read_dir(dir)?))
        } else if dir.join("config.json").exists() {
            let (config, weights) = crate::models::read_model_dir(dir)?;
            Ok(EncoderSource::Full(config, weights))
        } else {
            Err(Error::file(dir.display().to_string(), "holds neither adapter_config.json (low-rank deltas) nor config.json (a full CLIP text model)"))
        }
    }

    /// The form's name in bundle manifests: "full" or "lora".
    pub fn form(&self) -> &'static str {
        match self {
            EncoderSource::Full(..) => "full",
            EncoderSource::Deltas(..) => "lora",
        }
    }
}

/// f_c, f_s and A. An absent encoder is E itself (so with none at all, λ_c = 1 and λ_s = 0 is plain
/// generation) and reuses E's output instead of a second copy of its weights; an absent adapter is the
/// identity.
#[derive(Debug, Default)]
pub struct ControlEncoders {
    pub category: Option<ClipTextModel>,
    pub style: Option<ClipTextModel>,
    pub adapter: Option<Adapter>,
}

impl ControlEncoders {
    /// Builds f_c and f_s; `base` is E's config and weights (the base of deltas, and the width every
    /// context must have).
    pub fn load(
        base: (&ConfigJson, &SafeTensors),
        category: Option<EncoderSource>,
        style: Option<EncoderSource>,
        adapter: Option<Adapter>,
        device: &Device,
    ) -> Result<Self> {
        let base_width = crate::models::clip::ClipTextConfig::from_json(base.0)?.hidden_size;
        let build = |what: &str, source: Option<EncoderSource>| -> Result<Option<ClipTextModel>> {
            let model = match source {
                None => return Ok(None),
                Some(EncoderSource::Full(config, weights)) => ClipTextModel::load(&config, &weights, device)?,
                Some(EncoderSource::Deltas(deltas)) => {
                    deltas.check_targets(base.1)?;
                    ClipTextModel::load_with_deltas(base.0, base.1, Some(&deltas), device)?
                }
            };
            if model.config.hidden_size != base_width {
                return Err(Error::invalid(what, format!("width {} differs from the text encoder's {base_width}", model.config.hidden_size)));
            }
            Ok(Some(model))
        };
        let category = build("category encoder", category)?;
        let style = build("style encoder", style)?;
        if let Some(a) = &adapter {
            if a.config.hidden_size != base_width {
                return Err(Error::invalid("adapter", format!("hidden_size {} differs from the text encoder's {base_width}", a.config.hidden_size)));
            }
        }
        Ok(Self { category, style, adapter })
    }

    /// Reads f_c, f_s (full or delta folders) and the adapter folder; `text_encoder` is E's folder.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_dirs(
        text_encoder: &std::path::Path,
        category: Option<&std::path::Path>,
        style: Option<&std::path::Path>,
        adapter: Option<&std::path::Path>,
        device: &Device,
    ) -> Result<Self> {
        if category.is_none() && style.is_none() && adapter.is_none() {
            return Ok(Self::default());
        }
        let (config, weights) = crate::models::read_model_dir(text_encoder)?;
        let category = category.map(EncoderSource::read_dir).transpose()?;
        let style = style.map(EncoderSource::read_dir).transpose()?;
        let adapter = adapter.map(|d| Adapter::read_dir(d, device)).transpose()?;
        Self::load((&config, &weights), category, style, adapter, device)
    }

    /// True when f_c = f_s = E and there is no adapter.
    pub fn is_identity(&self) -> bool {
        self.category.is_none() && self.style.is_none() && self.adapter.is_none()
    }

    /// The category and style contexts for tokenized prompts, (f_c(t), A(f_s(t))), each [B, 77, D]; `base`
    /// is E, run (once) for whichever encoder is absent.
    pub fn encode(&self, base: &ClipTextModel, ids: &[Vec<u32>], clip_skip: usize) -> Result<(Tensor<3>, Tensor<3>)> {
        let mut base_out = None;
        let mut run = |model: &Option<ClipTextModel>| -> Result<Tensor<3>> {
            match model {
                Some(m) => Ok(m.forward(ids, clip_skip)?.last_hidden_state),
                None => {
                    if base_out.is_none() {
                        base_out = Some(base.forward(ids, clip_skip)?.last_hidden_state);
                    }
                    Ok(base_out.clone().expect("just set"))
                }
            }
        };
        let category = run(&self.category)?;
        let style = run(&self.style)?;
        let style = match &self.adapter {
            Some(a) => a.forward(style)?,
            None => style,
        };
        Ok((category, style))
    }
}
