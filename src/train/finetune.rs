//! The fine-tuning loop: sampling, one step (losses → backward → AdamW), checkpoints and the results as
//! files. No file system here: the caller reads the dataset and writes what [`Trainer::checkpoint`] and
//! [`Trainer::outputs`] return (natively the `finetune` command; in a page, whatever storage it has).
//!
//! Every step draws its batch from a generator seeded by (seed, step) only, and the trainables and AdamW
//! moments live on the host, so a run resumed from a checkpoint continues exactly as an uninterrupted one
//! (bit for bit on the CPU backend).

use burn::tensor::{Device, Tensor, TensorData};

use crate::device::read_f32;
use crate::error::{Error, Result};
use crate::models::clip::ClipTextModel;
use crate::rng::NoiseRng;
use crate::train::{EncoderMode, TrainConfig};
use crate::train::dataset::Domain;
use crate::train::denoise::{DenoiseBatch, DenoiseData, Denoiser};
use crate::train::losses::{ClassPrompts, Frozen, StepBatch, TERMS, Tuned, losses};
use crate::train::optim::{AdamW, Moments, clip_grad_norm};
use crate::train::trainables::{Part, Trainables};
use crate::weights::{RawTensor, SafeTensors, serialize_with_metadata};

/// The data, prepared once: image features from the frozen vision tower and every prompt as token rows.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Projected image embeddings [N × P], row-major (not normalised).
    pub features: Vec<f32>,
    pub feature_dim: usize,
    pub category_labels: Vec<i64>,
    pub style_labels: Vec<i64>,
    pub classes: ClassPrompts,
    /// Captions q(k, s, j) for category k, style s, caption template j: index (k · K_s + s) · J + j.
    pub captions: Vec<Vec<u32>>,
    pub categories: usize,
    pub styles: usize,
    pub caption_templates: usize,
    pub general_prompts: Vec<Vec<u32>>,
    /// τ.
    pub temperature: f32,
    /// L_den's latents and prompts (read only when `w_den` is on).
    pub denoise: Option<DenoiseData>,
}

impl Prepared {
    pub fn pictures(&self) -> usize {
        self.category_labels.len()
    }

    fn caption(&self, k: usize, s: usize, j: usize) -> Vec<u32> {
        self.captions[(k * self.styles + s) * self.caption_templates + j].clone()
    }

    /// The prepared data of a parsed dataset: its labels, its pictures' image features ([N × feature_dim],
    /// in label order) and the domain's prompts tokenized (`file` names domain.json); L_den's data is added
    /// later, when it is on.
    pub fn new(
        domain: &Domain,
        labels: &[crate::train::dataset::Labelled],
        features: Vec<f32>,
        feature_dim: usize,
        tokenizer: &crate::tokenizer::ClipTokenizer,
        file: &str,
        temperature: f32,
    ) -> Result<Self> {
        let (classes, captions, general_prompts) = Self::tokenize_domain(domain, tokenizer, file)?;
        Ok(Self {
            feature_dim,
            features,
            category_labels: labels.iter().map(|l| l.category.map_or(-1, |c| c as i64)).collect(),
            style_labels: labels.iter().map(|l| l.style.map_or(-1, |s| s as i64)).collect(),
            classes,
            captions,
            categories: domain.categories.len(),
            styles: domain.styles.len(),
            caption_templates: domain.caption_templates.len(),
            general_prompts,
            temperature,
            denoise: None,
        })
    }

    /// Tokenizes the domain's prompts (refusing any longer than 77 tokens; `file` names domain.json): the
    /// class prompts, the captions and the general prompts.
    pub fn tokenize_domain(domain: &Domain, tokenizer: &crate::tokenizer::ClipTokenizer, file: &str) -> Result<(ClassPrompts, Vec<Vec<u32>>, Vec<Vec<u32>>)> {
        let captions: Vec<String> = (0..domain.categories.len())
            .flat_map(|k| (0..domain.styles.len()).flat_map(move |s| (0..domain.caption_templates.len()).map(move |j| (k, s, j))))
            .map(|(k, s, j)| domain.caption(j, k, s))
            .collect();
        let classes = ClassPrompts {
            category: Domain::tokenize(tokenizer, &domain.category_prompts(), file, "category_templates")?,
            category_templates: domain.category_templates.len(),
            style: Domain::tokenize(tokenizer, &domain.style_prompts(), file, "style_templates")?,
            style_templates: domain.style_templates.len(),
        };
        Ok((
            classes,
            Domain::tokenize(tokenizer, &captions, file, "caption_templates")?,
            Domain::tokenize(tokenizer, &domain.general_prompts, file, "general_prompts")?,
        ))
    }
}

