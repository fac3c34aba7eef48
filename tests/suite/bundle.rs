//! `control-clip bundle` and loading bundles: the pipeline from a bundle gives the pipeline fixture's
//! image; a corrupt, truncated or missing file and a manifest of another version are refused by name.

use std::path::{Path, PathBuf};

use crate::common::{block_on, cli_with_fixture_components, fixtures, max_abs_err, tempdir};
use control_clip::pipeline::{GenerateRequest, Pipeline};
use control_clip::{BackendKind, SafeTensors, init_device};

fn make_bundle(tag: &str, dtype: &str) -> PathBuf {
    make_bundle_with(tag, dtype, &[])
}

fn make_bundle_with(tag: &str, dtype: &str, extra: &[&std::ffi::OsStr]) -> PathBuf {
    let out = tempdir(&format!("bundle-{tag}"));
    let status = cli_with_fixture_components("bundle")
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
    max_abs_err(&image.image, &expected)
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
    std::fs::write(&manifest, text.replace("\"format_version\": 2", "\"format_version\": 99")).unwrap();
    let e = err_of(&dir);
    assert!(e.contains("format_version") && e.contains("99") && e.contains("not supported"), "{e}");
    // Version 1 (one file per component, no shards) is still read.
    std::fs::write(&manifest, text.replace("\"format_version\": 2", "\"format_version\": 1")).unwrap();
    load(&dir).unwrap();
    std::fs::write(&manifest, text).unwrap();
    load(&dir).unwrap();
}

fn manifest_of(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap()
}

#[test]
fn sharded_bundle_gives_the_single_file_bundles_image_and_names_a_bad_shard() {
    let limit = 256 * 1024;
    let dir = make_bundle_with("sharded", "f32", &["--shard-size".as_ref(), "256K".as_ref()]);
    let manifest = manifest_of(&dir);
    let shards = manifest["components"]["unet"]["shards"].as_array().expect("the 0.9 MB UNet is sharded").clone();
    assert!(shards.len() >= 4, "{shards:?}");
    assert!(manifest["components"]["unet"].get("file").is_none());
    for (i, shard) in shards.iter().enumerate() {
        let name = shard["file"].as_str().unwrap();
        assert_eq!(name, format!("unet-{:05}-of-{:05}.safetensors", i + 1, shards.len()));
        let file = SafeTensors::read(&dir.join(name)).unwrap();
        let data: usize = file.raw_tensors().iter().map(|t| t.bytes.len()).sum();
        assert!(data <= limit || file.keys().count() == 1, "{name}: {data} bytes of tensor data");
    }

    // The same tensors, so the same image, bit for bit, as the single-file bundle.
    let single = load(&make_bundle("single-for-shards", "f32")).unwrap();
    let sharded = load(&dir).unwrap();
    assert_eq!(worst_error(&sharded), worst_error(&single));

    // A damaged shard is named.
    let second = dir.join(shards[1]["file"].as_str().unwrap());
    let good = std::fs::read(&second).unwrap();
    let mut bad = good.clone();
    bad[100] ^= 1;
    std::fs::write(&second, &bad).unwrap();
    let e = err_of(&dir);
    assert!(e.contains("unet-00002-of-") && e.contains("sha256"), "{e}");
    std::fs::write(&second, &good).unwrap();

    // Two shards that hold the same tensor are refused, naming the tensor and both files.
    let first = dir.join(shards[0]["file"].as_str().unwrap());
    let mut dup = SafeTensors::read(&first).unwrap().raw_tensors();
    let extra = SafeTensors::read(&second).unwrap().raw_tensors().remove(0);
    let dup_name = extra.name.clone();
    dup.push(extra);
    let bytes = control_clip::weights::serialize(&dup);
    std::fs::write(&first, &bytes).unwrap();
    let mut manifest = manifest;
    manifest["components"]["unet"]["shards"][0]["bytes"] = bytes.len().into();
    manifest["components"]["unet"]["shards"][0]["sha256"] = control_clip::bundle::sha256_hex(&bytes).into();
    std::fs::write(dir.join("manifest.json"), serde_json::to_string(&manifest).unwrap()).unwrap();
    let e = err_of(&dir);
    assert!(e.contains(&dup_name) && e.contains("unet-00001-of-") && e.contains("unet-00002-of-") && e.contains("overlap"), "{e}");
}

