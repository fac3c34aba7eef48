//! `control-clip bundle`: builds a bundle folder (docs/bundle.md) from a diffusers pipeline folder or from
//! separate diffusers / transformers folders.

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
use control_clip::weights::{find_weights_file_variant, serialize};
use control_clip::{ClipTokenizer, Error, SafeTensors};

#[derive(Args)]
pub struct BundleArgs {
    /// A diffusers pipeline folder (model_index.json, text_encoder/, tokenizer/, unet/, vae/, scheduler/), as
    /// `save_pretrained` writes it; the options below override its parts.
    #[arg(long)]
    pipeline: Option<PathBuf>,
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

/// Where each part comes from: the explicit options, else the pipeline folder.
struct Sources {
    tokenizer: PathBuf,
    text_encoder: PathBuf,
    unet: PathBuf,
    decoder: PathBuf,
    scheduler_config: PathBuf,
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
        let part = |given: &Option<PathBuf>, option: &str, in_pipeline: &str| -> control_clip::Result<PathBuf> {
            match (given, &args.pipeline) {
                (Some(p), _) => Ok(p.clone()),
                (None, Some(dir)) => Ok(dir.join(in_pipeline)),
                (None, None) => Err(Error::invalid(option, "is required without --pipeline")),
            }
        };
        let decoder = if args.tiny_decoder.is_some() { &args.tiny_decoder } else { &args.decoder };
        Ok(Self {
            tokenizer: part(&args.tokenizer, "--tokenizer", "tokenizer")?,
            text_encoder: part(&args.text_encoder, "--text-encoder", "text_encoder")?,
            unet: part(&args.unet, "--unet", "unet")?,
            decoder: part(decoder, "--decoder", "vae")?,
            scheduler_config: part(&args.scheduler_config, "--scheduler-config", "scheduler/scheduler_config.json")?,
        })
    }
}

fn build(args: &BundleArgs) -> control_clip::Result<u64> {
    let src = Sources::resolve(args)?;
    let variant = args.variant.as_deref();
    let dtype: StoreDType = args.dtype.parse()?;
    let shard_bytes = parse_size(&args.shard_size)?;
    control_clip::control::ControlWeights::new(args.category_weight as f32, args.style_weight.unwrap_or(0.0) as f32)?;
    let style_weight = args.style_weight.unwrap_or(if args.style_encoder.is_some() || args.adapter.is_some() { 1.0 } else { 0.0 });
    let out = &args.out;
    if out.exists() && std::fs::read_dir(out).map(|mut d| d.next().is_some()).unwrap_or(true) {
        return Err(Error::file(out.display().to_string(), "exists and is not empty; choose a new folder"));
    }
    files::create_dir(out)?;

    // Validate the tokenizer by loading it, then copy it (a vocab.json + merges.txt folder becomes the
    // tokenizer.json transformers builds from them).
    let (tokenizer_source, tokenizer) = if src.tokenizer.is_dir() {
        ClipTokenizer::tokenizer_json_of_dir(&src.tokenizer)?
    } else {
        (src.tokenizer.display().to_string(), files::read_bytes(&src.tokenizer)?)
    };
    ClipTokenizer::from_bytes(&tokenizer_source, &tokenizer)?;
    let tokenizer_name = format!("{}.json", component::TOKENIZER);
    files::write_atomic(&out.join(&tokenizer_name), &tokenizer)?;
    let mut total = tokenizer.len() as u64;

    // Load everything once as the pipeline would, so that a bundle that cannot run is never written.
    {
        let device = pollster::block_on(control_clip::init_device(control_clip::BackendKind::Cpu))?;
        ControlEncoders::read_dirs(
            &src.text_encoder,
            variant,
            args.category_encoder.as_deref(),
            args.style_encoder.as_deref(),
            args.adapter.as_deref(),
            &device,
        )?;
    }
    // `variant` is the weight variant to read: the generator's parts may have one (not a --tiny-decoder,
    // not the Control-CLIP parts).
    let mut write_component = |name: &str, dir: &Path, form: Option<EncoderForm>, variant: Option<&str>| -> control_clip::Result<WeightsComponent> {
        // Deltas are recognised by their PEFT config; EncoderSource refused a folder that is neither above.
        let config_name = if form == Some(EncoderForm::Lora) { "adapter_config.json" } else { "config.json" };
        let config = ConfigJson::read(&dir.join(config_name))?;
        let weights = SafeTensors::read(&find_weights_file_variant(dir, variant)?)?;
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
    let encoder_form = |dir: &Path| if dir.join("adapter_config.json").exists() { EncoderForm::Lora } else { EncoderForm::Full };
    let mut encoder = |name: &str, dir: &Option<PathBuf>| dir.as_deref().map(|d| write_component(name, d, Some(encoder_form(d)), None)).transpose();
    let category_encoder = encoder(component::CATEGORY_ENCODER, &args.category_encoder)?;
    let style_encoder = encoder(component::STYLE_ENCODER, &args.style_encoder)?;
    let components = Components {
        tokenizer: BundleFile::of(&tokenizer_name, &tokenizer),
        text_encoder: write_component(component::TEXT_ENCODER, &src.text_encoder, None, variant)?,
        unet: write_component(component::UNET, &src.unet, None, variant)?,
        decoder: write_component(component::DECODER, &src.decoder, None, if args.tiny_decoder.is_some() { None } else { variant })?,
        scheduler: SchedulerComponent { config: ConfigJson::read(&src.scheduler_config)?.object },
        category_encoder,
        style_encoder,
        adapter: args.adapter.as_deref().map(|d| write_component(component::ADAPTER, d, None, None)).transpose()?,
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
    Ok(total + text.len() as u64)
}
