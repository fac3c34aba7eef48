//! `control-clip finetune` and `control-clip eval` from the command line: finetune → bundle → generate on the
//! default model's components and the small shapes set, an interrupted run resumed bit for bit, and a clear
//! message (file and line) for every bad dataset input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::{fixtures, tempdir};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn cli() -> Command {
    Command::new(env!("CARGO_BIN_EXE_control-clip"))
}

/// A training config a test can afford (seconds).
fn small_config(dir: &Path, steps: usize) -> PathBuf {
    write_config(dir, serde_json::json!({"steps": steps, "batch": 8, "triplets": 2, "keep_prompts": 2, "lr": 3e-3,
        "adapter_dim": 16, "lora": {"r": 2, "lora_alpha": 4}, "seed": 3, "checkpoint_every": 2}))
}

/// The same in full mode (every weight of f_c and f_s trains).
fn full_config(dir: &Path, steps: usize) -> PathBuf {
    write_config(dir, serde_json::json!({"encoders": "full", "steps": steps, "batch": 8, "triplets": 2, "keep_prompts": 2,
        "lr": 1e-4, "adapter_dim": 16, "seed": 3, "checkpoint_every": 2}))
}

fn write_config(dir: &Path, cfg: serde_json::Value) -> PathBuf {
    let path = dir.join("train.json");
    std::fs::write(&path, cfg.to_string()).unwrap();
    path
}

fn finetune(data: &Path, config: &Path, out: &Path, resume: bool) -> Output {
    let clip = repo().join("tools/shapes/model/clip");
    let mut c = cli();
    c.arg("finetune").arg("--base").arg(repo().join("www/models/default")).arg("--clip").arg(&clip).arg("--data").arg(data).arg("--config").arg(config).arg("--out").arg(out);
    if resume {
        c.arg("--resume");
    }
    c.output().unwrap()
}

fn ok(out: &Output, what: &str) {
    assert!(out.status.success(), "{what} failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn finetune_then_bundle_then_generate_and_eval() {
    let dir = tempdir("finetune-e2e");
    let encoders = ["adapter_config.json", "adapter_model.safetensors"];
    end_to_end(&dir, &small_config(&dir, 4), 4, encoders);
}

/// Full mode writes f_c and f_s as CLIPTextModel folders, which `bundle` and `eval` take as they are.
#[test]
fn full_mode_finetune_then_bundle_then_generate_and_eval() {
    let dir = tempdir("finetune-e2e-full");
    end_to_end(&dir, &full_config(&dir, 2), 2, ["config.json", "model.safetensors"]);
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("encoders/style_encoder/config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"][0], "CLIPTextModel");
}

fn end_to_end(dir: &Path, config: &Path, steps: usize, encoder_files: [&str; 2]) {
    let out = dir.join("encoders");
    ok(&finetune(&fixtures().join("finetune/shapes/train"), config, &out, false), "finetune");
    let mut expected: Vec<String> = ["category_encoder", "style_encoder"].iter().flat_map(|e| encoder_files.map(|f| format!("{e}/{f}"))).collect();
    expected.extend(["adapter/config.json".into(), "adapter/model.safetensors".into()]);
    for f in expected {
        assert!(out.join(&f).exists(), "finetune did not write {f}");
    }
    let log = std::fs::read_to_string(out.join("log.jsonl")).unwrap();
    assert_eq!(log.lines().count(), steps, "{log}");
    assert!(log.lines().all(|l| ["cat", "sty", "dec", "trip", "keep_c", "keep_s", "total"].iter().all(|k| l.contains(&format!("\"{k}\"")))), "{log}");

    let m = repo().join("tools/shapes/model");
    let bundle = dir.join("bundle");
    let status = cli()
        .arg("bundle")
        .arg("--tokenizer").arg(m.join("clip/tokenizer.json"))
        .arg("--text-encoder").arg(m.join("pipeline/text_encoder"))
        .arg("--unet").arg(m.join("pipeline/unet"))
        .arg("--decoder").arg(m.join("pipeline/vae"))
        .arg("--scheduler-config").arg(m.join("pipeline/scheduler/scheduler_config.json"))
        .arg("--category-encoder").arg(out.join("category_encoder"))
        .arg("--style-encoder").arg(out.join("style_encoder"))
        .arg("--adapter").arg(out.join("adapter"))
        .args(["--width", "128", "--height", "128", "--steps", "2", "--out"])
        .arg(&bundle)
        .output()
        .unwrap();
    ok(&status, "bundle");
    let png = dir.join("star.png");
    let status = cli()
        .arg("generate").arg("--bundle").arg(&bundle)
        .args(["--prompt", "a red star in striped style", "--style-weight", "1", "--steps", "2", "--backend", "cpu", "--out"])
        .arg(&png)
        .output()
        .unwrap();
    ok(&status, "generate");
    assert!(std::fs::metadata(&png).unwrap().len() > 1000);

    let status = cli()
        .arg("eval").arg("--base").arg(repo().join("www/models/default")).arg("--clip").arg(m.join("clip"))
        .arg("--encoders").arg(&out).arg("--data").arg(fixtures().join("finetune/shapes/heldout"))
        .output()
        .unwrap();
    ok(&status, "eval");
    let text = String::from_utf8_lossy(&status.stdout);
    println!("{text}");
    let report: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(report["pictures"], 24);
    assert!(text.contains("| A∘f_s (style) |") && text.contains("Decoupling"), "{text}");
}

