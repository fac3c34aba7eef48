//! 3×3 convolution with stride 1 and padding 1, computed directly with AVX-512 or AVX2 + FMA (x86-64
//! only: `mod.rs` declares this module for x86-64 alone; chosen at run time), no im2col. Each task takes a
//! band of [`BAND`] output rows of one image, copies the input rows it needs once into a zero-padded
//! scratch (reading through a nearest upsampling there), and computes register blocks of CO output
//! channels × up to MAX_V vectors of output columns (AVX-512: 8 × 3 vectors of 16; AVX2, with half the
//! registers: 6 × 2 vectors of 8): for every input channel and each of the 9 taps, MAX_V unaligned loads
//! of the padded row and CO weight broadcasts feed the FMAs, all accumulators in registers. Bias, residual
//! and ReLU are applied to the registers before the one store, so the output is written once and never
//! read.
//!
//! Why: im2col writes 9 shifted copies of the input and the GEMM then runs on a weight of 64 rows (all of
//! TAESD's convolutions), where its 48-row micro-kernel wastes a third of a panel and packs both operands
//! on every call; this kernel reaches about twice its throughput there (docs/benchmarks.md).
//!
//! Every output is one task's sum over (input channel, ky, kx) in that order, so the result does not
//! depend on the thread count.

use super::conv_shape::{Epilogue, Shape, upsample_2};

/// Output rows per task.
const BAND: usize = 8;

/// Most input channels for which this path is taken: a block's weights (C_in·9·CO floats: at 128, 36 KiB
/// with AVX-512's 8 channels, 27 KiB with AVX2's 6) then stay in L1 beside the rows they multiply. With the UNets' 320–1,280 channels every broadcast
/// came from L2 and an SD-1.5 step's convolutions took 4,713 ms against im2col's 1,837.
const MAX_C_IN: usize = 128;

/// Whether convolutions of shape `s` take this path: [`supports`], and few enough input channels that it
/// pays ([`MAX_C_IN`]).
pub fn applies(s: &Shape) -> bool {
    supports(s) && s.c_in <= MAX_C_IN
}

/// Whether this kernel can compute `s`: a 3×3 kernel, stride 1, padding 1, on a CPU with AVX-512F or
/// AVX2 and FMA.
pub fn supports(s: &Shape) -> bool {
    s.kernel == 3 && s.stride == 1 && s.padding == 1 && Isa::best().is_some()
}

/// The instruction sets the kernel is written for, best first.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Isa {
    Avx512,
    Avx2,
}

impl Isa {
    fn best() -> Option<Isa> {
        [Isa::Avx512, Isa::Avx2].into_iter().find(|isa| isa.present())
    }

    fn present(self) -> bool {
        match self {
            Isa::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            Isa::Avx2 => std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma"),
        }
    }

    /// Output channels of one register block (the weight is packed by blocks of this many, zero-padded).
    fn channels(self) -> usize {
        match self {
            Isa::Avx512 => avx512::CO,
            Isa::Avx2 => avx2::CO,
        }
    }
}

/// `out = relu(conv3x3(x, weight) + bias + residual)` for every image, as the epilogue says; `out` is
/// [B, C_out, h, w] and is only written. Call only where [`supports`] holds.
pub fn conv2d(x: &[f32], weight: &[f32], epilogue: &Epilogue, s: &Shape, out: &mut [f32]) {
    let isa = Isa::best().unwrap_or_else(|| panic!("the direct convolution was called without AVX-512 or AVX2 for {s:?}"));
    conv2d_with(isa, x, weight, epilogue, s, out)
}

