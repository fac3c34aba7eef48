//! The UNet's down, mid and up blocks: resnets, optional transformers, optional resampling.

use burn::tensor::{Device, Tensor};

use crate::error::Result;
use crate::models::unet::resnet::{Downsample2D, ResnetBlock2D, ResnetSettings, Upsample2D};
use crate::models::unet::transformer::{Conditioning, Transformer2DModel, TransformerSettings};
use crate::weights::WeightsView;

/// How one block is shaped (read from the config by the caller).
#[derive(Debug, Clone, Copy)]
pub struct BlockShape {
    pub layers: usize,
    /// Some(heads) for the cross-attention variants.
    pub heads: Option<usize>,
    pub transformer_layers: usize,
}

/// `CrossAttnDownBlock2D` / `DownBlock2D`.
#[derive(Debug)]
pub struct DownBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
    downsampler: Option<Downsample2D>,
}

impl DownBlock {
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        w: &WeightsView,
        c_in: usize,
        c_out: usize,
        shape: BlockShape,
        downsample_padding: Option<usize>,
        rs: ResnetSettings,
        ts: TransformerSettings,
        device: &Device,
    ) -> Result<Self> {
        let mut resnets = Vec::new();
        let mut attentions = Vec::new();
        for i in 0..shape.layers {
            let c = if i == 0 { c_in } else { c_out };
            resnets.push(ResnetBlock2D::load(&w.sub(&format!("resnets.{i}")), c, c_out, rs, device)?);
            if let Some(heads) = shape.heads {
                attentions.push(Transformer2DModel::load(&w.sub(&format!("attentions.{i}")), c_out, heads, shape.transformer_layers, ts, device)?);
            }
        }
        let downsampler = match downsample_padding {
            Some(p) => Some(Downsample2D::load(&w.sub("downsamplers.0"), c_out, p, device)?),
            None => None,
        };
        Ok(Self { resnets, attentions, downsampler })
    }

    /// Returns the output and pushes every intermediate state onto `skips` (for the up path).
    pub fn forward(&self, mut x: Tensor<4>, temb: &Tensor<2>, context: Conditioning, skips: &mut Vec<Tensor<4>>) -> Tensor<4> {
        for (i, resnet) in self.resnets.iter().enumerate() {
            x = resnet.forward(x, Some(temb));
            if let Some(attn) = self.attentions.get(i) {
                x = attn.forward(x, context);
            }
            skips.push(x.clone());
        }
        if let Some(down) = &self.downsampler {
            x = down.forward(x);
            skips.push(x.clone());
        }
        x
    }
}

/// `UNetMidBlock2DCrossAttn`: resnet, then (transformer, resnet) per layer.
#[derive(Debug)]
pub struct MidBlock {
    first: ResnetBlock2D,
    layers: Vec<(Transformer2DModel, ResnetBlock2D)>,
}

impl MidBlock {
    pub fn load(w: &WeightsView, c: usize, heads: usize, transformer_layers: usize, rs: ResnetSettings, ts: TransformerSettings, device: &Device) -> Result<Self> {
        // diffusers' UNet2DConditionModel builds its mid block with one layer.
        let first = ResnetBlock2D::load(&w.sub("resnets.0"), c, c, rs, device)?;
        let layers = vec![(
            Transformer2DModel::load(&w.sub("attentions.0"), c, heads, transformer_layers, ts, device)?,
            ResnetBlock2D::load(&w.sub("resnets.1"), c, c, rs, device)?,
        )];
        Ok(Self { first, layers })
    }

    pub fn forward(&self, x: Tensor<4>, temb: &Tensor<2>, context: Conditioning) -> Tensor<4> {
        let mut x = self.first.forward(x, Some(temb));
        for (attn, resnet) in &self.layers {
            x = resnet.forward(attn.forward(x, context), Some(temb));
        }
        x
    }
}

/// `CrossAttnUpBlock2D` / `UpBlock2D`: each resnet takes the previous output concatenated with a skip.
#[derive(Debug)]
pub struct UpBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
    upsampler: Option<Upsample2D>,
}

impl UpBlock {
    /// `c_prev`: channels coming from below; `c_skip_last`: channels of the deepest skip this block
    /// consumes last (the input channels of the matching down block).
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        w: &WeightsView,
        c_prev: usize,
        c_out: usize,
        c_skip_last: usize,
        shape: BlockShape,
        upsample: bool,
        rs: ResnetSettings,
        ts: TransformerSettings,
        device: &Device,
    ) -> Result<Self> {
        let mut resnets = Vec::new();
        let mut attentions = Vec::new();
        for i in 0..shape.layers {
            let skip = if i == shape.layers - 1 { c_skip_last } else { c_out };
            let c_in = if i == 0 { c_prev } else { c_out };
            resnets.push(ResnetBlock2D::load(&w.sub(&format!("resnets.{i}")), c_in + skip, c_out, rs, device)?);
            if let Some(heads) = shape.heads {
                attentions.push(Transformer2DModel::load(&w.sub(&format!("attentions.{i}")), c_out, heads, shape.transformer_layers, ts, device)?);
            }
        }
        let upsampler = if upsample { Some(Upsample2D::load(&w.sub("upsamplers.0"), c_out, device)?) } else { None };
        Ok(Self { resnets, attentions, upsampler })
    }

    /// Consumes skips from the end of `skips`; `upsample_to` is the size of the next skip (so odd sizes
    /// round-trip as in diffusers).
    pub fn forward(&self, mut x: Tensor<4>, temb: &Tensor<2>, context: Conditioning, skips: &mut Vec<Tensor<4>>) -> Tensor<4> {
        for (i, resnet) in self.resnets.iter().enumerate() {
            let skip = skips.pop().expect("the down path pushed one skip per up resnet");
            x = resnet.forward(Tensor::cat(vec![x, skip], 1), Some(temb));
            if let Some(attn) = self.attentions.get(i) {
                x = attn.forward(x, context);
            }
        }
        if let Some(up) = &self.upsampler {
            let size = skips.last().map(|s| {
                let d = s.dims();
                [d[2], d[3]]
            });
            x = up.forward(x, size);
        }
        x
    }
}
