//! `control-clip finetune --base DIR|BUNDLE --clip DIR --data DIR [--config train.json] --out DIR`:
//! Control-CLIP fine-tuning of f_c, f_s (LoRA over E) and the adapter A (the library's `train` module).
//! Writes OUT/category_encoder, OUT/style_encoder (PEFT LoRA folders), OUT/adapter, OUT/log.jsonl (every
//! step's loss terms) and OUT/checkpoint.safetensors every `checkpoint_every` steps; `--resume` continues
//! from that checkpoint.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use control_clip::bundle::{Manifest, component};
use control_clip::config::ConfigJson;
use control_clip::files::{create_dir, read_bytes, read_text, write_atomic};
use control_clip::models::ModelFolder;
use control_clip::models::clip_vision::ClipModel;
use control_clip::models::image_processor::ImageProcessor;
use control_clip::train::TrainConfig;
use control_clip::train::dataset::{Domain, parse_labels};
use control_clip::train::finetune::{Prepared, Trainer, image_features};
use control_clip::{BackendKind, ClipTextModel, ClipTokenizer, Error, Result, SafeTensors, init_device};

#[derive(Args)]
pub struct FinetuneArgs {
    /// The generator's text encoder E: a bundle folder, a diffusers pipeline folder or a CLIP text model folder.
    #[arg(long)]
    base: PathBuf,
    /// The CLIP model (a transformers CLIPModel folder with preprocessor_config.json).
    #[arg(long)]
    clip: PathBuf,
    /// Dataset folder: pictures, labels.jsonl, domain.json.
    #[arg(long)]
    data: PathBuf,
    /// Training config (JSON; missing fields take DESIGN §2's defaults).
    #[arg(long)]
    config: Option<PathBuf>,
    /// tokenizer.json (default: the bundle's, the pipeline's tokenizer/, or the CLIP folder's).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    #[arg(long)]
    out: PathBuf,
    /// Continue from OUT/checkpoint.safetensors.
    #[arg(long)]
    resume: bool,
    #[arg(long, value_parser = ["wgpu", "cpu"], default_value = "cpu")]
    backend: String,
}

pub fn run(args: FinetuneArgs) -> ExitCode {
    match pollster::block_on(finetune(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nerror: {e}");
            ExitCode::from(2)
        }
    }
}

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
        let (config, weights) = control_clip::weights::read_model_dir(&base.join("text_encoder"))?;
        let tokenizer = base.join("tokenizer").join("tokenizer.json");
        return Ok((config, weights, tokenizer.exists().then(|| read_bytes(&tokenizer)).transpose()?));
    }
    let (config, weights) = control_clip::weights::read_model_dir(base)?;
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

pub async fn load(base_dir: &Path, clip_dir: &Path, data_dir: &Path, tokenizer: Option<&Path>, temperature: Option<f32>, backend: BackendKind) -> Result<Loaded> {
    let device = init_device(backend).await?;
    let (base_config, base_weights, bundled_tokenizer) = read_base(base_dir)?;
    let base = ClipTextModel::load(&base_config, &base_weights, &device)?;
    let clip = ClipModel::read_dir(clip_dir, &device)?;
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
        let bytes = read_bytes(&path).map_err(|e| Error::file(format!("{labels_name}:{}", l.line), format!("its picture cannot be read: {e}")))?;
        pictures.push((path.display().to_string(), bytes));
    }
    eprintln!("{} pictures: computing their image features once", pictures.len());
    let features = image_features(&clip.vision, &processor, &pictures).await?;
    let (category_prompts, style_prompts, captions, general_prompts) = Prepared::tokenize_domain(&domain, &tokenizer, &domain_path.display().to_string())?;
    let data = Prepared {
        feature_dim: clip.vision.config.projection_dim,
        features,
        category_labels: labels.iter().map(|l| l.category.map_or(-1, |c| c as i64)).collect(),
        style_labels: labels.iter().map(|l| l.style.map_or(-1, |s| s as i64)).collect(),
        category_prompts,
        category_templates: domain.category_templates.len(),
        style_prompts,
        style_templates: domain.style_templates.len(),
        captions,
        categories: domain.categories.len(),
        styles: domain.styles.len(),
        caption_templates: domain.caption_templates.len(),
        general_prompts,
        temperature: temperature.unwrap_or(clip.logit_scale.exp()),
    };
    Ok(Loaded { base, clip, domain, data })
}

async fn finetune(args: FinetuneArgs) -> Result<()> {
    let cfg = match &args.config {
        Some(path) => TrainConfig::parse(&path.display().to_string(), &read_text(path)?)?,
        None => TrainConfig::default(),
    };
    let backend: BackendKind = args.backend.parse()?;
    let loaded = load(&args.base, &args.clip, &args.data, args.tokenizer.as_deref(), cfg.temperature, backend).await?;
    create_dir(&args.out)?;
    let checkpoint_path = args.out.join("checkpoint.safetensors");
    let log_path = args.out.join("log.jsonl");
    let mut trainer = Trainer::new(cfg.clone(), &loaded.base, &loaded.clip.text, loaded.data.clone())?;
    if args.resume {
        trainer.resume(&SafeTensors::read(&checkpoint_path)?)?;
        eprintln!("resumed at step {}", trainer.step);
    } else if log_path.exists() {
        std::fs::remove_file(&log_path).map_err(|e| Error::file(log_path.display().to_string(), format!("cannot start a new log: {e}")))?;
    }
    // The log keeps exactly the steps the weights went through: a resumed run drops lines past the checkpoint.
    let kept: String = match std::fs::read_to_string(&log_path) {
        Ok(text) => text.lines().take(trainer.step).map(|l| format!("{l}\n")).collect(),
        Err(_) => String::new(),
    };
    write_atomic(&log_path, kept.as_bytes())?;
    let mut log = std::fs::OpenOptions::new().append(true).open(&log_path).map_err(|e| Error::file(log_path.display().to_string(), e.to_string()))?;
    let started = std::time::Instant::now();
    let first = trainer.step;
    while trainer.step < cfg.steps {
        let line = trainer.train_step().await?;
        writeln!(log, "{}", line.json_line()).map_err(|e| Error::file(log_path.display().to_string(), e.to_string()))?;
        let per_step = started.elapsed().as_secs_f64() / (trainer.step - first) as f64;
        let l = line.losses;
        eprint!(
            "\rstep {}/{}  total {:.4}  cat {:.3} sty {:.3} dec {:.3} trip {:.3} keep {:.4}/{:.4}  {:.2} s/step   ",
            trainer.step, cfg.steps, l[6], l[0], l[1], l[2], l[3], l[4], l[5], per_step
        );
        if trainer.step % cfg.checkpoint_every == 0 || trainer.step == cfg.steps {
            write_atomic(&checkpoint_path, &trainer.checkpoint())?;
        }
    }
    eprintln!();
    for (path, bytes) in trainer.outputs() {
        let path = args.out.join(path);
        create_dir(path.parent().expect("a folder"))?;
        write_atomic(&path, &bytes)?;
    }
    eprintln!("wrote {} (category_encoder, style_encoder, adapter, log.jsonl)", args.out.display());
    Ok(())
}
