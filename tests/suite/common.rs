//! Helpers shared by the integration tests: fixture paths, the backends, temp dirs, the NaN-aware
//! comparison (the library's own, `check::compare_values`) and the fixture pipelines.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use burn::tensor::Device;
use control_clip::control::{ControlEncoders, ControlWeights};
use control_clip::models::ModelFolder;
use control_clip::models::decoder::Decoder;
use control_clip::models::unet::UNet2DConditionModel;
use control_clip::pipeline::{GenerateRequest, Pipeline};
use control_clip::schedulers::SchedulerConfig;
use control_clip::{BackendKind, ClipTextModel, ClipTokenizer, SafeTensors};

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Every native backend the tests must pass on: wgpu (lavapipe here) and the CPU backend.
pub fn backends() -> [BackendKind; 2] {
    BackendKind::ALL
}

pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        // SAFETY: tests set this before any runtime starts; the value is the same in every thread.
        unsafe { std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir()) };
    }
    pollster::block_on(f)
}

/// A fresh, empty temporary folder; unique within the test process (tests run on parallel threads).
pub fn tempdir(tag: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("control-clip-test-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The largest absolute difference; NaN when either side has one (so that `err <= tol` fails).
pub fn max_abs_err(actual: &[f32], expected: &[f32]) -> f32 {
    control_clip::check::compare_values("", actual, expected).max_abs_err
}

/// The model folders of a fixture pipeline.
pub struct FixturePipeline<'a> {
    pub text_encoder: &'a Path,
    pub unet: &'a Path,
    pub vae: &'a Path,
    pub scheduler_config: &'a Path,
    /// f_c, f_s and the adapter, when the pipeline runs Control-CLIP.
    pub control: Option<[&'a Path; 3]>,
}

impl FixturePipeline<'_> {
    pub fn load(&self, device: &Device) -> Pipeline {
        let control = match self.control {
            None => ControlEncoders::default(),
            Some([category, style, adapter]) => {
                ControlEncoders::read_dirs(self.text_encoder, None, Some(category), Some(style), Some(adapter), device).unwrap()
            }
        };
        Pipeline {
            tokenizer: ClipTokenizer::read(&fixtures().join("tokenizer.json")).unwrap(),
            text_encoder: ClipTextModel::read_dir(self.text_encoder, device).unwrap(),
            control,
            unet: UNet2DConditionModel::read_dir(self.unet, device).unwrap(),
            decoder: Decoder::read_dir(self.vae, device).unwrap(),
            scheduler_config: SchedulerConfig::read(self.scheduler_config).unwrap(),
            device: device.clone(),
            precision: control_clip::device::Precision::F32,
        }
    }
}

/// The request a fixture's request.json describes (prompt, negative prompt, steps, guidance, size and,
/// when given, the control weights), starting from the io file's `latents`.
pub fn fixture_request(request: &serde_json::Value, io: &SafeTensors, device: &Device) -> GenerateRequest {
    let shape = io.shape("latents").unwrap().to_vec();
    let mut req = GenerateRequest::new(request["prompt"].as_str().unwrap());
    req.negative_prompt = request["negative_prompt"].as_str().unwrap().into();
    req.steps = request["steps"].as_u64().unwrap() as usize;
    req.guidance = request["guidance"].as_f64().unwrap() as f32;
    req.width = request["width"].as_u64().unwrap() as usize;
    req.height = request["height"].as_u64().unwrap() as usize;
    if let (Some(c), Some(s)) = (request["category_weight"].as_f64(), request["style_weight"].as_f64()) {
        req.control = ControlWeights::new(c as f32, s as f32).unwrap();
    }
    req.init_latents = Some(io.tensor("latents", [shape[0], shape[1], shape[2], shape[3]], device).unwrap());
    req
}

/// A pipeline fixture folder: its request.json, its io.safetensors and the reference `image` in it.
pub fn read_pipeline_fixture(dir: &Path) -> (serde_json::Value, SafeTensors, Vec<f32>) {
    let request = serde_json::from_str(&std::fs::read_to_string(dir.join("request.json")).unwrap()).unwrap();
    let io = SafeTensors::read(&dir.join("io.safetensors")).unwrap();
    let (_, expected) = io.f32("image").unwrap();
    (request, io, expected)
}

/// `control-clip <subcommand>` given the tiny fixture pipeline's five components (the CLIP tokenizer,
/// clip_text/sd-mini-f16, unet/sd-tiny, vae/kl-tiny and the DDIM config of pipeline/ddim-2-steps).
pub fn cli_with_fixture_components(subcommand: &str) -> std::process::Command {
    let f = fixtures();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_control-clip"));
    command
        .arg(subcommand)
        .arg("--tokenizer").arg(f.join("tokenizer.json"))
        .arg("--text-encoder").arg(f.join("clip_text/sd-mini-f16"))
        .arg("--unet").arg(f.join("unet/sd-tiny"))
        .arg("--decoder").arg(f.join("vae/kl-tiny"))
        .arg("--scheduler-config").arg(f.join("pipeline/ddim-2-steps/scheduler_config.json"));
    command
}

/// Small deterministic integer draws for the shapes (the values come from NoiseRng).
pub struct Draw(pub u64);

impl Draw {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in lo..=hi.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.range(0, items.len() - 1)]
    }
}
