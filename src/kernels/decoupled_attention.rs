//! Fused decoupled cross-attention: shaders/decoupled_attention.wgsl on burn's wgpu backend.
//!
//! Route: a burn backend extension (`#[backend_extension(Cube, Fusion)]`, burn 0.22). The crate's
//! tensors are burn's backend-less `Tensor<D>`; [`decoupled_attention_fused`] unwraps them with
//! `Tensor::into_dispatch`, calls the extension on `Dispatch`, which routes a wgpu tensor to the
//! generated `Fusion<CubeBackend>` implementation (the wgpu backend runs with fusion on): that one
//! records the operation lazily, with the output's shape and dtype taken from `q`, and when the
//! fusion stream executes it calls our `CubeBackend` implementation below with the materialised
//! `CubeTensor`s, which launches the WGSL template (`SourceKernel` + `SourceTemplate`).
//!
//! The launch itself needs cubecl's `CubeCount`, `KernelArguments`, `MetadataBindingInfo` and
//! `KernelId`, which burn 0.22 does not re-export with our feature set, hence the direct `cubecl`
//! dependency (the exact version burn-wgpu 0.22.1 uses, no features of its own).
//!
//! The scalars travel as the launch's metadata (`KernelArguments::with_info`), which the wgpu runtime
//! binds as a uniform after the buffers: binding 7 in the shader.

use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::wgpu::{CubeBackend, CubeTensor, KernelSource, SourceKernel, SourceTemplate, into_contiguous};
use burn::backend::{Backend, Dispatch, DispatchDevice, backend_extension};
use burn::tensor::{DType, Device, FloatDType, Shape, Tensor};
use cubecl::ir::attributes::BufferIOAttr;
use cubecl::prelude::{ExecutionMode, KernelId};
use cubecl::server::{CubeCount, CubeDim, KernelArguments, MetadataBindingInfo};

use crate::error::{Error, Result};

/// The WGSL source, embedded (wasm has no file system).
const SHADER: &str = include_str!("../../shaders/decoupled_attention.wgsl");

/// Invocations per workgroup (WebGPU's default limit is 256).
const WORKGROUP: usize = 128;
/// Score tiles: the workgroup is (query tile / MQ) × KEY_LANES invocations, each scoring MQ queries
/// against SCORE_KEYS keys; the key chunk is KEY_LANES × SCORE_KEYS.
const KEY_LANES: usize = 16;
const QUERY_LANES: usize = WORKGROUP / KEY_LANES;
const SCORE_KEYS: usize = 5;
/// Keys per chunk of scores held in workgroup memory: 77-token contexts take one chunk.
const KEY_TILE: usize = KEY_LANES * SCORE_KEYS;
/// Workgroup memory the kernel may use, in f32 (WebGPU's default limit is 16 KiB).
const WORKGROUP_FLOATS: usize = 16 * 1024 / 4;
/// Most accumulator floats one invocation keeps in registers.
const MAX_ACCUMULATORS: usize = 64;
/// Query-tile sizes tried, largest first (multiples of QUERY_LANES).
const TILE_Q: [usize; 4] = [32, 24, 16, 8];
/// WebGPU's default limit of workgroups per dispatch dimension.
const MAX_GROUPS_PER_DIM: usize = 65_535;

/// The template constants for one head dim (see the shader's header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Plan {
    head_dim: usize,
    /// 4 (vec4 loads) when the head dim is a multiple of 4, else 1.
    vector: usize,
    /// Queries per workgroup.
    tile_q: usize,
    /// Invocations per row for the softmax statistics.
    stat_parts: usize,
    /// Queries per accumulator tile (one vector of d each).
    value_queries: usize,
    /// Accumulator tiles per invocation.
    value_tiles: usize,
    /// q, k, v and the output stored as f16 (the `enable f16` variant); f32 otherwise.
    half: bool,
}

impl Plan {
    /// The largest query tile whose workgroup memory fits 16 KiB; `None` for head dims too large for
    /// the kernel (beyond about 420).
    fn for_head_dim(head_dim: usize) -> Option<Plan> {
        Self::for_head_dim_in(head_dim, false)
    }

