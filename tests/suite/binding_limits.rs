//! Every buffer within a device's binding limit (issue "Real checkpoints on real GPUs", item 2).
//!
//! Natively the test makes a second wgpu device (lavapipe here) whose `maxStorageBufferBindingSize` and
//! `maxBufferSize` are a few MiB — wgpu enforces them on every binding and buffer — and generates with the
//! default bundle at 320², where the token embedding, the self-attention scores, the feed-forward's hidden
//! rows and the tiny decoder's activations are each over that limit whole: they must be split (and a
//! binding over the limit would be a wgpu validation error), and the picture must equal the one from the
//! ordinary device within the tolerance wgpu pictures have everywhere here (2/255). The page's test does
//! the same with the worker counting every binding it creates (tests/browser/page.test.mjs).

use burn::tensor::Device;
use burn::tensor::wgpu::{WgpuSetup, wgpu};

use crate::common::block_on;
use control_clip::bundle::Manifest;
use control_clip::pipeline::{GenerateRequest, Pipeline};
use control_clip::device::Precision;
use control_clip::plan::MemoryPlan;
use control_clip::{BackendKind, init_device};

/// 8 MiB: above every buffer the default bundle cannot split at 320² (its widest UNet activation, 7.8 MiB),
/// below the four it splits. (Not much lower: burn's reductions on wgpu take a buffer of a fixed size
/// between 5.5 and 8 MiB whatever their input — found with a 4 KiB sum — so a smaller limit fails inside
/// burn; every real device allows 128 MiB.)
const LIMIT: u64 = 8 << 20;

fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A wgpu device whose binding and buffer limits are `limit` bytes.
fn small_device(limit: u64) -> Device {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle());
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default())).expect("a wgpu adapter (lavapipe here)");
    let mut limits = adapter.limits();
    limits.max_storage_buffer_binding_size = limit;
    limits.max_buffer_size = limit;
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("small bindings"),
        required_features: adapter.features().difference(wgpu::Features::MAPPABLE_PRIMARY_BUFFERS),
        required_limits: limits,
        memory_hints: wgpu::MemoryHints::MemoryUsage,
        ..Default::default()
    }))
    .expect("a device with smaller limits");
    let backend = adapter.get_info().backend;
    Device::wgpu_options().setup(WgpuSetup { instance, adapter, device, queue, backend }).init().expect("burn on that device")
}

fn request() -> GenerateRequest {
    let mut req = GenerateRequest::new("a red star with stripes");
    (req.seed, req.steps, req.guidance, req.width, req.height) = (3, 1, 4.0, 320, 320);
    req
}

#[test]
fn a_device_with_small_bindings_gets_the_same_picture_from_split_buffers() {
    let bundle = root().join("www/models/default");
    let manifest = Manifest::read_dir(&bundle).unwrap();
    let plan = MemoryPlan::new(&manifest, 320, 320, true, Precision::F32).unwrap();
    plan.check(LIMIT).unwrap();
    assert!(plan.largest_binding(LIMIT) <= LIMIT);
    let split: Vec<&str> = plan.bindings.iter().filter(|b| b.bytes > LIMIT).map(|b| b.what.as_str()).collect();
    for what in ["token embedding", "self-attention scores", "feed-forward hidden rows", "widest activation"] {
        assert!(split.iter().any(|s| s.starts_with(what)), "the test no longer splits the {what}: {split:?}");
    }

    let picture = |device: Device| {
        block_on(async {
            let pipeline = Pipeline::read_bundle(&bundle, &device).await.unwrap();
            pipeline.generate(&request(), &mut |_| true).await.unwrap().rgba
        })
    };
    let small_device = small_device(LIMIT);
    assert_eq!(control_clip::device::binding_limit(&small_device), Some(LIMIT), "the device's own limit, as cubecl reads it");
    let small = picture(small_device);
    let ordinary = picture(block_on(init_device(BackendKind::Wgpu)).unwrap());
    let worst = small.iter().zip(&ordinary).map(|(a, b)| (*a as i32 - *b as i32).abs()).max().unwrap();
    println!("small bindings vs the ordinary device: worst pixel difference {worst}/255");
    assert!(worst <= 2, "worst pixel difference {worst}/255");
}

#[test]
fn a_bundle_that_cannot_fit_is_refused_by_what_does_not_fit() {
    let manifest = Manifest::read_dir(&root().join("www/models/default")).unwrap();
    // At 128² the tiny decoder's band (its context rows reach half the picture) is no smaller than the
    // whole: under 1 MiB nothing splits it.
    let plan = MemoryPlan::new(&manifest, 128, 128, true, Precision::F32).unwrap();
    let e = plan.check(1 << 20).unwrap_err().to_string();
    assert!(e.contains("128×128") && e.contains("decoder") && e.contains("maxStorageBufferBindingSize") && e.contains("1.0 MiB"), "{e}");
    plan.check(128 << 20).unwrap();
}

