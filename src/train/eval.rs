//! Zero-shot classification of labelled pictures with E, f_c and A∘f_s: how well each encoder's class
//! embeddings e_g(k) (losses.rs) pick the right category and style for a picture's image features. The
//! decoupling figures are f_c's style accuracy and A∘f_s's category accuracy, which Control-CLIP should push
//! toward chance.

use burn::tensor::{Tensor, TensorData};
use serde::Serialize;

use crate::control::Adapter;
use crate::device::read_f32;
use crate::error::Result;
use crate::train::finetune::Prepared;
use crate::train::losses::{Encoder, Frozen, class_embeddings, normalize, text_features};

/// Category and style accuracy of one encoder, over the pictures that have that label.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Accuracy {
    pub category: f32,
    pub style: f32,
}

/// The three encoders' accuracies and the chance levels.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalReport {
    pub pictures: usize,
    pub base: Accuracy,
    pub category_encoder: Accuracy,
    pub style_encoder: Accuracy,
    pub chance: Accuracy,
}

impl EvalReport {
    pub fn json_line(&self) -> String {
        serde_json::to_string(self).expect("report serializes")
    }

    /// A markdown table: one row per encoder.
    pub fn markdown(&self) -> String {
        let pct = |v: f32| format!("{:.1} %", 100.0 * v);
        let mut out = format!("| encoder ({} pictures) | category accuracy | style accuracy |\n|---|---|---|\n", self.pictures);
        for (name, a) in [("E (base)", self.base), ("f_c (category)", self.category_encoder), ("A∘f_s (style)", self.style_encoder), ("chance", self.chance)] {
            out += &format!("| {name} | {} | {} |\n", pct(a.category), pct(a.style));
        }
        out += &format!(
            "\nDecoupling: f_c tells styles apart {} of the time, A∘f_s tells categories apart {} (chance {} and {}).\n",
            pct(self.category_encoder.style),
            pct(self.style_encoder.category),
            pct(self.chance.style),
            pct(self.chance.category)
        );
        out
    }
}

/// Accuracy of one encoder (adapter for f_s) on `data`.
pub async fn accuracy(frozen: &Frozen<'_>, encoder: Encoder<'_>, adapter: Option<&Adapter>, data: &Prepared) -> Result<Accuracy> {
    let device = frozen.base.device();
    let n = data.pictures();
    let v = normalize(Tensor::<2>::from_data(TensorData::new(data.features.clone(), [n, data.feature_dim]), &device));
    let mut result = [0f32; 2];
    for (slot, (prompts, templates, labels)) in [
        (&data.classes.category, data.classes.category_templates, &data.category_labels),
        (&data.classes.style, data.classes.style_templates, &data.style_labels),
    ]
    .into_iter()
    .enumerate()
    {
        let (_, u) = text_features(frozen, encoder, adapter, prompts)?;
        let e = class_embeddings(u, prompts.len() / templates, templates);
        let k = prompts.len() / templates;
        let (_, scores) = read_f32(v.clone().matmul(e.transpose())).await?;
        let (mut right, mut total) = (0usize, 0usize);
        for (i, &label) in labels.iter().enumerate() {
            if label < 0 {
                continue;
            }
            let row = &scores[i * k..(i + 1) * k];
            let best = row.iter().enumerate().fold(0, |b, (j, &s)| if s > row[b] { j } else { b });
            right += (best == label as usize) as usize;
            total += 1;
        }
        result[slot] = if total == 0 { f32::NAN } else { right as f32 / total as f32 };
    }
    Ok(Accuracy { category: result[0], style: result[1] })
}

/// E, f_c and A∘f_s on `data`.
pub async fn evaluate(frozen: &Frozen<'_>, category: Encoder<'_>, style: Encoder<'_>, adapter: &Adapter, data: &Prepared) -> Result<EvalReport> {
    Ok(EvalReport {
        pictures: data.pictures(),
        base: accuracy(frozen, Encoder::Base, None, data).await?,
        category_encoder: accuracy(frozen, category, None, data).await?,
        style_encoder: accuracy(frozen, style, Some(adapter), data).await?,
        chance: Accuracy { category: 1.0 / data.categories as f32, style: 1.0 / data.styles as f32 },
    })
}
