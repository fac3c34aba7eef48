//! Our own kernels: the Rust side of our WGSL kernels (shaders/), run on burn's wgpu backend through its
//! raw-kernel support (`template` + `extension` features), and our CPU kernels for burn's CPU backend
//! ([`cpu`]). Each kernel has a tensor-op reference elsewhere, which is what runs on the other backends
//! and what the kernel is tested against.

pub mod cpu;
mod decoupled_attention;

pub use decoupled_attention::{decoupled_attention_fused, fused_attention_available};
