//! `control-clip bench-finetune --model E --io FILE`: times one Control-CLIP training step (the library's
//! `check finetune-step`: losses, backward, gradients read back, AdamW) on a `finetune-step` io file made by
//! tests/bench/bench_finetune.py, which times PyTorch on the same inputs. The first step is also checked
//! against the io file's expectations. Prints one JSON line: `step_ms` (median of --runs after that step),
//! `peak_rss_mib` (the process's peak resident memory, Linux), `check_pass`. Speed is reported, never asserted.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Args;
use control_clip::check::check_finetune_step;
use control_clip::models::ModelFolder;
use control_clip::{BackendKind, ClipTextModel, Result, SafeTensors, init_device};

#[derive(Args)]
pub struct BenchFinetuneArgs {
    /// E as a CLIPTextModelWithProjection folder.
    #[arg(long)]
    model: PathBuf,
    /// A finetune-step io file.
    #[arg(long)]
    io: PathBuf,
    #[arg(long, value_parser = ["wgpu", "cpu"], default_value = "cpu")]
    backend: String,
    #[arg(long, default_value_t = 2)]
    runs: usize,
}

pub fn run(args: BenchFinetuneArgs) -> ExitCode {
    crate::bench::print_line(pollster::block_on(bench(&args)))
}

async fn bench(args: &BenchFinetuneArgs) -> Result<String> {
    let backend: BackendKind = args.backend.parse()?;
    let device = init_device(backend).await?;
    let model = ClipTextModel::read_dir(&args.model, &device)?;
    let io = SafeTensors::read(&args.io)?;
    let first = check_finetune_step(&model, &io, 1e-4).await?;
    let mut times = Vec::new();
    for _ in 0..args.runs {
        let start = Instant::now();
        check_finetune_step(&model, &io, 1e-4).await?;
        times.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    let worst = first.outputs.iter().map(|o| o.max_abs_err / o.limit.unwrap_or(first.tolerance).max(f32::MIN_POSITIVE)).fold(0f32, f32::max);
    Ok(serde_json::json!({
        "backend": backend.name(),
        "step_ms": crate::bench::median(times),
        "peak_rss_mib": peak_rss_mib(),
        "check_pass": first.pass,
        "check": format!("worst output at {worst:.2} of its limit"),
    })
    .to_string())
}

/// VmHWM from /proc/self/status, in MiB (0 where there is no /proc).
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()))
        .map_or(0.0, |kib| kib / 1024.0)
}
