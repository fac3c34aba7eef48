//! Single-file Stable Diffusion 1.x checkpoints (the original LDM layout that Automatic1111 / ComfyUI users
//! trade: `model.diffusion_model.*`, `first_stage_model.*`, `cond_stage_model.transformer.*` in one
//! safetensors file), read as the three diffusers / transformers models they hold.
//!
//! Keys are mapped as diffusers' single-file loader maps them (`convert_ldm_unet_checkpoint`,
//! `convert_ldm_vae_checkpoint`, `convert_ldm_clip_checkpoint`), but the other way round: from each model's
//! config we list every tensor the model needs with its name in the checkpoint. So a missing tensor is
//! named by its checkpoint name before anything is converted, and a tensor of the checkpoint's models
//! that no config explains (another architecture) is refused by name rather than dropped.

use crate::config::ConfigJson;
use crate::error::{Error, Result};
use crate::models::unet::UNetConfig;
use crate::models::vae::VaeConfig;

use crate::weights::{FileIndex, Pick, SafeTensors};

pub const UNET_PREFIX: &str = "model.diffusion_model.";
pub const VAE_PREFIX: &str = "first_stage_model.";
pub const CLIP_PREFIX: &str = "cond_stage_model.transformer.";

/// The configs a checkpoint is read with: SD 1.x's (as the stable-diffusion-v1-5 folders publish them) or
/// those of a diffusers pipeline folder (`--config`).
pub struct CheckpointConfigs {
    pub unet: ConfigJson,
    pub vae: ConfigJson,
    pub text_encoder: ConfigJson,
    pub scheduler: ConfigJson,
}

impl CheckpointConfigs {
    /// Stable Diffusion 1.x: the configs of the stable-diffusion-v1-5 pipeline folder (src/loaders/sd1/).
    pub fn sd1() -> Self {
        let parse = |name: &str, text: &str| ConfigJson::parse(format!("control-clip's SD 1.x {name} config"), text).expect("built-in config parses");
        Self {
            unet: parse("unet", include_str!("sd1/unet.json")),
            vae: parse("vae", include_str!("sd1/vae.json")),
            text_encoder: parse("text_encoder", include_str!("sd1/text_encoder.json")),
            scheduler: parse("scheduler", include_str!("sd1/scheduler.json")),
        }
    }

    /// The configs of a diffusers pipeline folder (unet/, vae/, text_encoder/, scheduler/; weights are
    /// not read), as diffusers' `from_single_file(config=DIR)` takes them.
    pub fn read_dir(dir: &std::path::Path) -> Result<Self> {
        Ok(Self {
            unet: ConfigJson::read(&dir.join("unet/config.json"))?,
            vae: ConfigJson::read(&dir.join("vae/config.json"))?,
            text_encoder: ConfigJson::read(&dir.join("text_encoder/config.json"))?,
            scheduler: ConfigJson::read(&dir.join("scheduler/scheduler_config.json"))?,
        })
    }
}

/// Which of the checkpoint's models.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    TextEncoder,
    Unet,
    Vae,
}

impl Part {
    /// Its folder's name in a diffusers pipeline.
    pub fn name(self) -> &'static str {
        match self {
            Part::TextEncoder => "text_encoder",
            Part::Unet => "unet",
            Part::Vae => "vae",
        }
    }
}

impl CheckpointConfigs {
    /// The config `part` is read with.
    pub fn of(&self, part: Part) -> &ConfigJson {
        match part {
            Part::TextEncoder => &self.text_encoder,
            Part::Unet => &self.unet,
            Part::Vae => &self.vae,
        }
    }
}

/// A single-file checkpoint, known by its header; each model's tensors are read when asked for.
pub struct Checkpoint {
    index: FileIndex,
    /// The checkpoint's text-encoder prefix: `cond_stage_model.transformer.text_model.` (transformers ≥
    /// 4.x layout) or `cond_stage_model.transformer.` (older files without `text_model.`).
    clip_prefix: String,
}

