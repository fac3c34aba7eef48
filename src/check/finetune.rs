//! `check finetune-step`: one training step of DESIGN §2 (losses, gradients, one AdamW step) against the
//! PyTorch reference (tests/fixtures/reference_finetune.py). io names: README.md, "Checking a model".

use burn::tensor::{Tensor, TensorData};

use crate::check::{CheckReport, OutputError, compare_values};
use crate::device::read_f32;
use crate::error::{Error, Result};
use crate::check::io_tensor;
use crate::models::clip::ClipTextModel;
use crate::models::unet::UNet2DConditionModel;
use crate::train::denoise::DenoiseBatch;
use crate::train::losses::{ClassPrompts, Frozen, StepBatch, TERMS, Tuned, losses};
use crate::train::optim::{AdamW, clip_grad_norm};
use crate::train::trainables::{Part, Trainable, Trainables};
use crate::train::TrainConfig;
use crate::weights::SafeTensors;

/// The limits at `tolerance` = 1e-4 (the CLI default); another tolerance scales all three.
const LOSS_REL: f32 = 1e-5;
const GRAD_REL: f32 = 1e-4;
const AFTER_ABS: f32 = 1e-6;
/// A gradient's limit is never below this fraction of the step's largest gradient magnitude: a tensor whose
/// exact gradient is zero holds only float noise on both sides (the bias of a key projection: adding a
/// constant to every key shifts each query's scores equally, which softmax ignores; full-mode fixtures
/// train it), and 1e-4 of that noise is no limit at all. 1e-6 is about 8 f32 ulps of the largest
/// gradient; it only matters for tensors whose gradient is under 1 % of the largest.
const GRAD_FLOOR: f32 = 1e-6;

/// Token rows of an integer io tensor whose last dimension is the sequence: [..., L] → rows.
fn io_rows(io: &SafeTensors, name: &str) -> Result<(Vec<usize>, Vec<Vec<u32>>)> {
    let (shape, ids) = io.i64(name)?;
    let l = *shape.last().ok_or_else(|| Error::tensor(io.name(), name, "is a scalar, expected token rows"))?;
    if l == 0 {
        return Err(Error::tensor(io.name(), name, "has rows of length 0"));
    }
    let rows = ids.chunks(l).map(|r| r.iter().map(|&id| u32::try_from(id).unwrap_or(u32::MAX)).collect()).collect();
    Ok((shape, rows))
}

/// The trainables stored under `prefix` (`init.`, `grad.`, `after.`), in name order.
fn io_trainables(io: &SafeTensors, prefix: &str) -> Result<Vec<Trainable>> {
    let mut out = Vec::new();
    for key in io.keys().filter(|k| k.starts_with(prefix)) {
        let rest = &key[prefix.len()..];
        let (part, name) = [Part::Category, Part::Style, Part::Adapter]
            .into_iter()
            .find_map(|p| rest.strip_prefix(p.prefix()).and_then(|n| n.strip_prefix('.')).map(|n| (p, n)))
            .ok_or_else(|| Error::tensor(io.name(), key, "does not name category_encoder, style_encoder or adapter"))?;
        let (shape, values) = io.f32(key)?;
        out.push(Trainable { part, name: name.to_string(), shape, values });
    }
    Ok(out)
}

/// Runs the step on E (`model`, a CLIPTextModelWithProjection, whose projection stands for the CLIP
/// model's) and compares every loss term, gradient and updated tensor with the io file's.
pub async fn check_finetune_step(model: &ClipTextModel, io: &SafeTensors, tolerance: f32) -> Result<CheckReport> {
    check_finetune_step_with_unet(model, None, io, tolerance).await
}

