//! `control-clip check text-encoder`: exit 0 on every fixture, 1 on a perturbed reference, 2 on a broken folder.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::fixtures;
use control_clip::weights::serialize;
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

fn tempdir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("control-clip-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
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
