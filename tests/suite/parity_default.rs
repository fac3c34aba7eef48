//! Parity on the real trained model: our pipeline on the shipped default bundle (www/models/default, f16)
//! vs diffusers' StableDiffusionPipeline on the committed model folders (tools/shapes/model/pipeline, the
//! same f16 weights widened to f32), from the same latents, with the bundle's scheduler (DPM-Solver++ 2M)
//! at its recommended steps and guidance. The fixture comes from tools/shapes/parity.py. Tolerance: 2/255
//! per pixel (the pipeline's parity bound), compared before rounding to 8 bits.

use crate::common::{backends, block_on, fixture_request, fixtures, max_abs_err, read_pipeline_fixture};
use control_clip::pipeline::Pipeline;
use control_clip::init_device;

#[test]
fn default_model_matches_diffusers_from_the_same_latents() {
    let dir = fixtures().join("pipeline/shapes-default");
    let (request, io, expected) = read_pipeline_fixture(&dir);
    let bundle = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("www/models/default");
    for backend in backends() {
        let image = block_on(async {
            let device = init_device(backend).await.unwrap();
            let pipeline = Pipeline::read_bundle(&bundle, &device).await.unwrap();
            pipeline.generate(&fixture_request(&request, &io, &device), &mut |_| true).await.unwrap()
        });
        assert_eq!(image.image.len(), expected.len());
        let err = max_abs_err(&image.image, &expected);
        let mean = image.image.iter().zip(&expected).map(|(a, b)| (a - b).abs()).sum::<f32>() / expected.len() as f32;
        println!("default model vs diffusers [{backend}]: max abs pixel error {err:.3e} ({:.3}/255), mean {mean:.3e}", err * 255.0);
        assert!(err <= 2.0 / 255.0, "{backend}: max pixel error {err}");
    }
}