/// As [`check_finetune_step`], with the UNet that a step with L_den (`w_den` > 0) runs through; its noisy
/// latents, timesteps and targets are io inputs (`denoise_noisy`, `denoise_timesteps`, `denoise_target`,
/// with `denoise_prompt_ids`).
pub async fn check_finetune_step_with_unet(model: &ClipTextModel, unet: Option<&UNet2DConditionModel>, io: &SafeTensors, tolerance: f32) -> Result<CheckReport> {
    let scale = tolerance / 1e-4;
    let config_text = io.metadata("config").ok_or_else(|| Error::file(io.name(), "has no `config` metadata entry (the training config as JSON)"))?;
    let cfg = TrainConfig::parse(&format!("{} (metadata `config`)", io.name()), config_text)?;
    if cfg.w_den > 0.0 && unet.is_none() {
        return Err(Error::file(io.name(), format!("trains L_den (w_den > 0), which needs the UNet it ran through (metadata `unet`: {})", io.metadata("unet").unwrap_or("none"))));
    }
    if !model.has_projection() {
        return Err(Error::invalid("model", "finetune-step needs E with its `text_projection` (a CLIPTextModelWithProjection folder)"));
    }
    let device = model.device();

    let init = io_trainables(io, "init.")?;
    if init.is_empty() {
        return Err(Error::file(io.name(), "holds no `init.` tensors (the starting trainables)"));
    }
    let mut trainables = Trainables {
        mode: cfg.encoders,
        lora_scale: cfg.lora.scale(),
        text: model.config.clone(),
        adapter: Trainables::adapter_config(&model.config, &cfg),
        tensors: init,
    };
    trainables.validate(io.name())?;

    let (feature_shape, features) = io.f32("image_features")?;
    if feature_shape.len() != 2 {
        return Err(Error::tensor(io.name(), "image_features", format!("expected [N, P], found shape {feature_shape:?}")));
    }
    let (cat_shape, category_prompts) = io_rows(io, "category_prompt_ids")?;
    let (sty_shape, style_prompts) = io_rows(io, "style_prompt_ids")?;
    for (name, shape) in [("category_prompt_ids", &cat_shape), ("style_prompt_ids", &sty_shape)] {
        if shape.len() != 3 {
            return Err(Error::tensor(io.name(), name, format!("expected [classes, templates, 77], found shape {shape:?}")));
        }
    }
    let temperature = match cfg.temperature {
        Some(t) => t,
        None => io.f32("logit_scale")?.1.first().copied().ok_or_else(|| Error::tensor(io.name(), "logit_scale", "is empty"))?.exp(),
    };
    let batch = StepBatch {
        image_features: Tensor::from_data(TensorData::new(features, [feature_shape[0], feature_shape[1]]), &device),
        category_labels: io.i64("category_labels")?.1,
        style_labels: io.i64("style_labels")?.1,
        classes: ClassPrompts { category: category_prompts, category_templates: cat_shape[1], style: style_prompts, style_templates: sty_shape[1] },
        triplet_style: io_rows(io, "triplet_style_ids")?.1,
        triplet_category: io_rows(io, "triplet_category_ids")?.1,
        keep: io_rows(io, "keep_prompt_ids")?.1,
        temperature,
        denoise: match cfg.w_den > 0.0 {
            true => Some(DenoiseBatch {
                prompts: io_rows(io, "denoise_prompt_ids")?.1,
                noisy: io_tensor::<4>(io, "denoise_noisy", &device)?,
                timesteps: io.f32("denoise_timesteps")?.1,
                target: io_tensor::<4>(io, "denoise_target", &device)?,
            }),
            false => None,
        },
    };

    let keep_base = model.forward(&batch.keep, 0)?.last_hidden_state;
    let leaves = trainables.leaves(&device.clone().autodiff())?;
    let frozen = Frozen { base: model, projection: model, unet };
    let tuned = Tuned { category: leaves.category.encoder(), style: leaves.style.encoder(), adapter: &leaves.adapter };
    let terms = losses(&frozen, &tuned, &batch, &keep_base, &cfg)?;

    let mut outputs = Vec::new();
    for (name, value) in TERMS.iter().zip(terms.values()) {
        let key = format!("loss.{name}");
        // L_den is not checked here (it needs a UNet); io files written before it existed have no term.
        if *name == "den" && cfg.w_den == 0.0 && !io.keys().any(|k| k == key) {
            continue;
        }
        let (_, actual) = read_f32(value.clone().without_autodiff()).await?;
        let (_, expected) = io.f32(&key)?;
        outputs.push(limited(compare_values(&key, &actual, &expected), LOSS_REL * scale * expected.first().map_or(0.0, |e| e.abs())));
    }
    let grads = terms.total.backward();
    let mut gradients = leaves.gradients(&grads, &trainables).await?;
    let largest = |v: &[f32]| v.iter().fold(0f32, |m, v| m.max(v.abs()));
    let mut expected_grads = Vec::with_capacity(gradients.len());
    for t in &trainables.tensors {
        let key = format!("grad.{}", t.io_name());
        expected_grads.push((io.f32(&key)?.1, key));
    }
    let step_largest = expected_grads.iter().fold(0f32, |m, (e, _)| m.max(largest(e)));
    for (g, (expected, key)) in gradients.iter().zip(&expected_grads) {
        let limit = (GRAD_REL * largest(expected)).max(GRAD_FLOOR * step_largest) * scale;
        outputs.push(limited(compare_values(key, g, expected), limit));
    }

    if let Some(max_norm) = cfg.clip_grad_norm {
        clip_grad_norm(&mut gradients, max_norm);
    }
    let mut optimizer = AdamW::new(cfg.lr, cfg.betas, cfg.eps, cfg.weight_decay, trainables.sizes());
    let mut values: Vec<Vec<f32>> = trainables.tensors.iter().map(|t| t.values.clone()).collect();
    optimizer.step(cfg.lr_at(1), &mut values, &gradients);
    for (t, v) in trainables.tensors.iter_mut().zip(values) {
        t.values = v;
    }
    for t in &trainables.tensors {
        let key = format!("after.{}", t.io_name());
        let (_, expected) = io.f32(&key)?;
        outputs.push(limited(compare_values(&key, &t.values, &expected), AFTER_ABS * scale));
    }
    Ok(CheckReport::new("finetune-step", outputs, tolerance))
}

fn limited(mut error: OutputError, limit: f32) -> OutputError {
    error.limit = Some(limit);
    error
}
