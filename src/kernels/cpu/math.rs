//! `exp` in a form the loop vectoriser turns into SIMD (AVX-512 / AVX2 natively, SIMD128 in wasm): the
//! library `expf` is a call per element, which keeps softmax and SiLU scalar; lane-wise reductions; and
//! [`vectorized`], which compiles a kernel's loops for the best instruction set the CPU has.

/// Runs `f` compiled for the widest SIMD the CPU offers (chosen at run time by pulp, which the GEMM crate
/// also uses: AVX-512, AVX2 + FMA, or the build's baseline, SIMD128 in wasm). `f`'s loops are vectorised
/// only where they are inlined into it, hence the `#[inline(always)]` helpers here.
#[inline(always)]
pub fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    pulp::Arch::new().dispatch(f)
}

/// e^x for x ≤ 0 and moderately positive x, within 2 ulp of `f32::exp` on [-87, 88] (tested in
/// tests/suite/cpu_kernels.rs); below -87.3 it returns 2^-126·(≈1), a denormal-free stand-in for 0 that
/// softmax and SiLU cannot tell from 0. Cephes' `expf` reduction: x = n·ln2 + r, |r| ≤ ln2/2, e^r by a
/// degree-5 polynomial, 2^n by building the float's exponent.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that n·LN2_HI is exact for the n that occur.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5·2^23 + t rounds t to an integer held in the low mantissa bits (the usual trick, and unlike
    // round() or `as i32` it vectorises on every SIMD level).
    const SHIFTER: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.3);
    let shifted = x * LOG2E + SHIFTER;
    let n = shifted - SHIFTER;
    let r = x - n * LN2_HI - n * LN2_LO;
    // e^r = 1 + r + r²·q(r), q of degree 3 fitted to minimise the relative error on |r| ≤ ln2/2 (Lawson's
    // iteration, computed for this kernel): 2 ulp like Cephes' degree-7 polynomial (the test below), with
    // four operations fewer, which is a tenth of softmax's time in wasm.
    let q = 8.312_525_23e-3_f32;
    let q = q * r + 4.189_011_45e-2;
    let q = q * r + 1.666_711_42e-1;
    let q = q * r + 4.999_923_11e-1;
    let e_r = q * r * r + r + 1.0;
    // 2^n: n + 127 in the exponent field (n ∈ [-126, 127] after the clamp). `shifted`'s bits are
    // those of 1.5·2^23 plus n; adding 127 and shifting by 23 leaves exactly n + 127 in the exponent.
    let two_n = f32::from_bits(shifted.to_bits().wrapping_add(127) << 23);
    e_r * two_n
}

/// x·σ(x) = x / (1 + e^-x).
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// Partial sums / maxima a reduction keeps, which the compiler turns into SIMD registers.
const LANES: usize = 16;

/// Σ f(v) over `values`, accumulated in [`LANES`] partial sums (which the compiler vectorises), then added
/// up in order.
#[inline(always)]
pub fn lane_sum(values: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut chunks = values.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(chunk) {
            *a += f(v);
        }
    }
    let mut total: f32 = acc.iter().sum();
    for &v in chunks.remainder() {
        total += f(v);
    }
    total
}

/// `values[i] = e^(values[i] − shift)`, returning their sum: softmax's exponentials and denominator in one
/// pass over the row, added as [`lane_sum`] adds them (the same bits as the two passes).
#[inline(always)]
pub fn exp_shifted_sum(values: &mut [f32], shift: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut chunks = values.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for (a, v) in acc.iter_mut().zip(chunk) {
            *v = exp(*v - shift);
            *a += *v;
        }
    }
    let mut total: f32 = acc.iter().sum();
    for v in chunks.into_remainder() {
        *v = exp(*v - shift);
        total += *v;
    }
    total
}

/// The largest of `values` (−∞ for none), in [`LANES`] running maxima.
#[inline(always)]
pub fn lane_max(values: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut chunks = values.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(chunk) {
            *a = max(*a, v);
        }
    }
    acc.iter().chain(chunks.remainder()).fold(f32::NEG_INFINITY, |m, &v| max(m, v))
}

/// The larger of a and b, `b` only when it is larger (so a NaN `b` is ignored, as `f32::max` does). A
/// comparison and a select, which vectorise everywhere: `f32::max`'s IEEE maxNum has no SIMD128
/// instruction, so in wasm it kept the loops that use it scalar.
#[inline(always)]
pub fn max(a: f32, b: f32) -> f32 {
    if b > a { b } else { a }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in units in the last place (both finite and positive here).
    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn exp_is_within_two_ulp_of_the_library_exp() {
        let mut worst = 0;
        let mut x = -87.0f32;
        while x <= 88.0 {
            worst = worst.max(ulps(exp(x), x.exp()));
            x += 0.000_37;
        }
        assert!(worst <= 2, "exp is off by {worst} ulp");
        assert!(exp(f32::NAN).is_nan());
        assert!(exp(-1000.0) < 1.3e-38 && exp(-1000.0) >= 0.0, "far below the range it is (almost) 0");
        assert_eq!(silu(0.0), 0.0);
        assert!((silu(-100.0)).abs() < 1e-30);
        assert!((silu(3.0) - 3.0 / (1.0 + (-3.0f32).exp())).abs() <= 3.0 * f32::EPSILON);
    }

    #[test]
    fn lane_reductions_cover_every_value() {
        let v: Vec<f32> = (0..37).map(|i| i as f32 * 0.5 - 4.0).collect();
        assert_eq!(lane_sum(&v, |x| x), v.iter().sum::<f32>());
        assert_eq!(lane_max(&v), 14.0);
        assert_eq!(lane_max(&[]), f32::NEG_INFINITY);
        let mut fused = v.clone();
        let sum = exp_shifted_sum(&mut fused, 3.0);
        let separate: Vec<f32> = v.iter().map(|&x| exp(x - 3.0)).collect();
        assert_eq!((fused.as_slice(), sum), (separate.as_slice(), lane_sum(&separate, |x| x)), "one pass gives the two passes' bits");
    }
}