/// One step's loss terms (in [`TERMS`] order) and its gradient norm, for the log.
#[derive(Debug, Clone, PartialEq)]
pub struct StepLog {
    pub step: usize,
    pub losses: [f32; 8],
    pub grad_norm: f64,
    pub lr: f64,
}

impl StepLog {
    pub fn json_line(&self) -> String {
        let mut m = serde_json::Map::new();
        m.insert("step".into(), self.step.into());
        for (name, v) in TERMS.iter().zip(self.losses) {
            m.insert((*name).into(), serde_json::json!(v));
        }
        m.insert("grad_norm".into(), serde_json::json!(self.grad_norm));
        m.insert("lr".into(), serde_json::json!(self.lr));
        serde_json::Value::Object(m).to_string()
    }
}

pub struct Trainer<'a> {
    pub cfg: TrainConfig,
    pub base: &'a ClipTextModel,
    pub projection: &'a ClipTextModel,
    pub data: Prepared,
    pub trainables: Trainables,
    pub optimizer: AdamW,
    /// Steps done.
    pub step: usize,
    /// The frozen UNet and its noise schedule, for L_den.
    pub denoiser: Option<&'a Denoiser>,
    device: Device,
}

impl<'a> Trainer<'a> {
    /// A fresh run: trainables initialised from `cfg.seed` (and E's weights in full mode).
    pub async fn new(cfg: TrainConfig, base: &'a ClipTextModel, projection: &'a ClipTextModel, data: Prepared) -> Result<Self> {
        if projection.config.hidden_size != base.config.hidden_size {
            return Err(Error::invalid("CLIP model", format!("its text tower is {} wide, E is {}", projection.config.hidden_size, base.config.hidden_size)));
        }
        if data.pictures() == 0 {
            return Err(Error::invalid("dataset", "no pictures"));
        }
        let trainables = Trainables::init(base, &cfg, cfg.seed).await?;
        let optimizer = AdamW::new(cfg.lr, cfg.betas, cfg.eps, cfg.weight_decay, trainables.sizes());
        let device = base.device();
        Ok(Self { cfg, base, projection, data, trainables, optimizer, step: 0, denoiser: None, device })
    }

    /// Adds L_den's UNet; the data must carry latents of the size it takes and at least one prompt.
    pub fn with_denoiser(mut self, denoiser: &'a Denoiser) -> Result<Self> {
        let data = self.data.denoise.as_ref().ok_or_else(|| Error::invalid("L_den", "the dataset was prepared without latents"))?;
        if data.usable().is_empty() {
            return Err(Error::invalid("labels.jsonl", "L_den (w_den > 0) needs pictures with a `prompt`; none has one"));
        }
        let unet = &denoiser.unet.config;
        if data.latent_shape[0] != unet.in_channels {
            return Err(Error::invalid("L_den", format!("the autoencoder makes {} latent channels, the UNet takes {}", data.latent_shape[0], unet.in_channels)));
        }
        self.denoiser = Some(denoiser);
        Ok(self)
    }

