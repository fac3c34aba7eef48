//! The Rust integration tests, as one test binary (each binary links burn and wgpu, which costs CI more
//! link time than the tests take): one module per area, shared helpers in `common`. Run one area with
//! `cargo test --test suite <module>::`, e.g. `cargo test --test suite parity_default:: -- --nocapture`.

mod common;

mod binding_limits;
mod bundle;
mod cli_check;
mod cli_finetune;
mod cli_generate;
mod default_bundle;
mod errors;
mod finetune;
mod kernel_cpu;
mod kernel_decoupled_attention;
mod layout;
mod parity_clip_text;
mod parity_clip_vision;
mod parity_control;
mod parity_decoders;
mod parity_default;
mod parity_finetune;
mod parity_pipeline;
mod parity_schedulers;
mod parity_unet;
mod precision_f16;
mod soak;
mod tokenizer_parity;
