//! CLIP text encoder vs transformers, on every fixture and both native backends.
//! Tolerance: 1e-4 max abs error (f32 on wgpu / CPU vs PyTorch CPU; the fixtures' outputs are O(1)).

use crate::common::{backends, block_on, fixtures};
use control_clip::models::ModelFolder;
use control_clip::check::check_text_encoder;
use control_clip::{ClipTextModel, SafeTensors, init_device};

const TOLERANCE: f32 = 1e-4;

fn parity(name: &str) {
    let dir = fixtures().join("clip_text").join(name);
    for backend in backends() {
        let report = block_on(async {
            let device = init_device(backend).await.unwrap();
            let model = ClipTextModel::read_dir(&dir, &device).unwrap();
            let io = SafeTensors::read(&dir.join("io.safetensors")).unwrap();
            check_text_encoder(&model, &io, TOLERANCE).await.unwrap()
        });
        for o in &report.outputs {
            println!("{name} [{backend}] {}: max_abs_err {:.3e} max_rel_err {:.3e}", o.name, o.max_abs_err, o.max_rel_err);
        }
        assert!(report.outputs.len() >= 3, "{name}: compared {} outputs", report.outputs.len());
        assert!(report.pass, "{name} on {backend}: {}", report.json_line());
    }
}

#[test]
fn sd_mini_f16_matches_transformers() {
    parity("sd-mini-f16");
}

#[test]
fn with_projection_gelu_matches_transformers() {
    parity("proj-gelu");
}

#[test]
fn deep_gelu_new_without_prefix_matches_transformers() {
    parity("deep-gelu-new-noprefix");
}
