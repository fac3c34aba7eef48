//! UNet2DConditionModel vs diffusers on every UNet fixture, both native backends.
//! Tolerance: 1e-3 max abs error (the diffusion-core issue's bound; outputs are O(1)).

use crate::common::{backends, block_on, fixtures};
use control_clip::models::ModelFolder;
use control_clip::check::check_unet;
use control_clip::models::unet::UNet2DConditionModel;
use control_clip::{SafeTensors, init_device};

const TOLERANCE: f32 = 1e-3;

fn parity(name: &str) {
    let dir = fixtures().join("unet").join(name);
    for backend in backends() {
        let report = block_on(async {
            let device = init_device(backend).await.unwrap();
            let model = UNet2DConditionModel::read_dir(&dir, &device).unwrap();
            let io = SafeTensors::read(&dir.join("io.safetensors")).unwrap();
            check_unet(&model, &io, TOLERANCE).await.unwrap()
        });
        println!("unet {name} [{backend}]: max_abs_err {:.3e} max_rel_err {:.3e}", report.max_abs_err, report.max_rel_err);
        assert!(report.pass, "{name} on {backend}: {}", report.json_line());
    }
}

#[test]
fn sd_tiny_matches_diffusers() {
    parity("sd-tiny");
}

#[test]
fn bk_tiny_without_mid_block_matches_diffusers() {
    parity("bk-tiny");
}

#[test]
fn linear_projection_matches_diffusers() {
    parity("linear-proj");
}
