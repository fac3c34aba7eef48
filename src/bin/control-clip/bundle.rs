//! `control-clip bundle`: builds a bundle folder (docs/bundle.md) from a diffusers pipeline folder, a
//! single-file SD 1.x checkpoint, or separate diffusers / transformers folders.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use control_clip::bundle::{
    BundleFile, Components, Defaults, EncoderForm, Files, MANIFEST, Manifest, SchedulerComponent, StoreDType, WeightsComponent, component,
    convert_tensor, parse_size, plan_shards, shard_file_names,
};
use control_clip::config::ConfigJson;
use control_clip::files;
use control_clip::control::ControlEncoders;
use control_clip::schedulers::SchedulerKind;
use control_clip::loaders::single_file::{Checkpoint, CheckpointConfigs, Part};
use control_clip::weights::{read_model_dir, read_weights, serialize};
use control_clip::{ClipTokenizer, Error, SafeTensors};

#[derive(Args)]
pub struct BundleArgs {
    /// A diffusers pipeline folder (model_index.json, text_encoder/, tokenizer/, unet/, vae/, scheduler/), as
    /// `save_pretrained` writes it; the options below override its parts.
    #[arg(long)]
    pipeline: Option<PathBuf>,
    /// A single-file SD 1.x checkpoint in the original LDM layout (`model.diffusion_model.*`,
    /// `first_stage_model.*`, `cond_stage_model.transformer.*`), safetensors only; it holds no tokenizer,
    /// so --tokenizer (or --config's tokenizer/) names one.
    #[arg(long, conflicts_with = "pipeline")]
    checkpoint: Option<PathBuf>,
    /// The --checkpoint's configs: a diffusers pipeline folder (unet/, vae/, text_encoder/, scheduler/
    /// configs, tokenizer/; weights not read). Without it, Stable Diffusion 1.5's configs.
    #[arg(long, requires = "checkpoint")]
    config: Option<PathBuf>,
    /// The bundle's scheduler (ddim, euler-a, dpmpp-2m, lcm), built from the given scheduler config as
    /// diffusers' `from_config` swaps schedulers. Default: the config's own class, or DDIM when that class
    /// is not implemented here (PNDM, SD 1.5's).
    #[arg(long)]
    scheduler: Option<String>,
    /// Read the generator's weight variant (text encoder, UNet, VAE), e.g. `fp16` for `*.fp16.safetensors`;
    /// not the --tiny-decoder's or the Control-CLIP parts'.
    #[arg(long)]
    variant: Option<String>,
    /// A tokenizer.json, or a tokenizer folder (tokenizer.json, or vocab.json + merges.txt with
    /// tokenizer_config.json / special_tokens_map.json).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    #[arg(long)]
    text_encoder: Option<PathBuf>,
    #[arg(long)]
    unet: Option<PathBuf>,
    /// AutoencoderKL or AutoencoderTiny folder (a pipeline's vae/ otherwise).
    #[arg(long)]
    decoder: Option<PathBuf>,
    /// A TAESD (AutoencoderTiny) folder to use instead of the pipeline's VAE: in a browser, the right
    /// choice (previews, speed, memory).
    #[arg(long, conflicts_with = "decoder")]
    tiny_decoder: Option<PathBuf>,
    #[arg(long)]
    scheduler_config: Option<PathBuf>,
    /// Control-CLIP category encoder f_c: a CLIP text model folder (config.json) or LoRA deltas over
    /// --text-encoder (adapter_config.json + safetensors).
    #[arg(long)]
    category_encoder: Option<PathBuf>,
    /// Control-CLIP style encoder f_s, full or deltas.
    #[arg(long)]
    style_encoder: Option<PathBuf>,
    /// The style branch's adapter folder (config.json + safetensors).
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Recommended category weight λ_c. (The recommended numbers are f64 so that the manifest carries them
    /// as the user wrote them: 0.8, not f32's 0.800000011920929.)
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    category_weight: f64,
    /// Recommended style weight λ_s (default 1 with a style encoder or adapter, else 0).
    #[arg(long, allow_negative_numbers = true)]
    style_weight: Option<f64>,
    /// Weights precision in the bundle.
    #[arg(long, default_value = "f16")]
    dtype: String,
    #[arg(long, default_value = "unnamed model")]
    name: String,
    /// Licence of the weights (shown by the page).
    #[arg(long, default_value = "unknown")]
    licence: String,
    /// Recommended defaults the page starts from.
    #[arg(long, default_value_t = 20)]
    steps: usize,
    #[arg(long, default_value_t = 7.5)]
    guidance: f64,
    #[arg(long, default_value_t = 512)]
    width: usize,
    #[arg(long, default_value_t = 512)]
    height: usize,
    /// A prompt that shows what the model can do; the page starts with it.
    #[arg(long)]
    prompt: Option<String>,
    /// Most tensor data per weights file, in bytes or with a K / M / G suffix (KiB, MiB, GiB): a larger
    /// component is split into shards (docs/bundle.md says why 32M). A single tensor larger than this
    /// gets a shard of its own.
    #[arg(long, default_value = "32M")]
    shard_size: String,
    /// Output folder (created; must not exist or be empty).
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: BundleArgs) -> ExitCode {
    match build(&args) {
        Ok(bytes) => {
            eprintln!("wrote {} ({bytes} bytes)", args.out.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// Where a model comes from: its own folder, or a single-file checkpoint.
enum ModelSource {
    Folder(PathBuf),
    Checkpoint(Part),
}

/// Where each part comes from: the explicit options, else the pipeline folder or the checkpoint.
struct Sources {
    tokenizer: PathBuf,
    text_encoder: ModelSource,
    unet: ModelSource,
    decoder: ModelSource,
    scheduler: ConfigJson,
    checkpoint: Option<(Checkpoint, CheckpointConfigs)>,
}

/// A model_index.json component's class: entries are `[library, class]`; `[null, null]` is a component the
/// pipeline does not have.
fn class_of(value: Option<&serde_json::Value>) -> Option<&str> {
    value.and_then(|v| v.as_array()).and_then(|v| v.get(1)).and_then(|c| c.as_str())
}

/// The components `bundle` reads from a pipeline, by their model_index.json names.
const PIPELINE_PARTS: [&str; 5] = ["text_encoder", "tokenizer", "unet", "vae", "scheduler"];

impl Sources {
    fn resolve(args: &BundleArgs) -> control_clip::Result<Self> {
        if let Some(dir) = &args.pipeline {
            let index = ConfigJson::read(&dir.join("model_index.json"))?;
            for (name, value) in &index.object {
                let class = class_of(Some(value));
                if name.starts_with('_') || PIPELINE_PARTS.contains(&name.as_str()) || class.is_none() {
                    continue;
                }
                if name.ends_with("_2") {
                    return Err(Error::config(&index.file, name, "a second text encoder (an SDXL-type pipeline) is not supported: control-clip runs SD 1.x / 2.x-type pipelines"));
                }
                eprintln!("note: skipping the pipeline's {name} ({}): control-clip does not run it", class.unwrap_or("?"));
            }
            for part in PIPELINE_PARTS {
                if class_of(index.object.get(part)).is_none() {
                    return Err(Error::config(&index.file, part, "missing: bundle needs text_encoder, tokenizer, unet, vae and scheduler"));
                }
            }
        }
        let checkpoint = match &args.checkpoint {
            Some(file) => {
                let checkpoint = Checkpoint::open(file)?;
                let configs = match &args.config {
                    Some(dir) => CheckpointConfigs::read_dir(dir)?,
                    None => CheckpointConfigs::sd1(),
                };
                let unused = checkpoint.unused();
                if let Some(first) = unused.first() {
                    eprintln!("note: skipping {} tensors of {} that no model reads (e.g. {first})", unused.len(), checkpoint.name());
                }
                Some((checkpoint, configs))
            }
            None => None,
        };
        let model = |given: &Option<PathBuf>, option: &str, part: Part| -> control_clip::Result<ModelSource> {
            match (given, &args.pipeline, &checkpoint) {
                (Some(p), _, _) => Ok(ModelSource::Folder(p.clone())),
                (None, Some(dir), _) => Ok(ModelSource::Folder(dir.join(part.name()))),
                (None, None, Some(_)) => Ok(ModelSource::Checkpoint(part)),
                (None, None, None) => Err(Error::invalid(option, "is required without --pipeline or --checkpoint")),
            }
        };
        let decoder = if args.tiny_decoder.is_some() { &args.tiny_decoder } else { &args.decoder };
        let tokenizer = match (&args.tokenizer, &args.pipeline, &args.config, &args.checkpoint) {
            (Some(p), _, _, _) => p.clone(),
            (None, Some(dir), _, _) | (None, None, Some(dir), _) => dir.join("tokenizer"),
            (None, None, None, Some(_)) => {
                return Err(Error::invalid(
                    "--tokenizer",
                    "is required with --checkpoint: a single-file checkpoint holds no tokenizer. SD 1.x uses CLIP ViT-L/14's: the tokenizer/ folder of an SD 1.x diffusers pipeline, or this repository's www/models/default/tokenizer.json (the same vocabulary)",
                ));
            }
            (None, None, None, None) => return Err(Error::invalid("--tokenizer", "is required without --pipeline or --checkpoint")),
        };
        let scheduler = match (&args.scheduler_config, &args.pipeline, &checkpoint) {
            (Some(p), _, _) => ConfigJson::read(p)?,
            (None, Some(dir), _) => ConfigJson::read(&dir.join("scheduler/scheduler_config.json"))?,
            (None, None, Some((_, configs))) => configs.scheduler.clone(),
            (None, None, None) => return Err(Error::invalid("--scheduler-config", "is required without --pipeline or --checkpoint")),
        };
        Ok(Self {
            tokenizer,
            text_encoder: model(&args.text_encoder, "--text-encoder", Part::TextEncoder)?,
            unet: model(&args.unet, "--unet", Part::Unet)?,
            decoder: model(decoder, "--decoder", Part::Vae)?,
            scheduler,
            checkpoint,
        })
    }

    /// A model's config and weights (`variant`: the weight variant of a folder).
    fn load(&self, source: &ModelSource, variant: Option<&str>) -> control_clip::Result<(ConfigJson, SafeTensors)> {
        match source {
            ModelSource::Folder(dir) => Ok((ConfigJson::read(&dir.join("config.json"))?, read_weights(dir, variant)?)),
            ModelSource::Checkpoint(part) => {
                let (checkpoint, configs) = self.checkpoint.as_ref().expect("a checkpoint part has a checkpoint");
                let config = configs.of(*part);
                Ok((config.clone(), checkpoint.read(*part, config)?))
            }
        }
    }
}

/// The scheduler config the bundle carries: `choice` (a CLI or class name) or the config's own class, else
/// DDIM; the training schedule (betas, timestep spacing, offsets) is the config's either way.
fn scheduler_config(mut config: ConfigJson, choice: Option<&str>) -> control_clip::Result<ConfigJson> {
    let class = config.opt_string("_class_name")?;
    let kind = match choice {
        Some(name) => name.parse::<SchedulerKind>()?,
        None => match class.as_deref().and_then(SchedulerKind::from_class_name) {
            Some(kind) => kind,
            None => {
                eprintln!(
                    "note: {} names {}, which control-clip does not implement: the bundle uses DDIMScheduler with the same training schedule (--scheduler chooses another)",
                    config.file,
                    class.as_deref().unwrap_or("no scheduler class")
                );
                SchedulerKind::Ddim
            }
        },
    };
    config.object.insert("_class_name".into(), kind.class_name().into());
    control_clip::schedulers::build(kind, &control_clip::schedulers::SchedulerConfig::from_json(&config)?)?;
    Ok(config)
}

fn build(args: &BundleArgs) -> control_clip::Result<u64> {
    let src = Sources::resolve(args)?;
    let variant = args.variant.as_deref();
    let dtype: StoreDType = args.dtype.parse()?;
    let shard_bytes = parse_size("--shard-size", &args.shard_size)?;
    control_clip::control::ControlWeights::new(args.category_weight as f32, args.style_weight.unwrap_or(0.0) as f32)?;
    let style_weight = args.style_weight.unwrap_or(if args.style_encoder.is_some() || args.adapter.is_some() { 1.0 } else { 0.0 });
    // Everything is written into a fresh folder beside --out and renamed to it only once the bundle
    // loads as the page would load it: a failed build leaves no half-made folder.
    let staged = files::StagedDir::new(&args.out)?;
    let out = &staged.staging;

    // Validate the tokenizer by loading it, then copy it (a vocab.json + merges.txt folder becomes the
    // tokenizer.json transformers builds from them).
    let scheduler = scheduler_config(src.scheduler.clone(), args.scheduler.as_deref())?;
    let (tokenizer_source, tokenizer) = if src.tokenizer.is_dir() {
        ClipTokenizer::tokenizer_json_of_dir(&src.tokenizer)?
    } else {
        (src.tokenizer.display().to_string(), files::read_bytes_at_most(&src.tokenizer, files::MAX_SMALL_FILE)?)
    };
    ClipTokenizer::from_bytes(&tokenizer_source, &tokenizer)?;
    let tokenizer_name = format!("{}.json", component::TOKENIZER);
    files::write_atomic(&out.join(&tokenizer_name), &tokenizer)?;
    let mut total = tokenizer.len() as u64;

    // Load everything once as the pipeline would, so that a bundle that cannot run is never written.
    if args.category_encoder.is_some() || args.style_encoder.is_some() || args.adapter.is_some() {
        let device = pollster::block_on(control_clip::init_device(control_clip::BackendKind::Cpu))?;
        let (config, weights) = src.load(&src.text_encoder, variant)?;
        ControlEncoders::read_parts(
            (&config, &weights),
            args.category_encoder.as_deref(),
            args.style_encoder.as_deref(),
            args.adapter.as_deref(),
            &device,
        )?;
    }
    // `variant` is the weight variant to read: the generator's parts may have one (not a --tiny-decoder,
    // not the Control-CLIP parts).
    let mut write_component = |name: &str, (config, weights): (ConfigJson, SafeTensors), form: Option<EncoderForm>| -> control_clip::Result<WeightsComponent> {
        // One shard converted and in memory at a time: the component's file plus at most one shard.
        let shards = plan_shards(&weights, dtype, shard_bytes)?;
        let names = shard_file_names(name, shards.len());
        let mut entries = Vec::new();
        for (file_name, keys) in names.iter().zip(&shards) {
            let tensors = keys.iter().map(|k| convert_tensor(&weights, k, dtype)).collect::<control_clip::Result<Vec<_>>>()?;
            let bytes = serialize(&tensors);
            if let [t] = tensors.as_slice()
                && t.bytes.len() > shard_bytes
            {
                eprintln!("note: {file_name} is over --shard-size {}: its one tensor {} alone is {} bytes", args.shard_size, t.name, t.bytes.len());
            }
            files::write_atomic(&out.join(file_name), &bytes)?;
            total += bytes.len() as u64;
            entries.push(BundleFile::of(file_name, &bytes));
        }
        Ok(WeightsComponent { files: Files::from_list(entries), dtype: Some(args.dtype.clone()), form, config: config.object })
    };
    // Deltas are recognised by their PEFT config; EncoderSource refused a folder that is neither above.
    let control_part = |dir: &Path| -> control_clip::Result<(ConfigJson, SafeTensors, EncoderForm)> {
        let form = if dir.join("adapter_config.json").exists() { EncoderForm::Lora } else { EncoderForm::Full };
        let config_name = if form == EncoderForm::Lora { "adapter_config.json" } else { "config.json" };
        Ok((ConfigJson::read(&dir.join(config_name))?, read_weights(dir, None)?, form))
    };
    let mut encoder = |name: &str, dir: &Option<PathBuf>| {
        dir.as_deref()
            .map(|d| control_part(d).and_then(|(config, weights, form)| write_component(name, (config, weights), Some(form))))
            .transpose()
    };
    let category_encoder = encoder(component::CATEGORY_ENCODER, &args.category_encoder)?;
    let style_encoder = encoder(component::STYLE_ENCODER, &args.style_encoder)?;
    let components = Components {
        tokenizer: BundleFile::of(&tokenizer_name, &tokenizer),
        text_encoder: write_component(component::TEXT_ENCODER, src.load(&src.text_encoder, variant)?, None)?,
        unet: write_component(component::UNET, src.load(&src.unet, variant)?, None)?,
        decoder: write_component(component::DECODER, src.load(&src.decoder, if args.tiny_decoder.is_some() { None } else { variant })?, None)?,
        scheduler: SchedulerComponent { config: scheduler.object },
        category_encoder,
        style_encoder,
        adapter: args.adapter.as_deref().map(|d| write_component(component::ADAPTER, read_model_dir(d)?, None)).transpose()?,
    };
    let defaults = Defaults {
        prompt: args.prompt.clone(),
        steps: Some(args.steps),
        guidance: Some(args.guidance),
        width: Some(args.width),
        height: Some(args.height),
        category_weight: Some(args.category_weight),
        style_weight: Some(style_weight),
    };
    let text = Manifest::new(&args.name, &args.licence, defaults, components).to_json();
    files::write_atomic(&out.join(MANIFEST), text.as_bytes())?;
    // The manifest must read back (its recommended settings included) and every config must fit its
    // weights: load the bundle as the pipeline does, on the CPU backend, before it gets its name.
    let device = pollster::block_on(control_clip::init_device(control_clip::BackendKind::Cpu))?;
    let pipeline = pollster::block_on(control_clip::pipeline::Pipeline::read_bundle(out, &device))
        .map_err(|e| Error::invalid("bundle", format!("it would not load, so it is not written: {e}")))?;
    let mut recommended = control_clip::pipeline::GenerateRequest::new(args.prompt.clone().unwrap_or_default());
    (recommended.steps, recommended.guidance, recommended.width, recommended.height) = (args.steps, args.guidance as f32, args.width, args.height);
    recommended.control = control_clip::control::ControlWeights { category: args.category_weight as f32, style: style_weight as f32 };
    pipeline.validate(&recommended).map_err(|e| Error::invalid("bundle", format!("its recommended settings (--steps, --guidance, --width, --height, the weights) would be refused: {e}")))?;
    staged.finish()?;
    Ok(total + text.len() as u64)
}
