//! Our own CPU kernels, for burn's CPU backend (flex) natively and in wasm (SIMD128), where flex's general
//! operations are slow for a diffusion model: convolution (im2col in the NCHW layout the models keep, one
//! GEMM per column chunk, bias added by the GEMM), GroupNorm with the following SiLU in one pass, linear
//! layers (one GEMM, bias inside), and attention in query blocks (scale applied in the score GEMM, softmax
//! normalised on the output) that never holds a whole score matrix. Each has a tensor-op reference
//! elsewhere (burn's `conv2d`, `GroupNorm`, `Linear`, the models' chunked tensor-op attention), which runs
//! on every other backend and under autodiff, and which the kernels are tested against
//! (tests/suite/kernel_cpu.rs).
//!
//! Route: a burn backend extension on `Flex` (`#[backend_extension(Flex)]`): the crate's backend-less
//! tensors are unwrapped with `Tensor::into_dispatch`, and the generated `Dispatch` implementation hands
//! our `Flex` implementation the `FlexTensor`s, whose host storage the kernels read in place.
//!
//! Determinism: every split of the work (column chunks, query blocks, norm groups, the GEMM's own output
//! tiles) depends only on the shapes, and no reduction is split across threads, so a result does not
//! depend on the thread count or on scheduling.

mod attention;
mod conv2d;
mod conv_shape;
#[cfg(target_arch = "x86_64")]
mod direct;
mod group_norm;
mod linear;
mod math;
mod winograd;

use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, DispatchDevice, Flex, backend_extension};
use burn::tensor::{DType, Device, Tensor};

/// The custom operations, on the CPU backend only. Arguments are validated by the public wrappers below.
#[backend_extension(Flex)]
pub trait CpuKernelOps: Backend {
    /// `relu(conv2d(upsample(x)) + bias + residual)`: `x` [B, C_in, H, W] (upsampled by nearest by `upsample`
    /// first), `weight` [C_out, C_in, k, k], `bias` [C_out], `residual` [B, C_out, H', W'] and `winograd`
    /// (the weight transformed for the Winograd path, [16, C_out, C_in]); `has` says which of the last
    /// three are given ([bias, residual, winograd]; one-element stand-ins otherwise), the ReLU when `relu`.
    #[allow(clippy::too_many_arguments)]
    fn cpu_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        winograd: FloatTensor<Self>,
        geometry: [usize; 3],
        has: [bool; 3],
        relu: bool,
    ) -> FloatTensor<Self>;

    /// `weight` [C_out, C_in, 3, 3] transformed for the Winograd path: [16, C_out, C_in].
    fn cpu_winograd_weight(weight: FloatTensor<Self>) -> FloatTensor<Self>;

    /// `x` [B, C, …], `gamma` and `beta` [C].
    fn cpu_group_norm(x: FloatTensor<Self>, gamma: FloatTensor<Self>, beta: FloatTensor<Self>, groups: usize, eps: f64, silu: bool) -> FloatTensor<Self>;

    /// `x` [N, d_in] (any leading shape, flattened), `weight` [d_in, d_out] (burn's `Linear` layout), `bias`
    /// [d_out] (or an empty tensor for none).
    fn cpu_linear(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>, has_bias: bool) -> FloatTensor<Self>;

    /// q [B, Lq, H·d], k and v [B, Lk, H·d].
    fn cpu_attention(q: FloatTensor<Self>, k: FloatTensor<Self>, v: FloatTensor<Self>, heads: usize) -> FloatTensor<Self>;
}

