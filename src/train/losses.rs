//! The fine-tuning objective of ../shared/DESIGN.md §2, in one place. Every choice the design leaves open
//! is stated here; tests/fixtures/reference_finetune.py is the same reading in PyTorch.
//!
//! Notation: E the frozen text encoder; f_c, f_s = E with trainable LoRA factors, or trainable copies of E
//! (full mode); A the adapter (identity for E and f_c). For prompt t (77 tokens) through encoder g with adapter a:
//!
//! ```text
//! h = g(t)                       last hidden state after the final layer norm, 77 × D
//! u_g(t) = normalize(P(a(h)[eos(t)]))      P = the CLIP model's text_projection; eos(t) as transformers pools
//! e_g(k) = normalize(mean_j u_g(template_j(name_k)))                          class embedding
//! s_g(v)_k = τ · ⟨v, e_g(k)⟩,  v = normalize(image features), τ = exp(logit_scale) or `temperature`
//! L_cat  = CE(s_{f_c}(v) over categories, y_cat), mean over the pictures with a category label (0 if none)
//! L_sty  = CE(s_{A∘f_s}(v) over styles, y_sty), mean over the pictures with a style label (0 if none)
//! L_dec  = mean over all pictures of (log K_s − H(softmax s_{f_c}(v) over styles)) / log K_s
//!                                  + (log K_c − H(softmax s_{A∘f_s}(v) over categories)) / log K_c
//! L_trip = mean over the style triplets (through A∘f_s) and the category triplets (through f_c) together of
//!          max(0, m − ⟨u(anchor), u(positive)⟩ + ⟨u(anchor), u(negative)⟩)            (0 if none)
//! L_keep = Σ (g(t) − E(t))² over every general prompt's positions 0..=eos(t) (or all 77 with
//!          `keep_positions: "all"`) and the D channels, divided by the number of those elements (one mean
//!          over all of them), for g = f_c and g = A∘f_s
//! L_den  = the denoising term through the frozen UNet (src/train/denoise.rs; not in DESIGN §2, off by default)
//! L      = w_cat L_cat + w_sty L_sty + w_dec L_dec + w_trip L_trip + w_keep_c L_keep_c + w_keep_s L_keep_s
//!          + w_den L_den
//! ```

use burn::tensor::{Device, Int, Tensor, TensorData, activation};

use crate::control::Adapter;
use crate::error::{Error, Result};
use crate::models::clip::{ClipTextConfig, ClipTextModel};
use crate::models::nn::LoraTensors;
use crate::models::unet::UNet2DConditionModel;
use crate::train::denoise::{DenoiseBatch, denoise_loss};
use crate::train::{KeepPositions, TrainConfig};

/// The loss terms' names, in the order of [`LossTerms::values`].
pub const TERMS: [&str; 8] = ["cat", "sty", "dec", "trip", "keep_c", "keep_s", "den", "total"];

/// The class prompts as token rows: every category × category template (category-major, K_c · T_c rows)
/// and every style × style template (K_s · T_s rows).
#[derive(Debug, Clone, PartialEq)]
pub struct ClassPrompts {
    pub category: Vec<Vec<u32>>,
    pub category_templates: usize,
    pub style: Vec<Vec<u32>>,
    pub style_templates: usize,
}

impl ClassPrompts {
    pub fn categories(&self) -> usize {
        self.category.len() / self.category_templates.max(1)
    }

    pub fn styles(&self) -> usize {
        self.style.len() / self.style_templates.max(1)
    }
}

/// One step's data: labelled image features and the prompts, as token rows.
#[derive(Debug, Clone)]
pub struct StepBatch {
    /// Image features [N, P], not yet normalised (the projected image embeddings).
    pub image_features: Tensor<2>,
    /// Per picture: a category / style index, or −1 for none.
    pub category_labels: Vec<i64>,
    pub style_labels: Vec<i64>,
    pub classes: ClassPrompts,
    /// (anchor, positive, negative) rows, three per triplet: for f_s and for f_c.
    pub triplet_style: Vec<Vec<u32>>,
    pub triplet_category: Vec<Vec<u32>>,
    /// General prompts for L_keep.
    pub keep: Vec<Vec<u32>>,
    /// τ.
    pub temperature: f32,
    /// L_den's pictures, when `w_den` is on.
    pub denoise: Option<DenoiseBatch>,
}