fn conv2d_with(isa: Isa, x: &[f32], weight: &[f32], epilogue: &Epilogue, s: &Shape, out: &mut [f32]) {
    use super::{SharedOut, for_each_index};
    assert!(isa.present() && s.kernel == 3 && s.stride == 1 && s.padding == 1, "the direct convolution ({isa:?}) was called for {s:?}");
    assert_eq!(out.len(), s.batch * s.c_out * s.h * s.w, "the direct convolution's output for {s:?}");
    let packed = pack_weight(weight, s, isa.channels());
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
            let at = Band { padded, packed: &packed, epilogue, s, b, y0, rows, out: dst.0 };
            // SAFETY: the band's rows of image b are written by this task alone, `out` ([B, C_out, h, w],
            // checked above) outlives the loop, and the instruction set is present (checked above).
            unsafe {
                match isa {
                    Isa::Avx512 => avx512::band(&at),
                    Isa::Avx2 => avx2::band(&at),
                }
            }
        });
    });
}

thread_local! {
    /// Each thread's padded input band, kept between calls.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Floats in one padded row: the input row at columns 1..=w, zeros around, and room for the last
/// vector's loads at taps kx = 1, 2 (for vectors of up to 16 floats).
fn padded_width(w: usize) -> usize {
    w.next_multiple_of(16) + 16
}

/// The weight [C_out, C_in, 3, 3] as [C_out / co, C_in, 9, co], the last block's missing channels zero.
fn pack_weight(weight: &[f32], s: &Shape, co: usize) -> Vec<f32> {
    let blocks = s.c_out.div_ceil(co);
    let mut packed = vec![0.0f32; blocks * s.c_in * 9 * co];
    for (o, w_o) in weight.chunks_exact(s.c_in * 9).enumerate() {
        let (block, lane) = (o / co, o % co);
        for (i, &v) in w_o.iter().enumerate() {
            packed[(block * s.c_in * 9 + i) * co + lane] = v;
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

/// One task's band: its padded input rows, the packed weight, and where its outputs go (output rows
/// y0 .. y0 + rows of image b).
struct Band<'a> {
    padded: &'a [f32],
    packed: &'a [f32],
    epilogue: &'a Epilogue<'a>,
    s: &'a Shape,
    b: usize,
    y0: usize,
    rows: usize,
    out: *mut f32,
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
    /// The kernel's rows: 3, held in a field so that the compiler does not unroll the loop over them where
    /// `UNROLL_ROWS` is false (AVX2: unrolled, it loaded the 9 taps' row vectors ahead and spilled the
    /// accumulators to the stack: the decoder 940–1,009 ms against 817–842).
    taps_y: usize,
}

/// The kernel for one instruction set, from its vector helpers (`zero`, `load`, `splat`, `fmadd`, `add`,
/// `max0`, `load_part`, `store_part`), its `Vector` type and its `LANES`, `CO`, `MAX_V` and `UNROLL_ROWS`: the
/// same code for AVX-512 and AVX2.
macro_rules! direct_kernel {
    ($feature:literal) => {
        /// The band's outputs: for each output row, block of CO channels and group of up to MAX_V
        /// vectors, one [`block`] call.
        ///
        /// # Safety
        /// The instruction set must be present; `at.out` must be valid for [B, C_out, h, w] and this
        /// band's rows written by no other task.
        #[target_feature(enable = $feature)]
        pub(super) unsafe fn band(at: &Band) {
            let s = at.s;
            let pw = padded_width(s.w);
            let vectors = s.w.div_ceil(LANES);
            let blocks = s.c_out.div_ceil(CO);
            for y in 0..at.rows {
                for block_index in 0..blocks {
                    let weights = &at.packed[block_index * s.c_in * 9 * CO..][..s.c_in * 9 * CO];
                    // Groups of at most MAX_V vectors, as even as possible (4 vectors in groups of 3:
                    // 2 + 2, not 3 + 1, whose one-vector block loads as often as it multiplies).
                    let groups = vectors.div_ceil(MAX_V);
                    let mut v0 = 0;
                    for g in 0..groups {
                        let count = (vectors - v0).div_ceil(groups - g);
                        let from = Block { padded: at.padded, pw, band_rows: at.rows + 2, y, x0: v0 * LANES, weights, c_in: s.c_in, taps_y: 3 };
                        // SAFETY: forwarded from the caller.
                        unsafe {
                            match count {
                                1 => block::<1>(&from, at, y, block_index * CO),
                                2 => block::<2>(&from, at, y, block_index * CO),
                                _ => block::<MAX_V>(&from, at, y, block_index * CO),
                            }
                        }
                        v0 += count;
                    }
                }
            }
        }

        /// CO output channels c0.. × V vectors of the band's output row y: the sums, then bias, residual
        /// and ReLU on the registers, one store.
        ///
        /// # Safety
        /// As [`band`].
        #[target_feature(enable = $feature)]
        #[inline]
        unsafe fn block<const V: usize>(from: &Block, at: &Band, y: usize, c0: usize) {
            // SAFETY: forwarded from the caller.
            let acc = unsafe { sums::<V>(from) };
            let s = at.s;
            let plane = s.h * s.w;
            for (c, acc_c) in acc.iter().enumerate() {
                let o = c0 + c;
                if o >= s.c_out {
                    break;
                }
                let bias = splat(at.epilogue.bias.map_or(0.0, |bias| bias[o]));
                let offset = (at.b * s.c_out + o) * plane + (at.y0 + y) * s.w;
                for (v, &sum) in acc_c.iter().enumerate() {
                    let x = from.x0 + v * LANES;
                    let lanes = LANES.min(s.w - x);
                    let mut value = add(sum, bias);
                    if let Some(residual) = at.epilogue.residual {
                        // SAFETY: the residual has the output's shape; `lanes` keeps the load inside the row.
                        value = add(value, unsafe { load_part(residual[offset + x..].as_ptr(), lanes) });
                    }
                    if at.epilogue.relu {
                        value = max0(value);
                    }
                    // SAFETY: inside the output (the caller's guarantee), `lanes` floats of the row.
                    unsafe { store_part(at.out.wrapping_add(offset + x), lanes, value) };
                }
            }
        }

        /// The register block's sums over input channels and taps. Kept out of line and returned by value
        /// so that the accumulators are only ever indexed by constants and stay in registers (inlined into
        /// the epilogue's loop they were kept on the stack: 1,232 ms for the decoder against im2col's 988).
        ///
        /// # Safety
        /// The instruction set must be present.
        #[target_feature(enable = $feature)]
        #[inline(never)]
        unsafe fn sums<const V: usize>(at: &Block) -> [[Vector; V]; CO] {
            let mut acc = [[zero(); V]; CO];
            // Every row read below lies inside `padded` ([C_in, band_rows, pw], V vectors from x0 + 2 fit
            // in a row: `padded_width`), and the weights hold C_in·9·CO floats: checked once here, not per
            // load.
            assert!(at.taps_y <= 3 && at.x0 + 2 + V * LANES <= at.pw && at.y + 3 <= at.band_rows && at.c_in * at.band_rows * at.pw <= at.padded.len());
            assert!(at.weights.len() >= at.c_in * 9 * CO);
            // Rows advance by `wrapping_add`, vectors load through forms without precondition checks and
            // each input channel's taps are an array indexed by constants: the dev profile keeps debug
            // assertions in our crate, and the checks of `ptr::add`, `_mm512_loadu_ps` and raw-pointer
            // reads inside this loop cost more than the FMAs.
            let mut row0 = at.padded.as_ptr().wrapping_add(at.y * at.pw + at.x0);
            for taps in at.weights[..at.c_in * 9 * CO].chunks_exact(9 * CO) {
                let taps: &[f32; 9 * CO] = taps.try_into().expect("chunks of 9·CO");
                // AVX-512 unrolls it (32 registers hold the loads ahead); AVX2 loops (see `Block::taps_y`).
                let taps_y = if UNROLL_ROWS { 3 } else { at.taps_y };
                for ky in 0..taps_y {
                    let row = row0.wrapping_add(ky * at.pw);
                    for kx in 0..3 {
                        // SAFETY: inside `padded`, by the asserts above.
                        let xv: [Vector; V] = std::array::from_fn(|v| unsafe { load(row.wrapping_add(kx + v * LANES)) });
                        for (c, acc_c) in acc.iter_mut().enumerate() {
                            let wv = splat(taps[(ky * 3 + kx) * CO + c]);
                            for v in 0..V {
                                acc_c[v] = fmadd(wv, xv[v], acc_c[v]);
                            }
                        }
                    }
                }
                row0 = row0.wrapping_add(at.band_rows * at.pw);
            }
            acc
        }
    };
}

/// AVX-512F: 32 registers of 16 floats; 8 channels × 3 vectors = 24 accumulators.
mod avx512 {
    use super::{Band, Block, padded_width};
    use std::arch::x86_64::*;

    type Vector = __m512;
    const LANES: usize = 16;
    pub(super) const CO: usize = 8;
    const MAX_V: usize = 3;
    const UNROLL_ROWS: bool = true;

    #[target_feature(enable = "avx512f")]
    #[inline]
    fn zero() -> Vector {
        _mm512_setzero_ps()
    }

    /// 16 floats from `p`, through the masked form (no precondition checks: see `sums`).
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn load(p: *const f32) -> Vector {
        // SAFETY: the caller's.
        unsafe { _mm512_maskz_loadu_ps(!0, p) }
    }

    #[target_feature(enable = "avx512f")]
    #[inline]
    fn splat(x: f32) -> Vector {
        _mm512_set1_ps(x)
    }

    #[target_feature(enable = "avx512f")]
    #[inline]
    fn fmadd(a: Vector, b: Vector, c: Vector) -> Vector {
        _mm512_fmadd_ps(a, b, c)
    }

    #[target_feature(enable = "avx512f")]
    #[inline]
    fn add(a: Vector, b: Vector) -> Vector {
        _mm512_add_ps(a, b)
    }

    /// max(0, v): NaN stays NaN (the second operand is returned when either is NaN), as in PyTorch.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn max0(v: Vector) -> Vector {
        _mm512_max_ps(_mm512_setzero_ps(), v)
    }

    fn mask(lanes: usize) -> __mmask16 {
        if lanes >= 16 { !0 } else { (1u16 << lanes) - 1 }
    }

    /// The first `lanes` floats from `p`, zeros after them.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn load_part(p: *const f32, lanes: usize) -> Vector {
        // SAFETY: the caller's: `lanes` floats readable at `p`.
        unsafe { _mm512_maskz_loadu_ps(mask(lanes), p) }
    }

    /// Stores the first `lanes` floats of `v` at `p`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn store_part(p: *mut f32, lanes: usize, v: Vector) {
        // SAFETY: the caller's: `lanes` floats writable at `p`.
        unsafe { _mm512_mask_storeu_ps(p, mask(lanes), v) }
    }

    direct_kernel!("avx512f");
}