#[test]
fn shard_size_is_validated() {
    for bad in ["0", "abc", "12X", "-3M", "99999999999G"] {
        let e = control_clip::bundle::parse_size("--shard-size", bad).unwrap_err().to_string();
        assert!(e.contains("--shard-size") && e.contains(bad), "{bad}: {e}");
    }
    assert_eq!(control_clip::bundle::parse_size("--shard-size", "32M").unwrap(), 32 << 20);
    assert_eq!(control_clip::bundle::parse_size("--shard-size", "256k").unwrap(), 256 << 10);
    assert_eq!(control_clip::bundle::parse_size("--shard-size", "1000").unwrap(), 1000);
}

#[test]
fn recommended_numbers_are_written_as_given() {
    // f32 would write 0.8 as 0.800000011920929, and the page would show that.
    let args = ["--category-weight", "0.7", "--style-weight", "0.8", "--guidance", "4.1"].map(std::ffi::OsStr::new);
    let dir = make_bundle_with("numbers", "f16", &args);
    let text = std::fs::read_to_string(dir.join("manifest.json")).unwrap();
    let manifest: serde_json::Value = serde_json::from_str(&text).unwrap();
    for (key, want) in [("category_weight", 0.7), ("style_weight", 0.8), ("guidance", 4.1)] {
        assert_eq!(manifest["defaults"][key].as_f64(), Some(want), "{key} in {text}");
    }
    let _ = std::fs::remove_dir_all(&dir);
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
    let err = max_abs_err(&image.image, &expected);
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
        control_clip::control::ControlEncoders::read_dirs(&f.join("clip_text/sd-mini-f16"), None, Some(&other), None, None, &device).err().unwrap()
    });
    assert!(err.to_string().contains("encoder.layers.7."), "{err}");
}

#[test]
fn preview_without_a_tiny_decoder_is_a_notice() {
    // The fixture bundle's decoder is the full AutoencoderKL: no previews, and the caller is told why.
    let pipeline = load(&make_bundle("kl-preview", "f16")).unwrap();
    let mut req = GenerateRequest::new("a cat");
    (req.steps, req.width, req.height, req.preview) = (1, 64, 64, true);
    let image = block_on(pipeline.generate(&req, &mut |p| p.preview.is_none())).unwrap();
    assert!(image.notices.iter().any(|n| n.contains("no preview") && n.contains("AutoencoderKL")), "{:?}", image.notices);
}

#[test]
fn a_malformed_manifest_names_the_component_at_fault() {
    let text = std::fs::read_to_string(fixtures().join("bundles/tiny-random/manifest.json")).unwrap();
    let parse = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut manifest: serde_json::Value = serde_json::from_str(&text).unwrap();
        edit(&mut manifest);
        control_clip::bundle::Manifest::parse("b", &manifest.to_string()).err().map(|e| e.to_string())
    };
    assert_eq!(parse(&|_| {}), None, "the fixture's own manifest reads");
    let cases: [(&dyn Fn(&mut serde_json::Value), &str); 4] = [
        (&|m| drop(m["components"].as_object_mut().unwrap().remove("decoder")), "components.decoder`: missing"),
        (&|m| drop(m["components"]["unet"].as_object_mut().unwrap().remove("shards")), "components.unet`: either `file`"),
        (&|m| m["components"]["unet"]["shards"] = serde_json::json!([]), "components.unet.shards`: must be a non-empty list"),
        (&|m| m["components"]["category_encoder"]["form"] = "dense".into(), "components.category_encoder`: unknown variant `dense`"),
    ];
    for (edit, want) in cases {
        let e = parse(edit).expect("refused");
        assert!(e.starts_with("b/manifest.json: field `") && e.contains(want), "{want}: {e}");
    }
}

