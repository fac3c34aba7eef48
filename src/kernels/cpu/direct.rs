//! 3×3 convolution with stride 1 and padding 1, computed directly with AVX-512 (x86-64 only, where the
//! CPU has it: `mod.rs` declares this module for x86-64 alone), no im2col. Each task takes a band of
//! [`BAND`] output rows of one image, copies the input rows it needs once into a zero-padded scratch
//! (reading through a nearest upsampling there), and computes register blocks of [`CO`] output channels
//! × up to 3 vectors of 16 output columns: for every input channel and each of the 9 taps, 3 unaligned
//! loads of the padded row and [`CO`] weight broadcasts feed up to 24 FMAs, all accumulators in registers. Bias, residual and ReLU are applied to the registers
//! before the one store, so the output is written once and never read.
//!
//! Why: im2col writes 9 shifted copies of the input and the GEMM then runs on a weight of 64 rows (all of
//! TAESD's convolutions), where its 48-row micro-kernel wastes a third of a panel and packs both operands
//! on every call; this kernel reaches about twice its throughput there (docs/benchmarks.md).
//!
//! Every output is one task's sum over (input channel, ky, kx) in that order, so the result does not
//! depend on the thread count.

use super::conv2d::{Epilogue, Shape, upsample_2};

/// Output channels of one register block (the weight is packed by blocks of this many, zero-padded).
const CO: usize = 8;
/// Floats in one AVX-512 vector.
const LANES: usize = 16;
/// Output rows per task.
const BAND: usize = 8;

/// Most input channels for which this path is taken: a block's weights (C_in·9·CO floats, 36 KiB at
/// 128) then stay in L1 beside the rows they multiply. With the UNets' 320–1,280 channels every broadcast
/// came from L2 and an SD-1.5 step's convolutions took 4,713 ms against im2col's 1,837.
const MAX_C_IN: usize = 128;

/// Whether convolutions of shape `s` take this path: [`supports`], and few enough input channels that it
/// pays ([`MAX_C_IN`]).
pub fn applies(s: &Shape) -> bool {
    supports(s) && s.c_in <= MAX_C_IN
}

/// Whether this kernel can compute `s`: a 3×3 kernel, stride 1, padding 1, on a CPU with AVX-512F.
pub fn supports(s: &Shape) -> bool {
    s.kernel == 3 && s.stride == 1 && s.padding == 1 && std::arch::is_x86_feature_detected!("avx512f")
}

/// `out = relu(conv3x3(x, weight) + bias + residual)` for every image, as the epilogue says; `out` is
/// [B, C_out, h, w] and is only written. Call only where [`supports`] holds.
pub fn conv2d(x: &[f32], weight: &[f32], epilogue: &Epilogue, s: &Shape, out: &mut [f32]) {
    use super::{SharedOut, for_each_index};
    assert!(supports(s), "the direct convolution was called for {s:?}");
    let packed = pack_weight(weight, s);
    let bands = s.h.div_ceil(BAND);
    let dst = SharedOut(out.as_mut_ptr());
    for_each_index(s.batch * bands, |task| {
        let dst = dst;
        let (b, y0) = (task / bands, (task % bands) * BAND);
        let rows = BAND.min(s.h - y0);
        let plane = (s.h / s.upsample) * (s.w / s.upsample);
        let x_b = &x[b * s.c_in * plane..(b + 1) * s.c_in * plane];
        SCRATCH.with_borrow_mut(|scratch| {
            let padded = fill_padded(x_b, s, y0, rows, scratch);
            // SAFETY: the band's rows of image b are written by this task alone, and `out` ([B, C_out, h, w])
            // outlives the loop; AVX-512F is present (`supports`).
            unsafe { band(padded, &packed, epilogue, s, b, y0, rows, dst.0) };
        });
    });
}

thread_local! {
    /// Each thread's padded input band, kept between calls.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Floats in one padded row: the input row at columns 1..=w, zeros around, and room for the last
/// vector's loads at taps kx = 1, 2.
fn padded_width(w: usize) -> usize {
    w.next_multiple_of(LANES) + LANES
}

/// The weight [C_out, C_in, 3, 3] as [C_out / CO, C_in, 9, CO], the last block's missing channels zero.
fn pack_weight(weight: &[f32], s: &Shape) -> Vec<f32> {
    let blocks = s.c_out.div_ceil(CO);
    let mut packed = vec![0.0f32; blocks * s.c_in * 9 * CO];
    for (o, w_o) in weight.chunks_exact(s.c_in * 9).enumerate() {
        let (block, lane) = (o / CO, o % CO);
        for (i, &v) in w_o.iter().enumerate() {
            packed[(block * s.c_in * 9 + i) * CO + lane] = v;
        }
    }
    packed
}

/// Copies the input rows y0 − 1 ..= y0 + rows of every channel into `scratch` as [C_in, rows + 2,
/// padded_width], column j holding input column j − 1 (of the upsampled input) and zeros outside it.
fn fill_padded<'a>(x_b: &[f32], s: &Shape, y0: usize, rows: usize, scratch: &'a mut Vec<f32>) -> &'a [f32] {
    let pw = padded_width(s.w);
    let len = s.c_in * (rows + 2) * pw;
    if scratch.len() < len {
        scratch.resize(len, 0.0);
    }
    let (u, stored_w) = (s.upsample, s.w / s.upsample);
    let plane = (s.h / u) * stored_w;
    // Every float of the band is written (the scratch holds another call's values): zeros around each row.
    for (c, rows_c) in scratch[..len].chunks_exact_mut((rows + 2) * pw).enumerate() {
        for (r, dst) in rows_c.chunks_exact_mut(pw).enumerate() {
            let iy = (y0 + r) as isize - 1;
            if iy < 0 || iy >= s.h as isize {
                dst.fill(0.0);
                continue;
            }
            let stored_y = iy as usize / u;
            let src = &x_b[c * plane + stored_y * stored_w..][..stored_w];
            dst[0] = 0.0;
            dst[s.w + 1..].fill(0.0);
            let dst = &mut dst[1..=s.w];
            if u == 1 {
                dst.copy_from_slice(src);
            } else if u == 2 {
                upsample_2(dst, src, 0);
            } else {
                for (j, d) in dst.iter_mut().enumerate() {
                    *d = src[j / u];
                }
            }
        }
    }
    &scratch[..len]
}

