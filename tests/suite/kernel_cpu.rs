//! Our CPU kernels (src/kernels/cpu/) against the tensor-op references they replace, on the CPU backend,
//! over random shapes: burn's `conv2d`, burn's `GroupNorm` (+ SiLU), burn's `Linear`, and the chunked
//! tensor-op attention (`attention_in_chunks`); the convolution also with what it fuses (an upsampling
//! before it, a residual sum and a ReLU after) against burn's separate operations. Inputs are standard normal; the tolerance is relative to
//! the reference's largest magnitude: 1e-5 for the norm and attention, and for the convolution and the
//! linear layer 2e-7·√K (K = C_in·k·k or d_in terms a sum, whose rounding grows like √K·ε in f32 when two
//! implementations add in different orders; ε = 6e-8, ×3 for margin). Also: every kernel gives the same bits with 1, 2 and 3 threads, and refuses
//! (returns None) where it does not apply. Run with --nocapture to see the worst errors.

use burn::module::Param;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{ConvOptions, InterpolateMode, InterpolateOptions};
use burn::tensor::{Device, Tensor, TensorData, activation};
use control_clip::kernels::cpu;
use control_clip::models::nn::attention_in_chunks;
use control_clip::rng::NoiseRng;

use crate::common::{Draw, max_abs_err};

const CASES: usize = 40;

fn device() -> Device {
    Device::flex()
}

fn normal<const D: usize>(rng: &mut NoiseRng, shape: [usize; D]) -> Tensor<D> {
    let n = shape.iter().product();
    Tensor::from_data(TensorData::new(rng.normals(n), shape), &device())
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

/// The largest error relative to the reference's largest magnitude (at least 1), asserted to be within
/// `tolerance`; returned as a fraction of it, for the worst-case line.
fn within(ours: &[f32], reference: &[f32], tolerance: f32, what: impl std::fmt::Display) -> f32 {
    let largest = reference.iter().fold(0f32, |m, x| m.max(x.abs()));
    let err = max_abs_err(ours, reference) / largest.max(1.0);
    assert!(err <= tolerance, "{what}: relative error {err:e} > {tolerance:e}");
    err / tolerance
}

/// The same computation in a rayon pool of `threads` threads (the GEMM's threads follow the pool).
fn with_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(f)
}

/// One convolution case: ours (with what it fuses) against burn's separate operations; returns the error as
/// a fraction of the tolerance.
struct ConvCase {
    batch: usize,
    c_in: usize,
    c_out: usize,
    h: usize,
    w: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    with_bias: bool,
    upsample: usize,
    with_residual: bool,
    relu: bool,
}

impl ConvCase {
    fn check(&self, seed: u64) -> f32 {
        let &ConvCase { batch, c_in, c_out, h, w, kernel, stride, padding, with_bias, upsample, with_residual, relu } = self;
        let mut rng = NoiseRng::new(seed);
        let x = normal(&mut rng, [batch, c_in, h, w]);
        let weight = normal(&mut rng, [c_out, c_in, kernel, kernel]);
        let bias = with_bias.then(|| normal(&mut rng, [c_out]));
        let (uh, uw) = (h * upsample, w * upsample);
        let out_shape = [batch, c_out, (uh + 2 * padding - kernel) / stride + 1, (uw + 2 * padding - kernel) / stride + 1];
        let residual = with_residual.then(|| normal(&mut rng, out_shape));

        let fused = cpu::ConvFused { upsample, residual: residual.as_ref(), relu, ..cpu::ConvFused::default() };
        let ours = values(cpu::conv2d(&x, &weight, bias.as_ref(), stride, padding, fused).expect("the kernel applies"));
        let options = ConvOptions::new([stride; 2], [padding; 2], [1, 1], 1);
        let upsampled = interpolate(x, InterpolateOptions::new(InterpolateMode::Nearest).with_output_size([uh, uw]));
        let mut reference = burn::tensor::module::conv2d(upsampled, weight, bias, options);
        if let Some(residual) = residual {
            reference = reference + residual;
        }
        let reference = values(if relu { activation::relu(reference) } else { reference });
        let tolerance = 2e-7 * ((c_in * kernel * kernel) as f32).sqrt();
        let shape = format!(
            "conv2d x [{batch}, {c_in}, {h}, {w}] upsampled ×{upsample}, {c_out} out, k {kernel}, stride {stride}, pad {padding}, bias {with_bias}, residual {with_residual}, relu {relu}"
        );
        within(&ours, &reference, tolerance, shape)
    }
}

