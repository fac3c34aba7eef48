//! Every broken input a user can bring gives an error that names the file and the tensor or field.
//! (The browser test repeats two of these through the wasm API.)

use burn::tensor::Device;
use crate::common::fixtures;
use control_clip::config::ConfigJson;
use control_clip::weights::{DType, RawTensor, serialize};
use control_clip::{ClipTextModel, Error, SafeTensors};

const MODEL: &str = "deep-gelu-new-noprefix";

fn model_bytes() -> Vec<u8> {
    std::fs::read(fixtures().join("clip_text").join(MODEL).join("model.safetensors")).unwrap()
}

fn config_text() -> String {
    std::fs::read_to_string(fixtures().join("clip_text").join(MODEL).join("config.json")).unwrap()
}

/// Loads a model from in-memory files; the error as text.
fn load_err(config: &str, weights: Vec<u8>) -> String {
    let result = (|| {
        let config = ConfigJson::parse("m/config.json", config)?;
        let weights = SafeTensors::from_bytes("m/model.safetensors", weights)?;
        ClipTextModel::load(&config, &weights, &Device::flex())
    })();
    let err = result.err().expect("loading should fail");
    err.to_string()
}

fn edited(edit: impl FnOnce(&mut Vec<RawTensor>)) -> Vec<u8> {
    let mut tensors = SafeTensors::from_bytes("m", model_bytes()).unwrap().raw_tensors();
    edit(&mut tensors);
    serialize(&tensors)
}

#[test]
fn the_unedited_fixture_loads() {
    let config = ConfigJson::parse("m/config.json", &config_text()).unwrap();
    // Round trip through our writer: proves `serialize` writes what the reader (and the library) reads.
    let weights = SafeTensors::from_bytes("m", edited(|_| {})).unwrap();
    ClipTextModel::load(&config, &weights, &Device::flex()).unwrap();
}

#[test]
fn truncated_file() {
    let bytes = model_bytes();
    let err = load_err(&config_text(), bytes[..bytes.len() / 2].to_vec());
    assert!(err.contains("m/model.safetensors") && err.contains("truncated"), "{err}");
    let err = load_err(&config_text(), bytes[..20].to_vec());
    assert!(err.contains("m/model.safetensors") && err.contains("truncated"), "{err}");
}

#[test]
fn empty_files() {
    let err = load_err(&config_text(), Vec::new());
    assert!(err.contains("m/model.safetensors") && err.contains("empty"), "{err}");
    let err = load_err("", model_bytes());
    assert!(err.contains("m/config.json") && err.contains("empty"), "{err}");
}

#[test]
fn header_that_lies_about_sizes() {
    let mut bytes = model_bytes();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(bytes[8..8 + n].to_vec()).unwrap();
    // Claim a bigger shape for the final layer norm's weight, keeping its byte range.
    let lie = header.replacen("\"final_layer_norm.weight\":{\"dtype\":\"F32\",\"shape\":[48]", "\"final_layer_norm.weight\":{\"dtype\":\"F32\",\"shape\":[49]", 1);
    assert_ne!(lie, header, "fixture header layout changed: {header:.200}");
    bytes.splice(8..8 + n, lie.into_bytes());
    let err = load_err(&config_text(), bytes);
    assert!(err.contains("m/model.safetensors") && err.contains("final_layer_norm.weight") && err.contains("lies about sizes"), "{err}");
}

#[test]
fn missing_tensor() {
    let bytes = edited(|t| t.retain(|t| t.name != "encoder.layers.2.mlp.fc1.bias"));
    let err = load_err(&config_text(), bytes);
    assert!(err.contains("m/model.safetensors") && err.contains("encoder.layers.2.mlp.fc1.bias") && err.contains("missing"), "{err}");
}

#[test]
fn wrong_shape() {
    let bytes = edited(|t| {
        let t = t.iter_mut().find(|t| t.name == "encoder.layers.0.self_attn.q_proj.weight").unwrap();
        t.shape = vec![24, 96];
    });
    let err = load_err(&config_text(), bytes);
    assert!(err.contains("encoder.layers.0.self_attn.q_proj.weight") && err.contains("expected shape [48, 48], found [24, 96]"), "{err}");
}

#[test]
fn wrong_dtype() {
    let bytes = edited(|t| {
        let t = t.iter_mut().find(|t| t.name == "final_layer_norm.bias").unwrap();
        t.dtype = DType::I32;
    });
    let err = load_err(&config_text(), bytes);
    assert!(err.contains("final_layer_norm.bias") && err.contains("expected a float tensor"), "{err}");
}

