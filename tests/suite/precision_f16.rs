//! f16 compute (`Precision::F16`) on the native wgpu device against diffusers' fp16 on the same weights
//! and inputs (tests/fixtures/fixtures_fp16.py), and its f32 islands (norms, softmax) at SD-scale values.
//!
//! Runs where the wgpu device has SHADER_F16: lavapipe does (Mesa's shaderFloat16 and 16-bit storage), so
//! here and in CI; elsewhere each test says it was skipped. The CPU backend stays f32 (our CPU kernels are
//! f32 kernels) and refuses f16 by name.
//!
//! Tolerance: two fp16 implementations round at every operation, in different places (PyTorch's CPU
//! kernels accumulate in f32 and round each op's output; ours keep f32 inside the softmax, the norms and
//! the attention kernel), so neither is the other's reference. Each fixture stores diffusers' own fp16 error
//! (its fp16 run against its fp32 run of the same inputs), e; ours must be within 2e of diffusers' fp32
//! result (no worse than twice the reference's own fp16 error) and within 3e of diffusers' fp16 (the
//! triangle inequality over the two): a broken f16 path (a wrong cast, an overflow, a lost f32 island)
//! misses by orders of magnitude.

use burn::tensor::{DType, Device, Distribution, FloatDType, Tensor, TensorData};
use control_clip::device::{Precision, PrecisionRequest, f16_available};
use control_clip::models::decoder::Decoder;
use control_clip::models::unet::UNet2DConditionModel;
use control_clip::pipeline::Pipeline;
use control_clip::models::ModelFolder;
use control_clip::weights::{RawTensor, SafeTensors, WeightsView, serialize};
use control_clip::{BackendKind, init_device, read_f32};

use crate::common::{block_on, fixture_request, fixtures, max_abs_err, read_pipeline_fixture};

/// The wgpu device if it computes in f16; None (the test says so) where it does not.
fn f16_device(test: &str) -> Option<Device> {
    let device = block_on(init_device(BackendKind::Wgpu)).expect("the wgpu device (lavapipe here)");
    if f16_available(&device) {
        Some(device)
    } else {
        println!("{test}: skipped, this wgpu device has no SHADER_F16");
        None
    }
}

fn values(t: Tensor<4>) -> Vec<f32> {
    block_on(read_f32(t)).unwrap().1
}

/// Ours (f16) against diffusers fp32 and fp16, as the module's comment says.
fn assert_within_reference_fp16_error(what: &str, ours: &[f32], fp16: &[f32], fp32: &[f32]) {
    let own = max_abs_err(fp16, fp32);
    let (to32, to16) = (max_abs_err(ours, fp32), max_abs_err(ours, fp16));
    println!("{what}: ours f16 vs diffusers fp32 {to32:.3e}, vs diffusers fp16 {to16:.3e} (diffusers fp16 vs fp32: {own:.3e})");
    assert!(ours.iter().all(|v| v.is_finite()), "{what}: non-finite values");
    assert!(to32 <= 2.0 * own, "{what}: {to32:.3e} from fp32, over twice diffusers' own fp16 error {own:.3e}");
    assert!(to16 <= 3.0 * own, "{what}: {to16:.3e} from diffusers fp16, over 3× its fp16 error {own:.3e}");
}

#[test]
fn f16_unet_matches_diffusers_fp16_at_sd_scale_inputs() {
    let Some(device) = f16_device("f16 unet") else { return };
    let io = SafeTensors::read(&fixtures().join("fp16/unet-sd-tiny.safetensors")).unwrap();
    let unet = UNet2DConditionModel::read_dir_in(&fixtures().join("unet/sd-tiny"), &device, FloatDType::F16).unwrap();
    let sample = io.tensor("sample", [2, 4, 16, 16], &device).unwrap();
    let context = io.tensor("encoder_hidden_states", [2, 77, 16], &device).unwrap();
    let (_, timesteps) = io.f32("timestep").unwrap();
    let out = unet.forward(sample, &timesteps, &context).unwrap();
    assert_eq!(out.dtype(), DType::F32, "the prediction is f32 for the scheduler");
    let ours = values(out);
    assert_within_reference_fp16_error("unet sd-tiny", &ours, &io.f32("out_fp16").unwrap().1, &io.f32("out_fp32").unwrap().1);
}

