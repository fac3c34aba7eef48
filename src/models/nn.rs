//! Loading burn's layers from PyTorch-layout tensors, and the activations checkpoints name.

use burn::module::Param;
use burn::nn::{LayerNorm, LayerNormConfig, Linear};
use burn::tensor::module::interpolate;
use burn::tensor::ops::{ConvOptions, InterpolateMode, InterpolateOptions};
use burn::tensor::{DType, Device, FloatDType, Tensor, TensorData, activation};

pub use crate::device::cast_to;
use crate::error::{Error, Result};
pub use crate::kernels::cpu::ConvFused;
use crate::profile::{self, Section};
use crate::weights::WeightsView;

/// `nn.Linear(d_in, d_out)` from `{name}.weight` ([d_out, d_in], PyTorch layout) and `{name}.bias`.
/// The weight is transposed on the host so that burn's `[d_in, d_out]` matmul operand is contiguous.
pub fn linear(w: &WeightsView, name: &str, d_in: usize, d_out: usize, bias: bool, device: &Device) -> Result<Linear> {
    let values = w.f32_of(&format!("{name}.weight"), &[d_out, d_in])?;
    w.check_binding(&format!("{name}.weight"), values.len(), device)?;
    let weight = w.create(crate::weights::transpose(&values, d_out, d_in), [d_in, d_out], device);
    let bias = if bias { Some(Param::from_tensor(w.tensor(&format!("{name}.bias"), [d_out], device)?)) } else { None };
    Ok(Linear { weight: Param::from_tensor(weight), bias })
}

/// `linear.forward(x)`: our CPU kernel on the CPU backend (bias added inside the GEMM), burn's elsewhere.
pub fn apply_linear<const D: usize>(linear: &Linear, x: Tensor<D>) -> Tensor<D> {
    let bias = linear.bias.as_ref().map(|b| b.val());
    crate::kernels::cpu::linear(&x, &linear.weight.val(), bias.as_ref()).unwrap_or_else(|| linear.forward(x))
}

/// Trainable low-rank factors over some of a model's frozen linear layers (PEFT's LoRA while it is being
/// fine-tuned): `y = x·Wᵀ + b + scale · (x·Aᵀ)·Bᵀ`. Keyed by module path (`encoder.layers.0.self_attn.q_proj`);
/// each entry holds Aᵀ [in, r] and Bᵀ [r, out] (the transposes of PEFT's `lora_A` [r, in] and `lora_B`
/// [out, r], so that both products are plain matmuls). Stored deltas are merged into the weights instead
/// ([`crate::weights::LowRankDeltas`]); this form exists so that gradients reach A and B.
#[derive(Debug, Clone, Default)]
pub struct LoraTensors {
    pub scale: f32,
    pub layers: std::collections::HashMap<String, (Tensor<2>, Tensor<2>)>,
}

impl LoraTensors {
    /// Stored deltas as unmerged factors (to evaluate fine-tuned encoders without merging them into E).
    pub fn from_deltas(deltas: &crate::weights::LowRankDeltas, device: &Device) -> Self {
        use crate::weights::transpose;
        let layers = deltas
            .factors()
            .map(|(path, a, b, rank, d_in, d_out)| {
                let a_t = Tensor::<2>::from_data(TensorData::new(transpose(a, rank, d_in), [d_in, rank]), device);
                let b_t = Tensor::<2>::from_data(TensorData::new(transpose(b, d_out, rank), [rank, d_out]), device);
                (path.to_string(), (a_t, b_t))
            })
            .collect();
        Self { scale: deltas.scale(), layers }
    }

    /// `linear` at `path`, with this set's factors for that path if it has them.
    pub fn forward(&self, linear: &Linear, path: &str, x: Tensor<3>) -> Tensor<3> {
        match self.layers.get(path) {
            Some((a_t, b_t)) => {
                let low = x.clone().matmul(a_t.clone().unsqueeze::<3>()).matmul(b_t.clone().unsqueeze::<3>());
                linear.forward(x) + low * self.scale
            }
            None => linear.forward(x),
        }
    }
}

/// A parameter as the forward code holds it, for reading its gradient back in PyTorch's layout: full
/// fine-tuning makes every parameter of a text encoder an autodiff leaf (burn's `Param::from_tensor` marks
/// them on an autodiff device), LoRA training its factors.
#[derive(Debug, Clone)]
pub enum Leaf {
    /// A PyTorch `[out, in]` weight held transposed (`[in, out]`, as [`linear`] loads it).
    Transposed(Tensor<2>),
    /// A matrix in PyTorch's own layout (an embedding table).
    Matrix(Tensor<2>),
    Vector(Tensor<1>),
}