    /// The batch of step `step` (0-based): `batch` pictures drawn with replacement from those with any label,
    /// `triplets` triplets of each kind, `keep_prompts` general prompts.
    /// With L_den on, then `den_batch` pictures with a prompt (with replacement), a timestep each and
    /// their noise, drawn after everything else so that runs without it draw as before.
    fn sample(&self, step: usize) -> (Vec<usize>, Vec<Vec<u32>>, Vec<Vec<u32>>, Vec<Vec<u32>>, Option<DenoiseBatch>) {
        let d = &self.data;
        let mut rng = NoiseRng::new(self.cfg.seed.wrapping_mul(0x9E37_79B9).wrapping_add(step as u64 + 1));
        let labelled: Vec<usize> = (0..d.pictures()).filter(|&i| d.category_labels[i] >= 0 || d.style_labels[i] >= 0).collect();
        let pictures = (0..self.cfg.batch).map(|_| labelled[rng.below(labelled.len())]).collect();
        let (kc, ks, j) = (d.categories, d.styles, d.caption_templates);
        let other = |rng: &mut NoiseRng, n: usize, not: usize| (not + 1 + rng.below(n - 1)) % n;
        let (mut style, mut category) = (Vec::new(), Vec::new());
        for _ in 0..self.cfg.triplets {
            // For f_s: same style, another category is positive; same category, another style is negative.
            let (k, s, t) = (rng.below(kc), rng.below(ks), rng.below(j));
            let (k2, s2) = (other(&mut rng, kc, k), other(&mut rng, ks, s));
            style.extend([d.caption(k, s, t), d.caption(k2, s, rng.below(j)), d.caption(k, s2, rng.below(j))]);
            // For f_c: same category, another style is positive; another category, same style is negative.
            let (k, s, t) = (rng.below(kc), rng.below(ks), rng.below(j));
            let (k2, s2) = (other(&mut rng, kc, k), other(&mut rng, ks, s));
            category.extend([d.caption(k, s, t), d.caption(k, s2, rng.below(j)), d.caption(k2, s, rng.below(j))]);
        }
        let g = self.cfg.keep_prompts.min(d.general_prompts.len());
        let mut keep_idx: Vec<usize> = (0..d.general_prompts.len()).collect();
        for i in 0..g {
            let pick = i + rng.below(keep_idx.len() - i);
            keep_idx.swap(i, pick);
        }
        let keep = keep_idx[..g].iter().map(|&i| d.general_prompts[i].clone()).collect();
        let denoise = match (self.cfg.w_den > 0.0, self.denoiser, &d.denoise) {
            (true, Some(denoiser), Some(data)) => {
                let usable = data.usable();
                let picks: Vec<usize> = (0..self.cfg.den_batch).map(|_| usable[rng.below(usable.len())]).collect();
                let t_max = denoiser.schedule.num_train_timesteps();
                let timesteps: Vec<usize> = picks.iter().map(|_| rng.below(t_max)).collect();
                let noise = rng.normals(picks.len() * data.latent_len());
                Some(DenoiseBatch::noised(data, &denoiser.schedule, &picks, &timesteps, &noise, &self.device))
            }
            _ => None,
        };
        (pictures, style, category, keep, denoise)
    }

    /// One training step; returns its log line.
    pub async fn train_step(&mut self) -> Result<StepLog> {
        let (pictures, triplet_style, triplet_category, keep, denoise) = self.sample(self.step);
        let d = &self.data;
        let p = d.feature_dim;
        let features: Vec<f32> = pictures.iter().flat_map(|&i| d.features[i * p..(i + 1) * p].iter().copied()).collect();
        let batch = StepBatch {
            image_features: Tensor::from_data(TensorData::new(features, [pictures.len(), p]), &self.device),
            category_labels: pictures.iter().map(|&i| d.category_labels[i]).collect(),
            style_labels: pictures.iter().map(|&i| d.style_labels[i]).collect(),
            classes: d.classes.clone(),
            triplet_style,
            triplet_category,
            keep,
            temperature: d.temperature,
            denoise,
        };
        let keep_base = self.base.forward(&batch.keep, 0)?.last_hidden_state;
        let leaves = self.trainables.leaves(&self.device.clone().autodiff())?;
        let frozen = Frozen { base: self.base, projection: self.projection, unet: self.denoiser.map(|d| &d.unet) };
        let tuned = Tuned { category: leaves.category.encoder(), style: leaves.style.encoder(), adapter: &leaves.adapter };
        let terms = losses(&frozen, &tuned, &batch, &keep_base, &self.cfg)?;
        let mut values = [0f32; 8];
        for (v, t) in values.iter_mut().zip(terms.values()) {
            *v = read_f32(t.without_autodiff()).await?.1[0];
        }
        if !values[7].is_finite() {
            return Err(Error::invalid("training", format!("the loss became {} at step {} (lower lr?)", values[7], self.step + 1)));
        }
        let grads = terms.total.backward();
        let mut gradients = leaves.gradients(&grads, &self.trainables).await?;
        let grad_norm = match self.cfg.clip_grad_norm {
            Some(max) => clip_grad_norm(&mut gradients, max),
            None => crate::train::optim::global_norm(&gradients),
        };
        self.step += 1;
        let lr = self.cfg.lr_at(self.step);
        let mut params: Vec<Vec<f32>> = self.trainables.tensors.iter_mut().map(|t| std::mem::take(&mut t.values)).collect();
        self.optimizer.step(lr, &mut params, &gradients);
        for (t, v) in self.trainables.tensors.iter_mut().zip(params) {
            t.values = v;
        }
        Ok(StepLog { step: self.step, losses: values, grad_norm, lr })
    }

