//! The whole pipeline vs diffusers' StableDiffusionPipeline on the tiny fixtures, from the same initial
//! latents: DDIM, 2 steps, classifier-free guidance with a negative prompt. Tolerance: 2/255 per pixel
//! (the diffusion-core issue's bound), compared before rounding to 8 bits.

use crate::common::{FixturePipeline, backends, block_on, fixture_request, fixtures, max_abs_err, read_pipeline_fixture};
use control_clip::pipeline::GenerateRequest;
use control_clip::init_device;

#[test]
fn ddim_two_steps_with_guidance_matches_diffusers() {
    let dir = fixtures().join("pipeline").join("ddim-2-steps");
    let (request, io, expected) = read_pipeline_fixture(&dir);
    let component = |kind: &str, field: &str| fixtures().join(kind).join(request[field].as_str().unwrap());
    let (text_encoder, unet, vae) = (component("clip_text", "text_encoder"), component("unet", "unet"), component("vae", "vae"));
    let parts = FixturePipeline { text_encoder: &text_encoder, unet: &unet, vae: &vae, scheduler_config: &dir.join("scheduler_config.json"), control: None };
    for backend in backends() {
        let (image, steps_seen) = block_on(async {
            let device = init_device(backend).await.unwrap();
            let pipeline = parts.load(&device);
            let req = fixture_request(&request, &io, &device);
            let mut steps = Vec::new();
            let image = pipeline.generate(&req, &mut |p| {
                steps.push(p.step);
                true
            }).await.unwrap();
            (image, steps)
        });
        assert_eq!(steps_seen, vec![1, 2]);
        assert_eq!(image.image.len(), expected.len());
        let err = max_abs_err(&image.image, &expected);
        println!("pipeline ddim-2-steps [{backend}]: max abs pixel error {err:.3e} ({:.3}/255)", err * 255.0);
        assert!(err <= 2.0 / 255.0, "{backend}: max pixel error {err}");
    }
}

#[test]
fn cancel_between_steps_stops_the_run_and_the_next_run_works() {
    let dir = fixtures().join("pipeline").join("ddim-2-steps");
    block_on(async {
        let device = init_device(control_clip::BackendKind::Cpu).await.unwrap();
        let pipeline = FixturePipeline {
            text_encoder: &fixtures().join("clip_text/sd-mini-f16"),
            unet: &fixtures().join("unet/sd-tiny"),
            vae: &fixtures().join("vae/kl-tiny"),
            scheduler_config: &dir.join("scheduler_config.json"),
            control: None,
        }
        .load(&device);
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