/// LDM training buffers and copies a checkpoint may carry besides the three models (never read).
const IGNORED_PREFIXES: [&str; 11] = [
    "model_ema.",
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_",
    "log_one_minus_alphas_cumprod",
    "posterior_",
    "logvar",
    "lvlb_weights",
    "cond_stage_model.transformer.text_model.embeddings.position_ids",
    "cond_stage_model.transformer.embeddings.position_ids",
];

impl Checkpoint {
    /// Reads the header and recognises the layout; other model families are refused by what they are.
    pub fn open(path: &std::path::Path) -> Result<Self> {
        let index = FileIndex::read(path)?;
        let has = |prefix: &str| index.keys().any(|k| k.starts_with(prefix));
        let refuse = |what: &str| Err(Error::file(index.name(), format!("is {what}; control-clip reads SD 1.x single-file checkpoints (convert others to a diffusers folder with diffusers' from_single_file + save_pretrained, then use --pipeline)")));
        if has("conditioner.embedders.") {
            return refuse("an SDXL-type checkpoint (conditioner.embedders.*)");
        }
        if has("cond_stage_model.model.") {
            return refuse("an SD 2.x-type checkpoint (an OpenCLIP text encoder, cond_stage_model.model.*)");
        }
        if has("model.diffusion_model.joint_blocks.") || has("text_encoders.") {
            return refuse("an SD 3-type checkpoint");
        }
        if has("control_model.") {
            return refuse("a ControlNet checkpoint");
        }
        for (prefix, what) in [(UNET_PREFIX, "UNet"), (VAE_PREFIX, "autoencoder"), (CLIP_PREFIX, "CLIP text encoder")] {
            if !has(prefix) {
                return Err(Error::file(index.name(), format!("has no {what} (no `{prefix}*` tensors): not a single-file SD checkpoint in the original LDM layout")));
            }
        }
        let clip_prefix = if has(&format!("{CLIP_PREFIX}text_model.")) { format!("{CLIP_PREFIX}text_model.") } else { CLIP_PREFIX.to_string() };
        Ok(Self { index, clip_prefix })
    }

    pub fn name(&self) -> &str {
        self.index.name()
    }

    /// The tensors of the checkpoint that no model reads and that are not known training leftovers (EMA
    /// copies, noise-schedule buffers); the caller says it skips them.
    pub fn unused(&self) -> Vec<&str> {
        self.index
            .keys()
            .filter(|k| ![UNET_PREFIX, VAE_PREFIX, CLIP_PREFIX].iter().any(|p| k.starts_with(p)) && !IGNORED_PREFIXES.iter().any(|p| k.starts_with(p)))
            .collect()
    }

    /// One model's tensors under their diffusers / transformers names, checked against `config`: every
    /// tensor the model needs present, none of the model's tensors left unexplained, the shapes that tell
    /// one architecture from another as the config says.
    pub fn read(&self, part: Part, config: &ConfigJson) -> Result<SafeTensors> {
        let (prefix, picks) = match part {
            Part::Unet => (UNET_PREFIX.to_string(), unet_picks(config)?),
            Part::Vae => (VAE_PREFIX.to_string(), vae_picks(config)?),
            Part::TextEncoder => (self.clip_prefix.clone(), clip_picks(config)?),
        };
        let picks: Vec<Pick> = picks.into_iter().map(|p| Pick { from: format!("{prefix}{}", p.from), ..p }).collect();
        let wanted: std::collections::BTreeSet<&str> = picks.iter().map(|p| p.from.as_str()).collect();
        let component = part.name();
        // The shapes first: a checkpoint of another model fails there with the clearest message.
        for (key, expected) in signature_shapes(part, config)? {
            let key = format!("{prefix}{key}");
            if let Some(found) = self.index.shape(&key)
                && found != expected.as_slice()
            {
                return Err(Error::tensor(
                    self.name(),
                    &key,
                    format!("has shape {found:?}, but the {component} config ({}) gives {expected:?}: this checkpoint is another model; pass --config with its configs", config.file),
                ));
            }
        }
        let missing: Vec<&str> = picks.iter().map(|p| p.from.as_str()).filter(|k| !self.index.contains(k)).collect();
        if !missing.is_empty() {
            return Err(Error::tensor(
                self.name(),
                missing[0],
                format!(
                    "missing ({} of the {component}'s tensors are): the {component} config ({}) does not describe this checkpoint; pass --config with the model's configs",
                    missing.len(),
                    config.file
                ),
            ));
        }
        let part_prefix = match part {
            Part::TextEncoder => CLIP_PREFIX,
            _ => prefix.as_str(),
        };
        let extra: Vec<&str> = self
            .index
            .keys()
            .filter(|k| k.starts_with(part_prefix) && !wanted.contains(k) && !IGNORED_PREFIXES.iter().any(|p| k.starts_with(p)))
            .collect();
        if !extra.is_empty() {
            return Err(Error::tensor(
                self.name(),
                extra[0],
                format!(
                    "is not part of the {component} its config ({}) describes ({} such tensors): another architecture, or pass --config with the model's configs",
                    config.file,
                    extra.len()
                ),
            ));
        }
        self.index.read_tensors(&format!("{} ({component})", self.name()), &picks)
    }
}