/// 4 steps at once, and 2 steps then `--resume` to 4: the same weights, byte for byte, and the same log.
#[test]
fn resumed_run_ends_bit_identical() {
    let data = fixtures().join("finetune/shapes/train");
    let dir = tempdir("finetune-resume");
    let whole = dir.join("whole");
    ok(&finetune(&data, &small_config(&dir, 4), &whole, false), "the whole run");
    let parts = dir.join("parts");
    ok(&finetune(&data, &small_config(&dir, 2), &parts, false), "the first half");
    ok(&finetune(&data, &small_config(&dir, 4), &parts, true), "the resumed half");
    for f in ["category_encoder/adapter_model.safetensors", "style_encoder/adapter_model.safetensors", "adapter/model.safetensors", "log.jsonl"] {
        let (a, b) = (std::fs::read(whole.join(f)).unwrap(), std::fs::read(parts.join(f)).unwrap());
        assert!(a == b, "{f} differs between the whole and the resumed run");
    }
}

/// A copy of the small training set with `labels.jsonl` / `domain.json` replaced where given.
fn broken_set(tag: &str, labels: Option<&str>, domain: Option<serde_json::Value>) -> PathBuf {
    let src = fixtures().join("finetune/shapes/train");
    let dir = tempdir(tag);
    for entry in std::fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    if let Some(labels) = labels {
        std::fs::write(dir.join("labels.jsonl"), labels).unwrap();
    }
    if let Some(domain) = domain {
        std::fs::write(dir.join("domain.json"), domain.to_string()).unwrap();
    }
    dir
}

fn fails_naming(data: &Path, needles: &[&str]) {
    let out = finetune(data, &small_config(data, 1), &data.join("out"), false);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for n in needles {
        assert!(stderr.contains(n), "expected `{n}` in: {stderr}");
    }
}

#[test]
fn every_bad_dataset_input_names_its_file_and_line() {
    let labels = std::fs::read_to_string(fixtures().join("finetune/shapes/train/labels.jsonl")).unwrap();
    let with_line_2 = |line: &str| {
        let mut lines: Vec<&str> = labels.lines().collect();
        lines[1] = line;
        lines.join("\n")
    };
    let domain: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixtures().join("finetune/shapes/train/domain.json")).unwrap()).unwrap();

    let d = broken_set("bad-missing", Some(&with_line_2(r#"{"file": "nowhere.png", "category": "star", "style": "flat"}"#)), None);
    fails_naming(&d, &["labels.jsonl:2", "nowhere.png"]);
    let d2 = broken_set("bad-unreadable", None, None);
    std::fs::write(d2.join("000.png"), b"not a picture").unwrap();
    fails_naming(&d2, &["000.png", "neither a PNG nor a JPEG"]);
    let d = broken_set("bad-label", Some(&with_line_2(r#"{"file": "001.png", "category": "cube"}"#)), None);
    fails_naming(&d, &["labels.jsonl:2", "unknown category `cube`"]);
    let d = broken_set("bad-json", Some(&with_line_2(r#"{"file": "001.png", "category": "#)), None);
    fails_naming(&d, &["labels.jsonl:2", "not a JSON object"]);
    let only_circles: String = labels.lines().map(|l| l.replace("\"square\"", "\"circle\"")).collect::<Vec<_>>().join("\n");
    let d = broken_set("bad-empty-class", Some(&only_circles), None);
    fails_naming(&d, &["labels.jsonl", "no picture is labelled with the category `square`"]);

    let mut empty_templates = domain.clone();
    empty_templates["style_templates"] = serde_json::json!([]);
    let d = broken_set("bad-templates", None, Some(empty_templates));
    fails_naming(&d, &["domain.json", "style_templates", "at least 1"]);
    let mut long_prompt = domain.clone();
    long_prompt["general_prompts"] = serde_json::json!([vec!["star"; 90].join(" ")]);
    let d = broken_set("bad-long", None, Some(long_prompt));
    fails_naming(&d, &["domain.json", "general_prompts", "longer than 77 tokens"]);
}
