//! `control-clip generate`: prompt → PNG, with a progress line on stderr. The PNG is written to a
//! temporary name next to the target and renamed, so a failed or cancelled run leaves no half file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use control_clip::control::{ControlEncoders, ControlWeights};
use control_clip::pipeline::{GenerateRequest, Pipeline};
use control_clip::schedulers::SchedulerKind;
use control_clip::{BackendKind, Error, SafeTensors, init_device};

#[derive(Args)]
pub struct GenerateArgs {
    /// A bundle folder (manifest.json + files), instead of the five component options.
    #[arg(long)]
    bundle: Option<PathBuf>,
    /// CLIP tokenizer.json.
    #[arg(long, required_unless_present = "bundle", conflicts_with = "bundle")]
    tokenizer: Option<PathBuf>,
    /// transformers CLIPTextModel folder.
    #[arg(long, required_unless_present = "bundle", conflicts_with = "bundle")]
    text_encoder: Option<PathBuf>,
    /// diffusers UNet2DConditionModel folder.
    #[arg(long, required_unless_present = "bundle", conflicts_with = "bundle")]
    unet: Option<PathBuf>,
    /// diffusers AutoencoderKL or AutoencoderTiny folder.
    #[arg(long, required_unless_present = "bundle", conflicts_with = "bundle")]
    decoder: Option<PathBuf>,
    /// diffusers scheduler_config.json (its `_class_name` is the default scheduler).
    #[arg(long, required_unless_present = "bundle", conflicts_with = "bundle")]
    scheduler_config: Option<PathBuf>,
    /// Control-CLIP category encoder f_c: a CLIP text model folder or a LoRA delta folder over
    /// --text-encoder (default: the text encoder itself).
    #[arg(long, conflicts_with = "bundle")]
    category_encoder: Option<PathBuf>,
    /// Control-CLIP style encoder f_s, full or delta (default: the text encoder itself).
    #[arg(long, conflicts_with = "bundle")]
    style_encoder: Option<PathBuf>,
    /// The adapter on the style branch (default: the identity).
    #[arg(long, conflicts_with = "bundle")]
    adapter: Option<PathBuf>,
    /// λ_c: how strongly the category context (f_c) drives every cross-attention layer.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    category_weight: f32,
    /// λ_s: how strongly the style context (A∘f_s) drives every cross-attention layer; 0 switches the
    /// style branch off.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    style_weight: f32,
    #[arg(long)]
    prompt: String,
    #[arg(long, default_value = "")]
    negative_prompt: String,
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Classifier-free guidance scale; ≤ 1 skips the unconditional pass (half the work).
    #[arg(long, default_value_t = 7.5)]
    guidance: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 512)]
    width: usize,
    #[arg(long, default_value_t = 512)]
    height: usize,
    /// ddim, euler-a, dpmpp-2m or lcm (default: the scheduler config's class).
    #[arg(long)]
    scheduler: Option<String>,
    #[arg(long, default_value_t = 0)]
    clip_skip: usize,
    #[arg(long, default_value = "wgpu")]
    backend: String,
    /// Start from these latents (safetensors, tensor `latents` [1, C, H/f, W/f]) instead of seeded noise.
    #[arg(long)]
    init_latents: Option<PathBuf>,
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: GenerateArgs) -> ExitCode {
    match pollster::block_on(generate(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nerror: {e}");
            ExitCode::from(2)
        }
    }
}

async fn generate(args: &GenerateArgs) -> control_clip::Result<()> {
    if args.out.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() != Some("png") {
        return Err(Error::invalid("--out", format!("{} must end in .png", args.out.display())));
    }
    let backend: BackendKind = args.backend.parse()?;
    let device = init_device(backend).await?;
    let pipeline = match &args.bundle {
        Some(dir) => Pipeline::read_bundle(dir, &device).await?,
        None => {
            // clap guarantees all five when there is no bundle.
            let part = |p: &Option<PathBuf>| p.clone().expect("required without --bundle");
            let text_encoder = part(&args.text_encoder);
            let mut pipeline =
                Pipeline::from_dirs(&part(&args.tokenizer), &text_encoder, &part(&args.unet), &part(&args.decoder), &part(&args.scheduler_config), &device)?;
            pipeline.control = ControlEncoders::read_dirs(
                &text_encoder,
                args.category_encoder.as_deref(),
                args.style_encoder.as_deref(),
                args.adapter.as_deref(),
                &device,
            )?;
            pipeline
        }
    };
    let mut req = GenerateRequest::new(args.prompt.clone());
    req.negative_prompt = args.negative_prompt.clone();
    req.steps = args.steps;
    req.guidance = args.guidance;
    req.seed = args.seed;
    req.width = args.width;
    req.height = args.height;
    req.clip_skip = args.clip_skip;
    req.control = ControlWeights::new(args.category_weight, args.style_weight)?;
    req.scheduler = args.scheduler.as_deref().map(str::parse::<SchedulerKind>).transpose()?;
    if let Some(path) = &args.init_latents {
        let io = SafeTensors::read(path)?;
        let shape = io.shape("latents")?.to_vec();
        let shape: [usize; 4] = shape
            .clone()
            .try_into()
            .map_err(|_| Error::tensor(io.name(), "latents", format!("expected [1, C, H, W], found {shape:?}")))?;
        req.init_latents = Some(io.tensor("latents", shape, &device)?);
    }
    let image = pipeline
        .generate(&req, &mut |p| {
            let left = p.elapsed_ms / p.step as f64 * (p.total - p.step) as f64;
            eprint!("\rstep {}/{}  {:.2} s/step  {:.1} s left   ", p.step, p.total, p.step_ms / 1000.0, left / 1000.0);
            let _ = std::io::stderr().flush();
            true
        })
        .await?;
    eprintln!();
    for notice in &image.notices {
        eprintln!("warning: {notice}");
    }
    write_png_atomically(&args.out, image.width, image.height, &image.rgba)?;
    eprintln!("wrote {} ({}×{})", args.out.display(), image.width, image.height);
    Ok(())
}

fn write_png_atomically(path: &Path, width: usize, height: usize, rgba: &[u8]) -> control_clip::Result<()> {
    let name = path.display().to_string();
    let fail = |e: &dyn std::fmt::Display| Error::file(&name, format!("cannot write the PNG: {e}"));
    let mut bytes = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut bytes, width as u32, height as u32);
        encoder.set_color(png::ColorType::Rgba);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().map_err(|e| fail(&e))?;
        writer.write_image_data(rgba).map_err(|e| fail(&e))?;
    }
    let file_name = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, &bytes).map_err(|e| fail(&e))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        fail(&e)
    })
}
