//! The fused decoupled cross-attention kernel (shaders/decoupled_attention.wgsl) on the native wgpu
//! device against the tensor-op form of the same formula (DESIGN.md §2):
//! `w_c · Attn(q, k_c, v_c) + w_s · Attn(q, k_s, v_s)` (models::attention::decoupled_attention_reference), computed on
//! the CPU backend as an independent reference. Tolerance: max abs error ≤ 1e-5 on standard-normal
//! inputs (f32 throughout; only the order of the sums and the exp implementation differ).
//! Run with --nocapture to see the worst errors.

use std::time::Instant;

use burn::tensor::{Device, Tensor, TensorData};
use crate::common::{Draw, block_on, max_abs_err};
use control_clip::models::attention::decoupled_attention_reference;
use control_clip::kernels::{decoupled_attention_fused, fused_attention_available};
use control_clip::models::nn::scaled_dot_product_attention;
use control_clip::rng::NoiseRng;
use control_clip::{BackendKind, Error, init_device, read_f32};

const TOLERANCE: f32 = 1e-5;

fn wgpu() -> Device {
    block_on(init_device(BackendKind::Wgpu)).expect("the wgpu device (lavapipe here)")
}

/// One problem: host values, so that the same inputs go to both devices.
#[derive(Debug, Clone)]
struct Case {
    batch: usize,
    heads: usize,
    head_dim: usize,
    lq: usize,
    lc: usize,
    ls: usize,
    weights: Vec<f32>,
    q: Vec<f32>,
    k_c: Vec<f32>,
    v_c: Vec<f32>,
    k_s: Vec<f32>,
    v_s: Vec<f32>,
}

impl Case {
    fn new(seed: u64, [batch, heads, head_dim, lq, lc, ls]: [usize; 6], weights: Vec<f32>) -> Self {
        assert_eq!(weights.len(), 2 * batch);
        let mut rng = NoiseRng::new(seed);
        let c = heads * head_dim;
        Case {
            batch,
            heads,
            head_dim,
            lq,
            lc,
            ls,
            weights,
            q: rng.normals(batch * lq * c),
            k_c: rng.normals(batch * lc * c),
            v_c: rng.normals(batch * lc * c),
            k_s: rng.normals(batch * ls * c),
            v_s: rng.normals(batch * ls * c),
        }
    }

    fn channels(&self) -> usize {
        self.heads * self.head_dim
    }

    fn tensor(&self, values: &[f32], len: usize, device: &Device) -> Tensor<3> {
        Tensor::from_data(TensorData::new(values.to_vec(), [self.batch, len, self.channels()]), device)
    }

    fn inputs(&self, device: &Device) -> [Tensor<3>; 5] {
        [
            self.tensor(&self.q, self.lq, device),
            self.tensor(&self.k_c, self.lc, device),
            self.tensor(&self.v_c, self.lc, device),
            self.tensor(&self.k_s, self.ls, device),
            self.tensor(&self.v_s, self.ls, device),
        ]
    }

    fn weights(&self, device: &Device) -> Tensor<2> {
        Tensor::from_data(TensorData::new(self.weights.clone(), [self.batch, 2]), device)
    }

    fn fused(&self, device: &Device) -> Vec<f32> {
        let [q, k_c, v_c, k_s, v_s] = self.inputs(device);
        let out = decoupled_attention_fused(q, k_c, v_c, k_s, v_s, self.weights(device), self.heads)
            .unwrap_or_else(|e| panic!("fused kernel refused {}: {e}", self.describe()));
        let (shape, values) = block_on(read_f32(out)).expect("read-back");
        assert_eq!(shape, [self.batch, self.lq, self.channels()], "{}", self.describe());
        values
    }

    /// The tensor-op form (models::attention::decoupled_attention_reference), per batch row weights, on the CPU backend.
    fn reference(&self) -> Vec<f32> {
        let device = Device::flex();
        let [q, k_c, v_c, k_s, v_s] = self.inputs(&device);
        let out = decoupled_attention_reference(q, k_c, v_c, k_s, v_s, self.weights(&device), self.heads);
        block_on(read_f32(out)).expect("read-back").1
    }

