//! Reading what fine-tuning and evaluation need from folders (native only; the loop itself never touches
//! the file system): E from a bundle, a diffusers pipeline or a CLIP text folder; the CLIP model with its
//! preprocessor config; the tokenizer; the dataset folder, its pictures turned into image features once.

use std::path::Path;

use burn::tensor::Device;

use crate::bundle::{Manifest, component};
use crate::config::ConfigJson;
use crate::error::{Error, Result};
use crate::files::{MAX_SMALL_FILE, read_bytes_at_most, read_text};
use crate::models::ModelFolder;
use crate::models::clip::ClipTextModel;
use crate::models::clip_vision::ClipModel;
use crate::models::image_processor::ImageProcessor;
use crate::tokenizer::ClipTokenizer;
use crate::train::dataset::{Domain, parse_labels};
use crate::train::finetune::{Prepared, image_features};
use crate::weights::SafeTensors;

/// E's config and weights and a tokenizer path from a bundle, pipeline or model folder.
pub fn read_base(base: &Path) -> Result<(ConfigJson, SafeTensors, Option<Vec<u8>>)> {
    if base.join("manifest.json").exists() {
        let manifest = Manifest::read_dir(base)?;
        let fetch = |file| std::future::ready(manifest.read_verified(base, &file));
        let weights = pollster::block_on(manifest.read_weights(component::TEXT_ENCODER, fetch))?;
        let tokenizer = manifest.read_verified(base, &manifest.components.tokenizer)?;
        return Ok((manifest.config(component::TEXT_ENCODER)?, weights, Some(tokenizer)));
    }
    if base.join("model_index.json").exists() {
        let (config, weights) = crate::weights::read_model_dir(&base.join("text_encoder"))?;
        let tokenizer = base.join("tokenizer").join("tokenizer.json");
        return Ok((config, weights, tokenizer.exists().then(|| read_bytes_at_most(&tokenizer, MAX_SMALL_FILE)).transpose()?));
    }
    let (config, weights) = crate::weights::read_model_dir(base)?;
    Ok((config, weights, None))
}

/// Everything `finetune` and `eval` share: E, the CLIP model, the tokenizer, the domain, the labelled
/// pictures' features.
pub struct Loaded {
    pub base: ClipTextModel,
    pub clip: ClipModel,
    pub domain: Domain,
    pub data: Prepared,
}

pub async fn load(base_dir: &Path, clip_dir: &Path, data_dir: &Path, tokenizer: Option<&Path>, temperature: Option<f32>, device: &Device) -> Result<Loaded> {
    let (base_config, base_weights, bundled_tokenizer) = read_base(base_dir)?;
    let base = ClipTextModel::load(&base_config, &base_weights, device)?;
    let clip = ClipModel::read_dir(clip_dir, device)?;
    let processor = ImageProcessor::from_json(&ConfigJson::read(&clip_dir.join("preprocessor_config.json"))?)?;
    let tokenizer = match (tokenizer, bundled_tokenizer) {
        (Some(path), _) => ClipTokenizer::read(path)?,
        (None, Some(bytes)) => ClipTokenizer::from_bytes(&base_dir.display().to_string(), &bytes)?,
        (None, None) => ClipTokenizer::read(&clip_dir.join("tokenizer.json"))?,
    };

    let domain_path = data_dir.join("domain.json");
    let domain = Domain::parse(&domain_path.display().to_string(), &read_text(&domain_path)?)?;
    let labels_path = data_dir.join("labels.jsonl");
    let labels_name = labels_path.display().to_string();
    let labels = parse_labels(&labels_name, &read_text(&labels_path)?, &domain)?;
    let mut pictures = Vec::with_capacity(labels.len());
    for l in &labels {
        let path = data_dir.join(&l.file);
        let bytes = read_bytes_at_most(&path, MAX_SMALL_FILE).map_err(|e| Error::file(format!("{labels_name}:{}", l.line), format!("its picture cannot be read: {e}")))?;
        pictures.push((path.display().to_string(), bytes));
    }
    let features = image_features(&clip.vision, &processor, &pictures).await?;
    let (classes, captions, general_prompts) = Prepared::tokenize_domain(&domain, &tokenizer, &domain_path.display().to_string())?;
    let data = Prepared {
        feature_dim: clip.vision.config.projection_dim,
        features,
        category_labels: labels.iter().map(|l| l.category.map_or(-1, |c| c as i64)).collect(),
        style_labels: labels.iter().map(|l| l.style.map_or(-1, |s| s as i64)).collect(),
        classes,
        captions,
        categories: domain.categories.len(),
        styles: domain.styles.len(),
        caption_templates: domain.caption_templates.len(),
        general_prompts,
        temperature: temperature.unwrap_or(clip.logit_scale.exp()),
    };
    Ok(Loaded { base, clip, domain, data })
}

