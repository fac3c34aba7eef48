//! `control-clip generate`: from the pipeline fixture's latents the PNG equals diffusers' image (within
//! 2/255 after both are rounded to 8 bits: 1 for the rounding, 1 for the float differences); a failed
//! run leaves no file behind.

use std::path::Path;
use std::process::{Command, Output};

use crate::common::{cli_with_fixture_components, fixtures, tempdir};
use control_clip::SafeTensors;

fn generate(out: &Path, extra: &[&str]) -> Output {
    cli_with_fixture_components("generate")
        .args(["--prompt", "a cat in Pokemon style", "--negative-prompt", "blurry, low quality"])
        .args(["--steps", "2", "--guidance", "7.5", "--width", "64", "--height", "64", "--backend", "cpu"])
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
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
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
