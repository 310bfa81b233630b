//! Scalar functions written so that loops over slices compile to SIMD code: std's `exp`
//! calls into libm one value at a time, which made SiLU and softmax slower than the GEMMs
//! around them.

/// `x * sigmoid(x)` with an exp that compiles to straight-line SIMD code.
#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// Exact GELU, `0.5 x (1 + erf(x / sqrt 2))` (PyTorch's default `gelu`), through [`erf`].
#[inline(always)]
pub fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// CLIP's `quick_gelu`, `x sigmoid(1.702 x)`.
#[inline(always)]
pub fn quick_gelu(x: f32) -> f32 {
    x / (1.0 + exp(-1.702 * x))
}

/// erf(x) by Abramowitz and Stegun 7.1.26 (a polynomial in `1 / (1 + p |x|)` times
/// `e^(-x^2)`; 1.5e-7 absolute in exact arithmetic, within 5e-7 in f32), the formula PyTorch's
/// vectorised CPU `erf` uses: straight-line code that vectorises, where libm's `erff` runs one
/// value at a time (the CLIP-H text encoder's and SD's GEGLU GELUs).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152_1 + t * 1.061_405_4))));
    let y = 1.0 - poly * exp(-a * a);
    y.copysign(x)
}

/// GELU with the tanh approximation (PyTorch's `approximate="tanh"`, transformers'
/// `gelu_new`): `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`, the tanh as
/// `1 - 2 / (e^(2z) + 1)` through [`exp`], whose clamp gives tanh's limits of -1 and 1.
#[inline]
pub fn gelu_tanh(x: f32) -> f32 {
    let z = 0.797_884_6 * (x + 0.044_715 * x * x * x);
    let tanh = 1.0 - 2.0 / (exp(2.0 * z) + 1.0);
    0.5 * x * (1.0 + tanh)
}

/// Whether this CPU runs code built for AVX-512 (F, DQ, VL) with AVX2 and FMA: where a loop
/// over a slice is worth a copy built with `#[target_feature]`. Every AVX-512 path asks this
/// first, so a build without the `avx512` feature runs what an AVX2-only CPU runs.
#[cfg(target_arch = "x86_64")]
pub fn has_avx512() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        cfg!(feature = "avx512")
            && has_avx2_fma()
            && std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("avx512vl")
    })
}

/// Whether this CPU runs code built for AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
pub fn has_avx2_fma() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    })
}

/// e^x to about 2 ulp for |x| < 87; e^87 above, and 0 below -87 (-inf included), where e^x
/// is subnormal or less. x = n ln2 + r with |r| <= ln2/2, e^r by a degree-6 polynomial, 2^n
/// from the exponent bits. Always inlined, so that a loop built for wider vectors computes it
/// in them.
///
/// The zero matters: a masked score (-inf) clamped to e^-87 = 1.6e-38 made every product with
/// v subnormal, and each subnormal product stalls the CPU for a microcode assist (a 77-token
/// text encoder spent a third of its time there).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    exp_with::<false>(x)
}

/// [`exp`] with fused multiply-adds (one rounding each, so slightly more accurate): for code
/// built with FMA enabled (`#[target_feature(enable = "fma")]`), which it halves the
/// polynomial's instructions for; elsewhere each one is a call into libm.
#[inline(always)]
pub fn exp_fused(x: f32) -> f32 {
    exp_with::<true>(x)
}

/// `a b + c`, in one rounding where `FUSED`.
#[inline(always)]
fn multiply_add<const FUSED: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FUSED { a.mul_add(b, c) } else { a * b + c }
}

#[inline(always)]
fn exp_with<const FUSED: bool>(x: f32) -> f32 {
    let fma = multiply_add::<FUSED>;
    let underflows = x < -87.0;
    let x = x.clamp(-87.0, 87.0);
    // Round to nearest by the 1.5 * 2^23 trick: `round()` does not vectorise everywhere.
    const SHIFTER: f32 = 12_582_912.0;
    let shifted = fma(x, std::f32::consts::LOG2_E, SHIFTER);
    let n = shifted - SHIFTER;
    // ln2 in two parts (Cody-Waite): the first has few bits, so n * part is exact.
    let r = fma(-n, -2.121_944_4e-4, fma(-n, 0.693_359_4, x));
    let p = [0.008_333_334, 0.041_666_668, 0.166_666_67, 0.5, 1.0, 1.0]
        .into_iter()
        .fold(0.001_388_889, |p, c| fma(r, p, c));
    // n's bits sit in the low mantissa bits of `shifted` (its ulp is 1): integer arithmetic
    // on them vectorises, where `n as i32` (saturating, NaN to 0) runs lane by lane.
    let biased = shifted
        .to_bits()
        .wrapping_sub(SHIFTER.to_bits())
        .wrapping_add(127);
    let scale = f32::from_bits(biased << 23);
    if underflows { 0.0 } else { p * scale }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gelu_tanh_matches_its_definition() {
        for i in -2000..=2000 {
            let x = i as f64 * 0.005;
            let want = 0.5
                * x
                * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh());
            let got = gelu_tanh(x as f32) as f64;
            assert!(
                (got - want).abs() < 1e-6 * (1.0 + want.abs()),
                "gelu({x}) = {got}, want {want}"
            );
        }
    }

    #[test]
    fn erf_and_its_gelus_match_their_definitions() {
        for i in -3000..=3000 {
            let x = i as f64 * 0.004;
            let erf_want = libm::erf(x);
            let got = erf(x as f32) as f64;
            assert!(
                (got - erf_want).abs() < 5e-7,
                "erf({x}) = {got}, want {erf_want}"
            );
            let gelu_want = 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2));
            let got = gelu_erf(x as f32) as f64;
            assert!(
                (got - gelu_want).abs() < 1e-6 * (1.0 + x.abs()),
                "gelu_erf({x}) = {got}, want {gelu_want}"
            );
            let quick_want = x / (1.0 + (-1.702 * x).exp());
            let got = quick_gelu(x as f32) as f64;
            assert!(
                (got - quick_want).abs() < 1e-6 * (1.0 + x.abs()),
                "quick_gelu({x})"
            );
        }
        assert_eq!(erf(f32::INFINITY), 1.0);
        assert_eq!(gelu_erf(-100.0), 0.0);
        assert_eq!(gelu_erf(100.0), 100.0);
    }

    #[test]
    fn exp_is_accurate_across_the_range() {
        for exp in [exp, exp_fused] {
            for i in -2000..=2000 {
                let x = i as f32 * 0.04;
                let (got, want) = (exp(x), x.exp());
                assert!(
                    ((got - want) / want).abs() < 1e-6,
                    "exp({x}) = {got}, want {want}"
                );
            }
            // Below the normal range: exactly zero, so that nothing downstream turns subnormal.
            assert_eq!(exp(-87.5), 0.0);
            assert_eq!(exp(f32::NEG_INFINITY), 0.0);
            assert!(exp(-86.9) > 0.0);
        }
        // Saturated ends: the clamp keeps them finite and at their limits.
        assert_eq!(gelu_tanh(-200.0), 0.0);
        assert_eq!(gelu_tanh(200.0), 200.0);
        assert!(silu(-200.0).abs() < 1e-30);
        assert_eq!(silu(200.0), 200.0);
    }
}