    /// [`Self::for_head_dim`] for f32 (`half` false) or f16 storage: the same tiles (workgroup memory
    /// holds f32 either way).
    fn for_head_dim_in(head_dim: usize, half: bool) -> Option<Plan> {
        if head_dim == 0 {
            return None;
        }
        let vector = if head_dim.is_multiple_of(4) { 4 } else { 1 };
        let head_vectors = head_dim / vector;
        TILE_Q.iter().find_map(|&tile_q| {
            let stat_parts = (1..=4).rev().find(|&parts| {
                parts * tile_q <= WORKGROUP && Self::workgroup_floats(head_dim, tile_q, parts) <= WORKGROUP_FLOATS
            })?;
            // Accumulator tiles of 8, 4, 2 or 1 queries × one vector of d. Cost: per key, a tile
            // loads its queries' probabilities and one vector of V (counted as `vector` loads, as a
            // CPU implementation gathers it), summed over the 32-wide groups of invocations with any
            // tile (idle lanes of a busy group cost the same).
            let (value_queries, value_tiles) = [8, 4, 2, 1]
                .into_iter()
                .filter(|&mq| tile_q % mq == 0)
                .min_by_key(|&mq| ((tile_q / mq) * head_vectors).div_ceil(32) * (mq + vector))
                .map(|mq| (mq, ((tile_q / mq) * head_vectors).div_ceil(WORKGROUP)))?;
            (value_queries * value_tiles * vector <= MAX_ACCUMULATORS).then_some(Plan {
                head_dim,
                vector,
                tile_q,
                stat_parts,
                value_queries,
                value_tiles,
                half,
            })
        })
    }

    /// Q tile, scores, partial row statistics and the two weights.
    fn workgroup_floats(head_dim: usize, tile_q: usize, stat_parts: usize) -> usize {
        tile_q * head_dim + tile_q * KEY_TILE + 2 * stat_parts * tile_q + 2
    }
}

/// Every placeholder of the shader, as `source` registers them.
const PLACEHOLDERS: [&str; 16] = [
    "enable",
    "vector_type",
    "head_dim",
    "head_vectors",
    "tile_q",
    "score_queries",
    "score_keys",
    "key_tile",
    "workgroup_size",
    "stat_parts",
    "value_queries",
    "value_tiles",
    "key_lanes",
    "q_tile_len",
    "scores_len",
    "parts_len",
];

/// `V`, the element type the kernel computes q, k, v and out in, and `vdot`, its dot product.
const VECTOR4: &str = "alias V = vec4<f32>;\nfn vdot(a: V, b: V) -> f32 { return dot(a, b); }";
const SCALAR: &str = "alias V = f32;\nfn vdot(a: V, b: V) -> f32 { return a * b; }";
/// `S`, the element type they are stored in: V itself, or its f16 form.
const STORED_F32: &str = "alias S = V;";
const STORED_F16_VECTOR4: &str = "alias S = vec4<f16>;";
const STORED_F16_SCALAR: &str = "alias S = f16;";

/// The kernel source for one [`Plan`]: the WGSL template with its constants filled in.
struct DecoupledAttentionSource {
    plan: Plan,
}

impl KernelSource for DecoupledAttentionSource {
    fn source(&self) -> SourceTemplate {
        let p = self.plan;
        let number = |n: usize| n.to_string();
        let stored = match (p.half, p.vector) {
            (false, _) => STORED_F32,
            (true, 4) => STORED_F16_VECTOR4,
            (true, _) => STORED_F16_SCALAR,
        };
        let values = [
            (if p.half { "enable f16;" } else { "" }).to_string(),
            format!("{}\n{stored}", if p.vector == 4 { VECTOR4 } else { SCALAR }),
            number(p.head_dim),
            number(p.head_dim / p.vector),
            number(p.tile_q),
            number(p.tile_q / QUERY_LANES),
            number(SCORE_KEYS),
            number(KEY_TILE),
            number(WORKGROUP),
            number(p.stat_parts),
            number(p.value_queries),
            number(p.value_tiles),
            number(KEY_LANES),
            number(p.tile_q * p.head_dim / p.vector),
            number(p.tile_q * KEY_TILE),
            number(p.stat_parts * p.tile_q),
        ];
        PLACEHOLDERS
            .iter()
            .zip(values)
            .fold(SourceTemplate::new(SHADER), |template, (name, value)| template.register(*name, value))
    }

