//! Model components, one file each; configured from the checkpoints' own config.json.
pub mod clip;
pub mod unet;
pub mod taesd;
pub mod vae;
pub mod nn;

/// A model folder as transformers / diffusers save it: its config.json and its weights file.
#[cfg(not(target_arch = "wasm32"))]
pub fn read_model_dir(dir: &std::path::Path) -> crate::error::Result<(crate::config::ConfigJson, crate::weights::SafeTensors)> {
    let config = crate::config::ConfigJson::read(&dir.join("config.json"))?;
    let weights = crate::weights::SafeTensors::read(&clip::find_weights_file(dir)?)?;
    Ok((config, weights))
}
