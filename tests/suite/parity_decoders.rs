//! Decoders (and the TAESD encoder fine-tuning uses) vs diffusers, both native backends. Tolerance: 1e-3 of the [-1, 1] image range (the
//! diffusion-core issue's bound).

use crate::common::{backends, block_on, fixtures};
use control_clip::models::ModelFolder;
use control_clip::check::{check_tiny_decoder, check_tiny_encoder, check_vae_decoder};
use control_clip::models::taesd::{TinyDecoder, TinyEncoder};
use control_clip::models::vae::VaeDecoder;
use control_clip::{SafeTensors, init_device};

const TOLERANCE: f32 = 1e-3;

#[test]
fn kl_tiny_decoder_matches_diffusers() {
    let dir = fixtures().join("vae").join("kl-tiny");
    for backend in backends() {
        let report = block_on(async {
            let device = init_device(backend).await.unwrap();
            let model = VaeDecoder::read_dir(&dir, &device).unwrap();
            let io = SafeTensors::read(&dir.join("io.safetensors")).unwrap();
            check_vae_decoder(&model, &io, TOLERANCE).await.unwrap()
        });
        println!("vae kl-tiny [{backend}]: max_abs_err {:.3e} max_rel_err {:.3e}", report.max_abs_err, report.max_rel_err);
        assert!(report.pass, "kl-tiny on {backend}: {}", report.json_line());
    }
}

#[test]
fn taesd_narrow_decoder_matches_diffusers() {
    let dir = fixtures().join("tiny_decoder").join("taesd-narrow");
    for backend in backends() {
        let report = block_on(async {
            let device = init_device(backend).await.unwrap();
            let model = TinyDecoder::read_dir(&dir, &device).unwrap();
            let io = SafeTensors::read(&dir.join("io.safetensors")).unwrap();
            check_tiny_decoder(&model, &io, TOLERANCE).await.unwrap()
        });
        println!("tiny decoder taesd-narrow [{backend}]: max_abs_err {:.3e} max_rel_err {:.3e}", report.max_abs_err, report.max_rel_err);
        assert!(report.pass, "taesd-narrow on {backend}: {}", report.json_line());
    }
}

/// The encoder of the same AutoencoderTiny: fine-tuning's denoising term encodes its pictures with it.
#[test]
fn taesd_narrow_encoder_matches_diffusers() {
    let dir = fixtures().join("tiny_decoder").join("taesd-narrow");
    for backend in backends() {
        let report = block_on(async {
            let device = init_device(backend).await.unwrap();
            let model = TinyEncoder::read_dir(&dir, &device).unwrap();
            let io = SafeTensors::read(&dir.join("io.safetensors")).unwrap();
            check_tiny_encoder(&model, &io, TOLERANCE).await.unwrap()
        });
        println!("tiny encoder taesd-narrow [{backend}]: max_abs_err {:.3e} max_rel_err {:.3e}", report.max_abs_err, report.max_rel_err);
        assert!(report.pass, "taesd-narrow encoder on {backend}: {}", report.json_line());
    }
}
