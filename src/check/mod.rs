//! Verifying a model against reference outputs: the logic behind `control-clip check`, kept in the
//! library so that the tests, the CLI and the browser compare the same way. [`Component`] is the one
//! table of what can be checked; [`run`] checks one.
//!
//! io files are safetensors; see README.md ("Checking a model") for the names each component expects.

mod finetune;
mod scheduler;

pub use finetune::{check_finetune_step, check_finetune_step_with_unet};

pub use scheduler::{check_scheduler, read_f64};

use burn::tensor::Device;
use serde::Serialize;

use crate::config::ConfigJson;
use crate::device::read_f32;
use crate::error::{Error, Result};
use crate::models::ModelFolder;
use crate::models::attention::ControlContext;
use crate::models::clip::ClipTextModel;
use crate::models::clip_vision::ClipVisionModel;
use crate::models::taesd::{TinyDecoder, TinyEncoder};
use crate::models::unet::transformer::Attention;
use crate::models::unet::{Conditioning, UNet2DConditionModel};
use crate::models::vae::VaeDecoder;
use crate::weights::SafeTensors;

/// What `control-clip check` (and the browser's `checkModel`) can check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    /// A transformers CLIPTextModel / CLIPTextModelWithProjection folder.
    TextEncoder,
    /// A diffusers UNet2DConditionModel folder.
    Unet,
    /// A diffusers AutoencoderKL folder (its decoder is checked).
    VaeDecoder,
    /// A diffusers AutoencoderTiny (TAESD) folder (its decoder is checked).
    TinyDecoder,
    /// A diffusers scheduler: the folder holds scheduler_config.json and no weights.
    Scheduler,
    /// A UNet2DConditionModel folder run with Control-CLIP's decoupled cross-attention.
    ControlUnet,
    /// The identity property on a UNet folder and its `unet` io file: f_c = E with weights (1, 0) must
    /// give the plain UNet's output.
    ControlIdentity,
    /// One decoupled cross-attention layer: config.json (query_dim, cross_attention_dim, heads, dim_head)
    /// + weights with diffusers' `Attention` keys.
    CrossAttention,
    /// A transformers CLIPVisionModel(WithProjection) or whole CLIPModel folder: its vision tower.
    VisionEncoder,
    /// One Control-CLIP training step (losses, gradients, AdamW) on E, a CLIPTextModelWithProjection folder.
    FinetuneStep,
}

impl Component {
    pub const ALL: [Component; 10] = [
        Component::TextEncoder,
        Component::Unet,
        Component::VaeDecoder,
        Component::TinyDecoder,
        Component::Scheduler,
        Component::ControlUnet,
        Component::ControlIdentity,
        Component::CrossAttention,
        Component::VisionEncoder,
        Component::FinetuneStep,
    ];

    /// The name on the command line, in the browser API and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Component::TextEncoder => "text-encoder",
            Component::Unet => "unet",
            Component::VaeDecoder => "vae-decoder",
            Component::TinyDecoder => "tiny-decoder",
            Component::Scheduler => "scheduler",
            Component::ControlUnet => "control-unet",
            Component::ControlIdentity => "control-identity",
            Component::CrossAttention => "cross-attention",
            Component::VisionEncoder => "vision-encoder",
            Component::FinetuneStep => "finetune-step",
        }
    }

    /// The config file of the component's folder.
    pub fn config_file(self) -> &'static str {
        match self {
            Component::Scheduler => "scheduler_config.json",
            _ => "config.json",
        }
    }

    /// Whether the folder holds weights (all but a scheduler).
    pub fn has_weights(self) -> bool {
        self != Component::Scheduler
    }
}

impl std::fmt::Display for Component {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Component {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL.into_iter().find(|c| c.name() == s).ok_or_else(|| {
            let known: Vec<_> = Self::ALL.iter().map(|c| c.name()).collect();
            Error::invalid("component", format!("unknown component `{s}` (expected one of {})", known.join(", ")))
        })
    }
}