#[test]
fn non_finite_weights() {
    let bytes = edited(|t| {
        let t = t.iter_mut().find(|t| t.name == "embeddings.position_embedding.weight").unwrap();
        t.bytes[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
    });
    let err = load_err(&config_text(), bytes);
    assert!(err.contains("embeddings.position_embedding.weight") && err.contains("non-finite"), "{err}");
}

#[test]
fn unknown_activation() {
    let config = config_text().replace("\"gelu_new\"", "\"swiglu_magic\"");
    let err = load_err(&config, model_bytes());
    assert!(err.contains("m/config.json") && err.contains("hidden_act") && err.contains("swiglu_magic"), "{err}");
}

#[test]
fn config_field_of_the_wrong_type() {
    let config = config_text().replace("\"num_attention_heads\": 6", "\"num_attention_heads\": \"six\"");
    let err = load_err(&config, model_bytes());
    assert!(err.contains("num_attention_heads") && err.contains("\"six\""), "{err}");
}

#[test]
fn errors_are_typed() {
    let err = SafeTensors::from_bytes("x.safetensors", vec![]).err().unwrap();
    assert!(matches!(err, Error::File { .. }));
}

/// Loads low-rank deltas from in-memory files over the sd-mini encoder; the error as text.
fn deltas_err(config: &str, edit: impl FnOnce(&mut Vec<RawTensor>)) -> String {
    let dir = fixtures().join("control/encoders/category_lora");
    let mut tensors = SafeTensors::read(&dir.join("adapter_model.safetensors")).unwrap().raw_tensors();
    edit(&mut tensors);
    let result = (|| {
        let config = ConfigJson::parse("lora/adapter_config.json", config)?;
        let deltas = control_clip::weights::LowRankDeltas::load(&config, &SafeTensors::from_bytes("lora/adapter_model.safetensors", serialize(&tensors))?)?;
        let base_dir = fixtures().join("clip_text/sd-mini-f16");
        let base = SafeTensors::read(&base_dir.join("model.safetensors"))?;
        deltas.check_targets(&base)?;
        ClipTextModel::load_with_deltas(&ConfigJson::read(&base_dir.join("config.json"))?, &base, Some(&deltas), &Device::flex())
    })();
    result.err().expect("loading should fail").to_string()
}

#[test]
fn broken_low_rank_deltas_are_refused_by_name() {
    let config = std::fs::read_to_string(fixtures().join("control/encoders/category_lora/adapter_config.json")).unwrap();
    // A rank that does not match the factors.
    let e = deltas_err(&config.replace("\"r\": 4", "\"r\": 3"), |_| {});
    assert!(e.contains("lora_A.weight") && e.contains("r = 3"), "{e}");
    // DoRA and unknown PEFT types.
    let e = deltas_err(&config.replace("\"use_dora\": false", "\"use_dora\": true"), |_| {});
    assert!(e.contains("use_dora"), "{e}");
    let e = deltas_err(&config.replace("\"LORA\"", "\"IA3\""), |_| {});
    assert!(e.contains("peft_type") && e.contains("IA3"), "{e}");
    // A lora_B without its lora_A.
    let e = deltas_err(&config, |t| t.retain(|t| !t.name.contains("layers.0.mlp.fc1.lora_A")));
    assert!(e.contains("layers.0.mlp.fc1.lora_B") && e.contains("no matching lora_A"), "{e}");
    // Factors of the wrong size for E's layer.
    let e = deltas_err(&config, |t| {
        let a = t.iter_mut().find(|t| t.name.contains("layers.0.self_attn.q_proj.lora_A")).unwrap();
        *a = RawTensor::f32(a.name.clone(), vec![4, 8], &[0.1; 32]);
    });
    assert!(e.contains("encoder.layers.0.self_attn.q_proj") && e.contains("[16, 8]") && e.contains("[16, 16]"), "{e}");
    // Non-finite factors.
    let e = deltas_err(&config, |t| {
        let b = t.iter_mut().find(|t| t.name.contains("layers.1.mlp.fc2.lora_B")).unwrap();
        let n: usize = b.shape.iter().product();
        let mut v = vec![0.0; n];
        v[3] = f32::INFINITY;
        *b = RawTensor::f32(b.name.clone(), b.shape.clone(), &v);
    });
    assert!(e.contains("layers.1.mlp.fc2.lora_B") && e.contains("non-finite"), "{e}");
}

#[test]
fn control_weights_and_adapters_are_validated() {
    use control_clip::control::{Adapter, ControlWeights};
    let e = ControlWeights::new(f32::NAN, 0.5).err().unwrap().to_string();
    assert!(e.contains("category weight"), "{e}");
    let e = ControlWeights::new(1.0, f32::INFINITY).err().unwrap().to_string();
    assert!(e.contains("style weight"), "{e}");
    assert!(ControlWeights::new(0.0, 0.0).is_ok() && ControlWeights::new(-1.0, 2.5).is_ok());

    let dir = fixtures().join("control/encoders/adapter");
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let weights = || SafeTensors::read(&dir.join("model.safetensors")).unwrap();
    let load = |config: &str, weights: SafeTensors| Adapter::load(&ConfigJson::parse("adapter/config.json", config).unwrap(), &weights, &Device::flex()).err().unwrap().to_string();
    let e = load(&config.replace("\"adapter_dim\": 32", "\"adapter_dim\": 31"), weights());
    assert!(e.contains("fc1.weight") && e.contains("[31, 16]"), "{e}");
    let e = load(&config.replace("\"gelu\"", "\"mish\""), weights());
    assert!(e.contains("hidden_act") && e.contains("mish"), "{e}");
    let mut tensors = weights().raw_tensors();
    tensors.retain(|t| t.name != "norm.bias");
    let e = load(&config, SafeTensors::from_bytes("adapter/model.safetensors", serialize(&tensors)).unwrap());
    assert!(e.contains("norm.bias") && e.contains("missing"), "{e}");
}

/// Config integers over the bound (2^20) are refused by file and field before anything is allocated or
/// looped over: a layer count, a list entry, a scheduler's training timesteps.
#[test]
fn over_large_config_integers_are_refused_by_name() {
    let start = std::time::Instant::now();
    let mut config: serde_json::Value = serde_json::from_str(&config_text()).unwrap();
    config["num_hidden_layers"] = 1_000_000_000_000u64.into();
    let text = config.to_string();
    let e = load_err(&text, model_bytes());
    assert!(e.contains("m/config.json") && e.contains("num_hidden_layers") && e.contains("over the largest value"), "{e}");

    let scheduler = ConfigJson::parse("s/scheduler_config.json", r#"{"_class_name": "DDIMScheduler", "num_train_timesteps": 1000000000000}"#).unwrap();
    let e = control_clip::schedulers::SchedulerConfig::from_json(&scheduler).err().unwrap().to_string();
    assert!(e.contains("s/scheduler_config.json") && e.contains("num_train_timesteps"), "{e}");

    let unet = ConfigJson::parse("u/config.json", r#"{"block_out_channels": [32, 4294967296]}"#).unwrap();
    let e = unet.usize_per_block("block_out_channels", 2, None).err().unwrap().to_string();
    assert!(e.contains("block_out_channels") && e.contains("over the largest value"), "{e}");
    // The bound itself is allowed.
    let ok = ConfigJson::parse("u/config.json", &format!(r#"{{"x": {}}}"#, control_clip::config::MAX_CONFIG_INTEGER)).unwrap();
    assert_eq!(ok.opt_usize("x").unwrap(), Some(control_clip::config::MAX_CONFIG_INTEGER));
    assert!(start.elapsed().as_secs() < 5, "refusing took {:?}", start.elapsed());
}

/// Files read whole (configs, manifests, dataset lists, training configs, tokenizer files, pictures) are
/// refused from their size over 64 MiB, before they are read: the files below are sparse, so the test
/// writes nothing, and refusing is immediate.
#[test]
fn over_large_small_files_are_refused_before_reading() {
    let start = std::time::Instant::now();
    let dir = crate::common::tempdir("over-large-files");
    let big = |name: &str| {
        let path = dir.join(name);
        std::fs::File::create(&path).unwrap().set_len(control_clip::files::MAX_SMALL_FILE + 1).unwrap();
        path
    };
    let e = ConfigJson::read(&big("config.json")).err().unwrap().to_string();
    assert!(e.contains("config.json") && e.contains("over the 67108864-byte limit"), "{e}");
    let e = control_clip::ClipTokenizer::read(&big("tokenizer.json")).err().unwrap().to_string();
    assert!(e.contains("tokenizer.json") && e.contains("over the"), "{e}");
    // The bound itself is allowed (read, then refused as JSON).
    let exact = dir.join("exact.json");
    std::fs::write(&exact, vec![b' '; control_clip::files::MAX_SMALL_FILE as usize]).unwrap();
    let e = ConfigJson::read(&exact).err().unwrap().to_string();
    assert!(!e.contains("limit"), "{e}");
    assert!(start.elapsed().as_secs() < 10, "refusing took {:?}", start.elapsed());
}

/// A picture whose header declares more than 2^24 pixels is refused from the header, before its pixels
/// are allocated (PNG and JPEG).
#[test]
fn pictures_over_the_pixel_bound_are_refused_from_their_header() {
    use control_clip::models::image_processor::RgbImage;
    let start = std::time::Instant::now();
    // A PNG of 65536 × 65536 (its header only: nothing past it is read).
    let mut png_bytes = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut png_bytes, 65536, 65536);
        encoder.set_color(png::ColorType::Rgba);
        let mut writer = encoder.write_header().unwrap();
        // An empty zlib stream as the image data: the decoder reads the header up to the first IDAT.
        writer.write_chunk(png::chunk::IDAT, &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]).unwrap();
        std::mem::forget(writer); // its drop would finish the file with the image data it lacks
    }
    let e = RgbImage::decode("huge.png", &png_bytes).err().unwrap().to_string();
    assert!(e.contains("huge.png") && e.contains("65536 × 65536") && e.contains("at most 16777216 pixels"), "{e}");
    // A baseline JPEG header (SOF0) of 65535 × 65535, greyscale.
    let mut jpeg = vec![0xFF, 0xD8];
    jpeg.extend([0xFF, 0xDB, 0x00, 0x43, 0x00]);
    jpeg.extend([1u8; 64]);
    jpeg.extend([0xFF, 0xC0, 0x00, 0x0B, 0x08, 0xFF, 0xFF, 0xFF, 0xFF, 0x01, 0x01, 0x11, 0x00]);
    jpeg.extend([0xFF, 0xC4, 0x00, 0x14, 0x00, 0x01]);
    jpeg.extend([0u8; 15]);
    jpeg.push(0);
    jpeg.extend([0xFF, 0xC4, 0x00, 0x14, 0x10, 0x01]);
    jpeg.extend([0u8; 15]);
    jpeg.push(0);
    jpeg.extend([0xFF, 0xDA, 0x00, 0x08, 0x01, 0x01, 0x00, 0x00, 0x3F, 0x00, 0x00, 0xFF, 0xD9]);
    let e = RgbImage::decode("huge.jpg", &jpeg).err().unwrap().to_string();
    assert!(e.contains("huge.jpg") && e.contains("65535 × 65535"), "{e}");
    // The fixtures' real pictures still decode.
    RgbImage::decode("photo.jpg", &std::fs::read(fixtures().join("clip_vision/preprocess/photo.jpg")).unwrap()).unwrap();
    assert!(start.elapsed().as_secs() < 5, "refusing took {:?}", start.elapsed());
}

/// A safetensors header longer than safetensors' own 100 MB limit is refused before it is read (here a
/// sparse 200 MB file whose first 8 bytes claim a 150 MB header), naming the file.
#[test]
fn over_long_safetensors_headers_are_refused_before_reading() {
    use std::io::Write;
    let path = crate::common::tempdir("long-header").join("model.safetensors");
    let mut file = std::fs::File::create(&path).unwrap();
    file.write_all(&150_000_000u64.to_le_bytes()).unwrap();
    file.set_len(200_000_000).unwrap();
    let start = std::time::Instant::now();
    let e = control_clip::weights::FileIndex::read(&path).err().unwrap().to_string();
    assert!(e.contains("model.safetensors") && e.contains("150000000") && e.contains("limit"), "{e}");
    assert!(start.elapsed().as_secs() < 2, "refusing took {:?}", start.elapsed());
}

/// A bundle manifest's sha256 compares in either case (an uppercase digest written by hand names the same
/// bytes), and one that is not 64 hexadecimal digits is refused at parse time by field, not reported later
/// as a corrupt file.
#[test]
fn manifest_digests_compare_in_either_case_and_malformed_ones_are_refused_by_field() {
    use control_clip::bundle::{BundleFile, Components, Defaults, Files, Manifest, SchedulerComponent, WeightsComponent};
    let weights = |name: &str| WeightsComponent { files: Files::One(BundleFile::of(name, name.as_bytes())), dtype: None, form: None, config: Default::default() };
    let components = Components {
        tokenizer: BundleFile::of("tokenizer.json", b"{}"),
        text_encoder: weights("text_encoder.safetensors"),
        unet: weights("unet.safetensors"),
        decoder: weights("decoder.safetensors"),
        scheduler: SchedulerComponent { config: Default::default() },
        category_encoder: None,
        style_encoder: None,
        adapter: None,
    };
    let text = Manifest::new("n", "l", Defaults::default(), components).to_json();
    let unet = BundleFile::of("unet.safetensors", b"unet.safetensors");
    assert!(text.contains(&unet.sha256));

    let upper = text.replace(&unet.sha256, &unet.sha256.to_uppercase());
    let manifest = Manifest::parse("b", &upper).unwrap();
    let listed = manifest.file("unet.safetensors").unwrap().clone();
    assert_eq!(listed.sha256, unet.sha256.to_uppercase());
    manifest.verify(&listed, b"unet.safetensors").unwrap();
    manifest.verify_digest(&listed, listed.bytes, &unet.sha256).unwrap();
    // Other bytes are still a corrupt file, whatever the case.
    let e = manifest.verify(&listed, b"unet.safetensorz").unwrap_err().to_string();
    assert!(e.contains("b/unet.safetensors") && e.contains("does not match"), "{e}");

    for bad in [&unet.sha256[..63], "", &format!("{}g", &unet.sha256[..63]), &format!("{} ", unet.sha256)] {
        let e = Manifest::parse("b", &text.replace(&unet.sha256, bad)).unwrap_err().to_string();
        assert!(e.contains("b/manifest.json") && e.contains("field `components.unet.sha256`") && e.contains("64 hexadecimal digits"), "{bad:?}: {e}");
    }
}

/// Non-finite config numbers (Python's bare `NaN` / `Infinity`, or those strings) are refused by file and
/// field; a decoder's NaN `scaling_factor` used to write an all-black picture and an infinite
/// `shift_factor` another picture. JSON numbers too large for f64 (1e999) are already refused by the JSON
/// reader, naming the file; finite values beyond f32's range would become infinities in the models.
#[test]
fn non_finite_config_numbers_are_refused_by_name() {
    use control_clip::models::{taesd::TinyDecoderConfig, vae::VaeConfig};
    use control_clip::schedulers::SchedulerConfig;
    let taesd = |text: &str| TinyDecoderConfig::from_json(&ConfigJson::parse("d/config.json", text).unwrap()).err().map(|e| e.to_string());
    for (text, field, found) in [
        (r#"{"scaling_factor": NaN}"#, "scaling_factor", "found NaN"),
        (r#"{"shift_factor": Infinity}"#, "shift_factor", "found Infinity"),
        (r#"{"shift_factor": -Infinity}"#, "shift_factor", "found -Infinity"),
        (r#"{"scaling_factor": "NaN"}"#, "scaling_factor", "found NaN"),
        (r#"{"scaling_factor": 1e300}"#, "scaling_factor", "f32's range"),
    ] {
        let e = taesd(text).unwrap_or_else(|| panic!("{text} was accepted"));
        assert!(e.contains("d/config.json") && e.contains(&format!("field `{field}`")) && e.contains(found), "{text}: {e}");
    }
    assert!(taesd(r#"{"scaling_factor": 1.5, "shift_factor": -0.5}"#).is_none());

    let vae = ConfigJson::parse("v/config.json", r#"{"up_block_types": ["UpDecoderBlock2D"], "block_out_channels": [32], "scaling_factor": NaN}"#).unwrap();
    let e = VaeConfig::from_json(&vae).err().unwrap().to_string();
    assert!(e.contains("v/config.json") && e.contains("field `scaling_factor`") && e.contains("NaN"), "{e}");

    let mut config: serde_json::Value = serde_json::from_str(&config_text()).unwrap();
    config["layer_norm_eps"] = "Infinity".into();
    let e = load_err(&config.to_string(), model_bytes());
    assert!(e.contains("m/config.json") && e.contains("field `layer_norm_eps`") && e.contains("Infinity"), "{e}");

    let scheduler = |text: &str| SchedulerConfig::parse("s/scheduler_config.json", text).err().map(|e| e.to_string());
    let e = scheduler(r#"{"_class_name": "DDIMScheduler", "beta_end": NaN}"#).unwrap();
    assert!(e.contains("s/scheduler_config.json") && e.contains("field `beta_end`") && e.contains("NaN"), "{e}");
    // diffusers' saved -Infinity of lambda_min_clipped still reads; NaN there does not.
    assert!(scheduler(r#"{"_class_name": "DPMSolverMultistepScheduler", "lambda_min_clipped": -Infinity}"#).is_none());
    let e = scheduler(r#"{"lambda_min_clipped": NaN}"#).unwrap();
    assert!(e.contains("field `lambda_min_clipped`") && e.contains("NaN"), "{e}");

    // What JSON itself cannot hold: serde_json refuses a number beyond f64 at parse time, naming the file.
    let e = ConfigJson::parse("d/config.json", r#"{"scaling_factor": 1e999}"#).err().unwrap().to_string();
    assert!(e.contains("d/config.json") && e.contains("out of range"), "{e}");
}

/// The training config's sizes and per-step counts are bounded as model configs' integers are (10^12
/// aborted on allocation): refused by file and field, the bound itself allowed.
#[test]
fn over_large_training_integers_are_refused_by_name() {
    use control_clip::train::TrainConfig;
    let start = std::time::Instant::now();
    for (text, field) in [
        (r#"{"adapter_dim": 1000000000000}"#, "adapter_dim"),
        (r#"{"lora": {"r": 1000000000000}}"#, "lora.r"),
        (r#"{"batch": 1000000000000}"#, "batch"),
        (r#"{"triplets": 1000000000000}"#, "triplets"),
    ] {
        let e = TrainConfig::parse("t/train.json", text).err().unwrap().to_string();
        assert!(e.contains("t/train.json") && e.contains(&format!("field `{field}`")) && e.contains("over the largest value"), "{text}: {e}");
        let at_bound = text.replace("1000000000000", &control_clip::config::MAX_CONFIG_INTEGER.to_string());
        TrainConfig::parse("t/train.json", &at_bound).unwrap();
    }
    assert!(start.elapsed().as_secs() < 2, "refusing took {:?}", start.elapsed());
}

/// `control-clip ARGS…` with a deadline: its exit code and stderr, or a failed test if it runs past
/// `seconds` (killed first, so that a hang fails the test instead of stalling the suite).
#[cfg(unix)]
fn cli_within(seconds: u64, args: &[&std::ffi::OsStr]) -> (Option<i32>, String) {
    let dir = crate::common::tempdir("cli-within");
    let stderr_path = dir.join("stderr.txt");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_control-clip"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("control-clip {args:?} ran past {seconds} s: {}", std::fs::read_to_string(&stderr_path).unwrap_or_default());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    (status.code(), std::fs::read_to_string(&stderr_path).unwrap())
}

/// The tiny bundle, copied into a fresh folder.
#[cfg(unix)]
fn copied_tiny_bundle(tag: &str) -> std::path::PathBuf {
    let bundle = crate::common::tempdir(tag).join("bundle");
    std::fs::create_dir_all(&bundle).unwrap();
    for entry in std::fs::read_dir(fixtures().join("bundles/tiny-random")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), bundle.join(entry.file_name())).unwrap();
    }
    bundle
}

#[cfg(unix)]
fn generate_from(bundle: &std::path::Path, extra: &[&str]) -> (Option<i32>, String) {
    let out = crate::common::tempdir("generate-out").join("out.png");
    let mut args: Vec<&std::ffi::OsStr> = ["generate", "--backend", "cpu", "--prompt", "a cat", "--bundle"].iter().map(|a| a.as_ref()).collect();
    args.push(bundle.as_os_str());
    args.extend(["--out".as_ref(), out.as_os_str()]);
    args.extend(extra.iter().map(|a| std::ffi::OsStr::new(*a)));
    cli_within(20, &args)
}

/// A bundle's file that is a symbolic link (to a file outside the folder, or to /dev/zero), a FIFO, or a
/// manifest that is a link is refused by name, before anything is read: exit 2, quickly, and no size or
/// digest of the link's target in the message.
#[cfg(unix)]
#[test]
fn links_and_special_files_in_a_bundle_are_refused_by_name() {
    const SHARD: &str = "unet-00001-of-00002.safetensors";
    let refused = |bundle: &std::path::Path, what: &str| {
        let start = std::time::Instant::now();
        let (code, stderr) = generate_from(bundle, &[]);
        assert_eq!(code, Some(2), "{stderr}");
        assert!(stderr.contains(&format!("{SHARD}: {what}")), "{stderr}");
        assert!(start.elapsed().as_secs() < 15, "refusing took {:?}", start.elapsed());
        stderr
    };
    // (a) A link to a file outside the folder.
    let bundle = copied_tiny_bundle("link-outside");
    let secret = bundle.parent().unwrap().join("secret.bin");
    let secret_bytes: Vec<u8> = (0..12_345u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&secret, &secret_bytes).unwrap();
    std::fs::remove_file(bundle.join(SHARD)).unwrap();
    std::os::unix::fs::symlink(&secret, bundle.join(SHARD)).unwrap();
    let stderr = refused(&bundle, "is a symbolic link (bundle files must be regular files inside the bundle folder)");
    let digest = control_clip::bundle::sha256_hex(&secret_bytes);
    assert!(!stderr.contains("12345") && !stderr.contains(&digest) && !stderr.contains("sha256"), "the message tells about the outside file: {stderr}");
    // Even a link to a good copy of the file inside the folder is refused (the rule is by name).
    std::fs::remove_file(bundle.join(SHARD)).unwrap();
    std::fs::copy(fixtures().join("bundles/tiny-random").join(SHARD), bundle.join("copy.safetensors")).unwrap();
    std::os::unix::fs::symlink("copy.safetensors", bundle.join(SHARD)).unwrap();
    refused(&bundle, "is a symbolic link");
    // (b) A link to /dev/zero, with the manifest's size set to 0 (the old size check passed it, then the
    // read never ended).
    std::fs::remove_file(bundle.join(SHARD)).unwrap();
    std::os::unix::fs::symlink("/dev/zero", bundle.join(SHARD)).unwrap();
    let text = std::fs::read_to_string(bundle.join("manifest.json")).unwrap();
    let mut manifest: serde_json::Value = serde_json::from_str(&text).unwrap();
    manifest["components"]["unet"]["shards"][0]["bytes"] = 0.into();
    std::fs::write(bundle.join("manifest.json"), manifest.to_string()).unwrap();
    refused(&bundle, "is a symbolic link");
    // (c) A FIFO: refused without opening it (opening one for reading waits for a writer).
    std::fs::remove_file(bundle.join(SHARD)).unwrap();
    assert!(std::process::Command::new("mkfifo").arg(bundle.join(SHARD)).status().unwrap().success());
    refused(&bundle, "is not a regular file (a FIFO)");
    // The manifest itself: a link is refused too.
    std::fs::write(bundle.join("real-manifest.json"), &text).unwrap();
    std::fs::remove_file(bundle.join("manifest.json")).unwrap();
    std::os::unix::fs::symlink("real-manifest.json", bundle.join("manifest.json")).unwrap();
    let (code, stderr) = generate_from(&bundle, &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("manifest.json: is a symbolic link"), "{stderr}");
}

/// (d) `generate --init-latents` and `check --io` name files the user chose: a link is followed, but what
/// it opens must be a regular file; /dev/zero and a FIFO are refused by name (exit 2), without hanging.
#[cfg(unix)]
#[test]
fn user_named_special_files_are_refused_by_name() {
    let dir = crate::common::tempdir("user-special");
    let fifo = dir.join("latents.safetensors");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let zero_link = dir.join("zero.safetensors");
    std::os::unix::fs::symlink("/dev/zero", &zero_link).unwrap();
    let bundle = fixtures().join("bundles/tiny-random");
    for (path, what) in [(std::path::Path::new("/dev/zero"), "(a device)"), (&zero_link, "(a device)"), (&fifo, "(a FIFO)")] {
        let (code, stderr) = generate_from(&bundle, &["--init-latents", path.to_str().unwrap()]);
        assert_eq!(code, Some(2), "{stderr}");
        assert!(stderr.contains(&format!("{}: is not a regular file {what}", path.display())), "{stderr}");
        let model = fixtures().join("clip_text").join(MODEL);
        let (code, stderr) = cli_within(20, &["check".as_ref(), "text-encoder".as_ref(), "--backend".as_ref(), "cpu".as_ref(), "--model".as_ref(), model.as_os_str(), "--io".as_ref(), path.as_os_str()]);
        assert_eq!(code, Some(2), "{stderr}");
        assert!(stderr.contains(&format!("{}: is not a regular file {what}", path.display())), "{stderr}");
    }
}

/// A JSON key given twice in one object is refused by file and key path (issue 29, item 6): parsers
/// disagree on which one counts, so the file is not read either way. A manifest (through the CLI: exit 2),
/// a model config, a training config, domain.json and a labels.jsonl line.
#[cfg(unix)]
#[test]
fn duplicate_json_keys_are_refused_by_file_and_key() {
    let bundle = copied_tiny_bundle("duplicate-key");
    let manifest = bundle.join("manifest.json");
    let text = std::fs::read_to_string(&manifest).unwrap();
    // The decoder's config gives `scaling_factor` a second time, at its end.
    let at = text.find("\"decoder\"").unwrap();
    let config_end = at + text[at..].find("\"config\"").unwrap();
    let brace = config_end + text[config_end..].find('{').unwrap();
    std::fs::write(&manifest, format!("{}{{\"scaling_factor\": 0.5, {}", &text[..brace], &text[brace + 1..])).unwrap();
    let (code, stderr) = generate_from(&bundle, &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("manifest.json") && stderr.contains("components.decoder.config.scaling_factor") && stderr.contains("appears twice"), "{stderr}");

    let e = control_clip::config::ConfigJson::parse("unet/config.json", r#"{"in_channels": 4, "block_out_channels": [32, 64], "in_channels": 8}"#).unwrap_err().to_string();
    assert!(e.contains("unet/config.json") && e.contains("in_channels") && e.contains("appears twice"), "{e}");
    let e = control_clip::train::TrainConfig::parse("train.json", r#"{"lora": {"r": 4, "r": 8}}"#).unwrap_err().to_string();
    assert!(e.contains("train.json") && e.contains("lora.r") && e.contains("appears twice"), "{e}");
    let domain = r#"{"categories": ["a", "b"], "styles": ["x", "y"], "styles": ["p", "q"], "category_templates": ["{}"], "style_templates": ["{}"], "caption_templates": ["{category} {style}"], "general_prompts": ["p"]}"#;
    let e = control_clip::train::dataset::Domain::parse("domain.json", domain).unwrap_err().to_string();
    assert!(e.contains("domain.json") && e.contains("styles") && e.contains("appears twice"), "{e}");
    let d = control_clip::train::dataset::Domain::parse("domain.json", &domain.replace(r#""styles": ["p", "q"], "#, "")).unwrap();
    let e = control_clip::train::dataset::parse_labels("labels.jsonl", "{\"file\": \"a.png\", \"category\": \"a\", \"style\": \"x\"}\n{\"file\": \"b.png\", \"category\": \"b\", \"style\": \"y\", \"style\": \"x\"}", &d).unwrap_err().to_string();
    assert!(e.contains("labels.jsonl:2") && e.contains("style") && e.contains("appears twice"), "{e}");
}

/// A thin picture within the pixel bound (1 × 16,777,216: 33 KB of PNG) is refused by name before the
/// CLIP preprocessing's shortest-edge resize would make 224 × 3.8 billion pixels of it (6.4 GB: the
/// process aborted), through `control-clip finetune` (exit 2, quickly; issue 29, item 2).
#[cfg(unix)]
#[test]
fn a_picture_too_thin_to_preprocess_is_refused_by_name() {
    let data = crate::common::tempdir("thin-picture");
    let src = fixtures().join("finetune/shapes/train");
    for entry in std::fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), data.join(entry.file_name())).unwrap();
    }
    let labels = std::fs::read_to_string(data.join("labels.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(labels.lines().next().unwrap()).unwrap();
    let name = first["file"].as_str().unwrap().to_string();
    let mut png_bytes = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut png_bytes, 1, 1 << 24);
        encoder.set_color(png::ColorType::Grayscale);
        encoder.set_compression(png::Compression::Fast);
        let mut writer = encoder.write_header().unwrap();
        writer.write_image_data(&vec![200u8; 1 << 24]).unwrap();
    }
    std::fs::write(data.join(&name), &png_bytes).unwrap();
    let out = crate::common::tempdir("thin-picture-out");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let args: Vec<std::ffi::OsString> = vec![
        "finetune".into(),
        "--base".into(),
        root.join("tools/shapes/model/pipeline").into(),
        "--clip".into(),
        root.join("tools/shapes/model/clip").into(),
        "--data".into(),
        data.clone().into(),
        "--out".into(),
        out.into(),
    ];
    let (code, stderr) = cli_within(30, &args.iter().map(|a| a.as_os_str()).collect::<Vec<_>>());
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains(&name) && stderr.contains("1 × 16777216") && stderr.contains("aspect ratio"), "{stderr}");
}

/// A manifest over 4 MiB is refused from its size before it is read or parsed (parsing took some 30 times
/// a manifest's size in memory: 1.9 GB for 58 MB), and a manifest declaring a tokenizer over the 64 MiB
/// small-file bound is refused at parse time by field (issue 29, item 2): through the CLI, exit 2.
#[cfg(unix)]
#[test]
fn over_large_manifests_and_tokenizers_are_refused_before_reading() {
    let bundle = copied_tiny_bundle("huge-manifest");
    let manifest = bundle.join("manifest.json");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let start = std::time::Instant::now();
    // A sparse tail of spaces would still be valid JSON; the size alone refuses it.
    std::fs::write(&manifest, format!("{text}{}", " ".repeat(5 << 20))).unwrap();
    let (code, stderr) = generate_from(&bundle, &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("manifest.json") && stderr.contains("over the 4194304-byte limit"), "{stderr}");
    let mut m: serde_json::Value = serde_json::from_str(&text).unwrap();
    m["components"]["tokenizer"]["bytes"] = (300u64 * 1000 * 1000).into();
    std::fs::write(&manifest, m.to_string()).unwrap();
    let (code, stderr) = generate_from(&bundle, &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("components.tokenizer.bytes") && stderr.contains("more than a tokenizer file may hold"), "{stderr}");
    assert!(start.elapsed().as_secs() < 10, "refusing took {:?}", start.elapsed());
    let e = control_clip::bundle::Manifest::parse("page", &format!("{text}{}", " ".repeat(5 << 20))).unwrap_err().to_string();
    assert!(e.contains("page/manifest.json") && e.contains("4194304-byte limit"), "{e}");
}

/// DPM-Solver++ at 999 or 1000 steps of a `leading` schedule with `steps_offset` 1 (timestep 1000, or
/// timestep 1 a thousand times) is refused as a step count, as DDIM refuses it, instead of ending in
/// "latents became non-finite"; a `steps_offset` that leaves no room below `num_train_timesteps` is
/// refused by file and field (issue 29, item 6).
#[test]
fn unrunnable_step_counts_and_offsets_are_refused_by_name() {
    use control_clip::schedulers::{SchedulerConfig, SchedulerKind, build};
    let text = |offset: usize| {
        format!(r#"{{"_class_name": "DPMSolverMultistepScheduler", "num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "timestep_spacing": "leading", "steps_offset": {offset}}}"#)
    };
    let cfg = SchedulerConfig::parse("scheduler/scheduler_config.json", &text(1)).unwrap();
    // DDIM's `leading` spacing divides by n (999 steps end at timestep 999), DPM-Solver's by n + 1.
    for (kind, refused) in [(SchedulerKind::DpmPp2m, vec![999, 1000]), (SchedulerKind::Ddim, vec![1000])] {
        let mut s = build(kind, &cfg).unwrap();
        s.set_timesteps(998).unwrap();
        for n in refused {
            let e = s.set_timesteps(n).err().unwrap_or_else(|| panic!("{kind} at {n} steps ran")).to_string();
            assert!(e.contains("num_inference_steps") && e.contains(&format!("{n} steps")), "{kind} {n}: {e}");
        }
    }
    let bad = SchedulerConfig::parse("scheduler/scheduler_config.json", &text(5000)).unwrap();
    for kind in [SchedulerKind::DpmPp2m, SchedulerKind::Ddim, SchedulerKind::EulerAncestral] {
        let e = build(kind, &bad).err().unwrap().to_string();
        assert!(e.contains("scheduler/scheduler_config.json") && e.contains("steps_offset") && e.contains("5000"), "{kind}: {e}");
    }
}

/// A tokenizer whose ids do not fit the text encoder's vocabulary is refused when the pipeline is built,
/// naming both (issue 29, item 6: such a token used to fail mid-generation as "token id 49406 is outside
/// the vocabulary" with no file named).
#[test]
fn a_tokenizer_larger_than_the_text_encoders_vocabulary_is_refused_by_name() {
    let f = fixtures();
    let device = burn::tensor::Device::flex();
    let scheduler = crate::common::tempdir("tokenizer-fit").join("scheduler_config.json");
    std::fs::write(&scheduler, r#"{"_class_name": "DDIMScheduler"}"#).unwrap();
    let e = control_clip::pipeline::Pipeline::from_dirs(
        &f.join("tokenizer.json"),
        &f.join("clip_text/proj-gelu"),
        &f.join("unet/sd-tiny"),
        &f.join("vae/kl-tiny"),
        &scheduler,
        &device,
    )
    .err()
    .expect("a 49,408-token tokenizer on a 1,000-token text encoder loaded")
    .to_string();
    assert!(e.contains("tokenizer.json") && e.contains("49407") && e.contains("vocabulary of 1000") && e.contains("vocab_size"), "{e}");
}

/// Recommended settings of the wrong type (Python's NaN written as a string for `guidance`) are refused
/// naming the manifest and its `defaults` (issue 29, item 6; serde's own message named neither).
#[test]
fn malformed_recommended_settings_name_the_manifests_defaults() {
    let text = std::fs::read_to_string(fixtures().join("bundles/tiny-random/manifest.json")).unwrap();
    let mut m: serde_json::Value = serde_json::from_str(&text).unwrap();
    m["defaults"]["guidance"] = "NaN".into();
    let e = control_clip::bundle::Manifest::parse("bundle", &m.to_string()).unwrap_err().to_string();
    assert!(e.contains("bundle/manifest.json") && e.contains("defaults") && e.contains("NaN"), "{e}");
}

/// A prompt's control characters (a terminal escape sequence) are escaped in the truncation notice the
/// CLI prints, never written raw (issue 29, item 6).
#[test]
fn control_characters_of_a_prompt_are_not_echoed_raw() {
    let tokenizer = control_clip::ClipTokenizer::from_bytes("tokenizer.json", &std::fs::read(fixtures().join("tokenizer.json")).unwrap()).unwrap();
    let prompt = "a cat \u{1b}[31mred\u{7} ".repeat(40);
    let notice = tokenizer.encode(&prompt, control_clip::MAX_POSITIONS).unwrap().truncation_notice().expect("a prompt of 40 repeats is truncated");
    assert!(!notice.chars().any(|c| c.is_control()), "{notice:?}");
    assert!(notice.contains("\\u{1b}"), "{notice}");
}