    fn id(&self) -> KernelId {
        // The id keys the compiled-pipeline cache: it must tell every variant of the source apart.
        KernelId::new::<Self>()
            .info((self.plan, KEY_TILE, WORKGROUP))
            .cube_dim(CubeDim::new_1d(WORKGROUP as u32).0)
            // Unchecked only drops wgpu's loop bounding (a guard against infinite loops that costs a
            // counter per iteration); every loop of the shader is bounded by its constants and
            // parameters, and wgpu's bounds checks are off for cubecl kernels in both modes.
            .mode(ExecutionMode::Unchecked)
    }

    fn lang(&self) -> &'static str {
        "wgsl"
    }
}

/// The custom operation, on every backend that implements it: only wgpu's (through `Fusion`).
#[backend_extension(Cube, Fusion)]
pub trait DecoupledAttentionOps: Backend {
    /// See [`decoupled_attention_fused`]; arguments already validated: weights f32, the others all f32
    /// or all f16.
    #[fusion(dtype = q, shape = q)]
    fn decoupled_attention(
        q: FloatTensor<Self>,
        k_c: FloatTensor<Self>,
        v_c: FloatTensor<Self>,
        k_s: FloatTensor<Self>,
        v_s: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        heads: usize,
    ) -> FloatTensor<Self>;
}

impl DecoupledAttentionOps for CubeBackend {
    fn decoupled_attention(
        q: CubeTensor,
        k_c: CubeTensor,
        v_c: CubeTensor,
        k_s: CubeTensor,
        v_s: CubeTensor,
        weights: CubeTensor,
        heads: usize,
    ) -> CubeTensor {
        // The public wrapper casts already; this keeps the kernel's contract whatever calls it: the f16
        // variant where q, k and v all are f16, f32 otherwise; the weights always f32.
        let half = [&q, &k_c, &v_c, &k_s, &v_s].iter().all(|t| t.dtype == DType::F16);
        let stored = if half { DType::F16 } else { DType::F32 };
        let prepare = |t: CubeTensor, dtype: DType| {
            let t = match dtype {
                _ if t.dtype == dtype => t,
                DType::F16 => CubeBackend::float_cast(t, FloatDType::F16),
                _ => CubeBackend::float_cast(t, FloatDType::F32),
            };
            into_contiguous(t)
        };
        let (q, k_c, v_c, k_s, v_s, weights) = (
            prepare(q, stored),
            prepare(k_c, stored),
            prepare(v_c, stored),
            prepare(k_s, stored),
            prepare(v_s, stored),
            prepare(weights, DType::F32),
        );
        let [batch, lq, channels] = dims3(&q);
        let lc = dims3(&k_c)[1];
        let ls = dims3(&k_s)[1];
        let head_dim = channels / heads;
        let plan = Plan::for_head_dim_in(head_dim, half).expect("head dim checked by decoupled_attention_fused");

        let client = q.client.clone();
        let out_handle = client.empty(batch * lq * channels * stored.size());
        let out = CubeTensor::new_contiguous(
            client.clone(),
            q.device.clone(),
            Shape::new([batch, lq, channels]),
            out_handle,
            stored,
        );

        let tiles = lq.div_ceil(plan.tile_q);
        let total = batch * heads * tiles;
        if total == 0 {
            return out;
        }
        let groups_x = total.min(MAX_GROUPS_PER_DIM);
        let groups_y = total.div_ceil(groups_x);
        let scale = (head_dim as f64).powf(-0.5) as f32;
        let words = [
            batch as u32,
            lq as u32,
            lc as u32,
            ls as u32,
            heads as u32,
            (channels / plan.vector) as u32,
            tiles as u32,
            total as u32,
            scale.to_bits(),
            0,
            0,
            0,
        ];
        // The metadata words are u64; the uniform's bytes are their little-endian bytes, so each
        // word carries two consecutive u32 fields of the shader's `Params`, the first in the low half.
        let info = words.chunks(2).map(|pair| pair[0] as u64 | (pair[1] as u64) << 32).collect();

        // Declared read-only / write-only (the shader binds them all read_write): a launch that fails,
        // a kernel that does not compile above all, then taints only the output.
        let arguments = [&q, &k_c, &v_c, &k_s, &v_s, &weights]
            .into_iter()
            .fold(KernelArguments::new(), |args, input| {
                args.with_buffer_io(input.handle.clone().binding(), BufferIOAttr::ReadOnly)
            })
            .with_buffer_io(out.handle.clone().binding(), BufferIOAttr::WriteOnly)
            .with_info(MetadataBindingInfo::custom(info));
        let kernel = SourceKernel::new(DecoupledAttentionSource { plan }, CubeDim::new_1d(WORKGROUP as u32));
        client.launch(Box::new(kernel), CubeCount::Static(groups_x as u32, groups_y as u32, 1), arguments);
        out
    }
}