#[test]
fn conv2d_matches_burns_conv2d_over_random_shapes() {
    let mut draw = Draw(11);
    let mut worst = 0f32;
    for case_index in 0..CASES {
        let kernel = draw.pick(&[1, 3, 3, 3]);
        let stride = draw.pick(&[1, 1, 2]);
        let padding = if kernel == 1 { draw.pick(&[0, 0, 1]) } else { draw.pick(&[0, 1, 1]) };
        let batch = draw.pick(&[1, 2]);
        let (c_in, c_out) = (draw.range(1, 37), draw.range(1, 41));
        let (h, w) = (draw.range(kernel.max(2), 29), draw.range(kernel.max(2), 23));
        let with_bias = draw.pick(&[true, true, false]);
        // What the kernel fuses: a nearest ×2 upsampling before, a residual sum and a ReLU after.
        let upsample = draw.pick(&[1, 1, 2]);
        let (with_residual, relu) = (draw.pick(&[false, true]), draw.pick(&[false, true]));
        let case = ConvCase { batch, c_in, c_out, h, w, kernel, stride, padding, with_bias, upsample, with_residual, relu };
        worst = worst.max(case.check(100 + case_index as u64));
    }
    println!("conv2d: worst error {worst:.3} of its tolerance over {CASES} shapes");
}

/// The shapes the wasm build computes by Winograd's F(2×2, 3×3) (3×3, stride 1, padding 1, at least 16
/// channels each way): odd and even sizes (edge tiles), batch 2, and what the convolution fuses. Natively
/// they go through im2col; the Winograd path itself is compared with im2col by the unit test in
/// src/kernels/cpu/winograd.rs, and runs here when this suite runs in wasm.
#[test]
fn same_size_3x3_conv2d_matches_burns_conv2d_over_random_shapes() {
    let mut draw = Draw(14);
    let mut worst = 0f32;
    for case in 0..CASES {
        let batch = draw.pick(&[1, 2]);
        let (c_in, c_out) = (draw.range(16, 70), draw.range(16, 50));
        let (h, w) = (draw.range(1, 27), draw.range(1, 31));
        let with_bias = draw.pick(&[true, false]);
        let (with_residual, relu) = (draw.pick(&[false, true]), draw.pick(&[false, true]));
        let conv = ConvCase { batch, c_in, c_out, h, w, kernel: 3, stride: 1, padding: 1, with_bias, upsample: 1, with_residual, relu };
        worst = worst.max(conv.check(600 + case as u64));
    }
    println!("3×3 same-size conv2d: worst error {worst:.3} of its tolerance over {CASES} shapes");
}

