//! Control-CLIP conditioning against the PyTorch reference (tests/fixtures/fixtures_control.py), on both
//! native backends:
//! - one decoupled cross-attention layer (four head layouts): tolerance 1e-4, a single layer with O(1)
//!   outputs (DESIGN.md §5);
//! - the tiny UNets with decoupled attention at three weight pairs: 1e-3, the UNet bound of the
//!   diffusion-core issue;
//! - identity: f_c = E, λ = (1, 0) gives the plain UNet's output within 1e-5;
//! - the encoders: f_c as deltas and as merged weights agree within 1e-5, and with PyTorch within 1e-4;
//! - a whole guided pipeline with control from fixed latents: 2/255 per pixel.

use crate::common::{FixturePipeline, backends, block_on, fixture_request, fixtures, max_abs_err, read_pipeline_fixture};
use control_clip::check::{check_control_identity, check_control_unet, check_cross_attention};
use control_clip::control::{Adapter, ControlEncoders, ControlWeights};
use control_clip::models::ModelFolder;
use control_clip::models::unet::UNet2DConditionModel;
use control_clip::models::unet::transformer::Attention;
use control_clip::{ClipTextModel, SafeTensors, init_device, read_f32};

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    max_abs_err(a, b)
}

#[test]
fn cross_attention_layers_match_the_reference() {
    let root = fixtures().join("control/cross_attention");
    for layout in ["h2-d8", "h5-d40", "h2-d64", "h1-d160"] {
        let dir = root.join(layout);
        for backend in backends() {
            let report = block_on(async {
                let device = init_device(backend).await.unwrap();
                let layer = Attention::read_dir(&dir, &device).unwrap();
                check_cross_attention(&layer, &SafeTensors::read(&dir.join("io.safetensors")).unwrap(), 1e-4).await.unwrap()
            });
            println!("cross-attention {layout} [{backend}]: max_abs_err {:.3e}", report.max_abs_err);
            assert!(report.pass, "{layout} on {backend}: {}", report.json_line());
        }
    }
}

#[test]
fn control_unets_match_the_reference_at_three_weight_pairs() {
    for name in ["sd-tiny", "bk-tiny", "linear-proj"] {
        let model_dir = fixtures().join("unet").join(name);
        for backend in backends() {
            let worst = block_on(async {
                let device = init_device(backend).await.unwrap();
                let model = UNet2DConditionModel::read_dir(&model_dir, &device).unwrap();
                let mut worst = 0f32;
                for k in 0..3 {
                    let io = SafeTensors::read(&fixtures().join(format!("control/unet/{name}/io_{k}.safetensors"))).unwrap();
                    let report = check_control_unet(&model, &io, 1e-3).await.unwrap();
                    assert!(report.pass, "{name} io_{k} on {backend}: {}", report.json_line());
                    worst = worst.max(report.max_abs_err);
                }
                worst
            });
            println!("control-unet {name} [{backend}]: worst max_abs_err over 3 weight pairs {worst:.3e}");
        }
    }
}

#[test]
fn category_equal_to_base_with_weights_one_zero_is_the_plain_unet() {
    for name in ["sd-tiny", "bk-tiny", "linear-proj"] {
        let dir = fixtures().join("unet").join(name);
        let io = SafeTensors::read(&dir.join("io.safetensors")).unwrap();
        for backend in backends() {
            let report = block_on(async {
                let device = init_device(backend).await.unwrap();
                let model = UNet2DConditionModel::read_dir(&dir, &device).unwrap();
                check_control_identity(&model, &io, 1e-5).await.unwrap()
            });
            println!("identity {name} [{backend}]: max abs diff {:.3e}", report.max_abs_err);
            assert!(report.pass, "{name} on {backend}: {}", report.json_line());
        }
    }
}

fn read_encoders(device: &burn::tensor::Device, category: &str) -> ControlEncoders {
    let enc = fixtures().join("control/encoders");
    ControlEncoders::read_dirs(
        &fixtures().join("clip_text/sd-mini-f16"),
        None,
        Some(&enc.join(category)),
        Some(&enc.join("style_full")),
        Some(&enc.join("adapter")),
        device,
    )
    .unwrap()
}

