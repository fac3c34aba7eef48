//! Model components, one file each; configured from the checkpoints' own config.json.
pub mod clip;
pub mod unet;
pub mod taesd;
pub mod vae;
pub mod nn;
