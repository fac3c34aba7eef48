//! `control-clip generate`: prompt → PNG, with a progress line on stderr. The PNG is written to a
//! temporary name next to the target and renamed, so a failed or cancelled run leaves no half file.
//!
//! `--batch FILE.jsonl` generates many pictures with the models loaded once (evaluation runs thousands):
//! one JSON object per line, `{"prompt", "seed", "out"}` plus optional `negative_prompt`,
//! `category_weight` and `style_weight`; every other setting comes from the command line. `out` is relative
//! to the batch file's folder. A bad line is refused, with the file and line, before anything is generated.
//!
//! Size, steps, guidance and the weights ([`SettingFlags`]): an explicit flag wins, else a bundle's
//! recommended settings (its manifest's `defaults`, as the page starts from them), else SD's usual ones
//! (512², 20 steps, guidance 7.5, λ = (1, 0): [`GenerateRequest::new`], [`ControlWeights::default`]), which
//! is all there is for separate component folders. A batch line's own weights win over all three. One
//! stderr line says which settings were used and where each came from.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use control_clip::bundle::{BundleFile, Defaults, Manifest};
use control_clip::control::{ControlEncoders, ControlWeights};
use control_clip::pipeline::{GenerateRequest, Pipeline};
use control_clip::schedulers::SchedulerKind;
use control_clip::plan::MemoryPlan;
use control_clip::device::Precision;
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
    // Size, steps, guidance and the weights: a flag wins, else the bundle's `defaults`, else SD's.
    #[command(flatten)]
    settings: SettingFlags,
    #[arg(long, required_unless_present = "batch", conflicts_with = "batch")]
    prompt: Option<String>,
    /// Many generations from one JSON line each, instead of --prompt / --out: `{"prompt", "seed", "out"}`
    /// (`out` relative to the file's folder) plus optional `negative_prompt`, `category_weight`, `style_weight`.
    #[arg(long)]
    batch: Option<PathBuf>,
    #[arg(long, default_value = "")]
    negative_prompt: String,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// ddim, euler-a, dpmpp-2m or lcm (default: the scheduler config's class).
    #[arg(long)]
    scheduler: Option<String>,
    #[arg(long, default_value_t = 0)]
    clip_skip: usize,
    #[arg(long, default_value = "wgpu")]
    backend: String,
    /// What the models compute in: f32, f16 (a GPU with shader-f16), or auto (f16 on a real GPU that has it;
    /// f32 on the CPU backend and on software adapters such as lavapipe).
    #[arg(long, default_value = "auto")]
    precision: String,
    /// Start from these latents (safetensors, tensor `latents` [1, C, H/f, W/f]) instead of seeded noise.
    #[arg(long)]
    init_latents: Option<PathBuf>,
    #[arg(long, required_unless_present = "batch", conflicts_with = "batch")]
    out: Option<PathBuf>,
    /// Plan every buffer within this many bytes (e.g. 128MiB), as on a device whose
    /// maxStorageBufferBindingSize is that small (default: the device's own limit).
    #[arg(long, value_parser = parse_binding)]
    max_binding: Option<u64>,
    /// Print the memory plan (weights, largest buffers, estimated peak) before generating.
    #[arg(long)]
    plan: bool,
}

pub(crate) fn parse_binding(text: &str) -> Result<u64, String> {
    match control_clip::bundle::parse_size("--max-binding", text) {
        Ok(0) => Err("must be more than 0 bytes".into()),
        Ok(n) => Ok(n as u64),
        Err(e) => Err(e.to_string()),
    }
}