/// `{name}.weight` and `{name}.bias` of a linear layer, as [`Leaf`]s.
pub fn linear_leaves(layer: &Linear, name: &str, out: &mut Vec<(String, Leaf)>) {
    out.push((format!("{name}.weight"), Leaf::Transposed(layer.weight.val())));
    if let Some(b) = &layer.bias {
        out.push((format!("{name}.bias"), Leaf::Vector(b.val())));
    }
}

/// `{name}.weight` and `{name}.bias` of a layer norm, as [`Leaf`]s.
pub fn layer_norm_leaves(norm: &LayerNorm, name: &str, out: &mut Vec<(String, Leaf)>) {
    out.push((format!("{name}.weight"), Leaf::Vector(norm.gamma.val())));
    if let Some(b) = &norm.beta {
        out.push((format!("{name}.bias"), Leaf::Vector(b.val())));
    }
}

/// `nn.LayerNorm(d, eps)` from `{name}.weight` and `{name}.bias`, kept in f32 ([`apply_layer_norm`]).
pub fn layer_norm(w: &WeightsView, name: &str, d: usize, eps: f64, device: &Device) -> Result<LayerNorm> {
    let mut norm = LayerNormConfig::new(d).with_epsilon(eps).init(device);
    norm.gamma = Param::from_tensor(w.tensor_f32(&format!("{name}.weight"), [d], device)?);
    norm.beta = Some(Param::from_tensor(w.tensor_f32(&format!("{name}.bias"), [d], device)?));
    Ok(norm)
}

/// `norm(x)` with the statistics in f32 whatever `x`'s dtype (an f16 mean of squares overflows at SD's
/// activation sizes), the result in `x`'s dtype.
pub fn apply_layer_norm<const D: usize>(norm: &LayerNorm, x: Tensor<D>) -> Tensor<D> {
    in_f32(x, |x| norm.forward(x))
}

/// `f(x)` computed in f32, the result back in `x`'s float type (a no-op cast where it already is f32).
pub fn in_f32<const D: usize, const E: usize>(x: Tensor<D>, f: impl FnOnce(Tensor<D>) -> Tensor<E>) -> Tensor<E> {
    let dtype = x.dtype();
    if dtype == DType::F32 {
        return f(x);
    }
    cast_to(f(x.cast(FloatDType::F32)), dtype)
}


/// The activation functions named by `hidden_act` / `act_fn` in transformers and diffusers configs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `x * sigmoid(1.702 x)`, OpenAI CLIP's approximation.
    QuickGelu,
    /// Exact erf GELU.
    Gelu,
    /// tanh approximation (`gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
    Silu,
    Relu,
}

impl Activation {
    /// Parses a config value; `file` and `field` name it in the error.
    pub fn parse(value: &str, file: &str, field: &str) -> Result<Self> {
        Ok(match value {
            "quick_gelu" => Activation::QuickGelu,
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "silu" | "swish" => Activation::Silu,
            "relu" => Activation::Relu,
            other => {
                return Err(Error::config(
                    file,
                    field,
                    format!("unknown activation `{other}` (supported: quick_gelu, gelu, gelu_new, gelu_pytorch_tanh, silu, relu)"),
                ));
            }
        })
    }

    /// The config value that names it (the first of [`Self::parse`]'s spellings).
    pub fn config_name(self) -> &'static str {
        match self {
            Activation::QuickGelu => "quick_gelu",
            Activation::Gelu => "gelu",
            Activation::GeluTanh => "gelu_new",
            Activation::Silu => "silu",
            Activation::Relu => "relu",
        }
    }

    pub fn forward<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Activation::QuickGelu => x.clone() * activation::sigmoid(x * 1.702),
            // burn's gelu differentiates the tanh approximation; under autodiff (fine-tuning) use the erf
            // form, whose backward is exact, so that gradients match PyTorch's.
            Activation::Gelu if x.is_autodiff() => x.clone() * ((x * std::f64::consts::FRAC_1_SQRT_2).erf() + 1.0) * 0.5,
            Activation::Gelu => activation::gelu(x),
            // Written out with x*x*x: burn's version uses powf, and WGSL's pow is undefined for x < 0.
            Activation::GeluTanh => {
                const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
                let cube = x.clone() * x.clone() * x.clone();
                let inner = (x.clone() + cube * 0.044715) * SQRT_2_OVER_PI;
                x * (inner.tanh() + 1.0) * 0.5
            }
            Activation::Silu => activation::silu(x),
            Activation::Relu => activation::relu(x),
        }
    }
}

