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
use crate::train::dataset::{Domain, Labelled, parse_labels};
use crate::train::denoise::{DenoiseData, Denoiser};
use crate::train::finetune::{Prepared, image_features, picture_latents};
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
    pub tokenizer: ClipTokenizer,
    pub labels: Vec<Labelled>,
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
    let pictures = read_pictures(data_dir, &labels_name, &labels)?;
    let features = image_features(&clip.vision, &processor, &pictures).await?;
    let temperature = temperature.unwrap_or(clip.logit_scale.exp());
    let data = Prepared::new(&domain, &labels, features, clip.vision.config.projection_dim, &tokenizer, &domain_path.display().to_string(), temperature)?;
    Ok(Loaded { base, clip, domain, data, tokenizer, labels })
}

/// (name, bytes) of every labelled picture; a picture that cannot be read is named by its label line.
fn read_pictures(data_dir: &Path, labels_name: &str, labels: &[Labelled]) -> Result<Vec<(String, Vec<u8>)>> {
    let mut pictures = Vec::with_capacity(labels.len());
    for l in labels {
        let path = data_dir.join(&l.file);
        let bytes = read_bytes_at_most(&path, MAX_SMALL_FILE).map_err(|e| Error::file(format!("{labels_name}:{}", l.line), format!("its picture cannot be read: {e}")))?;
        pictures.push((path.display().to_string(), bytes));
    }
    Ok(pictures)
}

/// L_den's frozen parts from the diffusers pipeline folder `base_dir` (unet/, scheduler/ and vae/, whose
/// AutoencoderTiny encoder makes the latents), and the dataset's latents and prompts into `loaded.data`.
pub async fn load_denoiser(base_dir: &Path, data_dir: &Path, loaded: &mut Loaded, device: &Device) -> Result<Denoiser> {
    let base_name = base_dir.display().to_string();
    if !base_dir.join("model_index.json").exists() {
        return Err(Error::file(&base_name, "L_den (w_den > 0) needs the generator's UNet, scheduler and autoencoder: pass the diffusers pipeline folder as --base"));
    }
    let (unet_config, unet_weights) = crate::weights::read_model_dir(&base_dir.join("unet"))?;
    let unet = crate::models::unet::UNet2DConditionModel::load(&unet_config, &unet_weights, device)?;
    let scheduler_dir = base_dir.join("scheduler");
    let schedule = crate::schedulers::SchedulerConfig::read(&scheduler_dir.join("scheduler_config.json"))?.noise_schedule()?;
    let (vae_config, vae_weights) = crate::weights::read_model_dir(&base_dir.join("vae"))?;
    if vae_config.str_or("_class_name", "")? != "AutoencoderTiny" {
        return Err(Error::config(&vae_config.file, "_class_name", "L_den encodes its pictures with an AutoencoderTiny (TAESD) encoder; this autoencoder is not one"));
    }
    let encoder = crate::models::taesd::TinyEncoder::load(&vae_config, &vae_weights, device)?;
    let labels_name = data_dir.join("labels.jsonl").display().to_string();
    let pictures = read_pictures(data_dir, &labels_name, &loaded.labels)?;
    let (latents, latent_shape) = picture_latents(&encoder, &pictures).await?;
    let mut prompts = Vec::with_capacity(loaded.labels.len());
    for l in &loaded.labels {
        prompts.push(match &l.prompt {
            Some(p) => Some(Domain::tokenize(&loaded.tokenizer, std::slice::from_ref(p), &format!("{labels_name}:{}", l.line), "prompt")?.remove(0)),
            None => None,
        });
    }
    loaded.data.denoise = Some(DenoiseData { latents, latent_shape, prompts });
    Ok(Denoiser { unet, schedule })
}

