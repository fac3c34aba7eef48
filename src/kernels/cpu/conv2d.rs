//! 2-D convolution as im2col + GEMM in the NCHW layout: `out[b] = W · col(x[b]) + bias`, where W is the
//! weight exactly as PyTorch stores it ([C_out, C_in·k·k] row-major, so it needs no packing of ours; the
//! GEMM packs its panels itself) and col's row (c, ky, kx) holds the input shifted by (ky, kx). Output
//! columns are processed in chunks of whole output rows, so col stays within [`COL_BUDGET`] floats; the
//! bias (and a residual to add, when fused) is written into the output first and the GEMM adds the
//! product to it; a following ReLU is applied in place. A nearest upsampling before the convolution is read
//! through by im2col instead of being materialised. A 1×1 convolution with stride 1 uses the input itself
//! as col.

#[cfg(target_arch = "x86_64")]
use super::direct;
use super::conv_shape::{Epilogue, Shape, upsample_2};
use super::{SharedIn, SharedOut, for_each_chunk, for_each_index, fresh_output, gemm_f32, gemm_threads, winograd};

/// Most floats of one im2col chunk (16 MiB): large enough that each GEMM is big. Measured on the TAESD
/// decoder at 512² (median of 3): 1 Mi floats 1,724 ms, 4 Mi 1,532–1,653 ms, 8 Mi 1,907 ms, 16 Mi 2,372 ms.
const COL_BUDGET: usize = 4 << 20;

/// Convolutions with at most this many output channels split their GEMMs by columns themselves, one part
/// per task of [`SPLIT_COLUMNS`] columns: the GEMM crate parallelises over its 64-row panels of the weight,
/// so a 64-channel convolution (all of TAESD's) ran on one core. Parts depend on the shape only, so the
/// result does not depend on the thread count.
const SPLIT_MAX_ROWS: usize = 128;
const SPLIT_COLUMNS: usize = 512;

pub fn conv2d(x: &[f32], weight: &[f32], epilogue: Epilogue, s: &Shape) -> Vec<f32> {
    let (oh, ow) = (s.out_h(), s.out_w());
    let n = oh * ow;
    #[cfg(target_arch = "x86_64")]
    if n > 0 && s.c_out > 0 && direct::applies(s) {
        // Writes every output once, the epilogue included.
        let mut out = fresh_output(s.batch * s.c_out * n);
        direct::conv2d(x, weight, &epilogue, s, &mut out);
        return out;
    }
    // Fresh pages are first written, never read before (a read maps the shared zero page, and the write
    // after it faults again).
    let mut out = match epilogue.residual {
        Some(residual) => residual.to_vec(),
        None => fresh_output(s.batch * s.c_out * n),
    };
    let accumulate = epilogue.bias.is_some() || epilogue.residual.is_some();
    if let Some(bias) = epilogue.bias {
        let has_residual = epilogue.residual.is_some();
        for_each_chunk(&mut out, n.max(1), |i, row| {
            let b = bias[i % s.c_out];
            if has_residual { row.iter_mut().for_each(|v| *v += b) } else { row.fill(b) }
        });
    }
    if n > 0 && s.c_out > 0 {
        convolve(x, weight, epilogue.winograd, accumulate, s, &mut out);
    }
    if epilogue.relu {
        // A comparison, not `f32::max`, which has no SIMD128 instruction (and NaN stays NaN, as in PyTorch).
        for_each_chunk(&mut out, n.max(1), |_, row| row.iter_mut().for_each(|v| *v = if *v < 0.0 { 0.0 } else { *v }));
    }
    out
}

/// `out[b] (+)= W · col(x[b])`; 3×3 convolutions with stride 1 and padding 1 by Winograd's F(2×2, 3×3)
/// (src/kernels/cpu/winograd.rs), 2.25× fewer multiplications.
fn convolve(x: &[f32], weight: &[f32], winograd_weight: Option<&[f32]>, accumulate: bool, s: &Shape, out: &mut [f32]) {
    if winograd::applies(s) {
        match winograd_weight {
            Some(u) => winograd::convolve(x, u, s, out),
            None => winograd::convolve(x, &winograd::transform_weights(weight), s, out),
        }
    } else {
        im2col_gemm(x, weight, accumulate, s, out)
    }
}