/// A manifest's file names must be plain names inside the bundle: every other form is refused by
/// `Manifest::parse`, naming the field, before any file is read. The local-file probe (a name that points
/// at a file outside the bundle, whose size and digest a mismatch message would otherwise tell) fails
/// without a word about that file.
#[test]
fn file_names_outside_the_bundle_are_refused_before_reading() {
    let dir = tempdir("hostile-names");
    let bundle = dir.join("bundle");
    std::fs::create_dir_all(&bundle).unwrap();
    let src = fixtures().join("bundles/tiny-random");
    for entry in std::fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), bundle.join(entry.file_name())).unwrap();
    }
    let secret = dir.join("secret.bin");
    std::fs::write(&secret, b"not a bundle file").unwrap();
    let text = std::fs::read_to_string(bundle.join("manifest.json")).unwrap();
    let names = [
        "../secret.bin".to_string(),
        secret.display().to_string(),
        "sub/unet.safetensors".into(),
        "sub\\unet.safetensors".into(),
        "..".into(),
        ".".into(),
        ".hidden".into(),
        "".into(),
        "https://example.com/unet.safetensors".into(),
        "C:unet.safetensors".into(),
        "unet.safetensors?x=1".into(),
        "unet.safetensors#x".into(),
        "%2e%2e%2fsecret.bin".into(),
        "unet\n.safetensors".into(),
        "unet\u{0}.safetensors".into(),
        "ü.safetensors".into(),
        "a".repeat(129),
    ];
    for name in names {
        for field in ["tokenizer", "unet"] {
            let mut manifest: serde_json::Value = serde_json::from_str(&text).unwrap();
            let (entry, path) = match field {
                "tokenizer" => (&mut manifest["components"]["tokenizer"], "components.tokenizer.file".to_string()),
                _ => (&mut manifest["components"]["unet"]["shards"][0], "components.unet.shards[0].file".to_string()),
            };
            entry["file"] = name.clone().into();
            std::fs::write(bundle.join("manifest.json"), manifest.to_string()).unwrap();
            let e = err_of(&bundle);
            assert!(e.contains(&format!("field `{path}`")) && e.contains("plain name"), "{name:?} in {field}: {e}");
            assert!(!e.contains("bytes") && !e.contains("sha256"), "{name:?}: the message tells about the file: {e}");
        }
    }
    // The longest allowed name and every allowed character still parse.
    let mut manifest: serde_json::Value = serde_json::from_str(&text).unwrap();
    manifest["components"]["tokenizer"]["file"] = format!("Az09._-{}", "x".repeat(121)).into();
    control_clip::bundle::Manifest::parse("b", &manifest.to_string()).unwrap();
}