impl CpuKernelOps for Flex {
    fn cpu_conv2d(x: FlexTensor, weight: FlexTensor, bias: FlexTensor, residual: FlexTensor, winograd: FlexTensor, geometry: [usize; 3], has: [bool; 3], relu: bool) -> FlexTensor {
        let [stride, padding, upsample] = geometry;
        let [has_bias, has_residual, has_winograd] = has;
        let (x, weight, bias, residual, winograd) = (x.to_contiguous(), weight.to_contiguous(), bias.to_contiguous(), residual.to_contiguous(), winograd.to_contiguous());
        let xs = x.layout().shape().to_vec();
        let ws = weight.layout().shape().to_vec();
        let shape = conv_shape::Shape { batch: xs[0], c_in: xs[1], h: xs[2] * upsample, w: xs[3] * upsample, c_out: ws[0], kernel: ws[2], stride, padding, upsample };
        let epilogue = conv_shape::Epilogue {
            bias: has_bias.then(|| storage(&bias)),
            residual: has_residual.then(|| storage(&residual)),
            relu,
            winograd: has_winograd.then(|| storage(&winograd)),
        };
        let out = conv2d::conv2d(storage(&x), storage(&weight), epilogue, &shape);
        from_vec(out, vec![shape.batch, shape.c_out, shape.out_h(), shape.out_w()])
    }

    fn cpu_winograd_weight(weight: FlexTensor) -> FlexTensor {
        let weight = weight.to_contiguous();
        let [c_out, c_in] = [weight.layout().shape()[0], weight.layout().shape()[1]];
        from_vec(winograd::transform_weights(storage(&weight)), vec![16, c_out, c_in])
    }

    fn cpu_group_norm(x: FlexTensor, gamma: FlexTensor, beta: FlexTensor, groups: usize, eps: f64, silu: bool) -> FlexTensor {
        let (x, gamma, beta) = (x.to_contiguous(), gamma.to_contiguous(), beta.to_contiguous());
        let shape = x.layout().shape().to_vec();
        let per_row = shape[2..].iter().product();
        let out = group_norm::group_norm(storage(&x), storage(&gamma), storage(&beta), [shape[0], shape[1], per_row], groups, eps as f32, silu);
        from_vec(out, shape)
    }

    fn cpu_linear(x: FlexTensor, weight: FlexTensor, bias: FlexTensor, has_bias: bool) -> FlexTensor {
        let (x, weight, bias) = (x.to_contiguous(), weight.to_contiguous(), bias.to_contiguous());
        let mut shape = x.layout().shape().to_vec();
        let [d_in, d_out] = [weight.layout().shape()[0], weight.layout().shape()[1]];
        let rows = x.layout().num_elements() / d_in.max(1);
        let out = linear::linear(storage(&x), storage(&weight), has_bias.then(|| storage(&bias)), [rows, d_in, d_out]);
        *shape.last_mut().expect("checked: at least 1-D") = d_out;
        from_vec(out, shape)
    }

    fn cpu_attention(q: FlexTensor, k: FlexTensor, v: FlexTensor, heads: usize) -> FlexTensor {
        let (q, k, v) = (q.to_contiguous(), k.to_contiguous(), v.to_contiguous());
        let [b, lq, inner] = dims3(&q);
        let lk = dims3(&k)[1];
        let out = attention::attention(storage(&q), storage(&k), storage(&v), attention::Shape { batch: b, lq, lk, heads, head_dim: inner / heads });
        from_vec(out, vec![b, lq, inner])
    }
}

/// A contiguous f32 tensor's elements, in place.
fn storage(t: &FlexTensor) -> &[f32] {
    let n = t.layout().num_elements();
    let start = t.layout().start_offset();
    &t.storage::<f32>()[start..start + n]
}

fn from_vec(values: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
    FlexTensor::from_data(burn::tensor::TensorData::new(values, shape))
}

fn dims3(t: &FlexTensor) -> [usize; 3] {
    let s = t.layout().shape();
    [s[0], s[1], s[2]]
}

/// Whether these kernels run for tensors on `device`: the CPU backend without autodiff (the extension has no
/// backward pass; training uses the tensor-op references).
pub fn cpu_kernels_available(device: &Device) -> bool {
    !device.is_autodiff() && matches!(device.as_dispatch(), DispatchDevice::Flex(_))
}