/// The band's outputs: for each output row, block of CO channels and group of up to 3 vectors, one
/// [`block`] call.
///
/// # Safety
/// AVX-512F must be present; `out` must be valid for [B, C_out, h, w] and this band's rows written by no
/// other task.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn band(padded: &[f32], packed: &[f32], epilogue: &Epilogue, s: &Shape, b: usize, y0: usize, rows: usize, out: *mut f32) {
    let pw = padded_width(s.w);
    let vectors = s.w.div_ceil(LANES);
    let blocks = s.c_out.div_ceil(CO);
    for y in 0..rows {
        for block_index in 0..blocks {
            let weights = &packed[block_index * s.c_in * 9 * CO..][..s.c_in * 9 * CO];
            // Groups of at most 3 vectors, as even as possible (4 vectors: 2 + 2, not 3 + 1, whose
            // one-vector block loads as often as it multiplies).
            let groups = vectors.div_ceil(3);
            let mut v0 = 0;
            for g in 0..groups {
                let count = (vectors - v0).div_ceil(groups - g);
                let at = Block { padded, pw, band_rows: rows + 2, y, x0: v0 * LANES, weights, c_in: s.c_in };
                let target = Target { out, epilogue, s, b, y: y0 + y, c0: block_index * CO, x0: v0 * LANES };
                // SAFETY: forwarded from the caller.
                unsafe {
                    match count {
                        1 => block::<1>(&at, &target),
                        2 => block::<2>(&at, &target),
                        _ => block::<3>(&at, &target),
                    }
                }
                v0 += count;
            }
        }
    }
}

/// Where one register block reads: output row `y` of the band, columns from `x0`.
struct Block<'a> {
    padded: &'a [f32],
    pw: usize,
    band_rows: usize,
    y: usize,
    x0: usize,
    weights: &'a [f32],
    c_in: usize,
}

/// Where one register block writes: output channels c0.., row y, columns x0.. of image b.
struct Target<'a> {
    out: *mut f32,
    epilogue: &'a Epilogue<'a>,
    s: &'a Shape,
    b: usize,
    y: usize,
    c0: usize,
    x0: usize,
}

/// CO output channels × V vectors of one output row.
///
/// # Safety
/// As [`band`].
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn block<const V: usize>(at: &Block, target: &Target) {
    use std::arch::x86_64::*;
    // SAFETY: forwarded from the caller.
    let acc = unsafe { sums::<V>(at) };
    let s = target.s;
    let plane = s.h * s.w;
    let zero = _mm512_setzero_ps();
    for (c, acc_c) in acc.iter().enumerate() {
        let o = target.c0 + c;
        if o >= s.c_out {
            break;
        }
        let bias = _mm512_set1_ps(target.epilogue.bias.map_or(0.0, |bias| bias[o]));
        let offset = (target.b * s.c_out + o) * plane + target.y * s.w;
        for (v, &sum) in acc_c.iter().enumerate() {
            let x = target.x0 + v * LANES;
            let lanes = LANES.min(s.w - x);
            let mask: __mmask16 = if lanes == LANES { !0 } else { (1u16 << lanes) - 1 };
            let mut value = _mm512_add_ps(sum, bias);
            if let Some(residual) = target.epilogue.residual {
                // SAFETY: the residual has the output's shape; the mask keeps the load inside the row.
                value = _mm512_add_ps(value, unsafe { _mm512_maskz_loadu_ps(mask, residual[offset + x..].as_ptr()) });
            }
            if target.epilogue.relu {
                // max(0, v): NaN stays NaN (the second operand is returned when either is NaN), as in PyTorch.
                value = _mm512_max_ps(zero, value);
            }
            // SAFETY: inside the output (the caller's guarantee), masked to the row's columns.
            unsafe { _mm512_mask_storeu_ps(target.out.add(offset + x), mask, value) };
        }
    }
}