/// Checks `component`, built from its folder's `config` and `weights` (None for a scheduler), against
/// the reference inputs and outputs in `io`.
pub async fn run(component: Component, config: &ConfigJson, weights: Option<&SafeTensors>, io: &SafeTensors, device: &Device, tolerance: f32) -> Result<CheckReport> {
    if !(tolerance >= 0.0) {
        return Err(Error::invalid("tolerance", format!("{tolerance} is not a non-negative number")));
    }
    fn build<M: ModelFolder>(component: Component, config: &ConfigJson, weights: Option<&SafeTensors>, device: &Device) -> Result<M> {
        let weights = weights.ok_or_else(|| Error::invalid("weights", format!("checking a {component} needs the model's weights")))?;
        M::from_parts(config, weights, device)
    }
    match component {
        Component::TextEncoder => check_text_encoder(&build(component, config, weights, device)?, io, tolerance).await,
        Component::Unet => check_unet(&build(component, config, weights, device)?, io, tolerance).await,
        Component::VaeDecoder => check_vae_decoder(&build(component, config, weights, device)?, io, tolerance).await,
        Component::TinyDecoder => check_tiny_decoder(&build(component, config, weights, device)?, io, tolerance).await,
        Component::Scheduler => check_scheduler(io, config, device, tolerance).await,
        Component::ControlUnet => check_control_unet(&build(component, config, weights, device)?, io, tolerance).await,
        Component::ControlIdentity => check_control_identity(&build(component, config, weights, device)?, io, tolerance).await,
        Component::CrossAttention => check_cross_attention(&build(component, config, weights, device)?, io, tolerance).await,
        Component::VisionEncoder => check_vision_encoder(&build(component, config, weights, device)?, io, tolerance).await,
        Component::FinetuneStep => check_finetune_step(&build(component, config, weights, device)?, io, tolerance).await,
    }
}

/// [`run`] on a model folder as transformers / diffusers save it.
#[cfg(not(target_arch = "wasm32"))]
pub async fn run_dir(component: Component, dir: &std::path::Path, io: &SafeTensors, device: &Device, tolerance: f32) -> Result<CheckReport> {
    let config = ConfigJson::read(&dir.join(component.config_file()))?;
    let weights = match component.has_weights() {
        true => Some(crate::weights::read_weights(dir, None)?),
        false => None,
    };
    run(component, &config, weights.as_ref(), io, device, tolerance).await
}

/// Error of one output against its reference.
#[derive(Debug, Clone, Serialize)]
pub struct OutputError {
    pub name: String,
    pub max_abs_err: f32,
    /// `max_abs_err / max |expected|`: the error relative to the output's scale.
    pub max_rel_err: f32,
    /// This output's own limit on `max_abs_err`, where a check sets one (else the report's tolerance).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<f32>,
}

/// The result of a check: worst errors over all compared outputs.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub component: String,
    pub max_abs_err: f32,
    pub max_rel_err: f32,
    pub tolerance: f32,
    pub pass: bool,
    /// Every output compared, by name: the report says what it checked.
    pub outputs: Vec<OutputError>,
}

impl CheckReport {
    pub fn new(component: &str, outputs: Vec<OutputError>, tolerance: f32) -> Self {
        let max_abs_err = outputs.iter().map(|o| o.max_abs_err).fold(0.0, f32::max);
        let max_rel_err = outputs.iter().map(|o| o.max_rel_err).fold(0.0, f32::max);
        // NaN never passes: `<=` is false for it.
        let pass = !outputs.is_empty() && outputs.iter().all(|o| o.max_abs_err <= o.limit.unwrap_or(tolerance));
        Self { component: component.into(), max_abs_err, max_rel_err, tolerance, pass, outputs }
    }

    pub fn json_line(&self) -> String {
        serde_json::to_string(self).expect("report serializes")
    }
}

