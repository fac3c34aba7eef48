//! Per-head scaled dot-product attention in query blocks: for each (batch row, head, block of queries),
//! S = (1/√d)·Q_blk·K_hᵀ (the scale is the score GEMM's factor, not a pass over the scores), P = exp(S −
//! row max) with its row sums, O_blk = P·V_h, then O_blk's rows divided by their sums (d values a row
//! rather than Lk). Only one block of scores per task exists at a time, [`SCORE_BLOCK`] floats at most for
//! Lk ≤ 64 Ki; heads are read from and written to the [B, L, H·d] layout in place through the GEMM's
//! strides, without splitting them out.

use super::math::{exp_shifted_sum, lane_max, vectorized};
use super::{SharedOut, for_each_index, gemm_f32};

/// Scores one task holds: at most 1 Mi floats (4 MiB) unless 16 queries' rows need more. Measured on the
/// BK-SDM-tiny UNet at 512² (64-query blocks at 4,096 keys: 844 ms of attention a step; 256: 703 ms; 512:
/// 750 ms; 16: 1,288 ms): larger blocks repack K and V less often, until the scores leave the cache.
const SCORE_BLOCK: usize = 1 << 20;
const MIN_BLOCK: usize = 16;
const MAX_BLOCK: usize = 256;

#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub batch: usize,
    pub lq: usize,
    pub lk: usize,
    pub heads: usize,
    pub head_dim: usize,
}

pub fn attention(q: &[f32], k: &[f32], v: &[f32], s: Shape) -> Vec<f32> {
    let inner = s.heads * s.head_dim;
    let mut out = vec![0.0f32; s.batch * s.lq * inner];
    if out.is_empty() {
        return out;
    }
    let block = (SCORE_BLOCK / s.lk).clamp(MIN_BLOCK, MAX_BLOCK).min(s.lq);
    let blocks = s.lq.div_ceil(block);
    let scale = (s.head_dim as f64).powf(-0.5) as f32;
    let shared = SharedOut(out.as_mut_ptr());
    for_each_index(s.batch * s.heads * blocks, |task| {
        let (bh, blk) = (task / blocks, task % blocks);
        let (b, h) = (bh / s.heads, bh % s.heads);
        let q0 = blk * block;
        let rows = block.min(s.lq - q0);
        let mut scores = vec![0.0f32; rows * s.lk];
        let head = |t: &[f32], l: usize, row: usize| t[(b * l + row) * inner + h * s.head_dim..].as_ptr();
        // SAFETY: Q_blk is `rows` rows of d floats at row stride H·d from (b, q0, h); K_hᵀ reads K [Lk, d]
        // at row stride H·d transposed (column stride H·d); scores is [rows, Lk] contiguous.
        unsafe {
            gemm_f32(
                [rows, s.lk, s.head_dim],
                (scores.as_mut_ptr(), s.lk, 1),
                false,
                (head(q, s.lq, q0), inner, 1),
                (head(k, s.lk, 0), 1, inner),
                scale,
                gemm::Parallelism::None,
            );
        }
        let mut sums = vec![0.0f32; rows];
        vectorized(|| {
            for (row, sum) in scores.chunks_exact_mut(s.lk).zip(&mut sums) {
                *sum = exp_shifted_sum(row, lane_max(row));
            }
        });
        let dst = shared;
        // SAFETY: P [rows, Lk] contiguous; V_h [Lk, d] at row stride H·d; this task alone writes rows
        // q0..q0+rows of head h of batch row b (row stride H·d) in `out`, which outlives the loop.
        unsafe {
            let dst = dst.0.add((b * s.lq + q0) * inner + h * s.head_dim);
            gemm_f32(
                [rows, s.head_dim, s.lk],
                (dst, inner, 1),
                false,
                (scores.as_ptr(), s.lk, 1),
                (head(v, s.lk, 0), inner, 1),
                1.0,
                gemm::Parallelism::None,
            );
            for (r, sum) in sums.iter().enumerate() {
                let row = std::slice::from_raw_parts_mut(dst.add(r * inner), s.head_dim);
                let inv = 1.0 / sum;
                row.iter_mut().for_each(|x| *x *= inv);
            }
        }
    });
    out
}
