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

use burn::tensor::Device;

use crate::config::ConfigJson;
use crate::error::Result;
use crate::weights::SafeTensors;

/// A model built from a checkpoint's config and weights, as transformers / diffusers save them in a folder
/// (config.json + a safetensors file); every model of the crate reads its folder the same way.
pub trait ModelFolder: Sized {
    fn from_parts(config: &ConfigJson, weights: &SafeTensors, device: &Device) -> Result<Self>;

    /// Reads `dir`'s config.json and weights file and builds the model.
    #[cfg(not(target_arch = "wasm32"))]
    fn read_dir(dir: &std::path::Path, device: &Device) -> Result<Self> {
        let (config, weights) = crate::weights::read_model_dir(dir)?;
        Self::from_parts(&config, &weights, device)
    }
}

macro_rules! model_folder {
    ($($model:ty => $load:ident),* $(,)?) => {$(
        impl ModelFolder for $model {
            fn from_parts(config: &ConfigJson, weights: &SafeTensors, device: &Device) -> Result<Self> {
                <$model>::$load(config, weights, device)
            }
        }
    )*};
}

model_folder!(
    clip::ClipTextModel => load,
    clip_vision::ClipVisionModel => load,
    clip_vision::ClipModel => load,
    unet::UNet2DConditionModel => load,
    unet::transformer::Attention => load_layer,
    vae::VaeDecoder => load,
    taesd::TinyDecoder => load,
    taesd::TinyEncoder => load,
    decoder::Decoder => load,
);