/// Compares `actual` with the reference tensor `name` of `io`, shapes included.
pub fn compare(io: &SafeTensors, name: &str, actual_shape: &[usize], actual: &[f32]) -> Result<OutputError> {
    let (shape, expected) = io.f32(name)?;
    if shape != actual_shape {
        return Err(Error::tensor(io.name(), name, format!("reference has shape {shape:?}, the model produced {actual_shape:?}")));
    }
    Ok(compare_values(name, actual, &expected))
}

/// The error of `actual` against `expected` (same length).
pub fn compare_values(name: &str, actual: &[f32], expected: &[f32]) -> OutputError {
    let mut max_abs_err = if actual.len() == expected.len() { 0f32 } else { f32::NAN };
    let mut scale = 0f32;
    for (a, e) in actual.iter().zip(expected) {
        let err = (a - e).abs();
        // Keep a NaN from the model visible (f32::max would drop it).
        max_abs_err = if err.is_nan() || max_abs_err.is_nan() { f32::NAN } else { max_abs_err.max(err) };
        scale = scale.max(e.abs());
    }
    OutputError { name: name.into(), max_abs_err, max_rel_err: max_abs_err / scale.max(f32::MIN_POSITIVE), limit: None }
}

/// Runs the text encoder on the io file's `input_ids` and compares `last_hidden_state`, and whichever of
/// `pooler_output`, `text_embeds` and `last_hidden_state_clip_skip_<k>` the reference has (a
/// `CLIPTextModelWithProjection` returns `text_embeds` and no `pooler_output`); the report names each.
pub async fn check_text_encoder(model: &ClipTextModel, io: &SafeTensors, tolerance: f32) -> Result<CheckReport> {
    let (shape, ids) = io.i64("input_ids")?;
    if shape.len() != 2 {
        return Err(Error::tensor(io.name(), "input_ids", format!("expected [batch, positions], found shape {shape:?}")));
    }
    let rows: Vec<Vec<u32>> = ids
        .chunks(shape[1].max(1))
        .map(|row| row.iter().map(|&id| u32::try_from(id).unwrap_or(u32::MAX)).collect())
        .collect();
    if io.contains("text_embeds") && !model.has_projection() {
        return Err(Error::tensor(
            io.name(),
            "text_embeds",
            "the reference has projected embeddings but the model has no `text_projection.weight`",
        ));
    }

    let mut outputs = Vec::new();
    let out = model.forward(&rows, 0)?;
    let (s, v) = read_f32(out.last_hidden_state).await?;
    outputs.push(compare(io, "last_hidden_state", &s, &v)?);
    if io.contains("pooler_output") {
        let (s, v) = read_f32(out.pooler_output).await?;
        outputs.push(compare(io, "pooler_output", &s, &v)?);
    }
    if io.contains("text_embeds") {
        let (s, v) = read_f32(out.text_embeds.expect("checked above")).await?;
        outputs.push(compare(io, "text_embeds", &s, &v)?);
    }
    let skips: Vec<(String, usize)> = io
        .keys()
        .filter_map(|k| Some((k.to_string(), k.strip_prefix("last_hidden_state_clip_skip_")?.parse().ok()?)))
        .collect();
    for (key, skip) in skips {
        let out = model.forward(&rows, skip)?;
        let (s, v) = read_f32(out.last_hidden_state).await?;
        outputs.push(compare(io, &key, &s, &v)?);
    }
    Ok(CheckReport::new("text-encoder", outputs, tolerance))
}

/// Runs the vision tower on the io file's `pixel_values` [B, C, S, S] and compares `last_hidden_state`,
/// `pooler_output` and (when the model has `visual_projection`) `image_embeds`, each where the io file has it.
pub async fn check_vision_encoder(model: &ClipVisionModel, io: &SafeTensors, tolerance: f32) -> Result<CheckReport> {
    let pixels = io_tensor::<4>(io, "pixel_values", &model.device())?;
    if io.contains("image_embeds") && !model.has_projection() {
        return Err(Error::tensor(io.name(), "image_embeds", "the reference has projected embeddings but the model has no `visual_projection.weight`"));
    }
    let out = model.forward(pixels)?;
    let mut outputs = Vec::new();
    let (s, v) = read_f32(out.last_hidden_state).await?;
    outputs.push(compare(io, "last_hidden_state", &s, &v)?);
    if io.contains("pooler_output") {
        let (s, v) = read_f32(out.pooler_output).await?;
        outputs.push(compare(io, "pooler_output", &s, &v)?);
    }
    if let (true, Some(embeds)) = (io.contains("image_embeds"), out.image_embeds) {
        let (s, v) = read_f32(embeds).await?;
        outputs.push(compare(io, "image_embeds", &s, &v)?);
    }
    Ok(CheckReport::new("vision-encoder", outputs, tolerance))
}