fn pick(from: String, to: String) -> Pick {
    Pick { from, to, shape: None }
}

/// `weight` and `bias` of a layer.
fn layer(out: &mut Vec<Pick>, from: &str, to: &str) {
    for p in ["weight", "bias"] {
        out.push(pick(format!("{from}.{p}"), format!("{to}.{p}")));
    }
}

/// The UNet's tensors, LDM name → diffusers name (names without the `model.diffusion_model.` prefix).
fn unet_picks(c: &ConfigJson) -> Result<Vec<Pick>> {
    let cfg = UNetConfig::from_json(c)?;
    let lpb = cfg.layers_per_block[0];
    if cfg.layers_per_block.iter().any(|&l| l != lpb) {
        return Err(Error::config(&c.file, "layers_per_block", "differs between blocks, which the LDM layout cannot number"));
    }
    let boc = &cfg.block_out_channels;
    let n = boc.len();
    let mut out = Vec::new();
    let resnet = |out: &mut Vec<Pick>, from: &str, to: &str, cin: usize, cout: usize| {
        for (a, b) in [("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("emb_layers.1", "time_emb_proj"), ("out_layers.0", "norm2"), ("out_layers.3", "conv2")] {
            layer(out, &format!("{from}.{a}"), &format!("{to}.{b}"));
        }
        if cin != cout {
            layer(out, &format!("{from}.skip_connection"), &format!("{to}.conv_shortcut"));
        }
    };
    // A spatial transformer's tensors have the same names in both layouts.
    let transformer = |out: &mut Vec<Pick>, from: &str, to: &str, blocks: usize| {
        let mut names = vec!["norm".to_string(), "proj_in".to_string(), "proj_out".to_string()];
        for k in 0..blocks {
            let t = format!("transformer_blocks.{k}");
            for l in ["norm1", "norm2", "norm3", "attn1.to_out.0", "attn2.to_out.0", "ff.net.0.proj", "ff.net.2"] {
                names.push(format!("{t}.{l}"));
            }
            for a in ["attn1", "attn2"] {
                for w in ["to_q", "to_k", "to_v"] {
                    out.push(pick(format!("{from}.{t}.{a}.{w}.weight"), format!("{to}.{t}.{a}.{w}.weight")));
                }
            }
        }
        for l in names {
            layer(out, &format!("{from}.{l}"), &format!("{to}.{l}"));
        }
    };
    layer(&mut out, "time_embed.0", "time_embedding.linear_1");
    layer(&mut out, "time_embed.2", "time_embedding.linear_2");
    layer(&mut out, "input_blocks.0.0", "conv_in");
    let mut prev = boc[0];
    for b in 0..n {
        for l in 0..lpb {
            let i = 1 + b * (lpb + 1) + l;
            resnet(&mut out, &format!("input_blocks.{i}.0"), &format!("down_blocks.{b}.resnets.{l}"), if l == 0 { prev } else { boc[b] }, boc[b]);
            if cfg.down_block_types[b] == "CrossAttnDownBlock2D" {
                transformer(&mut out, &format!("input_blocks.{i}.1"), &format!("down_blocks.{b}.attentions.{l}"), cfg.transformer_layers_per_block[b]);
            }
        }
        if b + 1 < n {
            layer(&mut out, &format!("input_blocks.{}.0.op", (b + 1) * (lpb + 1)), &format!("down_blocks.{b}.downsamplers.0.conv"));
        }
        prev = boc[b];
    }
    if cfg.mid_block {
        let c = boc[n - 1];
        resnet(&mut out, "middle_block.0", "mid_block.resnets.0", c, c);
        transformer(&mut out, "middle_block.1", "mid_block.attentions.0", cfg.transformer_layers_per_block[n - 1]);
        resnet(&mut out, "middle_block.2", "mid_block.resnets.1", c, c);
    }
    let rev: Vec<usize> = boc.iter().rev().copied().collect();
    let mut prev_out = rev[0];
    for u in 0..n {
        let cross = cfg.up_block_types[u] == "CrossAttnUpBlock2D";
        let skip_in = rev[(u + 1).min(n - 1)];
        for l in 0..=lpb {
            let i = u * (lpb + 1) + l;
            let skip = if l == lpb { skip_in } else { rev[u] };
            let cin = if l == 0 { prev_out } else { rev[u] };
            resnet(&mut out, &format!("output_blocks.{i}.0"), &format!("up_blocks.{u}.resnets.{l}"), cin + skip, rev[u]);
            if cross {
                transformer(&mut out, &format!("output_blocks.{i}.1"), &format!("up_blocks.{u}.attentions.{l}"), cfg.transformer_layers_per_block[n - 1 - u]);
            }
        }
        if u + 1 < n {
            let i = u * (lpb + 1) + lpb;
            layer(&mut out, &format!("output_blocks.{i}.{}.conv", if cross { 2 } else { 1 }), &format!("up_blocks.{u}.upsamplers.0.conv"));
        }
        prev_out = rev[u];
    }
    layer(&mut out, "out.0", "conv_norm_out");
    layer(&mut out, "out.2", "conv_out");
    Ok(out)
}

/// The autoencoder's tensors (encoder and decoder), LDM name → diffusers name.
fn vae_picks(c: &ConfigJson) -> Result<Vec<Pick>> {
    // The decoder's config is the whole autoencoder's: the encoder mirrors it.
    let cfg = VaeConfig::from_json(c)?;
    let (boc, lpb) = (&cfg.block_out_channels, cfg.layers_per_block);
    let n = boc.len();
    let mut out = Vec::new();
    let resnet = |out: &mut Vec<Pick>, from: &str, to: &str, cin: usize, cout: usize| {
        for l in ["norm1", "conv1", "norm2", "conv2"] {
            layer(out, &format!("{from}.{l}"), &format!("{to}.{l}"));
        }
        if cin != cout {
            layer(out, &format!("{from}.nin_shortcut"), &format!("{to}.conv_shortcut"));
        }
    };
    let attention = cfg.mid_block_add_attention;
    let mid = |out: &mut Vec<Pick>, half: &str| {
        let ch = boc[n - 1];
        resnet(out, &format!("{half}.mid.block_1"), &format!("{half}.mid_block.resnets.0"), ch, ch);
        if attention {
            let (from, to) = (format!("{half}.mid.attn_1"), format!("{half}.mid_block.attentions.0"));
            layer(out, &format!("{from}.norm"), &format!("{to}.group_norm"));
            // 1×1 convolutions in LDM, linears in diffusers: the same numbers read as [c, c].
            for (a, b) in [("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("proj_out", "to_out.0")] {
                out.push(Pick { from: format!("{from}.{a}.weight"), to: format!("{to}.{b}.weight"), shape: Some(vec![ch, ch]) });
                out.push(pick(format!("{from}.{a}.bias"), format!("{to}.{b}.bias")));
            }
        }
        resnet(out, &format!("{half}.mid.block_2"), &format!("{half}.mid_block.resnets.1"), ch, ch);
        layer(out, &format!("{half}.norm_out"), &format!("{half}.conv_norm_out"));
        layer(out, &format!("{half}.conv_in"), &format!("{half}.conv_in"));
        layer(out, &format!("{half}.conv_out"), &format!("{half}.conv_out"));
    };
    mid(&mut out, "encoder");
    let mut prev = boc[0];
    for i in 0..n {
        for j in 0..lpb {
            resnet(&mut out, &format!("encoder.down.{i}.block.{j}"), &format!("encoder.down_blocks.{i}.resnets.{j}"), if j == 0 { prev } else { boc[i] }, boc[i]);
        }
        if i + 1 < n {
            layer(&mut out, &format!("encoder.down.{i}.downsample.conv"), &format!("encoder.down_blocks.{i}.downsamplers.0.conv"));
        }
        prev = boc[i];
    }
    mid(&mut out, "decoder");
    // LDM numbers the decoder's levels from the highest resolution, diffusers in the order they run.
    let rev: Vec<usize> = boc.iter().rev().copied().collect();
    let mut prev = rev[0];
    for i in 0..n {
        let level = n - 1 - i;
        for j in 0..=lpb {
            resnet(&mut out, &format!("decoder.up.{level}.block.{j}"), &format!("decoder.up_blocks.{i}.resnets.{j}"), if j == 0 { prev } else { rev[i] }, rev[i]);
        }
        if i + 1 < n {
            layer(&mut out, &format!("decoder.up.{level}.upsample.conv"), &format!("decoder.up_blocks.{i}.upsamplers.0.conv"));
        }
        prev = rev[i];
    }
    if c.bool_or("use_quant_conv", true)? {
        layer(&mut out, "quant_conv", "quant_conv");
    }
    if cfg.use_post_quant_conv {
        layer(&mut out, "post_quant_conv", "post_quant_conv");
    }
    Ok(out)
}

/// The CLIP text model's tensors, names after `text_model.` in both layouts.
fn clip_picks(c: &ConfigJson) -> Result<Vec<Pick>> {
    let layers = c.positive_usize("num_hidden_layers")?;
    let mut out = Vec::new();
    for e in ["token_embedding", "position_embedding"] {
        out.push(pick(format!("embeddings.{e}.weight"), format!("text_model.embeddings.{e}.weight")));
    }
    for i in 0..layers {
        for l in ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "layer_norm1", "layer_norm2", "mlp.fc1", "mlp.fc2"] {
            layer(&mut out, &format!("encoder.layers.{i}.{l}"), &format!("text_model.encoder.layers.{i}.{l}"));
        }
    }
    layer(&mut out, "final_layer_norm", "text_model.final_layer_norm");
    Ok(out)
}

/// Shapes (under the checkpoint's names, without the prefix) that tell SD-family models apart: the
/// UNet's input and context widths (inpainting and SD 2.x differ there), the autoencoder's latent width,
/// the text encoder's vocabulary and width.
fn signature_shapes(part: Part, c: &ConfigJson) -> Result<Vec<(String, Vec<usize>)>> {
    Ok(match part {
        Part::Unet => {
            let cfg = UNetConfig::from_json(c)?;
            let first_cross = cfg.down_block_types.iter().position(|t| t == "CrossAttnDownBlock2D");
            let mut out = vec![("input_blocks.0.0.weight".to_string(), vec![cfg.block_out_channels[0], cfg.in_channels, cfg.conv_in_kernel, cfg.conv_in_kernel])];
            if let Some(b) = first_cross {
                let inner = cfg.block_out_channels[b];
                out.push((format!("input_blocks.{}.1.transformer_blocks.0.attn2.to_k.weight", 1 + b * (cfg.layers_per_block[0] + 1)), vec![inner, cfg.cross_attention_dim]));
            }
            out
        }
        Part::Vae => {
            let cfg = VaeConfig::from_json(c)?;
            vec![("decoder.conv_in.weight".to_string(), vec![cfg.block_out_channels[cfg.block_out_channels.len() - 1], cfg.latent_channels, 3, 3])]
        }
        Part::TextEncoder => {
            let (vocab, hidden) = (c.positive_usize("vocab_size")?, c.positive_usize("hidden_size")?);
            vec![
                ("embeddings.token_embedding.weight".to_string(), vec![vocab, hidden]),
                ("embeddings.position_embedding.weight".to_string(), vec![c.positive_usize("max_position_embeddings")?, hidden]),
            ]
        }
    })
}