    /// Plain attention over the category context only, the CPU backend.
    fn plain_category_attention(&self) -> Vec<f32> {
        let device = Device::flex();
        let [q, k_c, v_c, _, _] = self.inputs(&device);
        block_on(read_f32(scaled_dot_product_attention(q, k_c, v_c, self.heads, None))).expect("read-back").1
    }

    fn describe(&self) -> String {
        format!(
            "batch {} heads {} head_dim {} lq {} lc {} ls {} weights {:?}",
            self.batch, self.heads, self.head_dim, self.lq, self.lc, self.ls, self.weights
        )
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    max_abs_err(a, b)
}

/// Checks one case, returns its max abs error.
fn check(case: &Case, device: &Device) -> f32 {
    let fused = case.fused(device);
    let err = max_abs_diff(&fused, &case.reference());
    assert!(err <= TOLERANCE, "max abs error {err:e} > {TOLERANCE:e} for {}", case.describe());
    err
}

#[test]
fn fused_matches_reference_on_random_draws() {
    let device = wgpu();
    assert!(fused_attention_available(&device));
    let start = Instant::now();
    let mut draw = Draw(0x00C0_FFEE);
    let weight_values = [0.0f32, 1.0, -1.0, 0.5, -0.75, 2.25, 1.5, -2.0];
    let mut worst = (0.0f32, String::new());
    let mut worst_per_dim = Vec::new();
    for head_dim in [1, 3, 8, 16, 40, 64, 80, 160] {
        let mut worst_dim = 0.0f32;
        for i in 0..5 {
            let batch = draw.range(1, 2);
            let heads = draw.range(1, 8);
            let lq = draw.range(1, 300);
            // 77 (a CLIP context) often, otherwise anything in 1..=80.
            let mut len = || if draw.range(0, 3) == 0 { 77 } else { draw.range(1, 80) };
            let (lc, ls) = (len(), len());
            let weights = (0..2 * batch).map(|_| draw.pick(&weight_values)).collect();
            let case = Case::new(head_dim as u64 * 100 + i, [batch, heads, head_dim, lq, lc, ls], weights);
            let err = check(&case, &device);
            worst_dim = worst_dim.max(err);
            if err >= worst.0 {
                worst = (err, case.describe());
            }
        }
        worst_per_dim.push((head_dim, worst_dim));
    }
    println!("random draws: worst max abs error per head dim {worst_per_dim:?}");
    println!("random draws: worst overall {:e} ({})", worst.0, worst.1);
    println!("random draws: {:.1} s", start.elapsed().as_secs_f64());
}

#[test]
fn fused_edge_cases() {
    let device = wgpu();
    let start = Instant::now();
    let mut worst = 0.0f32;

    // Weights (1, 0) are ordinary attention over the category context, per batch row.
    for (i, head_dim) in [1usize, 40, 64, 160].into_iter().enumerate() {
        let case = Case::new(1000 + i as u64, [2, 4, head_dim, 37, 77, 77], vec![1.0, 0.0, 1.0, 0.0]);
        let fused = case.fused(&device);
        let err = max_abs_diff(&fused, &case.plain_category_attention());
        assert!(err <= TOLERANCE, "w = (1, 0) vs plain attention: {err:e} for {}", case.describe());
        worst = worst.max(err);
    }
    // Both weights zero give zeros; mixed rows (the classifier-free-guidance layout).
    worst = worst.max(check(&Case::new(1010, [2, 2, 8, 5, 3, 4], vec![0.0, 0.0, 0.0, 0.0]), &device));
    worst = worst.max(check(&Case::new(1011, [2, 8, 40, 64, 77, 77], vec![1.0, 0.0, 0.8, 0.6]), &device));
    // One key, one query; contexts longer than one chunk of scores (80) on either side.
    worst = worst.max(check(&Case::new(1020, [1, 1, 3, 1, 1, 1], vec![0.3, -1.2]), &device));
    worst = worst.max(check(&Case::new(1021, [2, 3, 16, 45, 200, 1], vec![1.0, 0.5, -0.5, 2.0]), &device));
    worst = worst.max(check(&Case::new(1022, [1, 2, 64, 33, 81, 161], vec![0.7, 0.3]), &device));
    worst = worst.max(check(&Case::new(1023, [1, 1, 160, 17, 240, 77], vec![-1.0, 1.0]), &device));
    println!("edge cases: worst max abs error {worst:e} ({:.1} s)", start.elapsed().as_secs_f64());

    // More workgroups than one dispatch dimension holds (65535): 8 heads × ⌈262176 / 32⌉ tiles.
    let start = Instant::now();
    let case = Case::new(1030, [1, 8, 1, 262_176, 2, 3], vec![0.6, 0.4]);
    let err = check(&case, &device);
    println!("65544 workgroups: max abs error {err:e} ({:.1} s)", start.elapsed().as_secs_f64());
}

/// Inputs that are pending results of (fused) tensor ops, non-contiguous views and narrowed slices,
/// and an output that feeds further ops: the extension has to take its place in burn's fusion stream.
#[test]
fn fused_inside_a_graph_of_tensor_ops() {
    let device = wgpu();
    let case = Case::new(4000, [2, 4, 40, 33, 77, 20], vec![1.0, 0.0, 0.8, 0.6]);
    let [q, k_c, v_c, k_s, v_s] = case.inputs(&device);
    let c = case.channels();
    // q through a chain of element-wise ops (fusion keeps them pending).
    let q = (q * 2.0 + 1.0 - 1.0) * 0.5;
    // k_c as a non-contiguous view: [Lc, B, C] contiguous, swapped to [B, Lc, C].
    let k_c = k_c.swap_dims(0, 1).into_data();
    let k_c = Tensor::<3>::from_data(k_c, &device).swap_dims(0, 1);
    // v_c narrowed out of a wider tensor along the channels (a strided view).
    let v_c = Tensor::cat(vec![v_c, Tensor::zeros([2, 77, 8], &device)], 2).slice([0..2, 0..77, 0..c]);
    let w = case.weights(&device) * 1.0;
    let out = decoupled_attention_fused(q, k_c, v_c, k_s, v_s, w, case.heads).expect("fused kernel");
    let out = out * 3.0 - 1.0;
    let (_, values) = block_on(read_f32(out)).expect("read-back");
    let expected: Vec<f32> = case.reference().iter().map(|v| v * 3.0 - 1.0).collect();
    let err = max_abs_diff(&values, &expected);
    println!("inside a graph of tensor ops: max abs error {err:e}");
    assert!(err <= 3.0 * TOLERANCE, "max abs error {err:e}");
}

#[test]
fn wrong_shapes_are_errors_naming_the_tensor() {
    let device = wgpu();
    let case = Case::new(2000, [2, 4, 8, 5, 6, 7], vec![1.0, 0.5, 1.0, 0.0]);
    let expect_invalid = |result: control_clip::Result<Tensor<3>>, name: &str| match result {
        Err(Error::Invalid { what, message }) => {
            assert!(what.contains(&format!("`{name}`")), "error names `{what}`, expected {name}: {message}");
        }
        Err(other) => panic!("expected an invalid-argument error naming {name}, got {other}"),
        Ok(_) => panic!("expected an error naming {name}"),
    };
    let [q, k_c, v_c, k_s, v_s] = case.inputs(&device);
    let w = case.weights(&device);

    // v_s with another length than k_s.
    let short_v_s = v_s.clone().slice([0..2, 0..6, 0..32]);
    expect_invalid(
        decoupled_attention_fused(q.clone(), k_c.clone(), v_c.clone(), k_s.clone(), short_v_s, w.clone(), 4),
        "v_s",
    );
    // k_c with other channels than q.
    let narrow_k_c = k_c.clone().slice([0..2, 0..6, 0..16]);
    expect_invalid(
        decoupled_attention_fused(q.clone(), narrow_k_c, v_c.clone(), k_s.clone(), v_s.clone(), w.clone(), 4),
        "k_c",
    );
    // k_s with another batch.
    let one_row_k_s = k_s.clone().slice([0..1, 0..7, 0..32]);
    expect_invalid(
        decoupled_attention_fused(q.clone(), k_c.clone(), v_c.clone(), one_row_k_s, v_s.clone(), w.clone(), 4),
        "k_s",
    );
    // Weights [B, 1].
    let one_weight = w.clone().slice([0..2, 0..1]);
    expect_invalid(
        decoupled_attention_fused(q.clone(), k_c.clone(), v_c.clone(), k_s.clone(), v_s.clone(), one_weight, 4),
        "weights",
    );
    // 32 channels do not split into 5 heads.
    expect_invalid(decoupled_attention_fused(q.clone(), k_c.clone(), v_c.clone(), k_s.clone(), v_s.clone(), w.clone(), 5), "q");
    expect_invalid(decoupled_attention_fused(q, k_c, v_c, k_s, v_s, w, 0), "heads");
}

#[test]
fn other_backends_are_refused_with_a_device_error() {
    let device = Device::flex();
    assert!(!fused_attention_available(&device));
    let case = Case::new(3000, [1, 2, 4, 3, 5, 5], vec![1.0, 0.5]);
    let [q, k_c, v_c, k_s, v_s] = case.inputs(&device);
    match decoupled_attention_fused(q, k_c, v_c, k_s, v_s, case.weights(&device), 2) {
        Err(Error::Device { .. }) => {}
        Err(other) => panic!("expected a device error, got {other}"),
        Ok(_) => panic!("the CPU backend has no fused kernel"),
    }
}

/// The kernel's f16 variant (`enable f16`: q, k, v and the output stored as f16, everything inside in
/// f32) against the f32 reference on the same inputs rounded to f16. Tolerance 2e-3: the inputs are the
/// same f16 values on both sides, so what differs is the output's one rounding to f16 (2⁻¹¹ relative:
/// ≤ 1.5e-3 for outputs up to 3 in magnitude) beside the f32 sums' order (1e-5).
#[test]
fn fused_f16_variant_matches_the_reference_on_the_same_f16_inputs() {
    let device = wgpu();
    if !control_clip::device::f16_available(&device) {
        println!("f16 variant: skipped, this wgpu device has no SHADER_F16");
        return;
    }
    let round = |v: &[f32]| v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect::<Vec<f32>>();
    let mut worst = 0.0f32;
    for (i, (shape, weights)) in [
        ([2, 8, 40, 64, 77, 77], vec![1.0, 0.0, 0.8, 0.6]),
        ([1, 2, 64, 33, 81, 161], vec![0.7, 0.3]),
        ([1, 3, 3, 17, 5, 9], vec![-1.0, 1.5]),
        ([2, 5, 160, 20, 77, 10], vec![0.0, 1.0, 1.2, -0.4]),
    ]
    .into_iter()
    .enumerate()
    {
        let mut case = Case::new(5000 + i as u64, shape, weights);
        for v in [&mut case.q, &mut case.k_c, &mut case.v_c, &mut case.k_s, &mut case.v_s] {
            *v = round(v);
        }
        let [q, k_c, v_c, k_s, v_s] = case.inputs(&device).map(|t| t.cast(burn::tensor::FloatDType::F16));
        let out = decoupled_attention_fused(q, k_c, v_c, k_s, v_s, case.weights(&device), case.heads).unwrap();
        assert_eq!(out.dtype(), burn::tensor::DType::F16, "the f16 variant writes f16");
        let (_, fused) = block_on(read_f32(out.cast(burn::tensor::FloatDType::F32))).unwrap();
        let err = max_abs_diff(&fused, &case.reference());
        assert!(err <= 2e-3, "f16 variant: max abs error {err:e} for {}", case.describe());
        worst = worst.max(err);
    }
    println!("f16 variant: worst max abs error {worst:e}");
}
