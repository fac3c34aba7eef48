//! 3×3 convolution with stride 1 and padding 1 by Winograd's F(2×2, 3×3) (Lavin & Gray 2015): each 2×2
//! block of outputs ("tile") is `Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A` for its 4×4 input patch d, so the products
//! become 16 GEMMs (one per position ξ of the 4×4 transformed patch: U_ξ [C_out, C_in] · V_ξ [C_in,
//! tiles]) with 16 multiplications per tile and channel pair instead of im2col's 36 — 2.25× fewer. The
//! transforms use only additions and halvings, so the error is that of the sums (tested against burn's
//! conv2d with the im2col path's tolerance). The weights are transformed once, when a model is loaded
//! (`kernels::cpu::winograd_weight`, kept beside the weight by `models::nn::Conv2d`). The tiles of every
//! image of the batch go through the same GEMMs, in bands of tile rows so that V and M stay within
//! [`BAND_BUDGET`] floats. The output transform adds into the output, which holds the bias (and residual)
//! already, as the im2col path's GEMM does.
//!
//! Used where it pays (see [`applies`]): in wasm, whose 4-lane GEMM is compute-bound (a UNet step of the
//! SD-1.5-narrow model in the browser: convolutions 294 → 254 ms); natively the AVX-512 GEMM is fast enough
//! that the transforms' extra memory traffic made the TAESD decoder slower (968 → 1,685 ms at 512²).

use super::conv_shape::Shape;
use super::{SharedOut, for_each_index, gemm_f32, gemm_threads};

/// Most floats of one band's transformed input V and products M together (16 MiB).
const BAND_BUDGET: usize = 4 << 20;

/// Whether this path computes `s`: a 3×3 kernel, stride 1, padding 1, no upsampling, and enough channels
/// that the GEMMs dominate the transforms; in wasm only (module docs).
pub fn applies(s: &Shape) -> bool {
    cfg!(target_arch = "wasm32") && s.kernel == 3 && s.stride == 1 && s.padding == 1 && s.upsample == 1 && s.c_in >= 16 && s.c_out >= 16
}

/// `out += conv3x3(x, weight)` for every image (`out` holds the bias and residual already); `u` is
/// [`transform_weights`] of the weight ([16, C_out, C_in]), made once when the model was loaded.
pub fn convolve(x: &[f32], u: &[f32], s: &Shape, out: &mut [f32]) {
    let tiles_h = s.h.div_ceil(2);
    let tiles_w = s.w.div_ceil(2);
    // Tile rows of all images, numbered image by image.
    let all_rows = s.batch * tiles_h;
    let band_rows = (BAND_BUDGET / (16 * (s.c_in + s.c_out) * tiles_w).max(1)).clamp(1, all_rows);
    let mut v = vec![0.0f32; 16 * s.c_in * band_rows * tiles_w];
    let mut m = vec![0.0f32; 16 * s.c_out * band_rows * tiles_w];
    for g0 in (0..all_rows).step_by(band_rows) {
        let rows = band_rows.min(all_rows - g0);
        let tiles = rows * tiles_w;
        transform_input(x, s, g0, rows, &mut v[..16 * s.c_in * tiles]);
        for xi in 0..16 {
            // SAFETY: U_ξ [C_out, C_in], V_ξ [C_in, tiles] and M_ξ [C_out, tiles] are contiguous blocks of
            // u, v and m.
            unsafe {
                gemm_f32(
                    [s.c_out, tiles, s.c_in],
                    (m[xi * s.c_out * tiles..].as_mut_ptr(), tiles, 1),
                    false,
                    (u[xi * s.c_out * s.c_in..].as_ptr(), s.c_in, 1),
                    (v[xi * s.c_in * tiles..].as_ptr(), tiles, 1),
                    1.0,
                    gemm_threads(),
                );
            }
        }
        transform_output(&m[..16 * s.c_out * tiles], s, g0, rows, out);
    }
}