/// `nn.Conv2d` with square kernel, symmetric padding and stride (all the UNet and decoders use).
#[derive(Debug, Clone)]
pub struct Conv2d {
    pub weight: Tensor<4>,
    pub bias: Option<Tensor<1>>,
    pub stride: usize,
    pub padding: usize,
    /// The weight transformed for the CPU kernels' Winograd path, made once here at load where that path
    /// runs (the wasm build's CPU backend; `kernels::cpu::winograd_weight`).
    winograd: Option<Tensor<3>>,
}

impl Conv2d {
    pub fn new(weight: Tensor<4>, bias: Option<Tensor<1>>, stride: usize, padding: usize) -> Self {
        let winograd = crate::kernels::cpu::winograd_weight(&weight, stride, padding);
        Self { weight, bias, stride, padding, winograd }
    }

    /// `{name}.weight` ([out, in, k, k]) and `{name}.bias` ([out]).
    pub fn load(
        w: &WeightsView,
        name: &str,
        channels: [usize; 2],
        kernel: usize,
        stride: usize,
        padding: usize,
        device: &Device,
    ) -> Result<Self> {
        let [c_in, c_out] = channels;
        let weight = w.tensor(&format!("{name}.weight"), [c_out, c_in, kernel, kernel], device)?;
        Ok(Self::new(weight, Some(w.tensor(&format!("{name}.bias"), [c_out], device)?), stride, padding))
    }

    /// The same for a convolution created with `bias=False`.
    pub fn load_without_bias(w: &WeightsView, name: &str, channels: [usize; 2], kernel: usize, device: &Device) -> Result<Self> {
        let [c_in, c_out] = channels;
        let weight = w.tensor(&format!("{name}.weight"), [c_out, c_in, kernel, kernel], device)?;
        Ok(Self::new(weight, None, 1, kernel / 2))
    }

    /// For a convolution that always reads through a nearest upsampling (`forward_fused` with `upsample`
    /// > 1), which the Winograd path does not take: drops the transformed weight it would never use.
    pub fn reading_upsampled(mut self) -> Self {
        self.winograd = None;
        self
    }

    /// Our CPU kernel on the CPU backend (src/kernels/cpu/), burn's `conv2d` elsewhere.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.forward_fused(x, ConvFused::default())
    }

    /// `relu(self(upsample(x)) + residual)` as `fused` says: in the convolution's own pass on the CPU
    /// backend (no upsampled input, no separate sum or ReLU pass), as separate burn operations elsewhere.
    pub fn forward_fused(&self, x: Tensor<4>, fused: ConvFused) -> Tensor<4> {
        profile::time(Section::Conv, || {
            let fused = ConvFused { winograd: self.winograd.as_ref(), ..fused };
            if let Some(out) = crate::kernels::cpu::conv2d(&x, &self.weight, self.bias.as_ref(), self.stride, self.padding, fused) {
                return out;
            }
            let x = if fused.upsample > 1 {
                let [_, _, h, w] = x.dims();
                interpolate(x, InterpolateOptions::new(InterpolateMode::Nearest).with_output_size([h * fused.upsample, w * fused.upsample]))
            } else {
                x
            };
            // burn 0.22's f16 convolution keeps its sums in f16 (measured: 9,216 ones sum to 2,048), so an
            // f16 convolution runs in f32 — the weight widened for the call — and its result is rounded
            // once (docs/decisions.md, "f16 compute"). Matmuls accumulate in f32 and stay f16.
            let dtype = x.dtype();
            let f32 = |t: Tensor<4>| cast_to(t, DType::F32);
            let options = ConvOptions::new([self.stride; 2], [self.padding; 2], [1, 1], 1);
            let out = burn::tensor::module::conv2d(f32(x), f32(self.weight.clone()), self.bias.clone().map(|b| cast_to(b, DType::F32)), options);
            let out = match fused.residual {
                Some(residual) => out + f32(residual.clone()),
                None => out,
            };
            cast_to(if fused.relu { activation::relu(out) } else { out }, dtype)
        })
    }
}

