//! `control-clip check`: exit 0 on every fixture, 1 on a perturbed reference, 2 on a broken folder or io file.

use std::path::Path;
use std::process::{Command, Output};

use crate::common::{fixtures, tempdir};
use control_clip::weights::{serialize, serialize_with_metadata};
use control_clip::SafeTensors;

fn check(model: &Path, io: &Path, backend: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_control-clip"))
        .args(["check", "text-encoder", "--model"])
        .arg(model)
        .arg("--io")
        .arg(io)
        .args(["--backend", backend])
        .output()
        .unwrap()
}

fn report(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn passes_on_every_fixture() {
    // Every fixture on the CPU backend, and one on wgpu to prove the flag: the parity tests already cover
    // every fixture on both backends, and each wgpu process spends ~20 s compiling kernels on lavapipe.
    let runs = [("sd-mini-f16", "cpu"), ("proj-gelu", "cpu"), ("deep-gelu-new-noprefix", "cpu"), ("sd-mini-f16", "wgpu")];
    for (name, backend) in runs {
        let dir = fixtures().join("clip_text").join(name);
        {
            let out = check(&dir, &dir.join("io.safetensors"), backend);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(0), "{name} {backend}: {stderr}");
            let r = report(&out);
            println!("{name} [{backend}]: {r}");
            assert_eq!(r["component"], "text-encoder");
            assert_eq!(r["pass"], true);
            assert!(r["max_abs_err"].as_f64().unwrap() <= 1e-4);
        }
    }
}

#[test]
fn fails_on_a_perturbed_reference() {
    let dir = fixtures().join("clip_text").join("proj-gelu");
    let io = SafeTensors::read(&dir.join("io.safetensors")).unwrap();
    let mut tensors = io.raw_tensors();
    let t = tensors.iter_mut().find(|t| t.name == "pooler_output").unwrap();
    let v = f32::from_le_bytes(t.bytes[..4].try_into().unwrap()) + 0.01;
    t.bytes[..4].copy_from_slice(&v.to_le_bytes());
    let tmp = tempdir("perturbed");
    let path = tmp.join("io.safetensors");
    std::fs::write(&path, serialize(&tensors)).unwrap();
    let out = check(&dir, &path, "cpu");
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let r = report(&out);
    assert_eq!(r["pass"], false);
    assert!((r["max_abs_err"].as_f64().unwrap() - 0.01).abs() < 1e-3, "{r}");
}

#[test]
fn exits_2_with_a_message_on_a_broken_folder() {
    let good = fixtures().join("clip_text").join("proj-gelu");
    let tmp = tempdir("broken");
    std::fs::write(tmp.join("config.json"), std::fs::read(good.join("config.json")).unwrap()).unwrap();
    let weights = std::fs::read(good.join("model.safetensors")).unwrap();
    std::fs::write(tmp.join("model.safetensors"), &weights[..weights.len() - 100]).unwrap();
    let out = check(&tmp, &good.join("io.safetensors"), "cpu");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("model.safetensors") && stderr.contains("truncated"), "{stderr}");

    let out = check(&tmp.join("does-not-exist"), &good.join("io.safetensors"), "cpu");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("does-not-exist"), "{stderr}");
}


#[test]
fn tokenize_reports_truncation() {
    let prompt = vec!["red"; 80].join(" ");
    let out = Command::new(env!("CARGO_BIN_EXE_control-clip"))
        .args(["tokenize", "--tokenizer"])
        .arg(fixtures().join("tokenizer.json"))
        .args(["--prompt", &prompt])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let r = report(&out);
    assert_eq!(r["ids"].as_array().unwrap().len(), 77);
    assert_eq!(r["dropped_tokens"], 5);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("5 token(s) were dropped"), "{stderr}");
}

fn check_component(component: &str, model: &Path, io: &Path, tolerance: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_control-clip"))
        .args(["check", component, "--backend", "cpu", "--tolerance", tolerance, "--model"])
        .arg(model)
        .arg("--io")
        .arg(io)
        .output()
        .unwrap()
}

#[test]
fn control_checks_pass_on_their_fixtures_and_fail_on_a_perturbed_one() {
    let f = fixtures();
    let unet = f.join("unet/sd-tiny");
    let layer = f.join("control/cross_attention/h2-d8");
    let runs = [
        ("control-unet", unet.clone(), f.join("control/unet/sd-tiny/io_2.safetensors"), "1e-3"),
        ("control-identity", unet.clone(), unet.join("io.safetensors"), "1e-5"),
        ("cross-attention", layer.clone(), layer.join("io.safetensors"), "1e-4"),
    ];
    for (component, model, io, tolerance) in &runs {
        let out = check_component(component, model, io, tolerance);
        assert_eq!(out.status.code(), Some(0), "{component}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(report(&out)["component"], *component);
    }
    // The layer's reference moved by 0.01 is a failure (exit 1) that reports the move.
    let io = SafeTensors::read(&layer.join("io.safetensors")).unwrap();
    let mut tensors = io.raw_tensors();
    let out = tensors.iter_mut().find(|t| t.name == "out").unwrap();
    let (shape, mut values) = io.f32("out").unwrap();
    values[5] += 0.01;
    *out = control_clip::weights::RawTensor::f32("out", shape, &values);
    let perturbed = std::env::temp_dir().join(format!("control-clip-perturbed-layer-{}.safetensors", std::process::id()));
    std::fs::write(&perturbed, serialize(&tensors)).unwrap();
    let result = check_component("cross-attention", &layer, &perturbed, "1e-4");
    assert_eq!(result.status.code(), Some(1));
    assert!((report(&result)["max_abs_err"].as_f64().unwrap() - 0.01).abs() < 1e-4);
    // Weights missing from the io file: exit 2 naming the tensor.
    let result = check_component("control-unet", &unet, &unet.join("io.safetensors"), "1e-3");
    assert_eq!(result.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&result.stderr).contains("context_category"), "{}", String::from_utf8_lossy(&result.stderr));
}