fn bundle_cli(tag: &str, args: &[&std::ffi::OsStr]) -> (PathBuf, std::process::Output) {
    let out = tempdir(&format!("bundle-{tag}"));
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_control-clip"))
        .arg("bundle")
        .args(args)
        .args(["--dtype", "f16", "--width", "64", "--height", "64", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    (out, output)
}

/// `bundle_cli` with the fixture generator's separate parts (tokenizer.json, clip_text/sd-mini-f16,
/// vae/kl-tiny), the given UNet folder and scheduler config, and `extra` options.
fn bundle_parts_cli(tag: &str, unet: &Path, scheduler_config: &Path, extra: &[&str]) -> (PathBuf, std::process::Output) {
    let f = fixtures();
    let mut args: Vec<std::ffi::OsString> = [
        ("--tokenizer", f.join("tokenizer.json")),
        ("--text-encoder", f.join("clip_text/sd-mini-f16")),
        ("--unet", unet.to_path_buf()),
        ("--decoder", f.join("vae/kl-tiny")),
        ("--scheduler-config", scheduler_config.to_path_buf()),
    ]
    .into_iter()
    .flat_map(|(k, v)| [k.into(), v.into_os_string()])
    .collect();
    args.extend(extra.iter().map(|e| e.into()));
    bundle_cli(tag, &args.iter().map(|a| a.as_os_str()).collect::<Vec<_>>())
}

fn ddim_scheduler_config() -> PathBuf {
    fixtures().join("pipeline/ddim-2-steps/scheduler_config.json")
}

fn image_of(dir: &Path) -> Vec<f32> {
    let pipeline = load(dir).unwrap();
    let mut req = GenerateRequest::new("a red star in striped style");
    (req.steps, req.width, req.height, req.seed) = (2, 64, 64, 5);
    block_on(pipeline.generate(&req, &mut |_| true)).unwrap().image
}

/// `bundle --pipeline DIR` on a folder `StableDiffusionPipeline.save_pretrained` wrote (fp16 variant,
/// tokenizer as vocab.json + merges.txt, a feature extractor it skips) gives the same image as the bundle
/// of the same weights from separate folders (tests/fixtures/fixtures_pipeline_folder.py).
#[test]
fn a_diffusers_pipeline_folder_bundles_in_one_command() {
    let f = fixtures();
    let pipeline = f.join("pipeline_folder/sd-tiny");
    let (from_pipeline, out) = bundle_cli("pipeline", &[pipeline_arg(), pipeline.as_os_str(), "--variant".as_ref(), "fp16".as_ref()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("skipping the pipeline's feature_extractor"), "{stderr}");
    let (from_folders, out) = bundle_cli(
        "pipeline-parts",
        &[
            "--tokenizer".as_ref(), f.join("tokenizer_files/small").as_os_str(),
            "--text-encoder".as_ref(), f.join("clip_text/sd-mini-f16").as_os_str(),
            "--unet".as_ref(), f.join("unet/sd-tiny").as_os_str(),
            "--decoder".as_ref(), f.join("vae/kl-tiny").as_os_str(),
            "--scheduler-config".as_ref(), f.join("pipeline/ddim-2-steps/scheduler_config.json").as_os_str(),
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (a, b) = (image_of(&from_pipeline), image_of(&from_folders));
    assert_eq!(max_abs_err(&a, &b), 0.0, "the pipeline folder's bundle draws another image");
    assert_eq!(std::fs::read(from_pipeline.join("tokenizer.json")).unwrap(), std::fs::read(from_folders.join("tokenizer.json")).unwrap());

    // Without --variant the variant-only folder says which to pass.
    let (_, out) = bundle_cli("pipeline-novariant", &[pipeline_arg(), pipeline.as_os_str()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--variant fp16"), "{stderr}");

    // --tiny-decoder swaps the VAE for a TAESD decoder.
    let (tiny, out) = bundle_cli("pipeline-taesd", &[pipeline_arg(), pipeline.as_os_str(), "--variant".as_ref(), "fp16".as_ref(), "--tiny-decoder".as_ref(), f.join("tiny_decoder/taesd-narrow").as_os_str()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(manifest_of(&tiny)["components"]["decoder"]["config"]["_class_name"], "AutoencoderTiny");
    image_of(&tiny);
}

fn pipeline_arg() -> &'static std::ffi::OsStr {
    "--pipeline".as_ref()
}

/// Pickled weights are refused with what to run instead, before anything is read from them.
#[test]
fn pickled_weights_are_refused_with_a_way_out() {
    let f = fixtures();
    let unet = tempdir("pickled-unet");
    std::fs::copy(f.join("unet/sd-tiny/config.json"), unet.join("config.json")).unwrap();
    std::fs::write(unet.join("diffusion_pytorch_model.bin"), b"not really a pickle").unwrap();
    let (_, out) = bundle_parts_cli("pickled", &unet, &ddim_scheduler_config(), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("diffusion_pytorch_model.bin") && stderr.contains("never loads pickles") && stderr.contains("safe_serialization=True"), "{stderr}");
}

/// A declared size over the bound is refused at parse time, naming the field; a local file whose size
/// differs from the manifest's is refused from its metadata, before it is read.
#[test]
fn declared_sizes_are_bounded_and_checked_before_reading() {
    let text = std::fs::read_to_string(fixtures().join("bundles/tiny-random/manifest.json")).unwrap();
    let mut manifest: serde_json::Value = serde_json::from_str(&text).unwrap();
    manifest["components"]["unet"]["shards"][1]["bytes"] = (1u64 << 40).into();
    let e = control_clip::bundle::Manifest::parse("b", &manifest.to_string()).err().unwrap().to_string();
    assert!(e.contains("components.unet.shards[1].bytes") && e.contains("more than any bundle file"), "{e}");
}

/// A copy of the tiny single-file checkpoint with tensors renamed (`rename` returns None to drop one) and
/// `extra` tensors added, for the refusals below.
fn edited_checkpoint(tag: &str, rename: impl Fn(&str) -> Option<String>, extra: &[&str]) -> PathBuf {
    use control_clip::weights::{RawTensor, serialize};
    let file = control_clip::SafeTensors::read(&fixtures().join("single_file/sd-tiny.safetensors")).unwrap();
    let mut tensors: Vec<RawTensor> = file.raw_tensors().into_iter().filter_map(|t| rename(&t.name).map(|name| RawTensor { name, ..t })).collect();
    tensors.extend(extra.iter().map(|name| RawTensor::f32(*name, vec![2], &[0.5, 0.5])));
    let path = tempdir(&format!("checkpoint-{tag}")).join("model.safetensors");
    std::fs::write(&path, serialize(&tensors)).unwrap();
    path
}

/// `bundle --checkpoint FILE` on a single-file checkpoint in the LDM layout (tests/fixtures/fixtures_single_file.py
/// writes it and proves the layout with diffusers' `from_single_file`) gives the bundle of the diffusers
/// folder of the same weights, byte for byte, and so the same image; models that do not fit are refused by
/// the tensor at fault.
#[test]
fn a_single_file_checkpoint_bundles_as_its_pipeline_folder() {
    let f = fixtures();
    let pipeline = f.join("pipeline_folder/sd-tiny");
    let checkpoint = f.join("single_file/sd-tiny.safetensors");
    let (from_pipeline, out) = bundle_cli("sf-pipeline", &[pipeline_arg(), pipeline.as_os_str(), "--variant".as_ref(), "fp16".as_ref()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let config = ["--config".as_ref(), pipeline.as_os_str()];
    let (from_checkpoint, out) = bundle_cli("sf-checkpoint", &[&["--checkpoint".as_ref(), checkpoint.as_os_str()][..], &config].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut names: Vec<_> = std::fs::read_dir(&from_pipeline).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    assert_eq!(names.len(), 5, "{names:?}");
    for name in &names {
        assert!(std::fs::read(from_pipeline.join(name)).unwrap() == std::fs::read(from_checkpoint.join(name)).unwrap(), "{name:?} differs");
    }
    assert_eq!(max_abs_err(&image_of(&from_pipeline), &image_of(&from_checkpoint)), 0.0);

    // Older checkpoints name the text encoder's tensors without `text_model.`; strangers outside the three
    // models are skipped with a notice.
    let legacy = edited_checkpoint("legacy", |n| Some(n.replace("cond_stage_model.transformer.text_model.", "cond_stage_model.transformer.")), &["embedding_manager.x"]);
    let (from_legacy, out) = bundle_cli("sf-legacy", &[&["--checkpoint".as_ref(), legacy.as_os_str()][..], &config].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("skipping 1 tensors") && stderr.contains("embedding_manager.x"), "{stderr}");
    assert_eq!(std::fs::read(from_legacy.join("text_encoder.safetensors")).unwrap(), std::fs::read(from_pipeline.join("text_encoder.safetensors")).unwrap());

    let tokenizer = f.join("tokenizer.json");
    let refused = |tag: &str, path: &Path, with_config: bool, expected: &[&str]| {
        let mut args = vec!["--checkpoint".as_ref(), path.as_os_str(), "--tokenizer".as_ref(), tokenizer.as_os_str()];
        if with_config {
            args.extend(config);
        }
        let (_, out) = bundle_cli(tag, &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{tag}: {stderr}");
        for e in expected {
            assert!(stderr.contains(e), "{tag}: no `{e}` in {stderr}");
        }
    };
    // SD 1.5's configs (no --config) do not fit the tiny model: the first telling shape says so.
    refused("sf-sd15", &checkpoint, false, &["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight", "[49408, 16]", "[49408, 768]", "--config"]);
    let missing = edited_checkpoint("missing", |n| (n != "model.diffusion_model.output_blocks.5.1.proj_out.bias").then(|| n.to_string()), &[]);
    refused("sf-missing", &missing, true, &["model.diffusion_model.output_blocks.5.1.proj_out.bias", "missing"]);
    let extra = edited_checkpoint("extra", |n| Some(n.to_string()), &["model.diffusion_model.label_emb.0.0.weight"]);
    refused("sf-extra", &extra, true, &["model.diffusion_model.label_emb.0.0.weight", "not part of the unet"]);
    let sdxl = edited_checkpoint("sdxl", |n| Some(n.to_string()), &["conditioner.embedders.1.model.ln_final.weight"]);
    refused("sf-sdxl", &sdxl, true, &["SDXL"]);
    let sd2 = edited_checkpoint("sd2", |n| Some(n.replace("cond_stage_model.transformer.text_model.", "cond_stage_model.model.")), &[]);
    refused("sf-sd2", &sd2, true, &["SD 2.x", "OpenCLIP"]);
    let truncated = tempdir("checkpoint-truncated").join("model.safetensors");
    let bytes = std::fs::read(&checkpoint).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    refused("sf-truncated", &truncated, true, &["truncated"]);

    // Without --config or --tokenizer: a single file holds no tokenizer, and the message says where one is.
    let (_, out) = bundle_cli("sf-no-tokenizer", &["--checkpoint".as_ref(), checkpoint.as_os_str()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--tokenizer") && stderr.contains("holds no tokenizer"), "{stderr}");
}

/// A scheduler config of a class we do not run (SD 1.5's PNDM) becomes DDIM with the same schedule, with a
/// notice; --scheduler picks the class.
#[test]
fn an_unimplemented_scheduler_class_becomes_ddim_and_scheduler_chooses() {
    let f = fixtures();
    let pndm = tempdir("pndm").join("scheduler_config.json");
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(ddim_scheduler_config()).unwrap()).unwrap();
    config["_class_name"] = "PNDMScheduler".into();
    std::fs::write(&pndm, config.to_string()).unwrap();
    let unet = f.join("unet/sd-tiny");
    let (ddim, out) = bundle_parts_cli("pndm", &unet, &pndm, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("PNDMScheduler") && stderr.contains("DDIMScheduler"), "{stderr}");
    let scheduler = &manifest_of(&ddim)["components"]["scheduler"]["config"];
    assert_eq!(scheduler["_class_name"], "DDIMScheduler");
    assert_eq!(scheduler["steps_offset"], config["steps_offset"], "the schedule is kept");
    let (euler, out) = bundle_parts_cli("pndm-euler", &unet, &pndm, &["--scheduler", "euler-a"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(manifest_of(&euler)["components"]["scheduler"]["config"]["_class_name"], "EulerAncestralDiscreteScheduler");
}

/// A model saved in shards (`save_pretrained(max_shard_size=…)`: an index and its files) is read as one
/// set of tensors: the bundle is the one of the unsharded folder; an index that lies is refused by tensor.
#[test]
fn sharded_model_folders_are_read_through_their_index() {
    let f = fixtures();
    let run = |tag: &str, unet: &Path| bundle_parts_cli(tag, unet, &ddim_scheduler_config(), &[]);
    let (whole, out) = run("unsharded", &f.join("unet/sd-tiny"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (sharded, out) = run("sharded", &f.join("sharded/unet"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(whole.join("unet.safetensors")).unwrap(), std::fs::read(sharded.join("unet.safetensors")).unwrap());

    let lying = tempdir("sharded-lying");
    for entry in std::fs::read_dir(f.join("sharded/unet")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), lying.join(entry.file_name())).unwrap();
    }
    let index_path = lying.join("diffusion_pytorch_model.safetensors.index.json");
    let mut index: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&index_path).unwrap()).unwrap();
    let map = index["weight_map"].as_object_mut().unwrap();
    let (tensor, file) = map.iter().find(|(_, v)| v.as_str() != Some("diffusion_pytorch_model-00001-of-00005.safetensors")).map(|(k, v)| (k.clone(), v.clone())).unwrap();
    map.insert(tensor.clone(), "diffusion_pytorch_model-00001-of-00005.safetensors".into());
    std::fs::write(&index_path, index.to_string()).unwrap();
    let (_, out) = run("sharded-lying", &lying);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&tensor) && stderr.contains("missing") && stderr.contains("00001-of-00005"), "{stderr} (the tensor is in {file})");
}

/// A generation request's sizes are bounded before anything is allocated: a side over
/// `MAX_IMAGE_SIDE` (2048) and more steps than the scheduler has training timesteps are refused by name.
#[test]
fn over_large_generation_requests_are_refused_by_name() {
    let pipeline = load(&fixtures().join("bundles/tiny-random")).unwrap();
    let start = std::time::Instant::now();
    let refused = |edit: &dyn Fn(&mut GenerateRequest), words: &[&str]| {
        let mut req = GenerateRequest::new("a red star");
        (req.steps, req.width, req.height) = (2, 64, 64);
        edit(&mut req);
        let e = block_on(pipeline.generate(&req, &mut |_| true)).err().unwrap().to_string();
        for w in words {
            assert!(e.contains(w), "no `{w}` in {e}");
        }
    };
    refused(&|r| r.width = 1 << 20, &["width", "1048576", "2048"]);
    refused(&|r| r.height = control_clip::pipeline::MAX_IMAGE_SIDE + 64, &["height", "2112"]);
    refused(&|r| r.steps = 1_000_000_000, &["1000000000"]);
    assert!(start.elapsed().as_secs() < 5, "refusing took {:?}", start.elapsed());
}

/// `bundle` builds in a fresh folder beside --out and renames it only once the bundle loads as the
/// pipeline loads it and its recommended settings would be accepted (issue 29, item 5): recommended
/// settings it could not read back, and configs that do not fit their weights, are refused with exit 2,
/// and nothing is left behind — --out stays the empty folder it was, with no staging folder beside it.
#[test]
fn a_failed_bundle_leaves_nothing_and_refuses_what_it_could_not_read() {
    let f = fixtures();
    let unet = f.join("unet/sd-tiny");
    let misfit = tempdir("bundle-misfit-unet");
    std::fs::copy(unet.join("diffusion_pytorch_model.safetensors"), misfit.join("diffusion_pytorch_model.safetensors")).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(unet.join("config.json")).unwrap()).unwrap();
    config["cross_attention_dim"] = 24.into();
    std::fs::write(misfit.join("config.json"), config.to_string()).unwrap();
    for (tag, unet, extra, needles) in [
        ("steps-0", &unet, vec!["--steps", "0"], vec!["steps", "must be at least 1"]),
        ("guidance-nan", &unet, vec!["--guidance", "NaN"], vec!["guidance", "NaN"]),
        ("misfit", &misfit, vec![], vec!["would not load", "to_k"]),
    ] {
        let (out, output) = bundle_parts_cli(tag, unet, &ddim_scheduler_config(), &extra);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{tag}: {stderr}");
        for needle in needles {
            assert!(stderr.contains(needle), "{tag}: `{needle}` not in {stderr}");
        }
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0, "{tag}: --out is not empty after a failed bundle");
        let name = out.file_name().unwrap().to_string_lossy().into_owned();
        let left: Vec<_> = std::fs::read_dir(out.parent().unwrap()).unwrap().filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.starts_with(&format!(".{name}."))).collect();
        assert!(left.is_empty(), "{tag}: staging folders left beside --out: {left:?}");
        let _ = std::fs::remove_dir_all(&out);
    }
    let _ = std::fs::remove_dir_all(&misfit);
}
