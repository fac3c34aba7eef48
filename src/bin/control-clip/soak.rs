//! `control-clip soak --bundle DIR --generations N`: N generations in one process with the bundle's
//! recommended settings, alternating two seeds, as a long page session would run them. Judges three things
//! and prints them as one JSON line: resident memory stays bounded, generations do not slow down, and every
//! image of a seed equals that seed's first image, bit for bit. Exit 0 when all hold, 1 when one does not,
//! 2 on bad input. docs/reliability.md has the long run's command and figures; CI runs a short one.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Args;
use control_clip::pipeline::Pipeline;
use control_clip::{BackendKind, Error, init_device};

use crate::bench::{bundle_request, median, peak_rss_mib, rss_mib};

#[derive(Args)]
pub struct SoakArgs {
    #[arg(long)]
    bundle: PathBuf,
    /// Generations in all (at least 8).
    #[arg(long, default_value_t = 200)]
    generations: usize,
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// Steps per generation (default: the bundle's recommended steps).
    #[arg(long)]
    steps: Option<usize>,
    /// Resident memory may grow by this much from the first half (after warm-up) to the second, in MiB.
    #[arg(long, default_value_t = 64.0)]
    max_growth_mib: f64,
    /// The last quarter's median generation time may be this many times the first half's (after warm-up).
    #[arg(long, default_value_t = 1.25)]
    max_slowdown: f64,
}

pub fn run(args: SoakArgs) -> ExitCode {
    match pollster::block_on(soak(&args)) {
        Ok((line, pass)) => {
            println!("{line}");
            if pass { ExitCode::SUCCESS } else { ExitCode::from(1) }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

async fn soak(args: &SoakArgs) -> control_clip::Result<(String, bool)> {
    let n = args.generations;
    if n < 8 {
        return Err(Error::invalid("--generations", "must be at least 8 (warm-up, two halves)"));
    }
    let backend: BackendKind = args.backend.parse()?;
    let device = init_device(backend).await?;
    let pipeline = Pipeline::read_bundle(&args.bundle, &device).await?;
    let mut req = bundle_request(&args.bundle, "a red star in striped style")?;
    req.steps = args.steps.unwrap_or(req.steps);
    let seeds = [req.seed, req.seed + 1];
    let mut first_images: [Option<Vec<f32>>; 2] = [None, None];
    let (mut ms, mut rss, mut mismatches) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::new());
    for i in 0..n {
        req.seed = seeds[i % 2];
        let t = Instant::now();
        let image = pipeline.generate(&req, &mut |_| true).await?.image;
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
        rss.push(rss_mib().unwrap_or(f64::NAN));
        match &first_images[i % 2] {
            None => first_images[i % 2] = Some(image),
            Some(first) if *first != image => mismatches.push(i),
            Some(_) => {}
        }
    }
    // The first tenth (at least two) warms up: allocator pools grow, wgpu compiles its kernels.
    let warm = (n / 10).max(2);
    let half = warm + (n - warm) / 2;
    let max = |v: &[f64]| v.iter().copied().fold(f64::MIN, f64::max);
    let growth = max(&rss[half..]) - max(&rss[warm..half]);
    let (first_ms, last_ms) = (median(ms[warm..half].to_vec()), median(ms[n - (n - warm) / 4..].to_vec()));
    let slowdown = last_ms / first_ms;
    let pass = growth <= args.max_growth_mib && slowdown <= args.max_slowdown && mismatches.is_empty();
    let line = serde_json::json!({
        "bundle": args.bundle.display().to_string(),
        "backend": backend.name(),
        "generations": n,
        "steps": req.steps,
        "size": [req.width, req.height],
        "warm_up": warm,
        "rss_mib_first_half_max": max(&rss[warm..half]),
        "rss_mib_second_half_max": max(&rss[half..]),
        "rss_growth_mib": growth,
        "max_growth_mib": args.max_growth_mib,
        "generation_ms_first_half_median": first_ms,
        "generation_ms_last_quarter_median": last_ms,
        "slowdown": slowdown,
        "max_slowdown": args.max_slowdown,
        "images_differing_from_their_seeds_first": mismatches,
        "peak_rss_mib": peak_rss_mib(),
        "pass": pass,
    });
    Ok((line.to_string(), pass))
}