#[test]
fn f16_kl_decoder_matches_diffusers_fp16() {
    let Some(device) = f16_device("f16 kl decoder") else { return };
    let io = SafeTensors::read(&fixtures().join("fp16/vae-kl-tiny.safetensors")).unwrap();
    let decoder = Decoder::read_dir_in(&fixtures().join("vae/kl-tiny"), &device, FloatDType::F16).unwrap();
    assert_eq!(decoder.dtype(), DType::F16);
    // The fixture's latents are already divided by the scaling factor; `decode` divides again.
    let (scale, shift) = decoder.scaling();
    let latents = io.tensor("latents", [1, 4, 8, 8], &device).unwrap();
    let ours = values(decoder.decode((latents - shift) * scale));
    assert_within_reference_fp16_error("vae kl-tiny", &ours, &io.f32("image_fp16").unwrap().1, &io.f32("image_fp32").unwrap().1);
}

#[test]
fn f16_pipeline_matches_diffusers_fp16_pipeline() {
    let Some(device) = f16_device("f16 pipeline") else { return };
    let dir = fixtures().join("fp16/pipeline-ddim-2-steps");
    let (request, io, expected) = read_pipeline_fixture(&dir);
    let f = fixtures();
    let component = |kind: &str, field: &str| f.join(kind).join(request[field].as_str().unwrap());
    let (text_encoder, unet, vae) = (component("clip_text", "text_encoder"), component("unet", "unet"), component("vae", "vae"));
    let scheduler = f.join("pipeline/ddim-2-steps/scheduler_config.json");
    let tokenizer = f.join("tokenizer.json");
    let pipeline = Pipeline::from_dirs_in([&tokenizer, &text_encoder, &unet, &vae, &scheduler], &device, Precision::F16).unwrap();
    let req = fixture_request(&request, &io, &device);
    let image = block_on(pipeline.generate(&req, &mut |_| true)).unwrap();
    let fp32 = io.f32("image_fp32").unwrap().1;
    assert_within_reference_fp16_error("pipeline ddim-2-steps", &image.image, &expected, &fp32);
    let err = max_abs_err(&image.image, &expected);
    assert!(err <= 2.0 / 255.0, "ours f16 vs diffusers fp16 {err} (over the pipelines' 2/255)");
}

