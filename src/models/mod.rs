//! Model components, one file each; configured from the checkpoints' own config.json. Decoupled
//! cross-attention (Control-CLIP's change to the UNet) lives here with the other attention code.
pub mod attention;
pub mod clip;
pub mod clip_vision;
pub mod decoder;
pub mod image_processor;
pub mod nn;
pub mod taesd;
pub mod unet;
pub mod vae;

use burn::tensor::{Device, FloatDType};

use crate::config::ConfigJson;
use crate::error::{Error, Result};
use crate::weights::SafeTensors;

/// A model built from a checkpoint's config and weights, as transformers / diffusers save them in a folder
/// (config.json + a safetensors file); every model of the crate reads its folder the same way.
pub trait ModelFolder: Sized {
    fn from_parts(config: &ConfigJson, weights: &SafeTensors, device: &Device) -> Result<Self>;

    /// [`Self::from_parts`] computing in `dtype`; a model that computes in f32 only refuses another.
    fn from_parts_in(config: &ConfigJson, weights: &SafeTensors, device: &Device, dtype: FloatDType) -> Result<Self> {
        match dtype {
            FloatDType::F32 => Self::from_parts(config, weights, device),
            other => Err(Error::invalid("precision", format!("{} computes in f32 only, not {other:?}", config.file))),
        }
    }

    /// Reads `dir`'s config.json and weights file and builds the model.
    #[cfg(not(target_arch = "wasm32"))]
    fn read_dir(dir: &std::path::Path, device: &Device) -> Result<Self> {
        Self::read_dir_in(dir, device, FloatDType::F32)
    }

    /// [`Self::read_dir`] computing in `dtype`.
    #[cfg(not(target_arch = "wasm32"))]
    fn read_dir_in(dir: &std::path::Path, device: &Device, dtype: FloatDType) -> Result<Self> {
        let (config, weights) = crate::weights::read_model_dir(dir)?;
        Self::from_parts_in(&config, &weights, device, dtype)
    }
}

macro_rules! model_folder {
    ($($model:ty => $load:ident $(, in $load_in:ident)?);* $(;)?) => {$(
        impl ModelFolder for $model {
            fn from_parts(config: &ConfigJson, weights: &SafeTensors, device: &Device) -> Result<Self> {
                <$model>::$load(config, weights, device)
            }
            $(
            fn from_parts_in(config: &ConfigJson, weights: &SafeTensors, device: &Device, dtype: FloatDType) -> Result<Self> {
                <$model>::$load_in(config, weights, device, dtype)
            }
            )?
        }
    )*};
}

model_folder!(
    clip_vision::ClipVisionModel => load;
    clip_vision::ClipModel => load;
    unet::UNet2DConditionModel => load, in load_in;
    unet::transformer::Attention => load_layer;
    vae::VaeDecoder => load, in load_in;
    taesd::TinyDecoder => load, in load_in;
    taesd::TinyEncoder => load;
    decoder::Decoder => load, in load_in;
);

impl ModelFolder for clip::ClipTextModel {
    fn from_parts(config: &ConfigJson, weights: &SafeTensors, device: &Device) -> Result<Self> {
        Self::load(config, weights, device)
    }

    fn from_parts_in(config: &ConfigJson, weights: &SafeTensors, device: &Device, dtype: FloatDType) -> Result<Self> {
        Self::load_in(config, weights, None, device, dtype)
    }
}