/// Runs the UNet on the io file's `sample` [B, C, H, W], `timestep` ([B] or one value for all rows) and
/// `encoder_hidden_states` [B, L, D], and compares with `out`.
pub async fn check_unet(model: &UNet2DConditionModel, io: &SafeTensors, tolerance: f32) -> Result<CheckReport> {
    let device = model.device();
    let sample = io_tensor::<4>(io, "sample", &device)?;
    let context = io_tensor::<3>(io, "encoder_hidden_states", &device)?;
    let batch = sample.dims()[0];
    let timesteps = io_timesteps(io, batch)?;
    let out = model.forward(sample, &timesteps, &context)?;
    let (s, v) = read_f32(out).await?;
    Ok(CheckReport::new("unet", vec![compare(io, "out", &s, &v)?], tolerance))
}

/// `timestep`: one value for the whole batch or one per row; float, or integer as diffusers' schedulers
/// hand it to the UNet.
fn io_timesteps(io: &SafeTensors, batch: usize) -> Result<Vec<f32>> {
    let t = if io.is_float("timestep")? {
        io.f32("timestep")?.1
    } else {
        io.i64("timestep")?.1.into_iter().map(|t| t as f32).collect()
    };
    match t.len() {
        1 => Ok(vec![t[0]; batch]),
        n if n == batch => Ok(t),
        n => Err(Error::tensor(io.name(), "timestep", format!("{n} values for a batch of {batch}"))),
    }
}

/// The per-row Control-CLIP weights of an io file: `weight_category` and `weight_style`, each one value
/// for the whole batch or one per row.
fn io_control_weights(io: &SafeTensors, batch: usize) -> Result<Vec<(f32, f32)>> {
    let per_row = |name: &str| -> Result<Vec<f32>> {
        let (_, v) = io.f32(name)?;
        match v.len() {
            1 => Ok(vec![v[0]; batch]),
            n if n == batch => Ok(v),
            n => Err(Error::tensor(io.name(), name, format!("{n} values for a batch of {batch}"))),
        }
    };
    Ok(per_row("weight_category")?.into_iter().zip(per_row("weight_style")?).collect())
}

fn io_control_context(io: &SafeTensors, batch: usize, device: &Device) -> Result<ControlContext> {
    let category = io_tensor::<3>(io, "context_category", device)?;
    let style = io_tensor::<3>(io, "context_style", device)?;
    ControlContext::new(category, style, &io_control_weights(io, batch)?)
}

/// Runs the UNet with decoupled cross-attention on `sample`, `timestep`, `context_category`,
/// `context_style`, `weight_category`, `weight_style` and compares with `out`.
pub async fn check_control_unet(model: &UNet2DConditionModel, io: &SafeTensors, tolerance: f32) -> Result<CheckReport> {
    let device = model.device();
    let sample = io_tensor::<4>(io, "sample", &device)?;
    let batch = sample.dims()[0];
    let timesteps = io_timesteps(io, batch)?;
    let control = io_control_context(io, batch, &device)?;
    let out = model.forward_control(sample, &timesteps, &control)?;
    let (s, v) = read_f32(out).await?;
    Ok(CheckReport::new("control-unet", vec![compare(io, "out", &s, &v)?], tolerance))
}