/// A norm's statistics at SD-VAE-decoder magnitudes overflow f16 (a mean of squares of values near 1,000
/// is 1e6, past f16's 65,504); our f32 islands must give what f32 gives. And q·k of 64-wide heads with
/// entries near 40 is 1e5 unscaled: the f16 attention scales q first and runs the softmax in f32.
#[test]
fn f16_norms_and_attention_stay_finite_at_sd_scale_magnitudes() {
    let Some(device) = f16_device("f16 islands") else { return };
    let channels = 32;
    let gamma: Vec<f32> = (0..channels).map(|i| 1.0 + 0.01 * i as f32).collect();
    let beta: Vec<f32> = (0..channels).map(|i| 0.1 * i as f32 - 1.0).collect();
    let bytes = serialize(&[
        RawTensor::f32("norm.weight", vec![channels], &gamma),
        RawTensor::f32("norm.bias", vec![channels], &beta),
    ]);
    let weights = SafeTensors::from_bytes("norm.safetensors", bytes).unwrap();
    let view = WeightsView::new(&weights, "");
    let norm = control_clip::models::nn::GroupNorm::load(&view, "norm", 8, channels, 1e-6, &device).unwrap();
    let x = Tensor::<4>::random([1, channels, 8, 8], Distribution::Normal(500.0, 1000.0), &device);
    let reference = values(norm.forward(x.clone()));
    let half = norm.forward(x.cast(FloatDType::F16));
    assert_eq!(half.dtype(), DType::F16);
    let half = values(half.cast(FloatDType::F32));
    let err = max_abs_err(&half, &reference);
    println!("group norm at |x| ~ 1000: f16 vs f32 max abs error {err:.3e}");
    // Normalised outputs are O(1): f16's own rounding of them (2^-11 relative, outputs up to ~5) bounds it.
    assert!(err <= 1e-2, "group norm in f16 {err}");

    let (b, heads, d, l) = (1, 2, 64, 300);
    let draw = |seed: u64| {
        let mut rng = control_clip::rng::NoiseRng::new(seed);
        Tensor::<3>::from_data(TensorData::new(rng.normals(b * l * heads * d).into_iter().map(|v| 40.0 * v.clamp(-1.5, 1.5)).collect::<Vec<f32>>(), [b, l, heads * d]), &device)
    };
    // The same f16 values on both sides (the rounding of the inputs alone moves scores this large by
    // whole units, which a softmax this peaked follows: that is f16's, not the code's).
    let f16 = |t: Tensor<3>| t.cast(FloatDType::F16);
    let (q, k, v) = (f16(draw(1)), f16(draw(2)), f16(draw(3) / 40.0));
    let f32 = |t: &Tensor<3>| t.clone().cast(FloatDType::F32);
    let reference = block_on(read_f32(control_clip::models::nn::scaled_dot_product_attention(f32(&q), f32(&k), f32(&v), heads, None))).unwrap().1;
    let half = control_clip::models::nn::scaled_dot_product_attention(q, k, v, heads, None);
    assert_eq!(half.dtype(), DType::F16);
    let half = block_on(read_f32(half.cast(FloatDType::F32))).unwrap().1;
    let err = max_abs_err(&half, &reference);
    println!("attention with |q·k| up to ~1e5: f16 vs f32 max abs error {err:.3e}");
    // What differs is the probabilities' and the output's rounding to f16 (outputs |v| ≤ 1.5: ≤ 1.5e-3
    // each); f16 scores would have been rounded to multiples of 8 and more.
    assert!(err <= 3e-3, "attention in f16 {err}");

    // A convolution summing 9 × 1,024 products: burn's f16 convolution alone stops at 2,048.
    let x = Tensor::<4>::from_data(TensorData::new(vec![1.0f32; 1024 * 64], [1, 1024, 8, 8]), &device);
    let bytes = serialize(&[
        RawTensor::f32("conv.weight", vec![4, 1024, 3, 3], &vec![1.0; 4 * 1024 * 9]),
        RawTensor::f32("conv.bias", vec![4], &[0.0; 4]),
    ]);
    let weights = SafeTensors::from_bytes("conv.safetensors", bytes).unwrap();
    let view = WeightsView::new(&weights, "").in_dtype(FloatDType::F16);
    let conv = control_clip::models::nn::Conv2d::load(&view, "conv", [1024, 4], 3, 1, 1, &device).unwrap();
    let out = conv.forward(x.cast(FloatDType::F16));
    assert_eq!(out.dtype(), DType::F16);
    let out = values(out.cast(FloatDType::F32));
    println!("f16 convolution of 9,216 ones: {} (exact 9216)", out[3 * 8 + 3]);
    assert_eq!(out[3 * 8 + 3], 9216.0, "the convolution's sums must be f32");
}

#[test]
fn f16_is_refused_where_the_device_cannot_and_auto_falls_back_to_f32() {
    let cpu = block_on(init_device(BackendKind::Cpu)).unwrap();
    assert_eq!(Precision::resolve(PrecisionRequest::Auto, &cpu).unwrap(), Precision::F32);
    let err = Precision::resolve(PrecisionRequest::Exactly(Precision::F16), &cpu).unwrap_err().to_string();
    assert!(err.contains("f16 compute needs a GPU device with shader-f16 (SHADER_F16), and the CPU backend computes in f32 only"), "{err}");
    assert!("fp16".parse::<PrecisionRequest>().unwrap() == PrecisionRequest::Exactly(Precision::F16));
    let err = "f8".parse::<PrecisionRequest>().unwrap_err().to_string();
    assert!(err.contains("unknown precision `f8`"), "{err}");
    let wgpu = block_on(init_device(BackendKind::Wgpu)).unwrap();
    let auto = Precision::resolve(PrecisionRequest::Auto, &wgpu).unwrap();
    let software = control_clip::device::software_adapter(&wgpu);
    println!("wgpu adapter: software {software}, f16 {}, auto → {auto}", f16_available(&wgpu));
    assert_eq!(auto == Precision::F16, f16_available(&wgpu) && !software, "auto is f16 exactly on a real GPU that has it");
    if wgpu.identity().is_some_and(|id| id.name.contains("llvmpipe")) {
        assert!(software, "lavapipe is a software adapter");
        assert_eq!(auto, Precision::F32, "auto stays f32 on lavapipe");
    }
}
