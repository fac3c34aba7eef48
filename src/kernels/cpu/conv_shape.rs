//! What a 2-D convolution is, as every CPU path reads it: its [`Shape`] (sizes, stride, padding, nearest
//! upsampling of the input), the [`Epilogue`] fused into its output (bias, residual, ReLU, the pre-transformed
//! Winograd weight), and [`upsample_2`], the row of a ×2 nearest upsampling that im2col and the direct
//! kernel both read through. Below `conv2d` (which chooses a path) and its paths `direct` and `winograd`,
//! so that they all depend on it and it on none of them.

#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub batch: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    /// Nearest upsampling of the stored input by this factor before the convolution (1: none): `h` and `w`
    /// are the upsampled sizes, the stored input is [h / upsample, w / upsample].
    pub upsample: usize,
}

impl Shape {
    pub fn out_h(&self) -> usize {
        (self.h + 2 * self.padding - self.kernel) / self.stride + 1
    }

    pub fn out_w(&self) -> usize {
        (self.w + 2 * self.padding - self.kernel) / self.stride + 1
    }
}

/// What is applied to the convolution's output in the same pass: `relu(conv(x) + bias + residual)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Epilogue<'a> {
    pub bias: Option<&'a [f32]>,
    /// [B, C_out, out_h, out_w], added before the ReLU.
    pub residual: Option<&'a [f32]>,
    pub relu: bool,
    /// The weight transformed for the Winograd path (`winograd::transform_weights`), when the model
    /// made it at load; that path transforms it itself otherwise.
    pub winograd: Option<&'a [f32]>,
}

/// `dst[i] = src[(start + i) / 2]`: a row of the ×2 nearest upsampling, each source value written twice.
pub(super) fn upsample_2(dst: &mut [f32], src: &[f32], start: usize) {
    let (mut d, mut j) = (0, start);
    if j % 2 == 1 && !dst.is_empty() {
        dst[0] = src[j / 2];
        (d, j) = (1, j + 1);
    }
    let pairs = (dst.len() - d) / 2;
    for (pair, &v) in dst[d..d + 2 * pairs].chunks_exact_mut(2).zip(&src[j / 2..j / 2 + pairs]) {
        pair[0] = v;
        pair[1] = v;
    }
    if (dst.len() - d) % 2 == 1 {
        dst[dst.len() - 1] = src[(j + 2 * pairs) / 2];
    }
}
