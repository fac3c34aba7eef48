//! The category encoder f_c and the style encoder f_s: CLIP text models of E's architecture, loaded
//! either as full weights or as low-rank deltas over E's weights ([`LowRankDeltas`], PEFT's LoRA layout,
//! read by the weight loaders), so that a bundle can ship two small delta files instead of two more
//! encoders. The deltas are merged into E's weights when the encoder is built, so running f_c costs
//! exactly what running E costs.

use burn::tensor::{Device, FloatDType, Tensor};

use crate::config::ConfigJson;
use crate::control::adapter::Adapter;
use crate::error::{Error, Result};
use crate::models::clip::ClipTextModel;
use crate::weights::{LowRankDeltas, SafeTensors};

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
            let (config, weights) = crate::weights::read_model_dir(dir)?;
            Ok(EncoderSource::Full(config, weights))
        } else {
            Err(Error::file(dir.display().to_string(), "holds neither adapter_config.json (low-rank deltas) nor config.json (a full CLIP text model)"))
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
        Self::load_in(base, category, style, adapter, device, FloatDType::F32)
    }

    /// [`Self::load`] with f_c and f_s computing in `dtype` (the adapter is loaded in its own, by the caller).
    pub fn load_in(
        base: (&ConfigJson, &SafeTensors),
        category: Option<EncoderSource>,
        style: Option<EncoderSource>,
        adapter: Option<Adapter>,
        device: &Device,
        dtype: FloatDType,
    ) -> Result<Self> {
        let base_width = crate::models::clip::ClipTextConfig::from_json(base.0)?.hidden_size;
        let build = |what: &str, source: Option<EncoderSource>| -> Result<Option<ClipTextModel>> {
            let model = match source {
                None => return Ok(None),
                Some(EncoderSource::Full(config, weights)) => ClipTextModel::load_in(&config, &weights, None, device, dtype)?,
                Some(EncoderSource::Deltas(deltas)) => {
                    deltas.check_targets(base.1)?;
                    ClipTextModel::load_in(base.0, base.1, Some(&deltas), device, dtype)?
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

    /// Reads f_c, f_s (full or delta folders) and the adapter folder; `text_encoder` is E's folder, read
    /// with its weight `variant` (`fp16` for `model.fp16.safetensors`) when one is given.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_dirs(
        text_encoder: &std::path::Path,
        variant: Option<&str>,
        category: Option<&std::path::Path>,
        style: Option<&std::path::Path>,
        adapter: Option<&std::path::Path>,
        device: &Device,
    ) -> Result<Self> {
        if category.is_none() && style.is_none() && adapter.is_none() {
            return Ok(Self::default());
        }
        let config = ConfigJson::read(&text_encoder.join("config.json"))?;
        let weights = crate::weights::read_weights(text_encoder, variant)?;
        Self::read_parts((&config, &weights), category, style, adapter, device)
    }

    /// [`Self::read_dirs`] with E already read (its config and weights): E may come from a single-file
    /// checkpoint rather than a folder.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_parts(
        (config, weights): (&ConfigJson, &SafeTensors),
        category: Option<&std::path::Path>,
        style: Option<&std::path::Path>,
        adapter: Option<&std::path::Path>,
        device: &Device,
    ) -> Result<Self> {
        let category = category.map(EncoderSource::read_dir).transpose()?;
        let style = style.map(EncoderSource::read_dir).transpose()?;
        let adapter = adapter.map(|d| <Adapter as crate::models::ModelFolder>::read_dir(d, device)).transpose()?;
        Self::load((config, weights), category, style, adapter, device)
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
