//! `control-clip bench-attention`: times the fused decoupled cross-attention kernel
//! (shaders/decoupled_attention.wgsl) against its tensor-op reference form (two attentions and a
//! weighted sum) on SD-1.5-sized cross-attention layers at 64×64 latents: query lengths 4096 / 1024 /
//! 256 / 64 with 320 / 640 / 1280 / 1280 channels, 8 heads, 77-token contexts, batch 2 (classifier-free
//! guidance: the unconditional row has weights (1, 0), the conditional row (λ_c, λ_s)).
//! Each timing includes reading the result back (the only honest end point on an asynchronous
//! device); the median of `--runs` after warm-up is reported. One JSON line per layer, then a table.
//! Speed is reported, never asserted.

use std::process::ExitCode;
use std::time::Instant;

use burn::tensor::{Device, Tensor, TensorData};
use clap::Args;
use control_clip::kernels::{decoupled_attention_fused, fused_attention_available};
use control_clip::models::attention::decoupled_attention_reference;
use crate::bench::median;
use control_clip::rng::NoiseRng;
use control_clip::{BackendKind, Error, init_device, read_f32};

#[derive(Args)]
pub struct BenchAttentionArgs {
    #[arg(long, default_value = "wgpu")]
    backend: String,
    /// Timed runs per form and layer, after the warm-up runs; the median is reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Untimed runs first (kernel compilation, autotuning, memory pools).
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Weights (λ_c, λ_s) of the conditional row.
    #[arg(long, num_args = 2, default_values_t = [0.8f32, 0.6])]
    weights: Vec<f32>,
    /// Give the unconditional row the conditional row's weights too, instead of (1, 0), so that
    /// neither form can skip work.
    #[arg(long)]
    dense: bool,
    /// Only the layers with these query lengths (default: all four).
    #[arg(long, num_args = 1.., value_delimiter = ',')]
    only: Vec<usize>,
}

/// (query length, channels) of SD 1.5's cross-attention layers at 64×64 latents.
const LAYERS: [(usize, usize); 4] = [(4096, 320), (1024, 640), (256, 1280), (64, 1280)];
const HEADS: usize = 8;
const CONTEXT: usize = 77;
const BATCH: usize = 2;

pub fn run(args: BenchAttentionArgs) -> ExitCode {
    match pollster::block_on(bench(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

struct Inputs {
    q: Tensor<3>,
    k_c: Tensor<3>,
    v_c: Tensor<3>,
    k_s: Tensor<3>,
    v_s: Tensor<3>,
    weights: Tensor<2>,
}

impl Inputs {
    fn new(lq: usize, channels: usize, weights: &[f32], seed: u64, device: &Device) -> Self {
        let mut rng = NoiseRng::new(seed);
        let mut tensor = |len: usize| {
            Tensor::<3>::from_data(TensorData::new(rng.normals(BATCH * len * channels), [BATCH, len, channels]), device)
        };
        Inputs {
            q: tensor(lq),
            k_c: tensor(CONTEXT),
            v_c: tensor(CONTEXT),
            k_s: tensor(CONTEXT),
            v_s: tensor(CONTEXT),
            weights: Tensor::from_data(TensorData::new(weights.to_vec(), [BATCH, 2]), device),
        }
    }

    fn fused(&self) -> control_clip::Result<Tensor<3>> {
        decoupled_attention_fused(
            self.q.clone(),
            self.k_c.clone(),
            self.v_c.clone(),
            self.k_s.clone(),
            self.v_s.clone(),
            self.weights.clone(),
            HEADS,
        )
    }

    /// The reference form: two attentions and a weighted sum, tensor ops only.
    fn reference(&self) -> Tensor<3> {
        decoupled_attention_reference(
            self.q.clone(),
            self.k_c.clone(),
            self.v_c.clone(),
            self.k_s.clone(),
            self.v_s.clone(),
            self.weights.clone(),
            HEADS,
        )
    }
}

/// Median milliseconds of `f` followed by a read-back.
async fn time<F: Fn() -> control_clip::Result<Tensor<3>>>(f: F, warmup: usize, runs: usize) -> control_clip::Result<f64> {
    let mut ms = Vec::with_capacity(runs);
    for run in 0..warmup + runs {
        let start = Instant::now();
        read_f32(f()?).await?;
        if run >= warmup {
            ms.push(start.elapsed().as_secs_f64() * 1000.0);
        }
    }
    Ok(median(ms))
}

async fn bench(args: &BenchAttentionArgs) -> control_clip::Result<()> {
    if args.runs == 0 {
        return Err(Error::invalid("--runs", "must be at least 1"));
    }
    let backend: BackendKind = args.backend.parse()?;
    let device = init_device(backend).await?;
    let fused_available = fused_attention_available(&device);
    let [lambda_c, lambda_s] = [args.weights[0], args.weights[1]];
    let weights = if args.dense {
        [lambda_c, lambda_s, lambda_c, lambda_s]
    } else {
        [1.0, 0.0, lambda_c, lambda_s]
    };

    let mut rows = Vec::new();
    for (i, &(lq, channels)) in LAYERS.iter().enumerate() {
        if !args.only.is_empty() && !args.only.contains(&lq) {
            continue;
        }
        let inputs = Inputs::new(lq, channels, &weights, 1234 + i as u64, &device);
        let reference_ms = time(|| Ok(inputs.reference()), args.warmup, args.runs).await?;
        let (fused_ms, max_abs_diff) = if fused_available {
            let fused_ms = time(|| inputs.fused(), args.warmup, args.runs).await?;
            let (_, a) = read_f32(inputs.fused()?).await?;
            let (_, b) = read_f32(inputs.reference()).await?;
            let diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
            (Some(fused_ms), Some(diff))
        } else {
            (None, None)
        };
        let line = serde_json::json!({
            "bench": "decoupled_attention",
            "backend": backend.name(),
            "batch": BATCH,
            "query_len": lq,
            "channels": channels,
            "heads": HEADS,
            "head_dim": channels / HEADS,
            "context_len": CONTEXT,
            "weights": weights,
            "runs": args.runs,
            "warmup": args.warmup,
            "fused_ms": fused_ms,
            "reference_ms": reference_ms,
            "speedup": fused_ms.map(|f| reference_ms / f),
            "max_abs_diff": max_abs_diff,
        });
        println!("{line}");
        rows.push((lq, channels, fused_ms, reference_ms));
    }

    println!();
    println!("{:>9} {:>8} {:>11} {:>14} {:>8}", "query_len", "channels", "fused_ms", "reference_ms", "speedup");
    for (lq, channels, fused_ms, reference_ms) in rows {
        let fused = fused_ms.map_or("-".to_string(), |f| format!("{f:.2}"));
        let speedup = fused_ms.map_or("-".to_string(), |f| format!("{:.2}x", reference_ms / f));
        println!("{lq:>9} {channels:>8} {fused:>11} {reference_ms:>14.2} {speedup:>8}");
    }
    if !fused_available {
        println!("(no fused kernel on the {} backend: reference only)", backend.name());
    }
    Ok(())
}