/// AVX2 + FMA: 16 registers of 8 floats; 6 channels × 2 vectors = 12 accumulators, with room left for
/// the loaded row vectors and the broadcast weight.
mod avx2 {
    use super::{Band, Block, padded_width};
    use std::arch::x86_64::*;

    type Vector = __m256;
    const LANES: usize = 8;
    pub(super) const CO: usize = 6;
    const MAX_V: usize = 2;
    const UNROLL_ROWS: bool = false;

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn zero() -> Vector {
        _mm256_setzero_ps()
    }

    /// 8 floats from `p`, through an integer load that has no precondition checks (see `sums`).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn load(p: *const f32) -> Vector {
        // SAFETY: the caller's.
        unsafe { _mm256_castsi256_ps(_mm256_lddqu_si256(p.cast())) }
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn splat(x: f32) -> Vector {
        _mm256_set1_ps(x)
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn fmadd(a: Vector, b: Vector, c: Vector) -> Vector {
        _mm256_fmadd_ps(a, b, c)
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn add(a: Vector, b: Vector) -> Vector {
        _mm256_add_ps(a, b)
    }

    /// max(0, v): NaN stays NaN (the second operand is returned when either is NaN), as in PyTorch.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn max0(v: Vector) -> Vector {
        _mm256_max_ps(_mm256_setzero_ps(), v)
    }

    /// Lanes below `lanes` set (all bits), the others clear: the mask of `_mm256_maskload_ps` / `maskstore`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn mask(lanes: usize) -> __m256i {
        _mm256_cmpgt_epi32(_mm256_set1_epi32(lanes.min(8) as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
    }

    /// The first `lanes` floats from `p`, zeros after them.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn load_part(p: *const f32, lanes: usize) -> Vector {
        // SAFETY: the caller's: `lanes` floats readable at `p`.
        unsafe { _mm256_maskload_ps(p, mask(lanes)) }
    }

    /// Stores the first `lanes` floats of `v` at `p`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn store_part(p: *mut f32, lanes: usize, v: Vector) {
        // SAFETY: the caller's: `lanes` floats writable at `p`.
        unsafe { _mm256_maskstore_ps(p, mask(lanes), v) }
    }

