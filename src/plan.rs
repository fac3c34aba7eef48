//! The memory plan: what one generation with a bundle needs on the GPU — its weights as the GPU holds
//! them (f32 or f16: the pipeline's precision), the largest buffers it binds, and an estimate of the peak of its activations — computed
//! from the manifest alone (inline configs and file sizes), so that the page can refuse a bundle that
//! cannot fit before it downloads any weights, and checked against the device's largest binding
//! ([`crate::device::binding_limit`]).
//!
//! Buffers the models split ([`Binding::piece`]: attention scores by queries, the feed-forward by tokens,
//! the token embedding by rows, the tiny decoder by bands of rows) fit whenever their smallest piece
//! does; the rest (a convolution's activation, a weight) must fit whole. The figures count our own
//! tensors; burn's kernels may hold temporaries of their own beside them (the page's live-buffer count
//! measures the real total: docs/benchmarks.md).

use crate::bundle::{EncoderForm, Manifest, StoreDType, WeightsComponent, component};
use crate::device::Precision;
use crate::error::{Error, Result};
use crate::models::clip::ClipTextConfig;
use crate::models::taesd::TinyDecoderConfig;
use crate::models::unet::UNetConfig;
use crate::models::vae::VaeConfig;

/// Bytes of an f32: attention scores are f32 in both precisions (the softmax runs in f32).
const F32: u64 = 4;
/// Text positions (CLIP's 77).
const TOKENS: u64 = 77;

/// One buffer a generation binds.
#[derive(Debug, Clone, PartialEq)]
pub struct Binding {
    pub component: &'static str,
    /// What it is, in words ("self-attention scores at 64×64", "token embedding").
    pub what: String,
    /// Its size whole, in bytes.
    pub bytes: u64,
    /// Where the models split it: the size of its smallest piece.
    pub piece: Option<u64>,
}

impl Binding {
    /// Whether it fits a binding of `limit` bytes, split if it must be.
    pub fn fits(&self, limit: u64) -> bool {
        self.bytes <= limit || self.piece.is_some_and(|p| p <= limit)
    }

    /// The size it is bound at under `limit`: whole where it fits, else split to at most `limit`.
    pub fn bound(&self, limit: u64) -> u64 {
        if self.bytes <= limit { self.bytes } else { limit.max(self.piece.unwrap_or(self.bytes)) }
    }
}

