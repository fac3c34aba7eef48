//! `control-clip bundle` and loading bundles: the pipeline from a bundle gives the pipeline fixture's
//! image; a corrupt, truncated or missing file and a manifest of another version are refused by name.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{block_on, fixtures};
use control_clip::pipeline::{GenerateRequest, Pipeline};
use control_clip::{BackendKind, SafeTensors, init_device};

fn make_bundle(tag: &str, dtype: &str) -> PathBuf {
    make_bundle_with(tag, dtype, &[])
}

fn make_bundle_with(tag: &str, dtype: &str, extra: &[&std::ffi::OsStr]) -> PathBuf {
    let out = std::env::temp_dir().join(format!("control-clip-bundle-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let f = fixtures();
    let status = Command::new(env!("CARGO_BIN_EXE_control-clip"))
        .arg("bundle")
        .arg("--tokenizer").arg(f.join("tokenizer.json"))
        .arg("--text-encoder").arg(f.join("clip_text/sd-mini-f16"))
        .arg("--unet").arg(f.join("unet/sd-tiny"))
        .arg("--decoder").arg(f.join("vae/kl-tiny"))
        .arg("--scheduler-config").arg(f.join("pipeline/ddim-2-steps/scheduler_config.json"))
        .args(["--dtype", dtype, "--name", "fixture bundle", "--width", "64", "--height", "64"])
        .args(extra)
        .arg("--out").arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    out
}

fn load(dir: &Path) -> control_clip::Result<Pipeline> {
    block_on(async { Pipeline::read_bundle(dir, &init_device(BackendKind::Cpu).await.unwrap()).await })
}

/// The pipeline fixture's request, from its latents; returns the worst difference to diffusers' image.
fn worst_error(pipeline: &Pipeline) -> f32 {
    let io = SafeTensors::read(&fixtures().join("pipeline/ddim-2-steps/io.safetensors")).unwrap();
    let mut req = GenerateRequest::new("a cat in Pokemon style");
    req.negative_prompt = "blurry, low quality".into();
    req.steps = 2;
    req.width = 64;
    req.height = 64;
    req.init_latents = Some(io.tensor("latents", [1, 4, 16, 16], &pipeline.device).unwrap());
    let image = block_on(pipeline.generate(&req, &mut |_| true)).unwrap();
    let (_, expected) = io.f32("image").unwrap();
    image.image.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max)
}

#[test]
fn f32_bundle_reproduces_the_pipeline_fixture_and_f16_stays_close() {
    let f32_err = worst_error(&load(&make_bundle("f32", "f32")).unwrap());
    println!("bundle f32: max pixel error {f32_err:.3e}");
    assert!(f32_err <= 2.0 / 255.0);
    // f16 storage rounds the weights; the image must stay close (stated bound: 4/255 on this fixture).
    let f16_err = worst_error(&load(&make_bundle("f16", "f16")).unwrap());
    println!("bundle f16: max pixel error {f16_err:.3e}");
    assert!(f16_err <= 4.0 / 255.0, "f16 bundle drifted: {f16_err}");
}

fn err_of(dir: &Path) -> String {
    load(dir).err().expect("loading should fail").to_string()
}

#[test]
fn broken_bundles_are_refused_by_name() {
    let dir = make_bundle("broken", "f16");
    let unet = dir.join("unet.safetensors");
    let good = std::fs::read(&unet).unwrap();

    let mut corrupt = good.clone();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xff;
    std::fs::write(&unet, &corrupt).unwrap();
    let e = err_of(&dir);
    assert!(e.contains("unet.safetensors") && e.contains("sha256"), "{e}");

    std::fs::write(&unet, &good[..good.len() - 10]).unwrap();
    let e = err_of(&dir);
    assert!(e.contains("unet.safetensors") && e.contains("truncated"), "{e}");

    std::fs::remove_file(&unet).unwrap();
    let e = err_of(&dir);
    assert!(e.contains("unet.safetensors") && e.contains("cannot read"), "{e}");
    std::fs::write(&unet, &good).unwrap();

    let manifest = dir.join("manifest.json");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, text.replace("\"format_version\": 1", "\"format_version\": 99")).unwrap();
    let e = err_of(&dir);
    assert!(e.contains("format_version") && e.contains("99"), "{e}");
    std::fs::write(&manifest, text).unwrap();
    load(&dir).unwrap();
}

#[test]
fn bundle_with_control_encoders_records_them_and_reproduces_the_control_fixture() {
    let f = fixtures();
    let enc = f.join("control/encoders");
    let (cat, style, adapter) = (enc.join("category_lora"), enc.join("style_full"), enc.join("adapter"));
    let extra = [
        "--category-encoder".as_ref(), cat.as_os_str(),
        "--style-encoder".as_ref(), style.as_os_str(),
        "--adapter".as_ref(), adapter.as_os_str(),
    ];
    let dir = make_bundle_with("control", "f32", &extra);
    let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["components"]["category_encoder"]["form"], "lora");
    assert_eq!(manifest["components"]["style_encoder"]["form"], "full");
    assert!(manifest["components"]["adapter"]["sha256"].is_string());
    assert_eq!(manifest["defaults"]["style_weight"], 1.0);

    let pipeline = load(&dir).unwrap();
    let fixture = f.join("control/pipeline/ddim-2-steps-control/io.safetensors");
    let io = SafeTensors::read(&fixture).unwrap();
    let mut req = GenerateRequest::new("a cat in Pokemon style");
    req.negative_prompt = "blurry, low quality".into();
    req.steps = 2;
    req.width = 64;
    req.height = 64;
    req.control = control_clip::control::ControlWeights::new(0.7, 0.9).unwrap();
    req.init_latents = Some(io.tensor("latents", [1, 4, 16, 16], &pipeline.device).unwrap());
    let image = block_on(pipeline.generate(&req, &mut |_| true)).unwrap();
    let (_, expected) = io.f32("image").unwrap();
    let err = image.image.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    println!("control bundle f32: max pixel error {err:.3e}");
    assert!(err <= 2.0 / 255.0, "{err}");

    // A delta file for another model is refused naming the layer.
    let other = std::env::temp_dir().join(format!("control-clip-bad-lora-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&other);
    std::fs::create_dir_all(&other).unwrap();
    std::fs::copy(cat.join("adapter_config.json"), other.join("adapter_config.json")).unwrap();
    let weights = SafeTensors::read(&cat.join("adapter_model.safetensors")).unwrap();
    let renamed: Vec<_> = weights
        .raw_tensors()
        .into_iter()
        .map(|mut t| {
            t.name = t.name.replace("layers.1.", "layers.7.");
            t
        })
        .collect();
    std::fs::write(other.join("adapter_model.safetensors"), control_clip::weights::serialize(&renamed)).unwrap();
    let err = block_on(async {
        let device = init_device(BackendKind::Cpu).await.unwrap();
        control_clip::control::ControlEncoders::read_dirs(&f.join("clip_text/sd-mini-f16"), Some(&other), None, None, &device).err().unwrap()
    });
    assert!(err.to_string().contains("encoder.layers.7."), "{err}");
}
