//! The page's default bundle (www/models/default, made by www/models/make_default.sh) loads natively, and its
//! reference image — tests/browser/expected/default-seed1.png, which the browser test compares the page's
//! canvas with — is what `control-clip generate` makes from it now, on both backends (within 1/255 on the
//! CPU backend that wrote it, 2/255 on wgpu, whose float sums run in another order).
//! To refresh both after a deliberate change: bash www/models/make_default.sh, then the command in
//! tests/browser/expected/README.md.

mod common;

use common::{backends, block_on};
use control_clip::control::ControlWeights;
use control_clip::pipeline::{GenerateRequest, Pipeline};
use control_clip::init_device;

#[test]
fn default_bundle_reproduces_the_committed_reference_image() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(root.join("tests/browser/expected/default-seed1.png")).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut expected = vec![0; reader.output_buffer_size().unwrap()];
    reader.next_frame(&mut expected).unwrap();
    for backend in backends() {
        let image = block_on(async {
            let device = init_device(backend).await.unwrap();
            let pipeline = Pipeline::read_bundle(&root.join("www/models/default"), &device).await.unwrap();
            let mut req = GenerateRequest::new("a cat in Pokemon style");
            (req.seed, req.steps, req.guidance, req.width, req.height) = (1, 4, 7.5, 64, 64);
            req.control = ControlWeights::new(1.0, 0.8).unwrap();
            pipeline.generate(&req, &mut |_| true).await.unwrap()
        });
        let worst = image.rgba.iter().zip(&expected).map(|(a, b)| (*a as i32 - *b as i32).abs()).max().unwrap();
        println!("default bundle [{backend}]: worst pixel difference {worst}/255");
        let bound = if backend == control_clip::BackendKind::Cpu { 1 } else { 2 };
        assert!(worst <= bound, "{backend}: worst pixel difference {worst}/255");
    }
}