/// `out[b] (+)= W · col(x[b])` by im2col.
pub(super) fn im2col_gemm(x: &[f32], weight: &[f32], accumulate: bool, s: &Shape, out: &mut [f32]) {
    let (oh, ow) = (s.out_h(), s.out_w());
    let n = oh * ow;
    let k = s.c_in * s.kernel * s.kernel;
    let direct = s.kernel == 1 && s.stride == 1 && s.padding == 0 && s.upsample == 1;
    let rows_per_chunk = if direct { oh } else { (COL_BUDGET / (k * ow).max(1)).clamp(1, oh) };
    let mut col = if direct { Vec::new() } else { vec![0.0f32; k * rows_per_chunk * ow] };
    let plane = (s.h / s.upsample) * (s.w / s.upsample);
    for b in 0..s.batch {
        let x_b = &x[b * s.c_in * plane..(b + 1) * s.c_in * plane];
        let out_b = out[b * s.c_out * n..].as_mut_ptr();
        for r0 in (0..oh).step_by(rows_per_chunk) {
            let rows = rows_per_chunk.min(oh - r0);
            let cols = rows * ow;
            let rhs = if direct {
                x_b.as_ptr()
            } else {
                im2col(x_b, &mut col[..k * cols], s, r0, rows);
                col.as_ptr()
            };
            let rhs_rs = if direct { n } else { cols };
            // SAFETY (both forms): W is [c_out, k] (row stride k), col [k, cols] (row stride cols; for the
            // direct case the input [c_in, n]), and the output block is c_out rows of `cols` floats at row
            // stride n, starting at column r0·ow of image b, all inside their buffers; the parts write
            // disjoint columns of it.
            if s.c_out <= SPLIT_MAX_ROWS {
                let (dst, rhs) = (SharedOut(unsafe { out_b.add(r0 * ow) }), SharedIn(rhs));
                for_each_index(cols.div_ceil(SPLIT_COLUMNS), |part| {
                    let (dst, rhs) = (dst, rhs);
                    let j0 = part * SPLIT_COLUMNS;
                    let width = SPLIT_COLUMNS.min(cols - j0);
                    unsafe {
                        gemm_f32(
                            [s.c_out, width, k],
                            (dst.0.add(j0), n, 1),
                            accumulate,
                            (weight.as_ptr(), k, 1),
                            (rhs.0.add(j0), rhs_rs, 1),
                            1.0,
                            gemm::Parallelism::None,
                        );
                    }
                });
            } else {
                unsafe {
                    gemm_f32([s.c_out, cols, k], (out_b.add(r0 * ow), n, 1), accumulate, (weight.as_ptr(), k, 1), (rhs, rhs_rs, 1), 1.0, gemm_threads());
                }
            }
        }
    }
}

/// col[(c, ky, kx), (r, ox)] = x[c, (r0 + r)·stride + ky − pad, ox·stride + kx − pad], 0 outside the input
/// (x upsampled when `upsample` > 1), for `rows` output rows from `r0`. Channels in parallel (each fills its own k·k rows of col).
fn im2col(x: &[f32], col: &mut [f32], s: &Shape, r0: usize, rows: usize) {
    let ow = s.out_w();
    let cols = rows * ow;
    let kk = s.kernel * s.kernel;
    let (u, stored_w) = (s.upsample, s.w / s.upsample);
    let plane = (s.h / u) * stored_w;
    for_each_chunk(col, kk * cols, |c, block| {
        let x_c = &x[c * plane..(c + 1) * plane];
        for ky in 0..s.kernel {
            for kx in 0..s.kernel {
                let dst = &mut block[(ky * s.kernel + kx) * cols..][..cols];
                for r in 0..rows {
                    let dst_row = &mut dst[r * ow..(r + 1) * ow];
                    let iy = ((r0 + r) * s.stride + ky) as isize - s.padding as isize;
                    if iy < 0 || iy >= s.h as isize {
                        dst_row.fill(0.0);
                        continue;
                    }
                    // The input row iy (of the upsampled input when u > 1: stored row iy / u, column j at j / u).
                    let stored_y = iy as usize / u;
                    let src = &x_c[stored_y * stored_w..(stored_y + 1) * stored_w];
                    // Output columns ox whose input column ox·stride + kx − pad lies inside [0, w).
                    let shift = kx as isize - s.padding as isize;
                    let first = if shift >= 0 { 0 } else { ((-shift) as usize).div_ceil(s.stride) };
                    let last = if (s.w as isize - shift) <= 0 { 0 } else { ((s.w as isize - shift) as usize).div_ceil(s.stride).min(ow) };
                    let last = last.max(first);
                    dst_row[..first].fill(0.0);
                    dst_row[last..].fill(0.0);
                    let start = ((first * s.stride) as isize + shift) as usize;
                    if s.stride == 1 && u == 1 {
                        dst_row[first..last].copy_from_slice(&src[start..start + (last - first)]);
                    } else if s.stride == 1 && u == 2 {
                        upsample_2(&mut dst_row[first..last], src, start);
                    } else {
                        for (i, d) in dst_row[first..last].iter_mut().enumerate() {
                            *d = src[(start + i * s.stride) / u];
                        }
                    }
                }
            }
        }
    });
}

/// Random draws for the unit tests that compare the other convolution paths (Winograd, direct) with
/// im2col.
#[cfg(test)]
pub(super) mod test_draws {
    /// `next(n)`: xorshift draws in 0..n, from `state`.
    pub fn draws(mut state: u64) -> impl FnMut(usize) -> usize {
        move |n| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        }
    }

    /// `n` values in [-1, 1], in steps of 0.001.
    pub fn values(n: usize, next: &mut impl FnMut(usize) -> usize) -> Vec<f32> {
        (0..n).map(|_| next(2001) as f32 / 1000.0 - 1.0).collect()
    }
}