/// The identity property of the decoupled attention (DESIGN.md §2): with the category context equal to
/// the io file's `encoder_hidden_states` (f_c = E), any other style context and weights (1, 0), the
/// controlled UNet gives the plain UNet's output on the same `sample` and `timestep`.
pub async fn check_control_identity(model: &UNet2DConditionModel, io: &SafeTensors, tolerance: f32) -> Result<CheckReport> {
    let device = model.device();
    let sample = io_tensor::<4>(io, "sample", &device)?;
    let context = io_tensor::<3>(io, "encoder_hidden_states", &device)?;
    let batch = sample.dims()[0];
    let timesteps = io_timesteps(io, batch)?;
    // Something unlike the category context, so that a style branch leaking through would show.
    let style = context.clone().flip([1]) * 3.0;
    let control = ControlContext::new(context.clone(), style, &vec![(1.0, 0.0); batch])?;
    let (_, plain) = read_f32(model.forward(sample.clone(), &timesteps, &context)?).await?;
    let (_, controlled) = read_f32(model.forward_control(sample, &timesteps, &control)?).await?;
    Ok(CheckReport::new("control-identity", vec![compare_values("out", &controlled, &plain)], tolerance))
}

/// One decoupled cross-attention layer: `hidden_states`, `context_category`, `context_style`,
/// `weight_category`, `weight_style` → `out`.
pub async fn check_cross_attention(layer: &Attention, io: &SafeTensors, tolerance: f32) -> Result<CheckReport> {
    let device = layer.device();
    let x = io_tensor::<3>(io, "hidden_states", &device)?;
    let control = io_control_context(io, x.dims()[0], &device)?;
    let out = layer.cross_attention(x, Conditioning::Control(&control));
    let (s, v) = read_f32(out).await?;
    Ok(CheckReport::new("cross-attention", vec![compare(io, "out", &s, &v)?], tolerance))
}

/// A float tensor of the io file with its own shape, checked to be of rank `D`.
pub(crate) fn io_tensor<const D: usize>(io: &SafeTensors, name: &str, device: &Device) -> Result<burn::tensor::Tensor<D>> {
    let shape = io.shape(name)?.to_vec();
    let shape: [usize; D] = shape
        .clone()
        .try_into()
        .map_err(|_| Error::tensor(io.name(), name, format!("expected a rank-{D} tensor, found shape {shape:?}")))?;
    io.tensor(name, shape, device)
}

/// Decodes the io file's `latents` (what `AutoencoderKL.decode` receives: already divided by the scaling
/// factor) and compares with `image` (the decoder's output, about [-1, 1]).
pub async fn check_vae_decoder(model: &VaeDecoder, io: &SafeTensors, tolerance: f32) -> Result<CheckReport> {
    let device = model.device();
    let latents = io_tensor::<4>(io, "latents", &device)?;
    let (s, v) = read_f32(model.decode(latents)).await?;
    Ok(CheckReport::new("vae-decoder", vec![compare(io, "image", &s, &v)?], tolerance))
}

/// The same for the `AutoencoderTiny` (TAESD) decoder.
pub async fn check_tiny_decoder(model: &TinyDecoder, io: &SafeTensors, tolerance: f32) -> Result<CheckReport> {
    let latents = io_tensor::<4>(io, "latents", &model.device())?;
    let (s, v) = read_f32(model.decode(latents)).await?;
    Ok(CheckReport::new("tiny-decoder", vec![compare(io, "image", &s, &v)?], tolerance))
}

/// The TAESD encoder (what fine-tuning's denoising term encodes its pictures with): `encoder_pictures`
/// in [-1, 1] → `encoder_latents`, diffusers' unscaled `AutoencoderTiny.encode(x).latents`.
pub async fn check_tiny_encoder(model: &TinyEncoder, io: &SafeTensors, tolerance: f32) -> Result<CheckReport> {
    let pictures = io_tensor::<4>(io, "encoder_pictures", &model.device())?;
    let (s, v) = read_f32(model.encode(pictures)).await?;
    Ok(CheckReport::new("tiny-encoder", vec![compare(io, "encoder_latents", &s, &v)?], tolerance))
}