    direct_kernel!("avx2,fma");
}

#[cfg(test)]
mod tests {
    use super::Isa;
    use super::super::conv_shape::{Epilogue, Shape};
    use super::super::conv2d::im2col_gemm;
    use super::super::conv2d::test_draws::{draws, values};

    /// The suite's kernel tests see this path (with the CPU's best instruction set); this compares it,
    /// with every instruction set the CPU has, with the im2col path directly, over random shapes (odd
    /// sizes, widths across the vector and group tails, channel counts off the blocks of 8 and 6, more
    /// input channels than [`super::MAX_C_IN`], upsampling, batch 2), bias, residual and ReLU, with the
    /// kernel tests' tolerance (2e-7·√(9·C_in) of the largest output).
    #[test]
    fn direct_matches_the_im2col_path_over_random_shapes() {
        let isas: Vec<Isa> = [Isa::Avx512, Isa::Avx2].into_iter().filter(|isa| isa.present()).collect();
        if isas.is_empty() {
            eprintln!("neither AVX-512F nor AVX2 + FMA: the direct convolution does not run on this CPU");
            return;
        }
        let mut next = draws(0x9e37_79b9_7f4a_7c15u64);
        for case in 0..40 {
            let upsample = 1 + next(2);
            let (stored_h, stored_w) = (1 + next(20), 1 + next(70));
            let s = Shape { batch: 1 + next(2), c_in: if case % 8 == 7 { 129 + next(100) } else { 1 + next(40) }, h: stored_h * upsample, w: stored_w * upsample, c_out: 1 + next(30), kernel: 3, stride: 1, padding: 1, upsample };
            let x = values(s.batch * s.c_in * stored_h * stored_w, &mut next);
            let weight = values(s.c_out * s.c_in * 9, &mut next);
            let bias = values(s.c_out, &mut next);
            let residual = values(s.batch * s.c_out * s.h * s.w, &mut next);
            let relu = case % 2 == 0;
            let with_residual = case % 3 != 0;
            let epilogue = Epilogue { bias: Some(&bias), residual: with_residual.then_some(&residual[..]), relu, winograd: None };
            let outputs: Vec<(Isa, Vec<f32>)> = isas
                .iter()
                .map(|&isa| {
                    let mut out = vec![f32::NAN; residual.len()];
                    super::conv2d_with(isa, &x, &weight, &epilogue, &s, &mut out);
                    (isa, out)
                })
                .collect();
            let mut reference: Vec<f32> = if with_residual { residual.clone() } else { vec![0.0; residual.len()] };
            let plane = s.h * s.w;
            for (i, v) in reference.iter_mut().enumerate() {
                *v += bias[(i / plane) % s.c_out];
            }
            im2col_gemm(&x, &weight, true, &s, &mut reference);
            if relu {
                reference.iter_mut().for_each(|v| *v = v.max(0.0));
            }
            let largest = reference.iter().fold(1f32, |m, v| m.max(v.abs()));
            for (isa, ours) in &outputs {
                assert!(ours.iter().all(|v| v.is_finite()), "{isa:?} {s:?}: an output was not written");
                let err = ours.iter().zip(&reference).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / largest;
                assert!(err <= 2e-7 * ((9 * s.c_in) as f32).sqrt(), "{isa:?} {s:?}: relative error {err:e}");
            }
        }
    }
}