/// An optional operand of an extension call (a bias, a residual): the tensor, or a one-element stand-in the
/// kernel ignores (the extension's tensor arguments cannot be optional; a `has_…` flag says which).
fn optional_operand<const D: usize>(t: Option<&Tensor<D>>, device: &Device) -> FloatTensor<Dispatch> {
    t.cloned().unwrap_or_else(|| Tensor::<D>::zeros([1; D], device)).into_dispatch()
}

/// Whether no operand of a call is tracked by autodiff. The first operand's device decides the backend,
/// but under fine-tuning's denoising term a plain input meets autodiff operands (the UNet's image tokens
/// and trained text contexts), and the extension has no backward pass.
fn untracked(operands: &[bool]) -> bool {
    !operands.iter().any(|&tracked| tracked)
}

fn all_f32(tensors: &[DType]) -> bool {
    tensors.iter().all(|&d| d == DType::F32)
}

/// What a convolution does around the product, in the same pass on the CPU kernels:
/// `relu(conv2d(upsample(x), weight) + bias + residual)`.
#[derive(Debug, Clone, Copy)]
pub struct ConvFused<'a> {
    /// Nearest upsampling of the input by this factor first (1: none).
    pub upsample: usize,
    /// Added to the output (its shape), before the ReLU.
    pub residual: Option<&'a Tensor<4>>,
    pub relu: bool,
    /// [`winograd_weight`] of the weight, made once at load (the kernel makes it per call otherwise).
    pub winograd: Option<&'a Tensor<3>>,
}

impl Default for ConvFused<'_> {
    fn default() -> Self {
        Self { upsample: 1, residual: None, relu: false, winograd: None }
    }
}

/// The weight of a 3×3 convolution transformed for the Winograd path ([16, C_out, C_in]), where the CPU
/// kernels would take that path for it (the wasm build's CPU backend, stride 1, padding 1, at least 16
/// channels each way: src/kernels/cpu/winograd.rs); `None` elsewhere. Made once, when a model is loaded.
pub fn winograd_weight(weight: &Tensor<4>, stride: usize, padding: usize) -> Option<Tensor<3>> {
    let [c_out, c_in, kh, kw] = weight.dims();
    let shape = conv_shape::Shape { batch: 1, c_in, h: kh, w: kw, c_out, kernel: kh, stride, padding, upsample: 1 };
    let applies = cpu_kernels_available(&weight.device()) && weight.dtype() == DType::F32 && kh == kw && winograd::applies(&shape);
    applies.then(|| Tensor::from_dispatch(<Dispatch as CpuKernelOps>::cpu_winograd_weight(weight.clone().into_dispatch())))
}

/// `conv2d(x, weight, bias)` with square kernel, symmetric padding and stride, groups and dilation 1, and
/// what `fused` adds, on the CPU kernels; `None` where they do not apply (another backend, autodiff, not
/// f32, a kernel wider than the padded input, a residual of another shape), and the caller uses burn's ops.
pub fn conv2d(x: &Tensor<4>, weight: &Tensor<4>, bias: Option<&Tensor<1>>, stride: usize, padding: usize, fused: ConvFused) -> Option<Tensor<4>> {
    let [batch, c_in, h, w] = x.dims();
    let [c_out, wc_in, kh, kw] = weight.dims();
    let (h, w) = (h * fused.upsample, w * fused.upsample);
    let applies = cpu_kernels_available(&x.device())
        && untracked(&[weight.is_autodiff(), bias.is_some_and(|b| b.is_autodiff()), fused.residual.is_some_and(|r| r.is_autodiff())])
        && all_f32(&[x.dtype(), weight.dtype()])
        && bias.is_none_or(|b| b.dtype() == DType::F32 && b.dims() == [c_out])
        && wc_in == c_in
        && kh == kw
        && kh >= 1
        && stride >= 1
        && fused.upsample >= 1
        && h + 2 * padding >= kh
        && w + 2 * padding >= kw;
    if !applies {
        return None;
    }
    let out_shape = [batch, c_out, (h + 2 * padding - kh) / stride + 1, (w + 2 * padding - kw) / stride + 1];
    if fused.residual.is_some_and(|r| r.dtype() != DType::F32 || r.dims() != out_shape)
        || fused.winograd.is_some_and(|u| u.dtype() != DType::F32 || u.dims() != [16, c_out, c_in])
    {
        return None;
    }
    let out = <Dispatch as CpuKernelOps>::cpu_conv2d(
        x.clone().into_dispatch(),
        weight.clone().into_dispatch(),
        optional_operand(bias, &x.device()),
        optional_operand(fused.residual, &x.device()),
        optional_operand(fused.winograd, &x.device()),
        [stride, padding, fused.upsample],
        [bias.is_some(), fused.residual.is_some(), fused.winograd.is_some()],
        fused.relu,
    );
    Some(Tensor::from_dispatch(out))
}