/// An SD-1.5-shaped bundle's manifest (src/loaders/sd1's configs, f16 files of SD 1.5's parameter counts:
/// text encoder 123.1 M, UNet 859.5 M, the full decoder 49.5 M or TAESD's 1.2 M), for plans without weights.
fn sd15_manifest(tiny_decoder: bool) -> Manifest {
    let config = |name: &str| std::fs::read_to_string(root().join(format!("src/loaders/sd1/{name}.json"))).unwrap();
    let file = |name: &str, params: u64| serde_json::json!({ "file": name, "sha256": "0".repeat(64), "bytes": 2 * params });
    let weights = |name: &str, params: u64, config: serde_json::Value| {
        let mut c = file(&format!("{name}.safetensors"), params);
        c["dtype"] = "f16".into();
        c["config"] = config;
        c
    };
    let json = |text: String| serde_json::from_str::<serde_json::Value>(&text).unwrap();
    let decoder = if tiny_decoder {
        weights("decoder", 1_222_532, serde_json::json!({ "_class_name": "AutoencoderTiny", "latent_channels": 4, "scaling_factor": 1.0 }))
    } else {
        weights("decoder", 49_490_199, json(config("vae")))
    };
    let manifest = serde_json::json!({
        "format": "control-clip-bundle", "format_version": 2,
        "components": {
            "tokenizer": file("tokenizer.json", 1_000_000),
            "text_encoder": weights("text_encoder", 123_060_480, json(config("text_encoder"))),
            "unet": weights("unet", 859_520_964, json(config("unet"))),
            "decoder": decoder,
            "scheduler": { "config": json(config("scheduler")) },
        }
    });
    Manifest::parse("sd15-shaped", &manifest.to_string()).unwrap()
}

/// SD 1.5 on WebGPU's default 128 MiB binding: its 152 MB token embedding, 2.6 GB of self-attention scores
/// at 64×64 latents and (at 768²) 189 MB of feed-forward rows are split; the full decoder's 256-channel
/// activations at the image's size (256 MiB at 512²) cannot be, so that bundle is refused up front, while
/// TAESD fits at 768² in bands. `cargo test --test suite binding_limits::sd15 -- --nocapture` prints the
/// plans docs/benchmarks.md quotes.
#[test]
fn sd15_shaped_plans_on_the_default_webgpu_limit() {
    const WEBGPU_DEFAULT: u64 = 128 << 20;
    let kl = MemoryPlan::new(&sd15_manifest(false), 512, 512, true, Precision::F32).unwrap();
    println!("SD 1.5, full decoder:\n{}", kl.describe(Some(WEBGPU_DEFAULT)));
    let e = kl.check(WEBGPU_DEFAULT).unwrap_err().to_string();
    assert!(e.contains("512×512") && e.contains("decoder") && e.contains("256 channels") && e.contains("tiny decoder"), "{e}");
    kl.check(1 << 30).unwrap();
    for side in [512, 768] {
        let tiny = MemoryPlan::new(&sd15_manifest(true), side, side, true, Precision::F32).unwrap();
        println!("SD 1.5, tiny decoder, {side}²:\n{}", tiny.describe(Some(WEBGPU_DEFAULT)));
        tiny.check(WEBGPU_DEFAULT).unwrap();
        assert!(tiny.largest_binding(WEBGPU_DEFAULT) <= WEBGPU_DEFAULT);
        let embedding = tiny.bindings.iter().find(|b| b.what == "token embedding").unwrap();
        assert_eq!(embedding.bytes, 49_408 * 768 * 4);
        assert!(embedding.bytes > WEBGPU_DEFAULT, "SD's token embedding is over the default limit whole");
    }
    // f32 weights on the GPU: 2 × the f16 files.
    let weights: u64 = kl.weights.iter().map(|(_, b)| b).sum();
    assert_eq!(weights, 4 * (123_060_480 + 859_520_964 + 49_490_199));

    // f16 compute: weights and activations at rest in f16 (attention scores stay f32), under the issue's
    // 2.5 GB goal at 512² with TAESD.
    for side in [512, 768] {
        let half = MemoryPlan::new(&sd15_manifest(true), side, side, true, Precision::F16).unwrap();
        println!("SD 1.5, tiny decoder, {side}², f16:\n{}", half.describe(Some(WEBGPU_DEFAULT)));
        half.check(WEBGPU_DEFAULT).unwrap();
        if side == 512 {
            assert!(half.total_bytes() <= 2_500_000_000, "the f16 plan at 512² is {} bytes", half.total_bytes());
        }
    }
    let half_kl = MemoryPlan::new(&sd15_manifest(false), 512, 512, true, Precision::F16).unwrap();
    assert_eq!(half_kl.weights_bytes() * 2, weights, "f16 weights are half the f32 ones");
}