/// U_ξ[o, i] = (G g Gᵀ)[ξ] for each filter g = weight[o, i] (3×3), G = [[1, 0, 0], [½, ½, ½], [½, −½, ½],
/// [0, 0, 1]]; laid out [16, C_out, C_in] so that each U_ξ is one contiguous GEMM operand. `weight` is
/// [C_out, C_in, 3, 3].
pub fn transform_weights(weight: &[f32]) -> Vec<f32> {
    let filters = weight.len() / 9;
    let mut u = vec![0.0f32; 16 * filters];
    for (f, g) in weight.chunks_exact(9).enumerate() {
        // t = G g (4×3), then t Gᵀ (4×4).
        let mut t = [[0.0f32; 3]; 4];
        for c in 0..3 {
            let (g0, g1, g2) = (g[c], g[3 + c], g[6 + c]);
            t[0][c] = g0;
            t[1][c] = 0.5 * (g0 + g1 + g2);
            t[2][c] = 0.5 * (g0 - g1 + g2);
            t[3][c] = g2;
        }
        for (r, [g0, g1, g2]) in t.into_iter().enumerate() {
            for (c, value) in [g0, 0.5 * (g0 + g1 + g2), 0.5 * (g0 - g1 + g2), g2].into_iter().enumerate() {
                u[(r * 4 + c) * filters + f] = value;
            }
        }
    }
    u
}

/// V_ξ[c, t] = (Bᵀ d B)[ξ] for the 4×4 input patch d of tile t (rows 2·ty − 1 … 2·ty + 2 and columns
/// 2·tx − 1 … 2·tx + 2, zero outside the image), Bᵀ = [[1, 0, −1, 0], [0, 1, 1, 0], [0, −1, 1, 0], [0, 1,
/// 0, −1]]; for global tile rows g0..g0 + rows, laid out [16, C_in, tiles]. Channels in parallel.
fn transform_input(x: &[f32], s: &Shape, g0: usize, rows: usize, v: &mut [f32]) {
    let (h, w) = (s.h, s.w);
    let tiles_h = h.div_ceil(2);
    let tiles_w = w.div_ceil(2);
    let tiles = rows * tiles_w;
    let plane = h * w;
    let stride_xi = s.c_in * tiles;
    let shared = SharedOut(v.as_mut_ptr());
    for_each_index(s.c_in, |c| {
        let v = shared;
        // Column j of this holds input column j − 1 of the tile row's four input rows (zero outside).
        let mut padded = vec![[0.0f32; 4]; 2 * tiles_w + 2];
        for g in g0..g0 + rows {
            let (b, ty) = (g / tiles_h, g % tiles_h);
            let x_c = &x[(b * s.c_in + c) * plane..][..plane];
            for (i, y) in (0..4).map(|i| (2 * ty + i) as isize - 1).enumerate() {
                let row = (y >= 0 && (y as usize) < h).then(|| &x_c[y as usize * w..][..w]);
                for (j, cell) in padded.iter_mut().enumerate() {
                    cell[i] = match row {
                        Some(row) if j >= 1 && j <= w => row[j - 1],
                        _ => 0.0,
                    };
                }
            }
            for tx in 0..tiles_w {
                // d's columns j = 0..4 are padded[2·tx + j], each holding its four rows.
                let d = [padded[2 * tx], padded[2 * tx + 1], padded[2 * tx + 2], padded[2 * tx + 3]];
                // Bᵀ d over rows (per column j), then · B over columns.
                let t: [[f32; 4]; 4] = std::array::from_fn(|j| {
                    let col = d[j];
                    [col[0] - col[2], col[1] + col[2], col[2] - col[1], col[1] - col[3]]
                });
                let tile = (g - g0) * tiles_w + tx;
                for i in 0..4 {
                    let values = [t[0][i] - t[2][i], t[1][i] + t[2][i], t[2][i] - t[1][i], t[1][i] - t[3][i]];
                    for (j, value) in values.into_iter().enumerate() {
                        // SAFETY: channel c's entries of v (index ξ·C_in·tiles + c·tiles + tile) are written
                        // by this task alone, and v outlives the loop.
                        unsafe { *v.0.add((i * 4 + j) * stride_xi + c * tiles + tile) = value };
                    }
                }
            }
        }
    });
}

