//! `control-clip bench`: times a UNet step, a decoder pass and (when the folder has a text encoder) a
//! whole guided generation on a model folder made by tests/bench/bench.py (which times diffusers on the
//! same inputs and writes docs/benchmarks.md); or, with `--bundle`, loading a bundle and generating with
//! its defaults as the page does (tests/browser/bench.mjs sets it beside the browser's numbers). Prints
//! one JSON line. Speed is reported, never asserted.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Args;
use control_clip::models::ModelFolder;
use control_clip::models::clip::ClipTextModel;
use control_clip::models::decoder::Decoder;
use control_clip::models::unet::UNet2DConditionModel;
use control_clip::pipeline::{GenerateRequest, Pipeline};
use control_clip::schedulers::SchedulerConfig;
use control_clip::tokenizer::ClipTokenizer;
use control_clip::device::Precision;
use control_clip::{BackendKind, Error, SafeTensors, init_device, read_f32};

#[derive(Args)]
pub struct BenchArgs {
    /// Folder with unet/ (and optionally decoder/) and io.safetensors (`sample`, `timestep`,
    /// `encoder_hidden_states`, optional `latents` for the decoder). With decoder/, text_encoder/,
    /// tokenizer.json and scheduler/scheduler_config.json as well, a whole generation is timed too.
    #[arg(long, required_unless_present = "bundle", conflicts_with = "bundle")]
    dir: Option<PathBuf>,
    /// A bundle folder: time its loading and a generation with its recommended settings (steps, size,
    /// guidance, weights; `--generation-steps` overrides the steps), prompt "a cat in Pokemon style".
    #[arg(long)]
    bundle: Option<PathBuf>,
    #[arg(long, default_value = "wgpu")]
    backend: String,
    /// What the models compute in: f32 (the default, the reference), f16 or auto (`generate --precision`).
    #[arg(long, default_value = "f32")]
    precision: String,
    /// Timed runs after one warm-up run; the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Steps of the timed whole generation (guidance 7.5, so the UNet runs at batch 2); default 2, or
    /// the bundle's recommended steps with --bundle.
    #[arg(long)]
    generation_steps: Option<usize>,
}

pub fn run(args: BenchArgs) -> ExitCode {
    let result = match &args.bundle {
        Some(dir) => pollster::block_on(bench_bundle(dir, &args)),
        None => pollster::block_on(bench(&args)),
    };
    print_line(result)
}