/// The io the reference libraries hand a user, made from the committed reference fixtures by changing only
/// the container: diffusers' schedulers give the UNet int64 timesteps, and a `CLIPTextModelWithProjection`
/// returns `text_embeds` and `last_hidden_state` without `pooler_output`. Both are accepted, and the report
/// names what it compared.
#[test]
fn accepts_integer_timesteps_and_a_projection_models_outputs() {
    let f = fixtures();
    let tmp = tempdir("reference-io");

    let unet = f.join("unet/sd-tiny");
    let io = SafeTensors::read(&unet.join("io.safetensors")).unwrap();
    let (shape, t) = io.f32("timestep").unwrap();
    let mut tensors = io.raw_tensors();
    let timestep = tensors.iter_mut().find(|t| t.name == "timestep").unwrap();
    timestep.dtype = control_clip::weights::DType::I64;
    timestep.bytes = t.iter().flat_map(|&v| (v as i64).to_le_bytes()).collect();
    timestep.shape = shape;
    let path = tmp.join("unet-int-timestep.safetensors");
    std::fs::write(&path, serialize(&tensors)).unwrap();
    let out = check_component("unet", &unet, &path, "1e-4");
    assert_eq!(out.status.code(), Some(0), "int64 timestep: {}", String::from_utf8_lossy(&out.stderr));

    let text = f.join("clip_text/proj-gelu");
    let io = SafeTensors::read(&text.join("io.safetensors")).unwrap();
    let tensors: Vec<_> = io.raw_tensors().into_iter().filter(|t| t.name != "pooler_output").collect();
    let path = tmp.join("text-with-projection.safetensors");
    std::fs::write(&path, serialize(&tensors)).unwrap();
    let out = check_component("text-encoder", &text, &path, "1e-4");
    assert_eq!(out.status.code(), Some(0), "no pooler_output: {}", String::from_utf8_lossy(&out.stderr));
    let compared: Vec<String> =
        report(&out)["outputs"].as_array().unwrap().iter().map(|o| o["name"].as_str().unwrap().to_string()).collect();
    assert_eq!(compared, ["last_hidden_state", "text_embeds", "last_hidden_state_clip_skip_1"]);
}

/// `finetune-step` and `vision-encoder`: exit 0 on their fixtures, 1 when one expectation is moved, 2 on an
/// io file without the training config or cut short.
#[test]
fn finetune_step_and_vision_checks_exit_codes() {
    let dir = fixtures().join("finetune").join("gelu-eos-temperature");
    let (model, io_path) = (dir.join("model"), dir.join("io.safetensors"));
    let out = check_component("finetune-step", &model, &io_path, "1e-4");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(report(&out)["component"], "finetune-step");

    let io = SafeTensors::read(&io_path).unwrap();
    let config = io.metadata("config").unwrap().to_string();
    let mut tensors = io.raw_tensors();
    let t = tensors.iter_mut().find(|t| t.name == "grad.adapter.fc1.bias").unwrap();
    let v = f32::from_le_bytes(t.bytes[..4].try_into().unwrap()) + 0.01;
    t.bytes[..4].copy_from_slice(&v.to_le_bytes());
    let tmp = tempdir("perturbed-step");
    let perturbed = tmp.join("perturbed.safetensors");
    std::fs::write(&perturbed, serialize_with_metadata(&tensors, &[("config", config)])).unwrap();
    let out = check_component("finetune-step", &model, &perturbed, "1e-4");
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let r = report(&out);
    let moved = r["outputs"].as_array().unwrap().iter().find(|o| o["name"] == "grad.adapter.fc1.bias").unwrap();
    assert!(moved["max_abs_err"].as_f64().unwrap() > moved["limit"].as_f64().unwrap(), "{moved}");

    let no_config = tmp.join("no-config.safetensors");
    std::fs::write(&no_config, serialize(&io.raw_tensors())).unwrap();
    let out = check_component("finetune-step", &model, &no_config, "1e-4");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no-config.safetensors") && stderr.contains("config"), "{stderr}");
    let bytes = std::fs::read(&io_path).unwrap();
    let cut = tmp.join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let out = check_component("finetune-step", &model, &cut, "1e-4");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cut.safetensors") && stderr.contains("truncated"), "{stderr}");

    let vision = fixtures().join("clip_vision").join("clipmodel-patch6-gelu");
    let out = check_component("vision-encoder", &vision, &vision.join("io.safetensors"), "1e-4");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(report(&out)["outputs"].as_array().unwrap().len(), 3);
}