/// GroupNorm (affine) over `x` [B, C, …], followed by SiLU when `silu`; `None` where the kernel does not
/// apply (as for [`conv2d`], or a group count that does not divide C).
pub fn group_norm<const D: usize>(x: &Tensor<D>, gamma: &Tensor<1>, beta: &Tensor<1>, groups: usize, eps: f64, silu: bool) -> Option<Tensor<D>> {
    let dims = x.dims();
    let applies = D >= 2
        && cpu_kernels_available(&x.device())
        && untracked(&[gamma.is_autodiff(), beta.is_autodiff()])
        && all_f32(&[x.dtype(), gamma.dtype(), beta.dtype()])
        && groups >= 1
        && dims[1] % groups == 0
        && gamma.dims() == [dims[1]]
        && beta.dims() == [dims[1]];
    if !applies {
        return None;
    }
    let out = <Dispatch as CpuKernelOps>::cpu_group_norm(
        x.clone().into_dispatch(),
        gamma.clone().into_dispatch(),
        beta.clone().into_dispatch(),
        groups,
        eps,
        silu,
    );
    Some(Tensor::from_dispatch(out))
}

/// `x·W + b` over the last dimension of `x` (`weight` [d_in, d_out], burn's `Linear` layout); `None` where
/// the kernel does not apply.
pub fn linear<const D: usize>(x: &Tensor<D>, weight: &Tensor<2>, bias: Option<&Tensor<1>>) -> Option<Tensor<D>> {
    let [d_in, d_out] = weight.dims();
    let applies = D >= 1
        && cpu_kernels_available(&x.device())
        && untracked(&[weight.is_autodiff(), bias.is_some_and(|b| b.is_autodiff())])
        && all_f32(&[x.dtype(), weight.dtype()])
        && bias.is_none_or(|b| b.dtype() == DType::F32 && b.dims() == [d_out])
        && x.dims()[D - 1] == d_in
        && d_in > 0;
    if !applies {
        return None;
    }
    let out = <Dispatch as CpuKernelOps>::cpu_linear(x.clone().into_dispatch(), weight.clone().into_dispatch(), optional_operand(bias, &x.device()), bias.is_some());
    Some(Tensor::from_dispatch(out))
}

/// Per-head scaled dot-product attention without a mask (q [B, Lq, H·d], k and v [B, Lk, H·d]); `None`
/// where the kernel does not apply.
pub fn attention(q: &Tensor<3>, k: &Tensor<3>, v: &Tensor<3>, heads: usize) -> Option<Tensor<3>> {
    let [b, _, inner] = q.dims();
    let [kb, lk, k_inner] = k.dims();
    let applies = cpu_kernels_available(&q.device())
        && untracked(&[k.is_autodiff(), v.is_autodiff()])
        && all_f32(&[q.dtype(), k.dtype(), v.dtype()])
        && heads >= 1
        && inner % heads == 0
        && inner > 0
        && kb == b
        && k_inner == inner
        && lk >= 1
        && v.dims() == k.dims();
    if !applies {
        return None;
    }
    let out = <Dispatch as CpuKernelOps>::cpu_attention(q.clone().into_dispatch(), k.clone().into_dispatch(), v.clone().into_dispatch(), heads);
    Some(Tensor::from_dispatch(out))
}