/// A benchmark's JSON line on stdout (exit 0), or its error on stderr (exit 2).
pub(crate) fn print_line(result: control_clip::Result<String>) -> ExitCode {
    match result {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Peak resident memory of this process (Linux), in MiB.
pub(crate) fn peak_rss_mib() -> Option<f64> {
    proc_status_mib("VmHWM:")
}

/// A request for `prompt` with a bundle's recommended settings (steps, guidance, size, weights; each it
/// does not give is SD's, as `generate` resolves them), seed 1.
pub(crate) fn bundle_request(dir: &std::path::Path, prompt: &str) -> control_clip::Result<GenerateRequest> {
    let defaults = control_clip::bundle::Manifest::read_dir(dir)?.defaults;
    let mut req = GenerateRequest::new(prompt);
    crate::generate::SettingFlags::default().resolve(Some(&defaults)).apply(&mut req)?;
    req.seed = 1;
    Ok(req)
}

/// Resident memory of this process now (Linux), in MiB.
pub(crate) fn rss_mib() -> Option<f64> {
    proc_status_mib("VmRSS:")
}

fn proc_status_mib(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status.lines().find(|l| l.starts_with(field))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// A bundle as the page runs it: load time, the first generation (which on wgpu compiles the kernels),
/// then the median generation and step of `--runs` more.
async fn bench_bundle(dir: &std::path::Path, args: &BenchArgs) -> control_clip::Result<String> {
    if args.runs == 0 {
        return Err(Error::invalid("--runs", "must be at least 1"));
    }
    let backend: BackendKind = args.backend.parse()?;
    let device = init_device(backend).await?;
    let t = Instant::now();
    let precision = Precision::resolve(args.precision.parse()?, &device)?;
    let pipeline = Pipeline::read_bundle_in(dir, &device, precision).await?;
    let load_ms = t.elapsed().as_secs_f64() * 1000.0;
    let mut req = bundle_request(dir, "a cat in Pokemon style")?;
    req.steps = args.generation_steps.unwrap_or(req.steps);
    let (mut first_ms, mut generation_ms, mut step_ms) = (0.0, Vec::new(), Vec::new());
    for run in 0..=args.runs {
        let t = Instant::now();
        let mut steps = Vec::new();
        pipeline
            .generate(&req, &mut |p| {
                steps.push(p.step_ms);
                true
            })
            .await?;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        if run == 0 {
            first_ms = ms;
        } else {
            generation_ms.push(ms);
            step_ms.extend(steps);
        }
    }
    Ok(serde_json::json!({
        "backend": backend.name(),
        "precision": precision.name(),
        "bundle": dir.display().to_string(),
        "load_ms": load_ms,
        "first_generation_ms": first_ms,
        "generation_ms": median(generation_ms),
        "step_ms": median(step_ms),
        "steps": req.steps,
        "size": [req.width, req.height],
        "runs": args.runs,
        "peak_rss_mib": peak_rss_mib(),
    })
    .to_string())
}

async fn bench(args: &BenchArgs) -> control_clip::Result<String> {
    if args.runs == 0 {
        return Err(Error::invalid("--runs", "must be at least 1"));
    }
    let dir = args.dir.as_deref().expect("clap requires --dir without --bundle");
    let generation_steps = args.generation_steps.unwrap_or(2);
    let backend: BackendKind = args.backend.parse()?;
    let device = init_device(backend).await?;
    let precision = Precision::resolve(args.precision.parse()?, &device)?;
    let dtype = precision.dtype();
    let t = Instant::now();
    let unet = UNet2DConditionModel::read_dir_in(&dir.join("unet"), &device, dtype)?;
    let load_ms = t.elapsed().as_secs_f64() * 1000.0;
    let io = SafeTensors::read(&dir.join("io.safetensors"))?;
    let dims = |name: &str| -> control_clip::Result<Vec<usize>> { Ok(io.shape(name)?.to_vec()) };
    let s = dims("sample")?;
    let c = dims("encoder_hidden_states")?;
    let sample = io.tensor("sample", [s[0], s[1], s[2], s[3]], &device)?;
    let context = io.tensor("encoder_hidden_states", [c[0], c[1], c[2]], &device)?;
    let (_, t_values) = io.f32("timestep")?;
    let timesteps = vec![t_values[0]; s[0]];

    let mut unet_ms = Vec::new();
    for run in 0..=args.runs {
        let t = Instant::now();
        let out = unet.forward(sample.clone(), &timesteps, &context)?;
        read_f32(out).await?;
        eprintln!("unet run {run}: {:.0} ms{}", t.elapsed().as_secs_f64() * 1000.0, if run == 0 { " (warm-up)" } else { "" });
        if run > 0 {
            unet_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    // One more step with the profile on: where it goes (CPU backend only: elsewhere operations run when
    // read back, not when called).
    let breakdown = if backend == BackendKind::Cpu {
        control_clip::profile::enable(true);
        let t = Instant::now();
        read_f32(unet.forward(sample.clone(), &timesteps, &context)?).await?;
        let total = t.elapsed().as_secs_f64() * 1000.0;
        let parts = control_clip::profile::totals_ms();
        control_clip::profile::enable(false);
        let mut map = serde_json::Map::new();
        let named: f64 = parts.iter().map(|(_, ms)| ms).sum();
        for (section, ms) in parts {
            map.insert(section.name().to_string(), serde_json::json!(ms));
        }
        map.insert("rest".to_string(), serde_json::json!(total - named));
        map.insert("total".to_string(), serde_json::json!(total));
        Some(serde_json::Value::Object(map))
    } else {
        None
    };
    let mut decoder_ms = Vec::new();
    let decoder_dir = dir.join("decoder");
    let decoder = if decoder_dir.exists() { Some(Decoder::read_dir_in(&decoder_dir, &device, dtype)?) } else { None };
    if let Some(decoder) = &decoder {
        let l = dims("latents")?;
        let latents = io.tensor("latents", [l[0], l[1], l[2], l[3]], &device)?;
        for run in 0..=args.runs {
            let t = Instant::now();
            read_f32(decoder.decode(latents.clone())).await?;
            if run > 0 {
                decoder_ms.push(t.elapsed().as_secs_f64() * 1000.0);
            }
        }
    }

    // A whole generation: two prompts through the text encoder, `generation_steps` guided UNet steps with
    // the scheduler, the decoder and the read-back of the pixels, as `control-clip generate` does it.
    let mut generation_ms = Vec::new();
    let text_encoder_dir = dir.join("text_encoder");
    if let (Some(decoder), true) = (decoder, text_encoder_dir.exists()) {
        let scale = decoder.scale_factor();
        let pipeline = Pipeline {
            tokenizer: ClipTokenizer::read(&dir.join("tokenizer.json"))?,
            text_encoder: ClipTextModel::read_dir_in(&text_encoder_dir, &device, dtype)?,
            control: control_clip::control::ControlEncoders::default(),
            unet,
            decoder,
            scheduler_config: SchedulerConfig::read(&dir.join("scheduler").join("scheduler_config.json"))?,
            device: device.clone(),
            precision,
        };
        let mut req = GenerateRequest::new("a cat in Pokemon style");
        req.steps = generation_steps;
        (req.width, req.height) = (s[3] * scale, s[2] * scale);
        for run in 0..=args.runs {
            let t = Instant::now();
            pipeline.generate(&req, &mut |_| true).await?;
            if run > 0 {
                generation_ms.push(t.elapsed().as_secs_f64() * 1000.0);
            }
        }
    }
    Ok(serde_json::json!({
        "backend": backend.name(),
        "precision": precision.name(),
        "load_ms": load_ms,
        "unet_step_ms": median(unet_ms),
        "unet_step_breakdown_ms": breakdown,
        "decoder_ms": (!decoder_ms.is_empty()).then(|| median(decoder_ms)),
        "generation_ms": (!generation_ms.is_empty()).then(|| median(generation_ms)),
        "generation_steps": generation_steps,
        "batch": s[0],
        "latent_size": [s[2], s[3]],
        "runs": args.runs,
        "peak_rss_mib": peak_rss_mib(),
        // What burn's allocator holds after the runs (pools keep pages for reuse, so this is close to the
        // peak); None on backends that do not report it.
        "device_reserved_mib": device.memory_pool_usage().map(|u| u.bytes_reserved as f64 / (1024.0 * 1024.0)),
    })
    .to_string())
}