#[test]
fn encoders_as_deltas_and_as_full_weights_give_the_reference_contexts() {
    let enc = fixtures().join("control/encoders");
    let io = SafeTensors::read(&enc.join("io.safetensors")).unwrap();
    let (shape, ids) = io.i64("input_ids").unwrap();
    let rows: Vec<Vec<u32>> = ids.chunks(shape[1]).map(|r| r.iter().map(|&i| i as u32).collect()).collect();
    for backend in backends() {
        block_on(async {
            let device = init_device(backend).await.unwrap();
            let base = ClipTextModel::read_dir(&fixtures().join("clip_text/sd-mini-f16"), &device).unwrap();
            let deltas = read_encoders(&device, "category_lora");
            let full = read_encoders(&device, "category_full");
            let (cat_delta, style) = deltas.encode(&base, &rows, 0).unwrap();
            let (cat_full, style_full) = full.encode(&base, &rows, 0).unwrap();
            let (cat_delta, cat_full) = (read_f32(cat_delta).await.unwrap().1, read_f32(cat_full).await.unwrap().1);
            let (style, style_full) = (read_f32(style).await.unwrap().1, read_f32(style_full).await.unwrap().1);
            let forms = max_abs_diff(&cat_delta, &cat_full);
            println!("f_c deltas vs full [{backend}]: max abs diff {forms:.3e}");
            assert!(forms <= 1e-5, "{backend}: delta and full forms of f_c differ by {forms}");
            assert_eq!(style, style_full);
            for (name, ours) in [("context_category", &cat_delta), ("context_style", &style)] {
                let err = max_abs_diff(ours, &io.f32(name).unwrap().1);
                println!("{name} vs PyTorch [{backend}]: max abs err {err:.3e}");
                assert!(err <= 1e-4, "{name} on {backend}: {err}");
            }
            // Without any Control-CLIP encoder both contexts are E's.
            let (c, s) = ControlEncoders::default().encode(&base, &rows, 0).unwrap();
            let expected = io.f32("context_base").unwrap().1;
            assert!(max_abs_diff(&read_f32(c).await.unwrap().1, &expected) <= 1e-4);
            assert!(max_abs_diff(&read_f32(s).await.unwrap().1, &expected) <= 1e-4);
        });
    }
}

#[test]
fn the_adapter_starts_as_the_identity_when_its_output_layer_is_zero() {
    use control_clip::weights::{RawTensor, serialize};
    let dir = fixtures().join("control/encoders/adapter");
    let weights = SafeTensors::read(&dir.join("model.safetensors")).unwrap();
    let tensors: Vec<RawTensor> = weights
        .raw_tensors()
        .into_iter()
        .map(|t| {
            if t.name.starts_with("fc2.") {
                let (shape, v) = weights.f32(&t.name).unwrap();
                RawTensor::f32(t.name, shape, &vec![0.0; v.len()])
            } else {
                t
            }
        })
        .collect();
    let zeroed = SafeTensors::from_bytes("zeroed adapter", serialize(&tensors)).unwrap();
    let config = control_clip::config::ConfigJson::read(&dir.join("config.json")).unwrap();
    block_on(async {
        let device = init_device(control_clip::BackendKind::Cpu).await.unwrap();
        let adapter = Adapter::load(&config, &zeroed, &device).unwrap();
        let h = burn::tensor::Tensor::<3>::random([2, 77, 16], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
        let out = adapter.forward(h.clone()).unwrap();
        assert_eq!(read_f32(out).await.unwrap().1, read_f32(h).await.unwrap().1);
    });
}

#[test]
fn guided_pipeline_with_control_matches_the_reference() {
    let dir = fixtures().join("control/pipeline/ddim-2-steps-control");
    let (request, io, expected) = read_pipeline_fixture(&dir);
    let path = |field: &str| fixtures().join(request[field].as_str().unwrap());
    let (category, style, adapter) = (path("category_encoder"), path("style_encoder"), path("adapter"));
    let parts = FixturePipeline {
        text_encoder: &path("text_encoder"),
        unet: &path("unet"),
        vae: &path("vae"),
        scheduler_config: &path("scheduler").join("scheduler_config.json"),
        control: Some([&category, &style, &adapter]),
    };
    for backend in backends() {
        let image = block_on(async {
            let device = init_device(backend).await.unwrap();
            let req = fixture_request(&request, &io, &device);
            assert!(req.control != ControlWeights::default(), "the fixture sets control weights");
            parts.load(&device).generate(&req, &mut |_| true).await.unwrap()
        });
        let err = max_abs_err(&image.image, &expected);
        println!("control pipeline [{backend}]: max abs pixel error {err:.3e} ({:.3}/255)", err * 255.0);
        assert!(err <= 2.0 / 255.0, "{backend}: max pixel error {err}");
    }
}
