//! The Rust side of our own WGSL kernels (shaders/), run on burn's wgpu backend through its raw-kernel
//! support (`template` + `extension` features). Each kernel has a tensor-op reference elsewhere, which
//! is what runs on the other backends and what the kernel is tested against.

mod decoupled_attention;

pub use decoupled_attention::{decoupled_attention_fused, fused_attention_available};
