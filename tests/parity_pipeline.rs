//! The whole pipeline vs diffusers' StableDiffusionPipeline on the tiny fixtures, from the same initial
//! latents: DDIM, 2 steps, classifier-free guidance with a negative prompt. Tolerance: 2/255 per pixel
//! (the diffusion-core issue's bound), compared before rounding to 8 bits.

mod common;

use common::{backends, block_on, fixtures};
use control_clip::models::unet::UNet2DConditionModel;
use control_clip::models::vae::VaeDecoder;
use control_clip::pipeline::{Decoder, GenerateRequest, Pipeline};
use control_clip::schedulers::SchedulerConfig;
use control_clip::{ClipTextModel, ClipTokenizer, SafeTensors, init_device};

#[test]
fn ddim_two_steps_with_guidance_matches_diffusers() {
    let dir = fixtures().join("pipeline").join("ddim-2-steps");
    let request: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("request.json")).unwrap()).unwrap();
    let io = SafeTensors::read(&dir.join("io.safetensors")).unwrap();
    let (_, expected) = io.f32("image").unwrap();
    for backend in backends() {
        let (image, steps_seen) = block_on(async {
            let device = init_device(backend).await.unwrap();
            let component = |kind: &str| fixtures().join(kind).join(request[match kind {
                "clip_text" => "text_encoder",
                other => other,
            }].as_str().unwrap());
            let pipeline = Pipeline {
                tokenizer: ClipTokenizer::read(&fixtures().join("tokenizer.json")).unwrap(),
                text_encoder: ClipTextModel::read_dir(&component("clip_text"), &device).unwrap(),
                control: control_clip::control::ControlEncoders::default(),
                unet: UNet2DConditionModel::read_dir(&component("unet"), &device).unwrap(),
                decoder: Decoder::Kl(VaeDecoder::read_dir(&component("vae"), &device).unwrap()),
                scheduler_config: SchedulerConfig::read(&dir.join("scheduler_config.json")).unwrap(),
                device: device.clone(),
            };
            let shape = io.shape("latents").unwrap().to_vec();
            let mut req = GenerateRequest::new(request["prompt"].as_str().unwrap());
            req.negative_prompt = request["negative_prompt"].as_str().unwrap().into();
            req.steps = request["steps"].as_u64().unwrap() as usize;
            req.guidance = request["guidance"].as_f64().unwrap() as f32;
            req.width = request["width"].as_u64().unwrap() as usize;
            req.height = request["height"].as_u64().unwrap() as usize;
            req.init_latents = Some(io.tensor("latents", [shape[0], shape[1], shape[2], shape[3]], &device).unwrap());
            let mut steps = Vec::new();
            let image = pipeline.generate(&req, &mut |p| {
                steps.push(p.step);
                true
            }).await.unwrap();
            (image, steps)
        });
        assert_eq!(steps_seen, vec![1, 2]);
        assert_eq!(image.image.len(), expected.len());
        let err = image.image.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        println!("pipeline ddim-2-steps [{backend}]: max abs pixel error {err:.3e} ({:.3}/255)", err * 255.0);
        assert!(err <= 2.0 / 255.0, "{backend}: max pixel error {err}");
    }
}

#[test]
fn cancel_between_steps_stops_the_run_and_the_next_run_works() {
    let dir = fixtures().join("pipeline").join("ddim-2-steps");
    block_on(async {
        let device = init_device(control_clip::BackendKind::Cpu).await.unwrap();
        let pipeline = Pipeline {
            tokenizer: ClipTokenizer::read(&fixtures().join("tokenizer.json")).unwrap(),
            text_encoder: ClipTextModel::read_dir(&fixtures().join("clip_text/sd-mini-f16"), &device).unwrap(),
            control: control_clip::control::ControlEncoders::default(),
            unet: UNet2DConditionModel::read_dir(&fixtures().join("unet/sd-tiny"), &device).unwrap(),
            decoder: Decoder::Kl(VaeDecoder::read_dir(&fixtures().join("vae/kl-tiny"), &device).unwrap()),
            scheduler_config: SchedulerConfig::read(&dir.join("scheduler_config.json")).unwrap(),
            device: device.clone(),
        };
        let mut req = GenerateRequest::new("a cat");
        req.steps = 5;
        req.width = 64;
        req.height = 64;
        let mut seen = 0;
        let err = pipeline.generate(&req, &mut |p| {
            seen = p.step;
            p.step < 2
        }).await.err().expect("cancelled");
        assert_eq!(err, control_clip::Error::Cancelled);
        assert_eq!(seen, 2, "the run went on after the cancel");
        let first = pipeline.generate(&req, &mut |_| true).await.unwrap();
        let again = pipeline.generate(&req, &mut |_| true).await.unwrap();
        assert_eq!(first.rgba, again.rgba, "same seed, same image");
        req.seed = 1;
        assert_ne!(first.rgba, pipeline.generate(&req, &mut |_| true).await.unwrap().rgba, "another seed, another image");
    });
}
