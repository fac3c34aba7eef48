//! `control-clip generate`: prompt → PNG, with a progress line on stderr. The PNG is written to a
//! temporary name next to the target and renamed, so a failed or cancelled run leaves no half file.
//!
//! `--batch FILE.jsonl` generates many pictures with the models loaded once (evaluation runs thousands):
//! one JSON object per line, `{"prompt", "seed", "out"}` plus optional `negative_prompt`,
//! `category_weight` and `style_weight`; every other setting comes from the command line. `out` is relative
//! to the batch file's folder. A bad line is refused, with the file and line, before anything is generated.

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
    #[arg(long, required_unless_present = "batch", conflicts_with = "batch")]
    prompt: Option<String>,
    /// Many generations from one JSON line each (see the module docs), instead of --prompt / --out.
    #[arg(long)]
    batch: Option<PathBuf>,
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
    #[arg(long, required_unless_present = "batch", conflicts_with = "batch")]
    out: Option<PathBuf>,
}

/// One line of a `--batch` file.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchLine {
    prompt: String,
    seed: u64,
    out: PathBuf,
    negative_prompt: Option<String>,
    category_weight: Option<f32>,
    style_weight: Option<f32>,
}

/// What one generation differs in: prompt, seed, output and the weights.
struct Job {
    prompt: String,
    negative_prompt: String,
    seed: u64,
    control: ControlWeights,
    out: PathBuf,
}

fn check_png_name(flag: &str, path: &Path) -> control_clip::Result<()> {
    if path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() != Some("png") {
        return Err(Error::invalid(flag, format!("{} must end in .png", path.display())));
    }
    Ok(())
}

fn jobs(args: &GenerateArgs) -> control_clip::Result<Vec<Job>> {
    let Some(batch) = &args.batch else {
        let out = args.out.clone().expect("clap requires --out without --batch");
        check_png_name("--out", &out)?;
        return Ok(vec![Job {
            prompt: args.prompt.clone().expect("clap requires --prompt without --batch"),
            negative_prompt: args.negative_prompt.clone(),
            seed: args.seed,
            control: ControlWeights::new(args.category_weight, args.style_weight)?,
            out,
        }]);
    };
    let name = batch.display().to_string();
    let text = control_clip::files::read_text(batch)?;
    let folder = batch.parent().unwrap_or(Path::new("."));
    let mut jobs = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let at = format!("{name}, line {}", i + 1);
        let l: BatchLine = serde_json::from_str(line).map_err(|e| Error::file(&at, format!("not a batch line: {e}")))?;
        check_png_name(&at, &l.out)?;
        let control = ControlWeights::new(
            l.category_weight.unwrap_or(args.category_weight),
            l.style_weight.unwrap_or(args.style_weight),
        )
        .map_err(|e| Error::file(&at, e.to_string()))?;
        jobs.push(Job {
            prompt: l.prompt,
            negative_prompt: l.negative_prompt.unwrap_or_else(|| args.negative_prompt.clone()),
            seed: l.seed,
            control,
            out: folder.join(l.out),
        });
    }
    if jobs.is_empty() {
        return Err(Error::file(&name, "has no lines"));
    }
    Ok(jobs)
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
    let jobs = jobs(args)?;
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
                None,
                args.category_encoder.as_deref(),
                args.style_encoder.as_deref(),
                args.adapter.as_deref(),
                &device,
            )?;
            pipeline
        }
    };
    let mut req = GenerateRequest::new("");
    req.steps = args.steps;
    req.guidance = args.guidance;
    req.width = args.width;
    req.height = args.height;
    req.clip_skip = args.clip_skip;
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
    let count = jobs.len();
    for (n, job) in jobs.into_iter().enumerate() {
        (req.prompt, req.negative_prompt, req.seed, req.control) = (job.prompt, job.negative_prompt, job.seed, job.control);
        let image = pipeline
            .generate(&req, &mut |p| {
                let left = p.elapsed_ms / p.step as f64 * (p.total - p.step) as f64;
                let of = if count > 1 { format!("image {}/{count}  ", n + 1) } else { String::new() };
                eprint!("\r{of}step {}/{}  {:.2} s/step  {:.1} s left   ", p.step, p.total, p.step_ms / 1000.0, left / 1000.0);
                let _ = std::io::stderr().flush();
                true
            })
            .await?;
        if count == 1 {
            eprintln!();
        }
        for notice in &image.notices {
            eprintln!("\nwarning: {notice}");
        }
        write_png_atomically(&job.out, image.width, image.height, &image.rgba)?;
        if count == 1 {
            eprintln!("wrote {} ({}×{})", job.out.display(), image.width, image.height);
        }
    }
    if count > 1 {
        eprintln!("\nwrote {count} images");
    }
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
    control_clip::files::write_atomic(path, &bytes)
}
