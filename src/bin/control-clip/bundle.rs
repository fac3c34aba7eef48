//! `control-clip bundle`: builds a bundle folder (docs/bundle.md) from diffusers / transformers folders.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use control_clip::bundle::{
    BundleFile, Components, Defaults, EncoderForm, Files, MANIFEST, Manifest, SchedulerComponent, StoreDType, WeightsComponent, component,
    convert_weights, parse_size, shard_file_names, shard_tensors,
};
use control_clip::config::ConfigJson;
use control_clip::files;
use control_clip::weights::{find_weights_file, serialize};
use control_clip::{ClipTokenizer, Error, SafeTensors};

#[derive(Args)]
pub struct BundleArgs {
    #[arg(long)]
    tokenizer: PathBuf,
    #[arg(long)]
    text_encoder: PathBuf,
    #[arg(long)]
    unet: PathBuf,
    /// AutoencoderKL or AutoencoderTiny folder.
    #[arg(long)]
    decoder: PathBuf,
    #[arg(long)]
    scheduler_config: PathBuf,
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

fn build(args: &BundleArgs) -> control_clip::Result<u64> {
    let dtype: StoreDType = args.dtype.parse()?;
    let shard_bytes = parse_size(&args.shard_size)?;
    control_clip::control::ControlWeights::new(args.category_weight as f32, args.style_weight.unwrap_or(0.0) as f32)?;
    let style_weight = args.style_weight.unwrap_or(if args.style_encoder.is_some() || args.adapter.is_some() { 1.0 } else { 0.0 });
    let out = &args.out;
    if out.exists() && std::fs::read_dir(out).map(|mut d| d.next().is_some()).unwrap_or(true) {
        return Err(Error::file(out.display().to_string(), "exists and is not empty; choose a new folder"));
    }
    files::create_dir(out)?;

    // Validate the tokenizer by loading it, then copy it as is.
    let tokenizer = files::read_bytes(&args.tokenizer)?;
    ClipTokenizer::from_bytes(&args.tokenizer.display().to_string(), &tokenizer)?;
    let tokenizer_name = format!("{}.json", component::TOKENIZER);
    files::write_atomic(&out.join(&tokenizer_name), &tokenizer)?;
    let mut total = tokenizer.len() as u64;

    // Load everything once as the pipeline would, so that a bundle that cannot run is never written.
    {
        let device = pollster::block_on(control_clip::init_device(control_clip::BackendKind::Cpu))?;
        control_clip::control::ControlEncoders::read_dirs(
            &args.text_encoder,
            args.category_encoder.as_deref(),
            args.style_encoder.as_deref(),
            args.adapter.as_deref(),
            &device,
        )?;
    }
    let mut write_component = |name: &str, dir: &Path, form: Option<EncoderForm>| -> control_clip::Result<WeightsComponent> {
        // Deltas are recognised by their PEFT config; EncoderSource refused a folder that is neither above.
        let config_name = if form == Some(EncoderForm::Lora) { "adapter_config.json" } else { "config.json" };
        let config = ConfigJson::read(&dir.join(config_name))?;
        let weights = SafeTensors::read(&find_weights_file(dir)?)?;
        let shards = shard_tensors(convert_weights(&weights, dtype)?, shard_bytes);
        let names = shard_file_names(name, shards.len());
        let mut entries = Vec::new();
        for (file_name, tensors) in names.iter().zip(&shards) {
            let bytes = serialize(tensors);
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
    let mut encoder = |name: &str, dir: &Option<PathBuf>| dir.as_deref().map(|d| write_component(name, d, Some(encoder_form(d)))).transpose();
    let category_encoder = encoder(component::CATEGORY_ENCODER, &args.category_encoder)?;
    let style_encoder = encoder(component::STYLE_ENCODER, &args.style_encoder)?;
    let components = Components {
        tokenizer: BundleFile::of(&tokenizer_name, &tokenizer),
        text_encoder: write_component(component::TEXT_ENCODER, &args.text_encoder, None)?,
        unet: write_component(component::UNET, &args.unet, None)?,
        decoder: write_component(component::DECODER, &args.decoder, None)?,
        scheduler: SchedulerComponent { config: ConfigJson::read(&args.scheduler_config)?.object },
        category_encoder,
        style_encoder,
        adapter: args.adapter.as_deref().map(|d| write_component(component::ADAPTER, d, None)).transpose()?,
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
