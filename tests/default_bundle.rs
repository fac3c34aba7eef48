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

/// Previews: one per step, each the tiny decoder's picture of that step's clean-latent estimate. With LCM the
/// last step's estimate *is* the final latents, so the last preview equals the image exactly; a larger
/// image's preview is pooled down to at most PREVIEW_MAX_LATENT latents per side.
#[test]
fn previews_follow_the_steps_and_end_at_the_image() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    for backend in backends() {
        block_on(async {
            let device = init_device(backend).await.unwrap();
            let pipeline = Pipeline::read_bundle(&root.join("www/models/default"), &device).await.unwrap();
            let mut req = GenerateRequest::new("a cat in Pokemon style");
            (req.seed, req.steps, req.width, req.height, req.preview) = (3, 3, 64, 64, true);
            req.scheduler = Some(control_clip::schedulers::SchedulerKind::Lcm);
            let mut previews = Vec::new();
            let image = pipeline.generate(&req, &mut |p| {
                previews.push(p.preview.expect("a preview every step"));
                true
            }).await.unwrap();
            assert_eq!(previews.len(), 3);
            assert!(previews.iter().all(|p| (p.width, p.height, p.rgba.len()) == (64, 64, 64 * 64 * 4)));
            assert_ne!(previews[0].rgba, previews[2].rgba, "the estimate moves between steps");
            assert_eq!(previews[2].rgba, image.rgba, "{backend}: LCM's last estimate is the result");

            if backend != control_clip::BackendKind::Cpu {
                // The pooled preview below needs new kernel shapes, which cost lavapipe minutes to tune and
                // compile; pooling is checked on the CPU backend.
                return;
            }
            // 320² is 40 latents a side: pooled by 2 to 20, so a 160² preview.
            (req.steps, req.width, req.height) = (1, 320, 320);
            let mut sizes = Vec::new();
            let image = pipeline.generate(&req, &mut |p| {
                sizes.push(p.preview.map(|p| (p.width, p.height)));
                true
            }).await.unwrap();
            assert_eq!((image.width, sizes), (320, vec![Some((160, 160))]));
            assert!(image.notices.is_empty(), "{:?}", image.notices);

            req.preview = false;
            pipeline.generate(&req, &mut |p| p.preview.is_none()).await.unwrap();
        });
    }
}
