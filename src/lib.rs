//! control-clip: Control-CLIP style-controlled text-to-image generation, in the browser on WebGPU (wasm)
//! and natively. See README.md and docs/ for the design; this file only declares the public API.

pub mod bundle;
pub mod check;
pub mod config;
pub mod control;
pub mod device;
pub mod error;
#[cfg(not(target_arch = "wasm32"))]
pub mod files;
pub mod kernels;
pub mod limits;
#[cfg(not(target_arch = "wasm32"))]
pub mod loaders;
pub mod models;
pub mod pipeline;
pub mod plan;
pub mod profile;
pub mod rng;
pub mod schedulers;
pub mod tokenizer;
pub mod train;
pub mod weights;

#[cfg(target_arch = "wasm32")]
pub mod web;

pub use device::{BackendKind, init_device, read_f32};
pub use error::{Error, Result};
pub use models::clip::{ClipTextConfig, ClipTextModel, ClipTextOutput};
pub use tokenizer::{ClipTokenizer, MAX_POSITIONS, TokenizedPrompt};
pub use weights::SafeTensors;
