//! GroupNorm (affine), optionally followed by SiLU, in one kernel: per (batch row, group) — a contiguous
//! block of C/G channels × the spatial size in NCHW — the mean, then the variance around it (two passes,
//! as accurate as PyTorch's), then one pass writing `silu?((x − μ)/√(σ² + ε) · γ_c + β_c)`. Blocks run in
//! parallel; each block's sums run in lanes ([`lane_sum`]).

use super::for_each_chunk;
use super::math::{lane_sum, silu, vectorized};

/// `x` [B, C, L] (L the spatial size), `gamma` and `beta` [C].
pub fn group_norm(x: &[f32], gamma: &[f32], beta: &[f32], [b, c, l]: [usize; 3], groups: usize, eps: f32, apply_silu: bool) -> Vec<f32> {
    let per_group = c / groups;
    let block = per_group * l;
    let mut out = vec![0.0f32; b * c * l];
    if block == 0 {
        return out;
    }
    for_each_chunk(&mut out, block, |i, dst| vectorized(|| {
        let src = &x[i * block..(i + 1) * block];
        let n = block as f32;
        let mean = lane_sum(src, |v| v) / n;
        let var = lane_sum(src, |v| (v - mean) * (v - mean)) / n;
        let rstd = 1.0 / (var + eps).sqrt();
        let first_channel = (i % groups) * per_group;
        for (j, (dst_c, src_c)) in dst.chunks_exact_mut(l).zip(src.chunks_exact(l)).enumerate() {
            let ch = first_channel + j;
            // y = x·a + d with a = γ·rstd, d = β − μ·a.
            let a = gamma[ch] * rstd;
            let d = beta[ch] - mean * a;
            if apply_silu {
                for (o, &v) in dst_c.iter_mut().zip(src_c) {
                    *o = silu(v * a + d);
                }
            } else {
                for (o, &v) in dst_c.iter_mut().zip(src_c) {
                    *o = v * a + d;
                }
            }
        }
    }));
    out
}