/// The frozen parts: E, the CLIP model's text tower (for its `text_projection`) and, for L_den, the UNet.
pub struct Frozen<'a> {
    pub base: &'a ClipTextModel,
    pub projection: &'a ClipTextModel,
    pub unet: Option<&'a UNet2DConditionModel>,
}

/// A text encoder g for [`text_features`]: E itself, E with low-rank factors, or a whole model of E's shape.
#[derive(Debug, Clone, Copy)]
pub enum Encoder<'a> {
    Base,
    Lora(&'a LoraTensors),
    Full(&'a ClipTextModel),
}

/// The trained parts for one step (autodiff leaves while training, plain tensors when evaluating).
pub struct Tuned<'a> {
    pub category: Encoder<'a>,
    pub style: Encoder<'a>,
    pub adapter: &'a Adapter,
}

/// Each term as a one-element tensor.
#[derive(Debug, Clone)]
pub struct LossTerms {
    pub cat: Tensor<1>,
    pub sty: Tensor<1>,
    pub dec: Tensor<1>,
    pub trip: Tensor<1>,
    pub keep_c: Tensor<1>,
    pub keep_s: Tensor<1>,
    pub den: Tensor<1>,
    pub total: Tensor<1>,
}

impl LossTerms {
    /// The terms in [`TERMS`] order.
    pub fn values(&self) -> [Tensor<1>; 8] {
        [self.cat.clone(), self.sty.clone(), self.dec.clone(), self.trip.clone(), self.keep_c.clone(), self.keep_s.clone(), self.den.clone(), self.total.clone()]
    }
}

/// x / ‖x‖₂ along the last dimension.
pub fn normalize(x: Tensor<2>) -> Tensor<2> {
    let norm = (x.clone() * x.clone()).sum_dim(1).sqrt();
    x / norm
}

/// Hidden states a(g(t)) [R, 77, D] and features u_g(t) [R, P] of token rows.
pub fn text_features(frozen: &Frozen, encoder: Encoder, adapter: Option<&Adapter>, ids: &[Vec<u32>]) -> Result<(Tensor<3>, Tensor<2>)> {
    let h = match encoder {
        Encoder::Base => frozen.base.forward(ids, 0)?,
        Encoder::Lora(lora) => frozen.base.forward_tuned(ids, 0, Some(lora))?,
        Encoder::Full(model) => model.forward(ids, 0)?,
    }
    .last_hidden_state;
    let c = match adapter {
        Some(a) => a.forward(h)?,
        None => h,
    };
    let pooled = frozen.base.pooled_rows(c.clone(), ids);
    let projected = frozen
        .projection
        .project(pooled)
        .ok_or_else(|| Error::invalid("CLIP model", "its text tower has no `text_projection` (Control-CLIP needs a CLIPModel or CLIPTextModelWithProjection)"))?;
    Ok((c, normalize(projected)))
}

/// e(k) for K classes × T templates of features [K·T, P] → [K, P].
pub fn class_embeddings(u: Tensor<2>, classes: usize, templates: usize) -> Tensor<2> {
    let p = u.dims()[1];
    normalize(u.reshape([classes, templates, p]).mean_dim(1).reshape([classes, p]))
}

/// Rows `range` of a [R, …] tensor.
fn rows<const D: usize>(t: Tensor<D>, range: std::ops::Range<usize>) -> Tensor<D> {
    t.narrow(0, range.start, range.len())
}

/// Mean cross-entropy of `logits` [N, K] over the rows whose label is ≥ 0 (0 when there are none).
fn labelled_cross_entropy(logits: Tensor<2>, labels: &[i64], device: &Device) -> Tensor<1> {
    let k = logits.dims()[1];
    let picked: Vec<(usize, usize)> = labels.iter().enumerate().filter(|&(_, &l)| l >= 0).map(|(i, &l)| (i, l as usize)).collect();
    if picked.is_empty() {
        return Tensor::zeros([1], device);
    }
    let n = picked.len();
    let index = Tensor::<1, Int>::from_data(TensorData::new(picked.iter().map(|&(i, _)| i as i32).collect::<Vec<_>>(), [n]), device);
    let mut one_hot = vec![0f32; n * k];
    for (row, &(_, l)) in picked.iter().enumerate() {
        one_hot[row * k + l] = 1.0;
    }
    let one_hot = Tensor::<2>::from_data(TensorData::new(one_hot, [n, k]), device);
    let log_p = activation::log_softmax(logits.select(0, index), 1);
    -(log_p * one_hot).sum() / n as f64
}

