//! `control-clip generate`: from the pipeline fixture's latents the PNG equals diffusers' image (within
//! 2/255 after both are rounded to 8 bits: 1 for the rounding, 1 for the float differences); a failed
//! run leaves no file behind; without flags a bundle's recommended settings are used, a flag wins over
//! them and a batch line's weights over both.

use std::path::Path;
use std::process::{Command, Output};

use crate::common::{cli_with_fixture_components, fixtures, tempdir};
use control_clip::SafeTensors;

fn generate(out: &Path, extra: &[&str]) -> Output {
    generate_on("cpu", out, extra)
}

fn generate_on(backend: &str, out: &Path, extra: &[&str]) -> Output {
    cli_with_fixture_components("generate")
        .args(["--prompt", "a cat in Pokemon style", "--negative-prompt", "blurry, low quality"])
        .args(["--steps", "2", "--guidance", "7.5", "--width", "64", "--height", "64", "--backend", backend])
        .args(extra)
        .arg("--out").arg(out)
        .output()
        .unwrap()
}


/// The worst difference, in 8-bit levels, between a PNG and a reference image in [0, 1] ([3, 64, 64]).
fn worst_png_difference(png_path: &Path, expected: &[f32]) -> i32 {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(png_path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut rgba = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut rgba).unwrap();
    assert_eq!((info.width, info.height), (64, 64));
    let hw = 64 * 64;
    let mut worst = 0i32;
    for c in 0..3 {
        for p in 0..hw {
            let want = (expected[c * hw + p] * 255.0).round() as i32;
            worst = worst.max((rgba[p * 4 + c] as i32 - want).abs());
        }
    }
    worst
}

#[test]
fn png_from_fixture_latents_matches_diffusers() {
    let tmp = tempdir("parity");
    let out = tmp.join("cat.png");
    let latents = fixtures().join("pipeline/ddim-2-steps/io.safetensors");
    let result = generate(&out, &["--init-latents", latents.to_str().unwrap()]);
    assert_eq!(result.status.code(), Some(0), "{}", String::from_utf8_lossy(&result.stderr));
    assert!(String::from_utf8_lossy(&result.stderr).contains("step 2/2"));
    let (_, expected) = SafeTensors::read(&latents).unwrap().f32("image").unwrap();
    let worst = worst_png_difference(&out, &expected);
    println!("generate vs diffusers: worst pixel difference {worst}/255");
    assert!(worst <= 2, "worst pixel difference {worst}/255");
    assert!(std::fs::read_dir(&tmp).unwrap().count() == 1, "temporary files were left behind");
}