/// The settings a bundle recommends (its manifest's `defaults`). Each flag that is given wins; one that is
/// not takes the bundle's value, or SD's when the bundle has none or there is no bundle.
#[derive(Args, Default)]
pub(crate) struct SettingFlags {
    /// Image width, a multiple of the decoder × UNet factor [default: the bundle's `defaults.width`, else 512].
    #[arg(long)]
    pub(crate) width: Option<usize>,
    /// Image height [default: the bundle's `defaults.height`, else 512].
    #[arg(long)]
    pub(crate) height: Option<usize>,
    /// Denoising steps [default: the bundle's `defaults.steps`, else 20].
    #[arg(long)]
    pub(crate) steps: Option<usize>,
    /// Classifier-free guidance scale; ≤ 1 skips the unconditional pass (half the work) [default: the
    /// bundle's `defaults.guidance`, else 7.5].
    #[arg(long)]
    pub(crate) guidance: Option<f32>,
    /// λ_c: how strongly the category context (f_c) drives every cross-attention layer [default: the
    /// bundle's `defaults.category_weight`, else 1; a --batch line's `category_weight` wins].
    #[arg(long, allow_negative_numbers = true)]
    pub(crate) category_weight: Option<f32>,
    /// λ_s: how strongly the style context (A∘f_s) drives every cross-attention layer; 0 switches the style
    /// branch off [default: the bundle's `defaults.style_weight`, else 0; a --batch line's `style_weight` wins].
    #[arg(long, allow_negative_numbers = true)]
    pub(crate) style_weight: Option<f32>,
}

/// Where a setting came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// The command line, by this flag.
    Flag(&'static str),
    /// The bundle's manifest, `defaults`.
    Bundle,
    /// SD's usual setting: not a bundle, or the bundle does not say.
    BuiltIn,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Flag(flag) => f.write_str(flag),
            Source::Bundle => f.write_str("bundle"),
            Source::BuiltIn => f.write_str("built-in"),
        }
    }
}

/// A setting's value and where it came from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Chosen<T> {
    pub(crate) value: T,
    pub(crate) from: Source,
}

/// The flag's value, else the bundle's, else the fallback.
fn choose<T>(flag: &'static str, given: Option<T>, recommended: Option<T>, fallback: T) -> Chosen<T> {
    match (given, recommended) {
        (Some(value), _) => Chosen { value, from: Source::Flag(flag) },
        (None, Some(value)) => Chosen { value, from: Source::Bundle },
        (None, None) => Chosen { value: fallback, from: Source::BuiltIn },
    }
}

/// Size, steps, guidance and weights for a run, each with its source (the weights before a batch line's own).
pub(crate) struct Settings {
    pub(crate) width: Chosen<usize>,
    pub(crate) height: Chosen<usize>,
    pub(crate) steps: Chosen<usize>,
    pub(crate) guidance: Chosen<f32>,
    pub(crate) category_weight: Chosen<f32>,
    pub(crate) style_weight: Chosen<f32>,
}

impl SettingFlags {
    /// The settings, given a bundle's `defaults` (None: not a bundle).
    pub(crate) fn resolve(&self, bundle: Option<&Defaults>) -> Settings {
        let d = bundle.cloned().unwrap_or_default();
        let sd = GenerateRequest::new("");
        let weights = ControlWeights::default();
        let narrow = |v: Option<f64>| v.map(|v| v as f32);
        Settings {
            width: choose("--width", self.width, d.width, sd.width),
            height: choose("--height", self.height, d.height, sd.height),
            steps: choose("--steps", self.steps, d.steps, sd.steps),
            guidance: choose("--guidance", self.guidance, narrow(d.guidance), sd.guidance),
            category_weight: choose("--category-weight", self.category_weight, narrow(d.category_weight), weights.category),
            style_weight: choose("--style-weight", self.style_weight, narrow(d.style_weight), weights.style),
        }
    }
}

impl Settings {
    /// Sets the request's size, steps, guidance and weights.
    pub(crate) fn apply(&self, req: &mut GenerateRequest) -> control_clip::Result<()> {
        req.width = self.width.value;
        req.height = self.height.value;
        req.steps = self.steps.value;
        req.guidance = self.guidance.value;
        req.control = ControlWeights::new(self.category_weight.value, self.style_weight.value)?;
        Ok(())
    }
}

impl std::fmt::Display for Settings {
    /// `width 128 (bundle), height 128 (bundle), steps 15 (--steps), …`
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Settings { width: w, height: h, steps: s, guidance: g, category_weight: c, style_weight: st } = self;
        write!(
            f,
            "width {} ({}), height {} ({}), steps {} ({}), guidance {} ({}), category weight {} ({}), style weight {} ({})",
            w.value, w.from, h.value, h.from, s.value, s.from, g.value, g.from, c.value, c.from, st.value, st.from
        )
    }
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
    /// A batch line that sets a weight of its own.
    own_weights: bool,
}

