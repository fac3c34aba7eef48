//! `y = x·W + b` as one GEMM over all rows of `x`, with the bias written into the output first and the
//! product accumulated onto it (no separate pass), and `x` read in place.

use super::{for_each_chunk, gemm_f32, gemm_threads};

/// `x` [rows, d_in], `weight` [d_in, d_out], `bias` [d_out] → [rows, d_out].
pub fn linear(x: &[f32], weight: &[f32], bias: Option<&[f32]>, [rows, d_in, d_out]: [usize; 3]) -> Vec<f32> {
    let mut out = vec![0.0f32; rows * d_out];
    if out.is_empty() {
        return out;
    }
    if let Some(bias) = bias {
        // Rows in chunks of about 64 Ki floats, so that the fill runs in parallel without tiny tasks.
        let rows_per_task = (65_536 / d_out).max(1);
        for_each_chunk(&mut out, rows_per_task * d_out, |_, block| block.chunks_exact_mut(d_out).for_each(|row| row.copy_from_slice(bias)));
    }
    // SAFETY: x is [rows, d_in] (row stride d_in), W [d_in, d_out] (row stride d_out), out [rows, d_out].
    unsafe {
        gemm_f32([rows, d_out, d_in], (out.as_mut_ptr(), d_out, 1), bias.is_some(), (x.as_ptr(), d_in, 1), (weight.as_ptr(), d_out, 1), 1.0, gemm_threads());
    }
    out
}
