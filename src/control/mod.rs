//! Control-CLIP conditioning (docs/control.md; ../shared/DESIGN.md §2): the category encoder f_c and the
//! style encoder f_s (full CLIP text models or low-rank deltas over the generator's own encoder E), the
//! adapter A on the style branch, and the user's weights for the decoupled cross-attention
//! ([`crate::models::attention`]) that feeds both contexts into the frozen UNet:
//!
//! ```text
//! c_c = f_c(t),  c_s = A(f_s(t))
//! out = W_o · ( λ_c · Attn(W_q x, W_k c_c, W_v c_c) + λ_s · Attn(W_q x, W_k c_s, W_v c_s) )
//! ```
//!
//! The attention formula lives in `models::attention` only; the UNet calls it through its one
//! cross-attention seam. This module depends on models and weights, never the other way round.

pub mod adapter;
pub mod encoders;

pub use adapter::{Adapter, AdapterConfig};
pub use encoders::{ControlEncoders, EncoderSource};

use crate::error::{Error, Result};

/// The user's category weight λ_c and style weight λ_s for one generation. Any finite values are
/// allowed (0 switches a branch off; values above 1 or below 0 extrapolate).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ControlWeights {
    pub category: f32,
    pub style: f32,
}

impl Default for ControlWeights {
    /// (1, 0): with f_c = E this is exactly the unmodified generator.
    fn default() -> Self {
        Self { category: 1.0, style: 0.0 }
    }
}

impl ControlWeights {
    pub fn new(category: f32, style: f32) -> Result<Self> {
        let w = Self { category, style };
        w.validate()?;
        Ok(w)
    }

    pub fn validate(&self) -> Result<()> {
        for (what, v) in [("category weight", self.category), ("style weight", self.style)] {
            if !v.is_finite() {
                return Err(Error::invalid(what, format!("{v} is not a finite number")));
            }
        }
        Ok(())
    }
}