#[test]
fn group_norm_matches_burns_group_norm_and_silu_over_random_shapes() {
    let mut draw = Draw(12);
    let mut worst = 0f32;
    for case in 0..CASES {
        let groups = draw.pick(&[1, 2, 3, 4, 8, 32]);
        let channels = groups * draw.range(1, 6);
        let batch = draw.pick(&[1, 2]);
        let (h, w) = (draw.range(1, 19), draw.range(1, 17));
        let silu = draw.pick(&[true, false]);
        let eps = draw.pick(&[1e-5, 1e-6]);
        let mut rng = NoiseRng::new(200 + case as u64);
        // An offset and scale per case, so that the mean and variance passes have something to do.
        let x = normal(&mut rng, [batch, channels, h, w]) * (1.0 + case as f64 * 0.25) + case as f64 * 0.5;
        let (gamma, beta) = (normal(&mut rng, [channels]), normal(&mut rng, [channels]));

        let ours = cpu::group_norm(&x, &gamma, &beta, groups, eps, silu).expect("the kernel applies");
        let norm = burn::nn::GroupNorm {
            gamma: Some(Param::from_tensor(gamma)),
            beta: Some(Param::from_tensor(beta)),
            num_groups: groups,
            num_channels: channels,
            epsilon: eps,
            affine: true,
        };
        let reference = norm.forward(x);
        let reference = values(if silu { activation::silu(reference) } else { reference });
        let what = format!("group norm x [{batch}, {channels}, {h}, {w}], {groups} groups, silu {silu}");
        worst = worst.max(within(&values(ours), &reference, 1e-5, what));
    }
    // The 3-D form ([B, C, L]) the same way.
    let mut rng = NoiseRng::new(299);
    let x = normal(&mut rng, [2, 12, 33]);
    let (gamma, beta) = (normal(&mut rng, [12]), normal(&mut rng, [12]));
    let ours = values(cpu::group_norm(&x, &gamma, &beta, 4, 1e-6, false).expect("the kernel applies"));
    let reference = values(cpu::group_norm(&x.reshape([2, 12, 3, 11]), &gamma, &beta, 4, 1e-6, false).unwrap());
    assert_eq!(ours, reference, "a [B, C, L] input is normed as its [B, C, H, W] form");
    println!("group norm: worst error {worst:.3} of its tolerance over {CASES} shapes");
}

#[test]
fn attention_matches_the_tensor_op_attention_over_random_shapes() {
    let mut draw = Draw(13);
    let mut worst = 0f32;
    for case in 0..CASES {
        let heads = draw.pick(&[1, 2, 3, 5, 8]);
        let head_dim = draw.pick(&[1, 4, 7, 8, 16, 40]);
        let batch = draw.pick(&[1, 2]);
        // Up to 600 queries: with few keys the kernel's query blocks are 256, so this crosses blocks.
        let lq = draw.pick(&[1, 5, 77, 300, 600]);
        let lk = draw.pick(&[1, 2, 77, 129, 1500]);
        let inner = heads * head_dim;
        let mut rng = NoiseRng::new(300 + case as u64);
        let (q, k, v) = (normal(&mut rng, [batch, lq, inner]), normal(&mut rng, [batch, lk, inner]), normal(&mut rng, [batch, lk, inner]));

        let ours = values(cpu::attention(&q, &k, &v, heads).expect("the kernel applies"));
        let reference = values(attention_in_chunks(q, k, v, heads, None, usize::MAX));
        let what = format!("attention b {batch}, lq {lq}, lk {lk}, {heads} heads × {head_dim}");
        worst = worst.max(within(&ours, &reference, 1e-5, what));
    }
    println!("attention: worst error {worst:.3} of its tolerance over {CASES} shapes");
}

#[test]
fn linear_matches_burns_linear_over_random_shapes() {
    let mut draw = Draw(14);
    let mut worst = 0f32;
    for case in 0..CASES {
        let (batch, rows) = (draw.pick(&[1, 2]), draw.range(1, 300));
        let (d_in, d_out) = (draw.range(1, 200), draw.range(1, 150));
        let with_bias = draw.pick(&[true, true, false]);
        let mut rng = NoiseRng::new(600 + case as u64);
        let x = normal(&mut rng, [batch, rows, d_in]);
        let weight = normal(&mut rng, [d_in, d_out]);
        let bias = with_bias.then(|| normal(&mut rng, [d_out]));
        let ours = values(cpu::linear(&x, &weight, bias.as_ref()).expect("the kernel applies"));
        let layer = burn::nn::Linear { weight: Param::from_tensor(weight), bias: bias.map(Param::from_tensor) };
        let reference = values(layer.forward(x));
        let what = format!("linear x [{batch}, {rows}, {d_in}] → {d_out}, bias {with_bias}");
        worst = worst.max(within(&ours, &reference, 2e-7 * (d_in as f32).sqrt(), what));
    }
    println!("linear: worst error {worst:.3} of its tolerance over {CASES} shapes");
}

