//! Parity on the real trained model: our pipeline on the shipped default bundle (www/models/default, f16)
//! vs diffusers' StableDiffusionPipeline on the committed model folders (tools/shapes/model/pipeline, the
//! same f16 weights widened to f32), from the same latents, with the bundle's scheduler (DPM-Solver++ 2M)
//! at its recommended steps and guidance. The fixture comes from tools/shapes/parity.py. Tolerance: 2/255
//! per pixel (the pipeline's parity bound), compared before rounding to 8 bits.

mod common;

use common::{backends, block_on, fixtures};
use control_clip::pipeline::{GenerateRequest, Pipeline};
use control_clip::{SafeTensors, init_device};

#[test]
fn default_model_matches_diffusers_from_the_same_latents() {
    let dir = fixtures().join("pipeline/shapes-default");
    let request: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("request.json")).unwrap()).unwrap();
    let io = SafeTensors::read(&dir.join("io.safetensors")).unwrap();
    let (_, expected) = io.f32("image").unwrap();
    let bundle = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("www/models/default");
    for backend in backends() {
        let image = block_on(async {
            let device = init_device(backend).await.unwrap();
            let pipeline = Pipeline::read_bundle(&bundle, &device).await.unwrap();
            let shape = io.shape("latents").unwrap().to_vec();
            let mut req = GenerateRequest::new(request["prompt"].as_str().unwrap());
            req.negative_prompt = request["negative_prompt"].as_str().unwrap().into();
            req.steps = request["steps"].as_u64().unwrap() as usize;
            req.guidance = request["guidance"].as_f64().unwrap() as f32;
            req.width = request["width"].as_u64().unwrap() as usize;
            req.height = request["height"].as_u64().unwrap() as usize;
            req.init_latents = Some(io.tensor("latents", [shape[0], shape[1], shape[2], shape[3]], &device).unwrap());
            pipeline.generate(&req, &mut |_| true).await.unwrap()
        });
        assert_eq!(image.image.len(), expected.len());
        let err = image.image.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        let mean = image.image.iter().zip(&expected).map(|(a, b)| (a - b).abs()).sum::<f32>() / expected.len() as f32;
        println!("default model vs diffusers [{backend}]: max abs pixel error {err:.3e} ({:.3}/255), mean {mean:.3e}", err * 255.0);
        assert!(err <= 2.0 / 255.0, "{backend}: max pixel error {err}");
    }
}