#[test]
fn png_with_control_encoders_and_weights_matches_the_reference() {
    let tmp = tempdir("control");
    let out = tmp.join("cat.png");
    let f = fixtures();
    let dir = f.join("control/pipeline/ddim-2-steps-control");
    let path = |p: &str| f.join(p).to_str().unwrap().to_string();
    let result = generate(&out, &[
        "--init-latents", dir.join("io.safetensors").to_str().unwrap(),
        "--category-encoder", &path("control/encoders/category_lora"),
        "--style-encoder", &path("control/encoders/style_full"),
        "--adapter", &path("control/encoders/adapter"),
        "--category-weight", "0.7", "--style-weight", "0.9",
    ]);
    assert_eq!(result.status.code(), Some(0), "{}", String::from_utf8_lossy(&result.stderr));
    let (_, expected) = SafeTensors::read(&dir.join("io.safetensors")).unwrap().f32("image").unwrap();
    let worst = worst_png_difference(&out, &expected);
    println!("generate with control vs the reference: worst pixel difference {worst}/255");
    assert!(worst <= 2, "worst pixel difference {worst}/255");

    let bad = generate(&tmp.join("nan.png"), &["--style-weight", "NaN"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("style weight"), "{}", String::from_utf8_lossy(&bad.stderr));
}

#[test]
fn a_failed_run_writes_nothing() {
    let tmp = tempdir("fail");
    let out = tmp.join("bad.png");
    let result = generate(&out, &["--scheduler", "warp-drive"]);
    assert_eq!(result.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(stderr.contains("warp-drive"), "{stderr}");
    // f16 asked of the CPU backend (`generate` runs it) is refused by name, before any weights are read.
    for (precision, message) in [("f16", "the CPU backend computes in f32 only"), ("f12", "unknown precision `f12`")] {
        let result = generate(&out, &["--precision", precision]);
        assert_eq!(result.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert!(stderr.contains(message), "{stderr}");
    }
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
}

/// `--precision f16` on the wgpu device (lavapipe has SHADER_F16): the PNG against diffusers' fp16
/// pipeline from the same latents (tests/fixtures/fp16), within 3/255 after rounding: 1 for the
/// rounding, 2 for the two fp16 implementations (precision_f16.rs says why they differ).
#[test]
fn png_in_f16_on_the_gpu_matches_diffusers_fp16() {
    let device = crate::common::block_on(control_clip::init_device(control_clip::BackendKind::Wgpu)).unwrap();
    if !control_clip::device::f16_available(&device) {
        println!("generate --precision f16: skipped, this wgpu device has no SHADER_F16");
        return;
    }
    let tmp = tempdir("f16");
    let out = tmp.join("cat.png");
    let io = fixtures().join("fp16/pipeline-ddim-2-steps/io.safetensors");
    let result = generate_on("wgpu", &out, &["--init-latents", io.to_str().unwrap(), "--precision", "f16"]);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("compute: wgpu, f16"), "{stderr}");
    let (_, expected) = SafeTensors::read(&io).unwrap().f32("image").unwrap();
    let worst = worst_png_difference(&out, &expected);
    println!("generate --precision f16 vs diffusers fp16: worst pixel difference {worst}/255");
    assert!(worst <= 3, "worst pixel difference {worst}/255");
}

/// `--batch`: every line's picture is written (relative to the batch file), each the picture the single
/// command makes with the same settings; a bad line is refused by file and line before anything is made.
#[test]
fn batch_generates_every_line_and_names_a_bad_line() {
    let tmp = tempdir("batch");
    let bundle = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bundles/tiny-random");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_control-clip"))
            .arg("generate").arg("--bundle").arg(&bundle)
            .args(["--steps", "2", "--width", "64", "--height", "64", "--backend", "cpu"])
            .args(args)
            .output()
            .unwrap()
    };
    let batch = tmp.join("batch.jsonl");
    std::fs::write(&batch, concat!(
        r#"{"prompt": "a cat", "seed": 3, "out": "one.png"}"#, "\n\n",
        r#"{"prompt": "a dog", "seed": 4, "out": "two.png", "style_weight": 0.5}"#, "\n",
    )).unwrap();
    let out = run(&["--batch", batch.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let single = tmp.join("single.png");
    let out = run(&["--prompt", "a dog", "--seed", "4", "--style-weight", "0.5", "--out", single.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(tmp.join("one.png").exists());
    assert_eq!(std::fs::read(tmp.join("two.png")).unwrap(), std::fs::read(&single).unwrap());

    for (line, want) in [
        (r#"{"prompt": "a cat", "seed": 1}"#, "missing field `out`"),
        (r#"{"prompt": "a cat", "seed": 1, "out": "x.jpg"}"#, "must end in .png"),
        (r#"{"prompt": "a cat", "seed": 1, "out": "x.png", "style_weight": "high"}"#, "invalid type"),
        (r#"{"prompt": "a cat", "seed": 1, "out": "x.png", "colour": "red"}"#, "unknown field `colour`"),
    ] {
        let bad = tmp.join("bad.jsonl");
        std::fs::write(&bad, format!("{}\n{line}\n", r#"{"prompt": "fine", "seed": 1, "out": "fine.png"}"#)).unwrap();
        let out = run(&["--batch", bad.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("bad.jsonl, line 2") && stderr.contains(want), "{stderr}");
        assert!(!tmp.join("fine.png").exists(), "nothing is generated before every line is read");
    }
}

/// A copy of the tiny-random fixture bundle whose manifest's `defaults` are `defaults` (the manifest lists
/// the other files' sha256, not its own, so it can be edited).
fn bundle_with_defaults(tag: &str, defaults: serde_json::Value) -> std::path::PathBuf {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bundles/tiny-random");
    let dir = tempdir(tag).join("bundle");
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(&from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    let path = dir.join("manifest.json");
    let mut manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    manifest["defaults"] = defaults;
    std::fs::write(&path, serde_json::to_string_pretty(&manifest).unwrap()).unwrap();
    dir
}

/// `control-clip generate --bundle DIR --backend cpu ARGS…`; stderr, checked for success.
fn generate_from_bundle(bundle: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_control-clip"))
        .arg("generate").arg("--bundle").arg(bundle)
        .args(["--backend", "cpu"])
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    stderr
}

fn png_size(path: &Path) -> (u32, u32) {
    let reader = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap())).read_info().unwrap();
    (reader.info().width, reader.info().height)
}

/// Recommended settings unlike SD's in every field (sizes are multiples of the tiny bundle's factor, 64).
fn non_sd_defaults() -> serde_json::Value {
    serde_json::json!({"steps": 3, "guidance": 3.5, "width": 128, "height": 64, "category_weight": 0.9, "style_weight": 0.6})
}

/// Without flags the bundle's size, steps, guidance and weights are used (the picture is the one the same
/// values given as flags make) and said to come from the bundle; a flag wins over them; what the bundle does
/// not say is SD's.
#[test]
fn bundle_defaults_are_used_unless_a_flag_is_given() {
    let bundle = bundle_with_defaults("defaults", non_sd_defaults());
    let tmp = bundle.parent().unwrap();
    let prompt = ["--prompt", "a cat", "--seed", "2"];
    let plain = tmp.join("plain.png");
    let stderr = generate_from_bundle(&bundle, &[&prompt[..], &["--out", plain.to_str().unwrap()]].concat());
    assert!(stderr.contains("settings: width 128 (bundle), height 64 (bundle), steps 3 (bundle), guidance 3.5 (bundle), \
        category weight 0.9 (bundle), style weight 0.6 (bundle)"), "{stderr}");
    assert!(stderr.contains("step 3/3"), "{stderr}");
    assert_eq!(png_size(&plain), (128, 64));

    let flags = tmp.join("flags.png");
    let stderr = generate_from_bundle(&bundle, &[&prompt[..], &[
        "--width", "128", "--height", "64", "--steps", "3", "--guidance", "3.5", "--category-weight", "0.9",
        "--style-weight", "0.6", "--out", flags.to_str().unwrap(),
    ]].concat());
    assert!(stderr.contains("style weight 0.6 (--style-weight)"), "{stderr}");
    assert_eq!(std::fs::read(&plain).unwrap(), std::fs::read(&flags).unwrap(), "the bundle's defaults were not applied");

    let over = tmp.join("over.png");
    let stderr = generate_from_bundle(&bundle, &[&prompt[..], &["--width", "64", "--steps", "2", "--style-weight", "0", "--out", over.to_str().unwrap()]].concat());
    assert!(stderr.contains("settings: width 64 (--width), height 64 (bundle), steps 2 (--steps), guidance 3.5 (bundle), \
        category weight 0.9 (bundle), style weight 0 (--style-weight)"), "{stderr}");
    assert!(stderr.contains("step 2/2"), "{stderr}");
    assert_eq!(png_size(&over), (64, 64));

    let partial = bundle_with_defaults("partial-defaults", serde_json::json!({"steps": 2, "width": 64, "height": 64}));
    let out = partial.parent().unwrap().join("partial.png");
    let stderr = generate_from_bundle(&partial, &[&prompt[..], &["--out", out.to_str().unwrap()]].concat());
    assert!(stderr.contains("guidance 7.5 (built-in), category weight 1 (built-in), style weight 0 (built-in)"), "{stderr}");
}

/// `--batch`: a line's own weights win over the flags, and the flags over the bundle's defaults; each
/// picture is the one the single command makes with every setting given as a flag.
#[test]
fn batch_takes_line_then_flag_then_bundle_defaults() {
    let bundle = bundle_with_defaults("batch-defaults", non_sd_defaults());
    let tmp = bundle.parent().unwrap();
    let batch = tmp.join("batch.jsonl");
    std::fs::write(&batch, concat!(
        r#"{"prompt": "a cat", "seed": 3, "out": "one.png"}"#, "\n",
        r#"{"prompt": "a dog", "seed": 4, "out": "two.png", "style_weight": 0.2}"#, "\n",
    )).unwrap();
    let stderr = generate_from_bundle(&bundle, &["--batch", batch.to_str().unwrap(), "--category-weight", "0.5", "--width", "64"]);
    assert!(stderr.contains("settings: width 64 (--width), height 64 (bundle), steps 3 (bundle), guidance 3.5 (bundle), \
        category weight 0.5 (--category-weight), style weight 0.6 (bundle); 1 of 2 batch lines set their own weights"), "{stderr}");
    for (name, prompt, seed, style) in [("one", "a cat", "3", "0.6"), ("two", "a dog", "4", "0.2")] {
        let single = tmp.join(format!("{name}-single.png"));
        generate_from_bundle(&bundle, &[
            "--prompt", prompt, "--seed", seed, "--width", "64", "--height", "64", "--steps", "3", "--guidance", "3.5",
            "--category-weight", "0.5", "--style-weight", style, "--out", single.to_str().unwrap(),
        ]);
        let batched = tmp.join(format!("{name}.png"));
        assert_eq!(png_size(&batched), (64, 64));
        assert_eq!(std::fs::read(&batched).unwrap(), std::fs::read(&single).unwrap(), "{name}.png");
    }
}