/// `nn.GroupNorm(groups, channels, eps)` (affine). On the CPU backend our kernel (src/kernels/cpu/), which
/// also applies a following SiLU in the same pass ([`GroupNorm::forward_then`]); burn's `GroupNorm` elsewhere.
#[derive(Debug)]
pub struct GroupNorm {
    norm: burn::nn::GroupNorm,
}

impl GroupNorm {
    /// From `{name}.weight` and `{name}.bias`.
    pub fn load(w: &WeightsView, name: &str, groups: usize, channels: usize, eps: f64, device: &Device) -> Result<Self> {
        if groups == 0 || channels % groups != 0 {
            return Err(Error::tensor(
                w.file.name(),
                w.key(name),
                format!("{channels} channels do not split into {groups} groups (norm_num_groups)"),
            ));
        }
        // f32 parameters: the normalisation runs in f32 (`normed`).
        let norm = burn::nn::GroupNorm {
            gamma: Some(Param::from_tensor(w.tensor_f32(&format!("{name}.weight"), [channels], device)?)),
            beta: Some(Param::from_tensor(w.tensor_f32(&format!("{name}.bias"), [channels], device)?)),
            num_groups: groups,
            num_channels: channels,
            epsilon: eps,
            affine: true,
        };
        Ok(Self { norm })
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        profile::time(Section::Norm, || self.normed(x, false))
    }

    /// `act(norm(x))`, SiLU inside the kernel's pass on the CPU backend.
    pub fn forward_then<const D: usize>(&self, x: Tensor<D>, act: Activation) -> Tensor<D> {
        profile::time(Section::Norm, || match act {
            Activation::Silu => self.normed(x, true),
            other => other.forward(self.normed(x, false)),
        })
    }

    /// The kernel where it applies (then with SiLU if `silu`), burn's `GroupNorm` (then SiLU) elsewhere.
    fn normed<const D: usize>(&self, x: Tensor<D>, silu: bool) -> Tensor<D> {
        let (gamma, beta) = (self.norm.gamma.as_ref().map(|g| g.val()), self.norm.beta.as_ref().map(|b| b.val()));
        if let (Some(gamma), Some(beta)) = (gamma, beta)
            && let Some(out) = crate::kernels::cpu::group_norm(&x, &gamma, &beta, self.norm.num_groups, self.norm.epsilon, silu)
        {
            return out;
        }
        // In f32 for f16 activations: the group statistics of SD-scale activations overflow f16.
        let out = in_f32(x, |x| self.norm.forward(x));
        if silu { Activation::Silu.forward(out) } else { out }
    }
}

/// The most score elements one attention pass may hold at once: 32 Mi f32 = 128 MiB, WebGPU's default
/// `maxStorageBufferBindingSize` (lavapipe also refuses the 512 MiB score buffer of an unsplit SD
/// self-attention at 64×64 latents), or fewer where the device's largest binding is smaller
/// ([`score_budget`]). Larger problems are split along the queries.
pub const MAX_SCORE_ELEMENTS: usize = 32 << 20;

/// The score elements one attention pass on `device` may hold: [`MAX_SCORE_ELEMENTS`], or what one
/// binding of the device holds in f32 if that is less.
pub fn score_budget(device: &Device) -> usize {
    match crate::device::binding_limit(device) {
        Some(limit) => MAX_SCORE_ELEMENTS.min((limit / 4) as usize).max(1),
        None => MAX_SCORE_ELEMENTS,
    }
}

/// `f` applied to `x` [B, L, C] in slices along L, each small enough that an intermediate of
/// `bytes_per_row` bytes per (batch, position) row stays within one binding of the device (row-wise
/// operations only: a feed-forward, a projection). Unsplit where it fits or nothing binds.
pub fn in_row_chunks(x: Tensor<3>, bytes_per_row: usize, f: impl Fn(Tensor<3>) -> Tensor<3>) -> Tensor<3> {
    let [b, l, c] = x.dims();
    let rows = match crate::device::binding_limit(&x.device()) {
        Some(limit) => ((limit / (b * bytes_per_row).max(1) as u64) as usize).clamp(1, l.max(1)),
        None => l,
    };
    if rows >= l {
        return f(x);
    }
    let parts = (0..l).step_by(rows).map(|start| f(x.clone().slice([0..b, start..(start + rows).min(l), 0..c]))).collect();
    Tensor::cat(parts, 1)
}

