//! `control-clip bundle`: builds a bundle folder (docs/bundle.md) from diffusers / transformers folders.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use control_clip::bundle::{FORMAT, FORMAT_VERSION, MANIFEST, StoreDType, convert_weights, file_entry, parse_size, shard_file_names, shard_tensors};
use control_clip::config::ConfigJson;
use control_clip::models::clip::find_weights_file;
use control_clip::schedulers::read_config_json;
use control_clip::weights::serialize;
use control_clip::{ClipTokenizer, Error, SafeTensors};
use serde_json::{Value, json};

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

fn write(path: &Path, bytes: &[u8]) -> control_clip::Result<()> {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, bytes)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| Error::file(path.display().to_string(), format!("cannot write: {e}")))
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
    std::fs::create_dir_all(out).map_err(|e| Error::file(out.display().to_string(), format!("cannot create: {e}")))?;

    // Validate the tokenizer by loading it, then copy it as is.
    let tokenizer = std::fs::read(&args.tokenizer).map_err(|e| Error::file(args.tokenizer.display().to_string(), format!("cannot read: {e}")))?;
    ClipTokenizer::from_bytes(&args.tokenizer.display().to_string(), &tokenizer)?;
    write(&out.join("tokenizer.json"), &tokenizer)?;
    let mut total = tokenizer.len() as u64;
    let mut components = serde_json::Map::new();
    components.insert("tokenizer".into(), file_entry("tokenizer.json", &tokenizer));

    let mut parts: Vec<(&str, &Path, &str)> = vec![("text_encoder", &args.text_encoder, "config.json"), ("unet", &args.unet, "config.json"), ("decoder", &args.decoder, "config.json")];
    for (component, dir) in [("category_encoder", &args.category_encoder), ("style_encoder", &args.style_encoder)] {
        if let Some(dir) = dir {
            // Deltas are recognised by their PEFT config; EncoderSource refuses a folder that is neither.
            let config = if dir.join("adapter_config.json").exists() { "adapter_config.json" } else { "config.json" };
            parts.push((component, dir, config));
        }
    }
    if let Some(dir) = &args.adapter {
        parts.push(("adapter", dir, "config.json"));
    }
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
    for (component, dir, config_name) in parts {
        let config = ConfigJson::read(&dir.join(config_name))?;
        let weights = SafeTensors::read(&find_weights_file(dir)?)?;
        let shards = shard_tensors(convert_weights(&weights, dtype)?, shard_bytes);
        let names = shard_file_names(component, shards.len());
        let mut files = Vec::new();
        for (name, tensors) in names.iter().zip(&shards) {
            let bytes = serialize(tensors);
            if let [t] = tensors.as_slice()
                && t.bytes.len() > shard_bytes
            {
                eprintln!("note: {name} is over --shard-size {}: its one tensor {} alone is {} bytes", args.shard_size, t.name, t.bytes.len());
            }
            write(&out.join(name), &bytes)?;
            total += bytes.len() as u64;
            files.push(file_entry(name, &bytes));
        }
        let mut entry = match files.len() {
            1 => files.pop().expect("one file"),
            _ => json!({"shards": files}),
        };
        entry["dtype"] = json!(args.dtype);
        if component.ends_with("_encoder") && component != "text_encoder" {
            entry["form"] = json!(if config_name == "adapter_config.json" { "lora" } else { "full" });
        }
        entry["config"] = Value::Object(config.object);
        components.insert(component.into(), entry);
    }
    let scheduler = read_config_json(&args.scheduler_config)?;
    components.insert("scheduler".into(), json!({"config": Value::Object(scheduler.object)}));

    let mut defaults = json!({
        "steps": args.steps, "guidance": args.guidance, "width": args.width, "height": args.height,
        "category_weight": args.category_weight, "style_weight": style_weight,
    });
    if let Some(prompt) = &args.prompt {
        defaults["prompt"] = json!(prompt);
    }
    let manifest = json!({
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": args.name,
        "licence": args.licence,
        "created_by": format!("control-clip {}", env!("CARGO_PKG_VERSION")),
        "defaults": defaults,
        "components": components,
    });
    let text = serde_json::to_string_pretty(&manifest).expect("manifest serializes");
    write(&out.join(MANIFEST), text.as_bytes())?;
    Ok(total + text.len() as u64)
}