/// out[b, o, 2·ty + a, 2·tx + bb] += (Aᵀ M A)[a, bb] over M's 4×4 per (o, tile), Aᵀ = [[1, 1, 1, 0], [0, 1,
/// −1, −1]]; outputs past the image's edge (odd sizes) are dropped. Output channels in parallel.
fn transform_output(m: &[f32], s: &Shape, g0: usize, rows: usize, out: &mut [f32]) {
    let tiles_h = s.h.div_ceil(2);
    let tiles_w = s.w.div_ceil(2);
    let tiles = rows * tiles_w;
    let plane = s.h * s.w;
    let stride_xi = s.c_out * tiles;
    let shared = SharedOut(out.as_mut_ptr());
    for_each_index(s.c_out, |o| {
        let out = shared;
        for g in g0..g0 + rows {
            let (b, ty) = (g / tiles_h, g % tiles_h);
            let out_plane = (b * s.c_out + o) * plane;
            for tx in 0..tiles_w {
                let tile = (g - g0) * tiles_w + tx;
                let mm = |xi: usize| m[xi * stride_xi + o * tiles + tile];
                // Aᵀ M (2×4), then (Aᵀ M) A (2×2).
                let t: [[f32; 4]; 2] = [
                    std::array::from_fn(|j| mm(j) + mm(4 + j) + mm(8 + j)),
                    std::array::from_fn(|j| mm(4 + j) - mm(8 + j) - mm(12 + j)),
                ];
                for (a, r) in t.iter().enumerate() {
                    let y = 2 * ty + a;
                    if y >= s.h {
                        continue;
                    }
                    for (bb, value) in [r[0] + r[1] + r[2], r[1] - r[2] - r[3]].into_iter().enumerate() {
                        let x = 2 * tx + bb;
                        if x < s.w {
                            // SAFETY: output channel o's planes are written by this task alone; `out`
                            // outlives the loop.
                            unsafe { *out.0.add(out_plane + y * s.w + x) += value };
                        }
                    }
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::super::conv_shape::Shape;
    use super::super::conv2d::im2col_gemm;
    use super::super::conv2d::test_draws::{draws, values};

    /// Natively [`super::applies`] is false, so the kernel tests of tests/suite see the im2col path: this
    /// compares the Winograd path with it directly, over random shapes (odd sizes, batch 2, 16–70 channels),
    /// with the kernel tests' tolerance (2e-7·√(9·C_in) of the largest output).
    #[test]
    fn winograd_matches_the_im2col_path_over_random_shapes() {
        let mut next = draws(0x2545_f491_4f6c_dd1du64);
        for _ in 0..24 {
            let s = Shape { batch: 1 + next(2), c_in: 16 + next(55), h: 1 + next(26), w: 1 + next(30), c_out: 16 + next(35), kernel: 3, stride: 1, padding: 1, upsample: 1 };
            let x = values(s.batch * s.c_in * s.h * s.w, &mut next);
            let weight = values(s.c_out * s.c_in * 9, &mut next);
            let start = values(s.batch * s.c_out * s.h * s.w, &mut next);
            let (mut ours, mut reference) = (start.clone(), start);
            super::convolve(&x, &super::transform_weights(&weight), &s, &mut ours);
            im2col_gemm(&x, &weight, true, &s, &mut reference);
            let largest = reference.iter().fold(1f32, |m, v| m.max(v.abs()));
            let err = ours.iter().zip(&reference).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / largest;
            assert!(err <= 2e-7 * ((9 * s.c_in) as f32).sqrt(), "{s:?}: relative error {err:e}");
        }
    }
}