/// (log K − H(softmax(logits))) / log K per row, [N, K] → [N, 1].
fn entropy_gap(logits: Tensor<2>) -> Tensor<2> {
    let k = logits.dims()[1] as f64;
    let log_p = activation::log_softmax(logits, 1);
    let entropy = -(log_p.clone().exp() * log_p).sum_dim(1);
    (-entropy + k.ln()) / k.ln()
}

/// Triplet hinge terms of features [3M, P] (anchor, positive, negative per triplet) → [M].
fn triplet_terms(u: Tensor<2>, margin: f32) -> Tensor<1> {
    let [r, p] = u.dims();
    let u = u.reshape([r / 3, 3, p]);
    let m = r / 3;
    let part = |i: usize| u.clone().narrow(1, i, 1).reshape([m, p]);
    let (a, pos, neg) = (part(0), part(1), part(2));
    let cos_ap = (a.clone() * pos).sum_dim(1).reshape([m]);
    let cos_an = (a * neg).sum_dim(1).reshape([m]);
    activation::relu(cos_an - cos_ap + margin as f64)
}

/// Mask [G, L, 1] of the positions L_keep compares (0..=eos(t), or all) for each general prompt, and the
/// number of masked elements (×D).
fn keep_mask(config: &ClipTextConfig, ids: &[Vec<u32>], positions: KeepPositions, device: &Device) -> (Tensor<3>, usize) {
    let l = ids.first().map_or(0, Vec::len);
    let mut mask = vec![0f32; ids.len() * l];
    let mut count = 0;
    for (row, t) in ids.iter().enumerate() {
        let last = match positions {
            KeepPositions::ThroughEos => config.pooled_position(t),
            KeepPositions::All => l.saturating_sub(1),
        };
        for pos in 0..=last.min(l.saturating_sub(1)) {
            mask[row * l + pos] = 1.0;
            count += 1;
        }
    }
    (Tensor::from_data(TensorData::new(mask, [ids.len(), l, 1]), device), count)
}