    /// Trainables, AdamW moments and the step count as one safetensors file (the config in its metadata).
    pub fn checkpoint(&self) -> Vec<u8> {
        let mut tensors = Vec::new();
        for (t, m) in self.trainables.tensors.iter().zip(&self.optimizer.moments) {
            tensors.push(RawTensor::f32(format!("param.{}", t.io_name()), t.shape.clone(), &t.values));
            tensors.push(RawTensor::f32(format!("exp_avg.{}", t.io_name()), t.shape.clone(), &m.exp_avg));
            tensors.push(RawTensor::f32(format!("exp_avg_sq.{}", t.io_name()), t.shape.clone(), &m.exp_avg_sq));
        }
        let meta = [("config", serde_json::to_string(&self.cfg).expect("config serializes")), ("step", self.step.to_string())];
        serialize_with_metadata(&tensors, &meta)
    }

    /// Continues from a checkpoint of the same run (same config, apart from `steps`).
    pub fn resume(&mut self, checkpoint: &SafeTensors) -> Result<()> {
        let name = checkpoint.name().to_string();
        let saved: TrainConfig = checkpoint
            .metadata("config")
            .and_then(|c| serde_json::from_str(c).ok())
            .ok_or_else(|| Error::file(&name, "is not a fine-tuning checkpoint (no `config` metadata)"))?;
        let same = TrainConfig { steps: self.cfg.steps, checkpoint_every: self.cfg.checkpoint_every, ..saved.clone() };
        if same != self.cfg {
            return Err(Error::file(&name, "was written with another training config (only `steps` and `checkpoint_every` may change on --resume)"));
        }
        let step: usize = checkpoint.metadata("step").and_then(|s| s.parse().ok()).ok_or_else(|| Error::file(&name, "has no `step` metadata"))?;
        for (t, m) in self.trainables.tensors.iter_mut().zip(&mut self.optimizer.moments) {
            let read = |prefix: &str| -> Result<Vec<f32>> {
                let key = format!("{prefix}.{}", t.io_name());
                let (shape, v) = checkpoint.f32(&key)?;
                if shape != t.shape {
                    return Err(Error::tensor(&name, &key, format!("shape {shape:?}, this run's is {:?}", t.shape)));
                }
                Ok(v)
            };
            let (values, exp_avg, exp_avg_sq) = (read("param")?, read("exp_avg")?, read("exp_avg_sq")?);
            t.values = values;
            *m = Moments { exp_avg, exp_avg_sq };
        }
        self.optimizer.step = step as u64;
        self.step = step;
        Ok(())
    }

    /// The results as files, by relative path, ready for `control-clip bundle`: `category_encoder/` and
    /// `style_encoder/` as PEFT LoRA folders (`adapter_config.json`, `adapter_model.safetensors`) or, in
    /// full mode, as `CLIPTextModel` folders (`config.json`, `model.safetensors`), and `adapter/` as the
    /// adapter's folder (`config.json`, `model.safetensors`).
    pub fn outputs(&self) -> Vec<(String, Vec<u8>)> {
        let mut files = Vec::new();
        let lora = &self.cfg.lora;
        let (config_name, config, weights_name) = match self.cfg.encoders {
            EncoderMode::Lora => (
                "adapter_config.json",
                serde_json::json!({
                    "peft_type": "LORA",
                    "task_type": null,
                    "r": lora.r,
                    "lora_alpha": lora.lora_alpha,
                    "lora_dropout": 0.0,
                    "bias": "none",
                    "target_modules": lora.target_modules,
                    "use_rslora": false,
                    "use_dora": false,
                    "init_lora_weights": true,
                }),
                "adapter_model.safetensors",
            ),
            EncoderMode::Full => ("config.json", self.trainables.text.to_json(), "model.safetensors"),
        };
        for part in [Part::Category, Part::Style] {
            files.push((format!("{}/{config_name}", part.prefix()), serde_json::to_vec_pretty(&config).expect("json")));
            files.push((format!("{}/{weights_name}", part.prefix()), self.trainables.part_file(part)));
        }
        let a = &self.trainables.adapter;
        let adapter_config = serde_json::json!({
            "hidden_size": a.hidden_size,
            "adapter_dim": a.adapter_dim,
            "layer_norm_eps": a.layer_norm_eps,
            "hidden_act": "gelu",
        });
        files.push(("adapter/config.json".into(), serde_json::to_vec_pretty(&adapter_config).expect("json")));
        files.push(("adapter/model.safetensors".into(), self.trainables.part_file(Part::Adapter)));
        files
    }
}