#[test]
fn kernels_give_the_same_bits_whatever_the_thread_count() {
    let mut rng = NoiseRng::new(400);
    let x = normal(&mut rng, [2, 48, 40, 40]);
    let weight = normal(&mut rng, [64, 48, 3, 3]);
    let bias = normal(&mut rng, [64]);
    let (gamma, beta) = (normal(&mut rng, [48]), normal(&mut rng, [48]));
    let (q, k, v) = (normal(&mut rng, [2, 1600, 64]), normal(&mut rng, [2, 1600, 64]), normal(&mut rng, [2, 1600, 64]));
    let residual = normal(&mut rng, [2, 64, 80, 80]);
    let fused = cpu::ConvFused { upsample: 2, residual: Some(&residual), relu: true, ..cpu::ConvFused::default() };
    let run = || {
        (
            values(cpu::conv2d(&x, &weight, Some(&bias), 1, 1, cpu::ConvFused::default()).unwrap()),
            values(cpu::conv2d(&x, &weight, Some(&bias), 1, 1, fused).unwrap()),
            values(cpu::conv2d(&x, &weight, None, 2, 1, cpu::ConvFused::default()).unwrap()),
            values(cpu::group_norm(&x, &gamma, &beta, 8, 1e-5, true).unwrap()),
            values(cpu::attention(&q, &k, &v, 2).unwrap()),
            values(cpu::linear(&q, &weight.clone().reshape([64, 432]).slice([0..64, 0..100]), None).unwrap()),
        )
    };
    let one = with_threads(1, run);
    for threads in [2, 3] {
        assert!(with_threads(threads, run) == one, "{threads} threads changed a kernel's result");
    }
    assert!(run() == one, "the default pool changed a kernel's result");
}

#[test]
fn kernels_decline_what_they_do_not_cover() {
    let mut rng = NoiseRng::new(500);
    let x = normal(&mut rng, [1, 4, 5, 5]);
    // A kernel wider than the padded input, and a weight whose input channels differ from x's.
    assert!(cpu::conv2d(&x, &normal(&mut rng, [2, 4, 7, 7]), None, 1, 0, cpu::ConvFused::default()).is_none());
    assert!(cpu::conv2d(&x, &normal(&mut rng, [2, 3, 3, 3]), None, 1, 1, cpu::ConvFused::default()).is_none());
    // A residual whose shape is not the output's.
    let residual = normal(&mut rng, [1, 2, 4, 5]);
    let fused = cpu::ConvFused { residual: Some(&residual), ..cpu::ConvFused::default() };
    assert!(cpu::conv2d(&x, &normal(&mut rng, [2, 4, 3, 3]), None, 1, 1, fused).is_none());
    // Groups that do not divide the channels.
    let (gamma, beta) = (normal(&mut rng, [4]), normal(&mut rng, [4]));
    assert!(cpu::group_norm(&x, &gamma, &beta, 3, 1e-5, false).is_none());
    // Heads that do not divide the width; keys of another width.
    let q = normal(&mut rng, [1, 3, 6]);
    assert!(cpu::attention(&q, &q, &q, 4).is_none());
    assert!(cpu::attention(&q, &normal(&mut rng, [1, 3, 4]), &normal(&mut rng, [1, 3, 4]), 2).is_none());
    // Under autodiff the kernels step aside (they have no backward pass).
    let ad = Device::flex().autodiff();
    let x_ad = Tensor::<4>::from_data(TensorData::new(rng.normals(100), [1, 4, 5, 5]), &ad);
    let w_ad = Tensor::<4>::from_data(TensorData::new(rng.normals(72), [2, 4, 3, 3]), &ad);
    assert!(cpu::conv2d(&x_ad, &w_ad, None, 1, 1, cpu::ConvFused::default()).is_none());
}