/// The register block's sums over input channels and taps. Kept out of line and returned by value so
/// that the accumulators are only ever indexed by constants and stay in registers (inlined into the
/// epilogue's loop they were kept on the stack: 1,232 ms for the decoder against im2col's 988).
///
/// # Safety
/// AVX-512F must be present.
#[target_feature(enable = "avx512f")]
#[inline(never)]
unsafe fn sums<const V: usize>(at: &Block) -> [[std::arch::x86_64::__m512; V]; CO] {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); V]; CO];
    // Every row read below lies inside `padded` ([C_in, band_rows, pw], V vectors from x0 + 2 fit in a
    // row: `padded_width`), and the weights hold C_in·9·CO floats: checked once here, not per load.
    assert!(at.x0 + 2 + V * LANES <= at.pw && at.y + 3 <= at.band_rows && at.c_in * at.band_rows * at.pw <= at.padded.len());
    assert!(at.weights.len() >= at.c_in * 9 * CO);
    // Rows advance by `wrapping_add`, vectors load through the masked form and each input channel's taps
    // are an array indexed by constants: the dev profile keeps debug assertions in our crate, and the
    // precondition checks of `ptr::add`, `_mm512_loadu_ps` and raw-pointer reads inside this loop cost
    // more than the FMAs.
    let full: __mmask16 = !0;
    let mut row0 = at.padded.as_ptr().wrapping_add(at.y * at.pw + at.x0);
    for taps in at.weights[..at.c_in * 9 * CO].chunks_exact(9 * CO) {
        let taps: &[f32; 9 * CO] = taps.try_into().expect("chunks of 9·CO");
        for ky in 0..3 {
            let row = row0.wrapping_add(ky * at.pw);
            for kx in 0..3 {
                // SAFETY: inside `padded`, by the asserts above.
                let xv: [__m512; V] = std::array::from_fn(|v| unsafe { _mm512_maskz_loadu_ps(full, row.wrapping_add(kx + v * LANES)) });
                for (c, acc_c) in acc.iter_mut().enumerate() {
                    let wv = _mm512_set1_ps(taps[(ky * 3 + kx) * CO + c]);
                    for v in 0..V {
                        acc_c[v] = _mm512_fmadd_ps(wv, xv[v], acc_c[v]);
                    }
                }
            }
        }
        row0 = row0.wrapping_add(at.band_rows * at.pw);
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::super::conv2d::{Epilogue, Shape, im2col_gemm};

    /// The suite's kernel tests see this path wherever the CPU has AVX-512; this compares it with the
    /// im2col path directly, over random shapes (odd sizes, widths across the vector and block tails,
    /// channel counts off the block of 8, more input channels than [`super::MAX_C_IN`], upsampling, batch 2), bias, residual and ReLU, with the kernel
    /// tests' tolerance (2e-7·√(9·C_in) of the largest output).
    #[test]
    fn direct_matches_the_im2col_path_over_random_shapes() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            eprintln!("no AVX-512F: the direct convolution does not run on this CPU");
            return;
        }
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        for case in 0..40 {
            let upsample = 1 + next(2);
            let (stored_h, stored_w) = (1 + next(20), 1 + next(70));
            let s = Shape { batch: 1 + next(2), c_in: if case % 8 == 7 { 129 + next(100) } else { 1 + next(40) }, h: stored_h * upsample, w: stored_w * upsample, c_out: 1 + next(30), kernel: 3, stride: 1, padding: 1, upsample };
            let values = |n: usize, next: &mut dyn FnMut(usize) -> usize| (0..n).map(|_| next(2001) as f32 / 1000.0 - 1.0).collect::<Vec<f32>>();
            let x = values(s.batch * s.c_in * stored_h * stored_w, &mut next);
            let weight = values(s.c_out * s.c_in * 9, &mut next);
            let bias = values(s.c_out, &mut next);
            let residual = values(s.batch * s.c_out * s.h * s.w, &mut next);
            let relu = case % 2 == 0;
            let with_residual = case % 3 != 0;
            let epilogue = Epilogue { bias: Some(&bias), residual: with_residual.then_some(&residual[..]), relu, winograd: None };
            let mut ours = vec![f32::NAN; residual.len()];
            super::conv2d(&x, &weight, &epilogue, &s, &mut ours);
            let mut reference: Vec<f32> = if with_residual { residual.clone() } else { vec![0.0; residual.len()] };
            let plane = s.h * s.w;
            for (i, v) in reference.iter_mut().enumerate() {
                *v += bias[(i / plane) % s.c_out];
            }
            im2col_gemm(&x, &weight, true, &s, &mut reference);
            if relu {
                reference.iter_mut().for_each(|v| *v = v.max(0.0));
            }
            assert!(ours.iter().all(|v| v.is_finite()), "{s:?}: an output was not written");
            let largest = reference.iter().fold(1f32, |m, v| m.max(v.abs()));
            let err = ours.iter().zip(&reference).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / largest;
            assert!(err <= 2e-7 * ((9 * s.c_in) as f32).sqrt(), "{s:?}: relative error {err:e}");
        }
    }
}