fn dims3(t: &CubeTensor) -> [usize; 3] {
    let shape = t.meta.shape();
    [shape[0], shape[1], shape[2]]
}

/// Whether a device runs the fused kernel (true for wgpu devices).
pub fn fused_attention_available(device: &Device) -> bool {
    if device.is_autodiff() {
        // The extension has no autodiff implementation: gradients need the tensor-op reference.
        return false;
    }
    match device.as_dispatch() {
        DispatchDevice::Cube(cube) => cube.runtime() == cubecl::RuntimeId::Wgpu,
        #[allow(unreachable_patterns)]
        _ => false,
    }
}

/// Fused decoupled cross-attention (shapes above). Only for tensors on a wgpu device: returns
/// Err(Error::device(..)) (crate::error::Error) for any other backend; callers use the tensor-op
/// reference there.
///
/// q [B, Lq, H·Dh]; k_c, v_c [B, Lc, H·Dh]; k_s, v_s [B, Ls, H·Dh]; weights [B, 2] (λ_c, λ_s per batch
/// row); `heads` = H. Returns [B, Lq, H·Dh]:
/// `w[b,0]·Attn(q, k_c, v_c) + w[b,1]·Attn(q, k_s, v_s)`, per-head scaled dot-product attention with
/// scale 1/√Dh, computed in f32: f16 q, k and v (all of them) run the f16 variant, which reads them as
/// f16 and writes an f16 result; other float dtypes are cast to f32 and the result back.
pub fn decoupled_attention_fused(
    q: Tensor<3>,
    k_c: Tensor<3>,
    v_c: Tensor<3>,
    k_s: Tensor<3>,
    v_s: Tensor<3>,
    weights: Tensor<2>,
    heads: usize,
) -> Result<Tensor<3>> {
    let [batch, lq, channels] = q.dims();
    let what = |name: &str| format!("decoupled attention `{name}`");
    if heads == 0 {
        return Err(Error::invalid(what("heads"), "must be at least 1"));
    }
    if channels == 0 || channels % heads != 0 {
        return Err(Error::invalid(
            what("q"),
            format!("{channels} channels (shape {:?}) do not split into {heads} heads", q.dims()),
        ));
    }
    let head_dim = channels / heads;
    for (k_name, k, v_name, v) in [("k_c", &k_c, "v_c", &v_c), ("k_s", &k_s, "v_s", &v_s)] {
        let [kb, lk, kch] = k.dims();
        if kb != batch || kch != channels {
            return Err(Error::invalid(
                what(k_name),
                format!("shape {:?} does not match q's batch {batch} and channels {channels} (q {:?})", k.dims(), q.dims()),
            ));
        }
        if v.dims() != k.dims() {
            return Err(Error::invalid(what(v_name), format!("shape {:?} differs from {k_name}'s {:?}", v.dims(), k.dims())));
        }
        if lk == 0 {
            return Err(Error::invalid(what(k_name), format!("shape {:?} has no keys (need at least one)", k.dims())));
        }
    }
    if weights.dims() != [batch, 2] {
        return Err(Error::invalid(
            what("weights"),
            format!("shape {:?}, expected [{batch}, 2] (category and style weight per batch row)", weights.dims()),
        ));
    }

    let device = q.device();
    if !fused_attention_available(&device) {
        return Err(Error::device(format!(
            "the fused decoupled attention runs only on a wgpu device (without autodiff), not on {device:?}; use the tensor-op reference"
        )));
    }
    for (name, t) in [("k_c", &k_c), ("v_c", &v_c), ("k_s", &k_s), ("v_s", &v_s)] {
        if t.device() != device {
            return Err(Error::invalid(what(name), format!("is on {:?}, q on {device:?}", t.device())));
        }
    }
    if weights.device() != device {
        return Err(Error::invalid(what("weights"), format!("is on {:?}, q on {device:?}", weights.device())));
    }
    let Some(_) = Plan::for_head_dim(head_dim) else {
        return Err(Error::invalid(
            what("q"),
            format!("head dim {head_dim} is too large for the fused kernel's workgroup memory; use the tensor-op reference"),
        ));
    };
    // The shader indexes with u32.
    let largest = [lq, k_c.dims()[1], k_s.dims()[1]].into_iter().max().unwrap_or(0);
    if batch.checked_mul(largest).and_then(|n| n.checked_mul(channels)).is_none_or(|n| n > u32::MAX as usize) {
        return Err(Error::invalid(what("q"), "tensors too large for the fused kernel's 32-bit indexing"));
    }
    if batch == 0 || lq == 0 {
        return Ok(Tensor::zeros([batch, lq, channels], &device));
    }

    let dtype = q.dtype();
    let half = [&q, &k_c, &v_c, &k_s, &v_s].iter().all(|t| t.dtype() == DType::F16);
    let stored = |t: Tensor<3>| match t.dtype() {
        DType::F16 if half => t,
        DType::F32 => t,
        _ => t.cast(FloatDType::F32),
    };
    let weights = crate::device::cast_to(weights, DType::F32);
    let out = <Dispatch as DecoupledAttentionOps>::decoupled_attention(
        stored(q).into_dispatch(),
        stored(k_c).into_dispatch(),
        stored(v_c).into_dispatch(),
        stored(k_s).into_dispatch(),
        stored(v_s).into_dispatch(),
        weights.into_dispatch(),
        heads,
    );
    Ok(crate::device::cast_to(Tensor::<3>::from_dispatch(out), dtype))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_fit_webgpu_default_limits() {
        for head_dim in 1..=400 {
            let p = Plan::for_head_dim(head_dim).unwrap_or_else(|| panic!("no plan for head dim {head_dim}"));
            assert!(Plan::workgroup_floats(head_dim, p.tile_q, p.stat_parts) <= WORKGROUP_FLOATS, "{p:?}");
            assert!(p.stat_parts * p.tile_q <= WORKGROUP, "{p:?}");
            assert_eq!(p.tile_q % QUERY_LANES, 0, "{p:?}");
            assert_eq!(p.tile_q % p.value_queries, 0, "{p:?}");
            let tiles = p.tile_q / p.value_queries * (head_dim / p.vector);
            assert!(p.value_tiles * WORKGROUP >= tiles, "{p:?}");
            assert_eq!(head_dim % p.vector, 0);
        }
        assert_eq!(Plan::for_head_dim(0), None);
        assert_eq!(Plan::for_head_dim(2048), None);
        let tile = |d| Plan::for_head_dim(d).map(|p| (p.tile_q, p.vector));
        assert_eq!(tile(40), Some((32, 4)));
        assert_eq!(tile(64), Some((24, 4)));
        assert_eq!(tile(80), Some((24, 4)));
        assert_eq!(tile(160), Some((16, 4)));
        assert_eq!(tile(3), Some((32, 1)));
    }

    #[test]
    fn template_fills_every_placeholder() {
        // SourceTemplate replaces an unregistered placeholder with nothing, silently: every `{{name}}`
        // of the shader must be one that `source` registers.
        let mut rest = SHADER;
        let mut names = Vec::new();
        while let Some(start) = rest.find("{{") {
            let end = rest[start..].find("}}").expect("closed placeholder") + start;
            names.push(rest[start + 2..end].trim().to_string());
            rest = &rest[end + 2..];
        }
        assert!(!names.is_empty());
        for name in names {
            assert!(PLACEHOLDERS.contains(&name.as_str()), "placeholder `{name}` is not registered");
        }
        for head_dim in [3, 40] {
            for half in [false, true] {
                let source = DecoupledAttentionSource { plan: Plan::for_head_dim_in(head_dim, half).unwrap() }.source().complete();
                assert!(!source.contains("{{"));
                assert!(source.contains(&format!("const DH: u32 = {head_dim}u;")));
                assert!(source.contains("alias V = "));
                assert_eq!(source.contains("enable f16;"), half);
                assert_eq!(source.contains("alias S = V;"), !half);
            }
        }
    }
}