/// Projected image embeddings (not normalised) of encoded pictures, [N × P] row-major: each picture is
/// decoded, preprocessed as the CLIP model's `preprocessor_config.json` says, and run through the frozen
/// vision tower once. `pictures` are (name for messages, file bytes).
pub async fn image_features(
    vision: &crate::models::clip_vision::ClipVisionModel,
    processor: &crate::models::image_processor::ImageProcessor,
    pictures: &[(String, Vec<u8>)],
) -> Result<Vec<f32>> {
    use crate::models::image_processor::RgbImage;
    let s = vision.config.image_size;
    let mut out = Vec::new();
    for chunk in pictures.chunks(32) {
        let mut pixels = Vec::with_capacity(chunk.len() * 3 * s * s);
        for (name, bytes) in chunk {
            let img = RgbImage::decode(name, bytes)?;
            processor.check(name, &img)?;
            if processor.output_size(&img) != (s, s) {
                return Err(Error::file(name, format!("preprocesses to {:?}, the vision tower takes {s}×{s} (check preprocessor_config.json)", processor.output_size(&img))));
            }
            pixels.extend(processor.preprocess(&img));
        }
        let batch = Tensor::<4>::from_data(TensorData::new(pixels, [chunk.len(), 3, s, s]), &vision.device());
        let embeds = vision.forward(batch)?.image_embeds.ok_or_else(|| Error::invalid("CLIP model", "its vision tower has no `visual_projection`"))?;
        out.extend(read_f32(embeds).await?.1);
    }
    Ok(out)
}

/// L_den's latents of encoded pictures, [N × C × h × w] row-major, and [C, h, w]: each picture decoded,
/// scaled to [-1, 1] as diffusers' `VaeImageProcessor` does and encoded once by the frozen TAESD encoder
/// (`(encode(x) − shift_factor) · scaling_factor`). Every picture must have the first one's size.
pub async fn picture_latents(encoder: &crate::models::taesd::TinyEncoder, pictures: &[(String, Vec<u8>)]) -> Result<(Vec<f32>, [usize; 3])> {
    use crate::models::image_processor::RgbImage;
    let device = encoder.device();
    let (mut out, mut size, mut shape) = (Vec::new(), None, [0; 3]);
    for chunk in pictures.chunks(16) {
        let mut pixels = Vec::new();
        for (name, bytes) in chunk {
            let img = RgbImage::decode(name, bytes)?;
            let (w, h) = (img.width, img.height);
            match size {
                None => size = Some((w, h)),
                Some(first) if first != (w, h) => {
                    return Err(Error::file(name, format!("is {w}×{h}, the first picture {}×{}: L_den encodes every picture at one size", first.0, first.1)));
                }
                Some(_) => {}
            }
            let f = encoder.config.downscale_factor();
            if w % f != 0 || h % f != 0 {
                return Err(Error::file(name, format!("is {w}×{h}, not a multiple of the autoencoder's factor {f}")));
            }
            for c in 0..3 {
                pixels.extend((0..w * h).map(|i| (img.pixels[i * 3 + c] as f32 / 255.0) * 2.0 - 1.0));
            }
        }
        let (w, h) = size.expect("a picture");
        let x = Tensor::<4>::from_data(TensorData::new(pixels, [chunk.len(), 3, h, w]), &device);
        let (dims, values) = read_f32(encoder.encode_scaled(x)).await?;
        shape = [dims[1], dims[2], dims[3]];
        out.extend(values);
    }
    Ok((out, shape))
}