/// Per-head scaled dot-product attention, the one implementation every model here uses:
/// q [B, Lq, H·d], k and v [B, Lk, H·d] → [B, Lq, H·d]; `mask` is added to the scores ([1|B, 1|H, Lq, Lk]).
/// Queries are processed in chunks whose score matrix stays within [`MAX_SCORE_ELEMENTS`] (each query's
/// softmax is independent of the others, so the result is the same).
/// Without a mask, the CPU backend runs our blocked kernel instead (src/kernels/cpu/), which holds one block
/// of scores per task.
pub fn scaled_dot_product_attention(q: Tensor<3>, k: Tensor<3>, v: Tensor<3>, heads: usize, mask: Option<Tensor<4>>) -> Tensor<3> {
    profile::time(Section::Attention, || {
        if mask.is_none()
            && let Some(out) = crate::kernels::cpu::attention(&q, &k, &v, heads)
        {
            return out;
        }
        let budget = score_budget(&q.device());
        attention_in_chunks(q, k, v, heads, mask, budget)
    })
}

/// As [`scaled_dot_product_attention`], with the chunk bound given (tests use small ones).
pub fn attention_in_chunks(q: Tensor<3>, k: Tensor<3>, v: Tensor<3>, heads: usize, mask: Option<Tensor<4>>, max_score_elements: usize) -> Tensor<3> {
    let [b, lq, inner] = q.dims();
    let lk = k.dims()[1];
    let chunk = (max_score_elements / (b * heads * lk).max(1)).clamp(1, lq.max(1));
    if chunk >= lq {
        return attention_pass(q, k, v, heads, mask);
    }
    let parts = (0..lq)
        .step_by(chunk)
        .map(|start| {
            let end = (start + chunk).min(lq);
            let mask = mask.clone().map(|m| {
                let [mb, mh, ml, mk] = m.dims();
                if ml == 1 { m } else { m.slice([0..mb, 0..mh, start..end, 0..mk]) }
            });
            attention_pass(q.clone().slice([0..b, start..end, 0..inner]), k.clone(), v.clone(), heads, mask)
        })
        .collect();
    Tensor::cat(parts, 1)
}

fn attention_pass(q: Tensor<3>, k: Tensor<3>, v: Tensor<3>, heads: usize, mask: Option<Tensor<4>>) -> Tensor<3> {
    let [b, lq, inner] = q.dims();
    let lk = k.dims()[1];
    let d = inner / heads;
    let split = |t: Tensor<3>, l: usize| t.reshape([b, l, heads, d]).swap_dims(1, 2);
    let dtype = v.dtype();
    // In f16 the scores, the mask and the softmax are f32; the probabilities go back to f16 for the
    // product with v (which accumulates in f32).
    let scale = (d as f64).powf(-0.5);
    let scores = if dtype == DType::F32 {
        split(q, lq).matmul(split(k, lk).swap_dims(2, 3)) * scale
    } else {
        // The scores are f32 for the softmax anyway; an f16 product would round them to f16 first.
        let f32 = |t: Tensor<4>| t.cast(FloatDType::F32);
        (f32(split(q, lq)) * scale).matmul(f32(split(k, lk)).swap_dims(2, 3))
    };
    let scores = match mask {
        Some(mask) => scores + mask,
        None => scores,
    };
    cast_to(activation::softmax(scores, 3), dtype).matmul(split(v, lk)).swap_dims(1, 2).reshape([b, lq, inner])
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    #[test]
    fn attention_in_query_chunks_equals_one_pass() {
        let device = Device::flex();
        let normal = |shape: [usize; 3]| Tensor::<3>::random(shape, Distribution::Normal(0.0, 1.0), &device);
        let (q, k, v) = (normal([2, 37, 12]), normal([2, 19, 12]), normal([2, 19, 12]));
        let mask = Tensor::<4>::random([1, 1, 37, 19], Distribution::Normal(0.0, 1.0), &device);
        for mask in [None, Some(mask)] {
            let whole = attention_pass(q.clone(), k.clone(), v.clone(), 3, mask.clone()).into_data().try_to_vec::<f32>().unwrap();
            // 2 rows × 3 heads × 19 keys × 5 queries per chunk: 8 chunks, the last one short.
            let chunked = attention_in_chunks(q.clone(), k.clone(), v.clone(), 3, mask, 2 * 3 * 19 * 5).into_data().try_to_vec::<f32>().unwrap();
            let err = whole.iter().zip(&chunked).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(err <= 1e-6, "chunked attention differs by {err}");
        }
    }
}