/// Runs `f(i, chunk)` over the `chunk`-sized pieces of `data`: on rayon's pool natively, in order in wasm
/// (one thread).
fn for_each_chunk<T: Send>(data: &mut [T], chunk: usize, f: impl Fn(usize, &mut [T]) + Sync + Send) {
    #[cfg(not(target_arch = "wasm32"))]
    {
        use rayon::prelude::*;
        data.par_chunks_mut(chunk.max(1)).enumerate().for_each(|(i, c)| f(i, c));
    }
    #[cfg(target_arch = "wasm32")]
    data.chunks_mut(chunk.max(1)).enumerate().for_each(|(i, c)| f(i, c));
}

/// A zeroed buffer of `len` floats for a kernel to write before anything reads it. Natively on Linux a
/// large one is asked to be backed by 2 MiB pages (transparent huge pages in "madvise" mode): a fresh
/// 64 MiB output of the TAESD decoder otherwise takes 16,384 page faults as it is first written.
fn fresh_output(len: usize) -> Vec<f32> {
    let out = vec![0.0f32; len];
    #[cfg(target_os = "linux")]
    if len * 4 >= 4 << 20 {
        let start = out.as_ptr() as usize & !4095;
        let end = out.as_ptr() as usize + len * 4;
        // SAFETY: advice only, which changes no memory's contents: the range is this buffer's pages (the
        // first rounded down to its page start, which may also hold the allocator's header or another
        // allocation; the advice does them no harm); an error leaves the default pages.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
    }
    out
}

/// Runs `f(i)` for `i` in `0..n`, in parallel natively.
fn for_each_index(n: usize, f: impl Fn(usize) + Sync + Send) {
    #[cfg(not(target_arch = "wasm32"))]
    {
        use rayon::prelude::*;
        (0..n).into_par_iter().for_each(f);
    }
    #[cfg(target_arch = "wasm32")]
    (0..n).for_each(f);
}

/// The GEMM's own threads for one large product: all cores natively, none in wasm.
fn gemm_threads() -> gemm::Parallelism {
    #[cfg(not(target_arch = "wasm32"))]
    return gemm::Parallelism::Rayon(0);
    #[cfg(target_arch = "wasm32")]
    return gemm::Parallelism::None;
}

/// A raw pointer to an input that parallel tasks read.
#[derive(Clone, Copy)]
struct SharedIn(*const f32);
// SAFETY: only read, while the buffer it points into outlives the parallel loop that uses it.
unsafe impl Send for SharedIn {}
unsafe impl Sync for SharedIn {}

/// A raw pointer that parallel tasks writing disjoint parts of one buffer may share.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: users write disjoint regions only (each task its own rows / columns), and the buffer outlives the
// parallel loop that uses the pointer.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

/// `dst[m×n] (+)= beta · lhs[m×k] · rhs[k×n]`, each matrix given by its pointer and (row, column) strides in
/// elements; `accumulate` keeps what `dst` holds (the bias). The one place that calls the GEMM crate.
///
/// # Safety
/// Every pointer must be valid for the elements its strides and sizes reach, and `dst` must not overlap the
/// inputs or another task's output.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_f32(
    [m, n, k]: [usize; 3],
    dst: (*mut f32, usize, usize),
    accumulate: bool,
    lhs: (*const f32, usize, usize),
    rhs: (*const f32, usize, usize),
    beta: f32,
    parallelism: gemm::Parallelism,
) {
    let s = |x: usize| x as isize;
    // SAFETY: forwarded from the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.0,
            s(dst.2),
            s(dst.1),
            accumulate,
            lhs.0,
            s(lhs.2),
            s(lhs.1),
            rhs.0,
            s(rhs.2),
            s(rhs.1),
            1.0,
            beta,
            false,
            false,
            false,
            parallelism,
        );
    }
}