/// Every term of DESIGN §2 for one step. `keep_base` is E on `batch.keep` (computed once, frozen).
pub fn losses(frozen: &Frozen, tuned: &Tuned, batch: &StepBatch, keep_base: &Tensor<3>, cfg: &TrainConfig) -> Result<LossTerms> {
    let device = batch.image_features.device();
    let c = &batch.classes;
    let (kc, ks) = (c.categories(), c.styles());
    if kc < 2 || ks < 2 || kc * c.category_templates != c.category.len() || ks * c.style_templates != c.style.len() {
        return Err(Error::invalid("class prompts", "need at least two categories and two styles, each with the same number of templates"));
    }
    if batch.keep.is_empty() {
        return Err(Error::invalid("general prompts", "L_keep needs at least one general prompt"));
    }
    let n = batch.image_features.dims()[0];
    if batch.category_labels.len() != n || batch.style_labels.len() != n {
        return Err(Error::invalid("labels", format!("{n} pictures but {} category and {} style labels", batch.category_labels.len(), batch.style_labels.len())));
    }
    let v = normalize(batch.image_features.clone());
    let tau = batch.temperature as f64;

    let denoise = match (cfg.w_den > 0.0, &batch.denoise, frozen.unet) {
        (false, _, _) => None,
        (true, Some(b), Some(d)) => Some((b, d)),
        (true, _, None) => return Err(Error::invalid("L_den", "w_den is on but no UNet was loaded (the --base pipeline's unet/)")),
        (true, None, _) => return Err(Error::invalid("L_den", "w_den is on but the step has no pictures with a `prompt`")),
    };
    let den_prompts: &[Vec<u32>] = denoise.map_or(&[], |(b, _)| &b.prompts);
    // One forward pass per encoder over everything it reads: class prompts, triplets, general prompts and
    // L_den's prompts.
    let run = |encoder: Encoder, adapter: Option<&Adapter>, triplets: &[Vec<u32>]| -> Result<(Tensor<3>, Tensor<2>)> {
        let ids: Vec<Vec<u32>> = [&c.category[..], &c.style, triplets, &batch.keep, den_prompts].concat();
        text_features(frozen, encoder, adapter, &ids)
    };
    let (nc, ns, ng) = (c.category.len(), c.style.len(), batch.keep.len());
    let (h_c, u_c) = run(tuned.category, None, &batch.triplet_category)?;
    let (h_s, u_s) = run(tuned.style, Some(tuned.adapter), &batch.triplet_style)?;
    let (mc, ms) = (batch.triplet_category.len(), batch.triplet_style.len());

    let cat_c = class_embeddings(rows(u_c.clone(), 0..nc), kc, c.category_templates);
    let sty_c = class_embeddings(rows(u_c.clone(), nc..nc + ns), ks, c.style_templates);
    let cat_s = class_embeddings(rows(u_s.clone(), 0..nc), kc, c.category_templates);
    let sty_s = class_embeddings(rows(u_s.clone(), nc..nc + ns), ks, c.style_templates);
    let logits = |e: Tensor<2>| v.clone().matmul(e.transpose()) * tau;

    let cat = labelled_cross_entropy(logits(cat_c), &batch.category_labels, &device);
    let sty = labelled_cross_entropy(logits(sty_s), &batch.style_labels, &device);
    let dec = (entropy_gap(logits(sty_c)) + entropy_gap(logits(cat_s))).mean();

    let mut hinge = Vec::new();
    if ms > 0 {
        hinge.push(triplet_terms(rows(u_s, nc + ns..nc + ns + ms), cfg.margin));
    }
    if mc > 0 {
        hinge.push(triplet_terms(rows(u_c, nc + ns..nc + ns + mc), cfg.margin));
    }
    let trip = if hinge.is_empty() { Tensor::zeros([1], &device) } else { Tensor::cat(hinge, 0).mean() };

    let (mask, count) = keep_mask(&frozen.base.config, &batch.keep, cfg.keep_positions, &device);
    let d = keep_base.dims()[2];
    let keep = |h: Tensor<3>, start: usize| -> Tensor<1> {
        let diff = rows(h, start..start + ng) - keep_base.clone();
        (diff.clone() * diff * mask.clone()).sum() / (count * d) as f64
    };
    let keep_c = keep(h_c.clone(), nc + ns + mc);
    let keep_s = keep(h_s.clone(), nc + ns + ms);
    let den = match denoise {
        Some((b, d)) => {
            let nd = b.prompts.len();
            let (start_c, start_s) = (nc + ns + mc + ng, nc + ns + ms + ng);
            denoise_loss(d, b, rows(h_c, start_c..start_c + nd), rows(h_s, start_s..start_s + nd), cfg.den_weights)?
        }
        None => Tensor::zeros([1], &device),
    };

    let total = cat.clone() * cfg.w_cat as f64
        + sty.clone() * cfg.w_sty as f64
        + dec.clone() * cfg.w_dec as f64
        + trip.clone() * cfg.w_trip as f64
        + keep_c.clone() * cfg.w_keep_c as f64
        + keep_s.clone() * cfg.w_keep_s as f64
        + den.clone() * cfg.w_den as f64;
    Ok(LossTerms { cat, sty, dec, trip, keep_c, keep_s, den, total })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigJson;

    /// L_keep's positions: through the end-of-text token (DESIGN §2) or every position, padding included.
    #[test]
    fn keep_mask_covers_through_eos_or_every_position() {
        let config = ClipTextConfig::from_json(&ConfigJson::parse("config.json", r#"{"eos_token_id": 9}"#).unwrap()).unwrap();
        let device = Device::flex();
        let ids = vec![vec![1, 4, 9, 9, 9], vec![1, 4, 5, 6, 9]];
        for (positions, want, count) in [
            (KeepPositions::ThroughEos, vec![1., 1., 1., 0., 0., 1., 1., 1., 1., 1.], 8),
            (KeepPositions::All, vec![1.; 10], 10),
        ] {
            let (mask, n) = keep_mask(&config, &ids, positions, &device);
            assert_eq!(mask.dims(), [2, 5, 1]);
            assert_eq!(mask.into_data().try_to_vec::<f32>().unwrap(), want, "{positions:?}");
            assert_eq!(n, count, "{positions:?}");
        }
    }
}