fn check_png_name(flag: &str, path: &Path) -> control_clip::Result<()> {
    if path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() != Some("png") {
        return Err(Error::invalid(flag, format!("{} must end in .png", path.display())));
    }
    Ok(())
}

fn jobs(args: &GenerateArgs, settings: &Settings) -> control_clip::Result<Vec<Job>> {
    let (category, style) = (settings.category_weight.value, settings.style_weight.value);
    let Some(batch) = &args.batch else {
        let out = args.out.clone().expect("clap requires --out without --batch");
        check_png_name("--out", &out)?;
        return Ok(vec![Job {
            prompt: args.prompt.clone().expect("clap requires --prompt without --batch"),
            negative_prompt: args.negative_prompt.clone(),
            seed: args.seed,
            control: ControlWeights::new(category, style)?,
            out,
            own_weights: false,
        }]);
    };
    let name = batch.display().to_string();
    let text = control_clip::files::read_text(batch)?;
    let folder = batch.parent().unwrap_or(Path::new("."));
    let mut jobs = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let at = format!("{name}, line {}", i + 1);
        control_clip::config::refuse_duplicate_keys(&at, line)?;
        let l: BatchLine = serde_json::from_str(line).map_err(|e| Error::file(&at, format!("not a batch line: {e}")))?;
        check_png_name(&at, &l.out)?;
        let own_weights = l.category_weight.is_some() || l.style_weight.is_some();
        let control = ControlWeights::new(l.category_weight.unwrap_or(category), l.style_weight.unwrap_or(style))
            .map_err(|e| Error::file(&at, e.to_string()))?;
        jobs.push(Job {
            prompt: l.prompt,
            negative_prompt: l.negative_prompt.unwrap_or_else(|| args.negative_prompt.clone()),
            seed: l.seed,
            control,
            out: folder.join(l.out),
            own_weights,
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
    // The manifest is read once, for its recommended settings and then for the pipeline.
    let manifest = args.bundle.as_deref().map(Manifest::read_dir).transpose()?;
    let settings = args.settings.resolve(manifest.as_ref().map(|m| &m.defaults));
    let jobs = jobs(args, &settings)?;
    let own = jobs.iter().filter(|j| j.own_weights).count();
    let batch_note = if own > 0 { format!("; {own} of {} batch lines set their own weights", jobs.len()) } else { String::new() };
    eprintln!("settings: {settings}{batch_note}");
    let backend: BackendKind = args.backend.parse()?;
    let device = init_device(backend).await?;
    let precision = Precision::resolve(args.precision.parse()?, &device)?;
    eprintln!("compute: {backend}, {precision}");
    if let Some(bytes) = args.max_binding {
        control_clip::device::cap_bindings(bytes);
    }
    if let Some(manifest) = &manifest {
        // Before any weights are read: a bundle that cannot fit this device is refused by what does not fit.
        let plan = MemoryPlan::new(manifest, settings.width.value, settings.height.value, settings.guidance.value > 1.0, precision)?;
        let limit = control_clip::device::binding_limit(&device);
        if args.plan {
            eprint!("{}", plan.describe(limit));
        }
        if let Some(limit) = limit {
            plan.check(limit)?;
        }
    }
    let pipeline = match (&args.bundle, &manifest) {
        (Some(dir), Some(manifest)) => {
            let fetch = |file: BundleFile| std::future::ready(manifest.read_verified(dir, &file));
            Pipeline::from_bundle(manifest, fetch, &device, precision).await?
        }
        _ => {
            // clap guarantees all five when there is no bundle.
            let part = |p: &Option<PathBuf>| p.clone().expect("required without --bundle");
            let text_encoder = part(&args.text_encoder);
            let dirs = [part(&args.tokenizer), text_encoder.clone(), part(&args.unet), part(&args.decoder), part(&args.scheduler_config)];
            let [a, b, c, d, e] = &dirs;
            let mut pipeline = Pipeline::from_dirs_in([a, b, c, d, e], &device, precision)?;
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
    settings.apply(&mut req)?;
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