/// What a generation at one size needs (see the module's comment).
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryPlan {
    pub width: usize,
    pub height: usize,
    /// UNet batch: 2 with classifier-free guidance (negative and positive rows), else 1.
    pub batch: usize,
    /// What the models compute in: the size of weights and activations.
    pub precision: Precision,
    /// Each weights component's bytes on the GPU (a LoRA encoder is merged into a full copy of E).
    pub weights: Vec<(&'static str, u64)>,
    /// The largest buffers of each component (whole and, where split, their smallest piece).
    pub bindings: Vec<Binding>,
    /// Estimated peak of the UNet's activations (the skip connections, a few working tensors and one
    /// attention pass) and of the decoder's (its widest three tensors at once), bytes; the larger counts.
    pub activations: u64,
}

impl MemoryPlan {
    /// The plan for `manifest` at `width` × `height` (already checked as a multiple of the factor).
    pub fn new(manifest: &Manifest, width: usize, height: usize, guided: bool, precision: Precision) -> Result<Self> {
        let c = &manifest.components;
        let e = precision.size();
        let text = ClipTextConfig::from_json(&manifest.config(component::TEXT_ENCODER)?)?;
        let unet = UNetConfig::from_json(&manifest.config(component::UNET)?)?;
        let decoder_config = manifest.config(component::DECODER)?;
        let batch = if guided { 2 } else { 1 };

        let text_bytes = gpu_bytes(&c.text_encoder, e);
        let mut weights = vec![(component::TEXT_ENCODER, text_bytes)];
        for name in component::CONTROL {
            if let Some(entry) = c.weights(name) {
                let lora = name != component::ADAPTER && entry.form == Some(EncoderForm::Lora);
                weights.push((name, if lora { text_bytes } else { gpu_bytes(entry, e) }));
            }
        }
        weights.push((component::UNET, gpu_bytes(&c.unet, e)));
        weights.push((component::DECODER, gpu_bytes(&c.decoder, e)));

        let mut bindings = text_bindings(&text, batch, e);
        let (decoder_bindings, decoder_peak, unet_bindings, unet_peak);
        match decoder_config.str_or("_class_name", "AutoencoderKL")? {
            "AutoencoderTiny" => {
                let cfg = TinyDecoderConfig::from_json(&decoder_config)?;
                let f = cfg.upscale_factor();
                (decoder_bindings, decoder_peak) = tiny_decoder_plan(&cfg, height / f, width / f, e);
                (unet_bindings, unet_peak) = unet_plan(&unet, batch, height / f, width / f, e);
            }
            _ => {
                let cfg = VaeConfig::from_json(&decoder_config)?;
                let f = 1 << (cfg.block_out_channels.len() - 1);
                (decoder_bindings, decoder_peak) = kl_decoder_plan(&cfg, height / f, width / f, e);
                (unet_bindings, unet_peak) = unet_plan(&unet, batch, height / f, width / f, e);
            }
        }
        bindings.extend(unet_bindings);
        bindings.extend(decoder_bindings);
        Ok(Self { width, height, batch, precision, weights, bindings, activations: unet_peak.max(decoder_peak) })
    }

    pub fn weights_bytes(&self) -> u64 {
        self.weights.iter().map(|(_, b)| b).sum()
    }

    /// Weights plus the activations' estimated peak.
    pub fn total_bytes(&self) -> u64 {
        self.weights_bytes() + self.activations
    }

    /// The largest buffer bound under `limit` (after splitting).
    pub fn largest_binding(&self, limit: u64) -> u64 {
        self.bindings.iter().map(|b| b.bound(limit)).max().unwrap_or(0)
    }

    /// Refuses a plan with a buffer that no split brings within `limit`, naming it.
    pub fn check(&self, limit: u64) -> Result<()> {
        match self.bindings.iter().filter(|b| !b.fits(limit)).max_by_key(|b| b.bytes) {
            None => Ok(()),
            Some(b) => Err(Error::device(format!(
                "this bundle does not fit this GPU at {}×{}: the {}'s {} takes {} in one buffer, over the device's largest \
                 buffer binding, {} (its maxStorageBufferBindingSize){}",
                self.width,
                self.height,
                b.component.replace('_', " "),
                b.what,
                mib(b.bytes),
                mib(limit),
                if b.component == component::DECODER && b.piece.is_none() { "; try a smaller size, or a bundle with the tiny decoder (AutoencoderTiny)" } else { "; try a smaller size" },
            ))),
        }
    }

    /// A few lines for people: weights per component, the largest buffers, the estimate.
    pub fn describe(&self, limit: Option<u64>) -> String {
        let mut out = format!("memory plan at {}×{} (batch {}), {} on the GPU:\n", self.width, self.height, self.batch, self.precision);
        for (name, bytes) in &self.weights {
            out += &format!("  weights  {name:<17} {}\n", mib(*bytes));
        }
        out += &format!("  weights  total             {}\n", mib(self.weights_bytes()));
        out += &format!("  activations (estimated peak) {}\n", mib(self.activations));
        out += &format!("  total (estimated)          {}\n", mib(self.total_bytes()));
        let mut largest: Vec<&Binding> = self.bindings.iter().collect();
        largest.sort_by_key(|b| std::cmp::Reverse(b.bytes));
        for b in largest.iter().take(6) {
            let split = match (limit, b.piece) {
                (Some(l), Some(_)) if b.bytes > l => format!(" → split to {}", mib(b.bound(l))),
                (_, Some(_)) => " (split where a device needs it)".to_string(),
                _ => String::new(),
            };
            out += &format!("  buffer   {:<12} {:<44} {}{split}\n", b.component, b.what, mib(b.bytes));
        }
        if let Some(l) = limit {
            out += &format!("  largest binding on this device: {} of {}\n", mib(self.largest_binding(l)), mib(l));
        }
        out
    }
}

fn mib(bytes: u64) -> String {
    match bytes {
        b if b < 1 << 20 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
    }
}

/// A component's weights as the GPU holds them (`e` bytes a value), from its stored files: the stored
/// values counted from the bytes (headers are a few kilobytes) at their storage precision.
fn gpu_bytes(entry: &WeightsComponent, e: u64) -> u64 {
    let stored: u64 = entry.files.list().iter().map(|f| f.bytes).sum();
    let stored_size = match entry.dtype.as_deref().map(str::parse::<StoreDType>) {
        Some(Ok(StoreDType::F16)) => 2,
        _ => 4,
    };
    stored / stored_size * e
}

fn text_bindings(cfg: &ClipTextConfig, batch: usize, e: u64) -> Vec<Binding> {
    let (d, v) = (cfg.hidden_size as u64, cfg.vocab_size as u64);
    let rows = batch as u64 * TOKENS;
    vec![
        Binding { component: component::TEXT_ENCODER, what: "token embedding".into(), bytes: v * d * e, piece: Some(d * e) },
        Binding {
            component: component::TEXT_ENCODER,
            what: "largest weight (MLP)".into(),
            bytes: d * cfg.intermediate_size as u64 * e,
            piece: None,
        },
        Binding {
            component: component::TEXT_ENCODER,
            what: "MLP activation".into(),
            bytes: rows * cfg.intermediate_size as u64 * e,
            piece: None,
        },
    ]
}

/// The UNet's largest buffers at latents `lh` × `lw` and its activations' estimated peak.
fn unet_plan(cfg: &UNetConfig, batch: usize, lh: usize, lw: usize, e: u64) -> (Vec<Binding>, u64) {
    let b = batch as u64;
    let boc = &cfg.block_out_channels;
    let n = boc.len();
    let cmax = *boc.iter().max().unwrap_or(&0) as u64;
    // Convolutions run in f32 under f16 compute too (their input and weight widened for the call:
    // docs/decisions.md, "f16 compute"), so what they bind is f32 in both precisions.
    let widest_weight = 2 * cmax * cmax * 9 * F32;
    let mut bindings = vec![Binding {
        component: component::UNET,
        what: "largest weight (an up block's first convolution, at most)".into(),
        bytes: widest_weight,
        piece: None,
    }];
    let (mut peak_skips, mut widest, mut attention) = (0u64, 0u64, 0u64);
    for (level, &c) in boc.iter().enumerate() {
        let (h, w) = ((lh >> level).max(1) as u64, (lw >> level).max(1) as u64);
        let (c, next) = (c as u64, boc[(level + 1).min(n - 1)] as u64);
        let hw = h * w;
        // The up path concatenates the skip connection: at most this level's and the next one's channels.
        let activation = b * (c + next.max(c)) * hw * F32;
        widest = widest.max(activation / F32 * e);
        peak_skips += (cfg.layers_per_block[level] as u64 + 1) * b * c * hw * e;
        bindings.push(Binding { component: component::UNET, what: format!("activation at {h}×{w} ({} channels)", c + next.max(c)), bytes: activation, piece: None });
        let cross = cfg.down_block_types[level].starts_with("CrossAttn");
        if cross {
            let heads = cfg.num_attention_heads[level] as u64;
            let scores = b * heads * hw * hw * F32;
            attention = attention.max(scores.min(crate::models::nn::MAX_SCORE_ELEMENTS as u64 * F32));
            bindings.push(Binding {
                component: component::UNET,
                what: format!("self-attention scores at {h}×{w}"),
                bytes: scores,
                piece: Some(b * heads * hw * F32),
            });
            let inner = 4 * c;
            bindings.push(Binding {
                component: component::UNET,
                what: format!("feed-forward hidden rows at {h}×{w}"),
                bytes: b * hw * 2 * inner * e,
                piece: Some(b * 2 * inner * e),
            });
            bindings.push(Binding {
                component: component::UNET,
                what: format!("cross-attention scores at {h}×{w}"),
                bytes: b * heads * hw * TOKENS * F32,
                piece: Some(b * heads * TOKENS * F32),
            });
        }
    }
    // Under f16 the convolution island holds one widened input, its f32 output and its widened weight beside
    // the activations at rest.
    let island = if e < F32 { 2 * widest / e * F32 + widest_weight } else { 0 };
    (bindings, peak_skips + 4 * widest + attention + island)
}

/// The tiny decoder's largest buffers at latents `lh` × `lw` (batch 1) and its estimated peak.
fn tiny_decoder_plan(cfg: &TinyDecoderConfig, lh: usize, lw: usize, e: u64) -> (Vec<Binding>, u64) {
    // bytes_per_latent_row counts f32, what its convolutions bind in both precisions; at rest `e` a value.
    let row = cfg.bytes_per_latent_row(1, lw);
    let band = (1 + 2 * cfg.halo_rows() as u64).min(lh as u64) * row;
    let whole = row * lh as u64;
    let f = cfg.upscale_factor();
    let binding = Binding {
        component: component::DECODER,
        what: format!("widest activation ({}×{} image)", lw * f, lh * f),
        bytes: whole,
        piece: Some(band),
    };
    (vec![binding], 3 * whole / F32 * e + if e < F32 { whole } else { 0 })
}

/// The full decoder's (AutoencoderKL) largest buffers at latents `lh` × `lw` (batch 1): the widest of its
/// levels, the upsampled input of each up block included; its mid-block attention is split by queries.
fn kl_decoder_plan(cfg: &VaeConfig, lh: usize, lw: usize, e: u64) -> (Vec<Binding>, u64) {
    let boc = &cfg.block_out_channels;
    let n = boc.len();
    let mut bindings = Vec::new();
    let mut widest = 0;
    for j in 0..n {
        let (h, w) = ((lh << j) as u64, (lw << j) as u64);
        // Up block j works at 2^j × the latents with boc[n-1-j] channels, its input upsampled from j-1's.
        let c = boc[n - 1 - j].max(if j > 0 { boc[n - j] } else { boc[n - 1] }) as u64;
        let bytes = c * h * w * F32;
        widest = widest.max(bytes);
        bindings.push(Binding { component: component::DECODER, what: format!("activation at {w}×{h} ({c} channels)"), bytes, piece: None });
    }
    let tokens = (lh * lw) as u64;
    if cfg.mid_block_add_attention {
        bindings.push(Binding {
            component: component::DECODER,
            what: format!("mid-block attention scores ({lw}×{lh})"),
            bytes: tokens * tokens * F32,
            piece: Some(tokens * F32),
        });
    }
    (bindings, 3 * widest / F32 * e + if e < F32 { widest } else { 0 })
}
