//! The Winograd convolutions against direct ones and against each other.

use super::transforms::*;
use super::*;

/// F(6x6, 3x3)'s B^T (8x8) and A^T (6x8), for the points 0, 1, -1, 1/2, -1/2, 2, -2 (in
/// B^T's row order; A^T's rows 3 to 6 take them as 2, -2, 1/2, -1/2, the pairing G6's rows
/// follow) and infinity.
const BT6: [[f32; 8]; 8] = [
    [1., 0., -5.25, 0., 5.25, 0., -1., 0.],
    [0., 1., 1., -4.25, -4.25, 1., 1., 0.],
    [0., -1., 1., 4.25, -4.25, -1., 1., 0.],
    [0., 0.5, 0.25, -2.5, -1.25, 2., 1., 0.],
    [0., -0.5, 0.25, 2.5, -1.25, -2., 1., 0.],
    [0., 2., 4., -2.5, -5., 0.5, 1., 0.],
    [0., -2., 4., 2.5, -5., -0.5, 1., 0.],
    [0., -1., 0., 5.25, 0., -5.25, 0., 1.],
];
const AT6: [[f32; 8]; 6] = [
    [1., 1., 1., 1., 1., 1., 1., 0.],
    [0., 1., -1., 2., -2., 0.5, -0.5, 0.],
    [0., 1., 1., 4., 4., 0.25, 0.25, 0.],
    [0., 1., -1., 8., -8., 0.125, -0.125, 0.],
    [0., 1., 1., 16., 16., 0.0625, 0.0625, 0.],
    [0., 1., -1., 32., -32., 0.03125, -0.03125, 1.],
];

/// `out[o] = sum_i matrix[o][i] * x[i]`, lane by lane; zero coefficients fold away.
fn apply<const O: usize, const I: usize>(matrix: &[[f32; I]; O], x: &[Lanes; I]) -> [Lanes; O] {
    let mut out = [[0f32; LANES]; O];
    for o in 0..O {
        for i in 0..I {
            let coefficient = matrix[o][i];
            if coefficient != 0.0 {
                for l in 0..LANES {
                    out[o][l] += coefficient * x[i][l];
                }
            }
        }
    }
    out
}

/// The factored transforms compute the matrices' products (to rounding).
#[test]
fn factored_transforms_match_the_matrices() {
    let x: [Lanes; ALPHA] =
        std::array::from_fn(|i| std::array::from_fn(|l| ((i * 8 + l) as f32 * 0.37).sin()));
    let x8: [Lanes; ALPHA6] =
        std::array::from_fn(|i| std::array::from_fn(|l| ((i * 8 + l) as f32 * 0.37).sin()));
    for (factored, by_matrix) in [
        (input_1d(&x).to_vec(), apply(&BT, &x).to_vec()),
        (
            output_1d::<4, ALPHA, Lanes>(&x).to_vec(),
            apply(&AT, &x).to_vec(),
        ),
        (
            output_1d::<5, ALPHA, Lanes>(&x).to_vec(),
            apply(&AT5, &x).to_vec(),
        ),
        (input_1d(&x8).to_vec(), apply(&BT6, &x8).to_vec()),
        (
            output_1d::<6, ALPHA6, Lanes>(&x8).to_vec(),
            apply(&AT6, &x8).to_vec(),
        ),
    ] {
        assert_eq!(factored.len(), by_matrix.len());
        for (a, b) in factored.iter().flatten().zip(by_matrix.iter().flatten()) {
            assert!((a - b).abs() < 1e-5, "{a} against {b}");
        }
    }
}

/// The textbook definition, accumulated in f64.
pub(crate) fn direct(input: &[f32], s: Shape, weight: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let (h, w) = (s.height as isize, s.width as isize);
    let mut out = vec![0f32; s.batch * s.out_channels * s.height * s.width];
    for n in 0..s.batch {
        for k in 0..s.out_channels {
            for y in 0..h {
                for x in 0..w {
                    let mut acc = bias.map_or(0.0, |b| b[k]) as f64;
                    for c in 0..s.in_channels {
                        for dy in 0..3isize {
                            for dx in 0..3isize {
                                let (iy, ix) = (y + dy - 1, x + dx - 1);
                                if iy < 0 || ix < 0 || iy >= h || ix >= w {
                                    continue;
                                }
                                let i = ((n * s.in_channels + c) as isize * h + iy) * w + ix;
                                let wi = ((k * s.in_channels + c) * 3) as isize * 3 + dy * 3 + dx;
                                acc += (input[i as usize] * weight[wi as usize]) as f64;
                            }
                        }
                    }
                    out[((n * s.out_channels + k) * s.height + y as usize) * s.width
                        + x as usize] = acc as f32;
                }
            }
        }
    }
    out
}

fn shape(batch: usize, cin: usize, cout: usize, height: usize, width: usize) -> Shape {
    Shape {
        batch,
        in_channels: cin,
        out_channels: cout,
        height,
        width,
    }
}

pub(crate) fn pattern(len: usize, seed: f32) -> Vec<f32> {
    (0..len).map(|i| (i as f32 * 0.618 + seed).sin()).collect()
}

pub(crate) fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max)
}

/// Run `conv` (which gets the raw (out, in, 3, 3) weight) on each shape and compare it
/// with [`direct`].
pub(crate) fn check_against_direct(
    shapes: &[(usize, usize, usize, usize, usize)],
    conv: impl Fn(&[f32], Shape, &[f32], Option<&[f32]>) -> Vec<f32>,
) {
    for &(batch, cin, cout, h, w) in shapes {
        let s = shape(batch, cin, cout, h, w);
        let input = pattern(batch * cin * h * w, 0.3);
        let weight = pattern(cout * cin * 9, 1.7);
        let bias = pattern(cout, 2.9);
        let expected = direct(&input, s, &weight, Some(&bias));
        let diff = max_diff(&expected, &conv(&input, s, &weight, Some(&bias)));
        assert!(diff < 1e-4, "{s:?}: max diff {diff}");
    }
}

/// A norm read on the way in, a doubled input and a residual (apart from the output or
/// under it) give what the separate ops give: the input normalized and upsampled first,
/// the residual added after. Exactly, but for a doubled input, whose phases sum the
/// products in another order (F(5x5, 2x2) on the input against F(4x4, 3x3) on the
/// upsampled image): there to rounding.
#[test]
fn fused_ops_give_the_values_of_separate_ones() {
    for (batch, cin, cout, h, w, doubled, tiling) in [
        (2, 3, 5, 6, 10, true, Tiling::Phases),
        (1, 4, 2, 9, 7, false, Tiling::F4),
        (1, 2, 3, 16, 12, true, Tiling::Phases),
        // Rows of whole lanes, their residual gathered into the tiles' lanes, and the
        // last whole row of each channel, whose residual is read apart.
        (1, 4, 2, 9, 100, false, Tiling::F6),
        (2, 3, 2, 7, 96, false, Tiling::F6),
        (1, 3, 4, 13, 10, false, Tiling::F6),
    ] {
        let (ih, iw) = if doubled { (h / 2, w / 2) } else { (h, w) };
        let input = pattern(batch * cin * ih * iw, 0.3);
        let norm: Vec<(f32, f32)> = (0..batch * cin)
            .map(|i| (0.5 + i as f32 * 0.25, i as f32 * 0.1 - 0.2))
            .collect();
        let s = shape(batch, cin, cout, h, w);
        let weight = pattern(cout * cin * 9, 1.7);
        let (bias, residual) = (pattern(cout, 2.9), pattern(batch * cout * h * w, 0.9));
        // The separate ops convolve the upsampled image by F(4x4, 3x3).
        let u = match tiling {
            Tiling::F6 => Filters::f6(&weight, cout, cin),
            _ => Filters::new(&weight, cout, cin),
        };
        let by_phases = Filters::by_phases(&weight, cout, cin);
        let u_fused = if doubled { &by_phases } else { &u };
        assert_eq!(u_fused.tiling, tiling);
        // The separate ops: normalize, upsample, convolve, add the image's bias and the
        // residual.
        let mut normalized = input.clone();
        for (i, plane) in normalized.chunks_mut(ih * iw).enumerate() {
            let source = plane.to_vec();
            super::super::norm::silu_affine(&source, plane, norm[i].0, norm[i].1);
        }
        let upsampled = match doubled {
            true => upsampled(&normalized, h, w),
            false => normalized,
        };
        let image_bias = pattern(batch * cout, 4.1);
        let expected: Vec<f32> = conv3x3(&upsampled, s, &u, Some(&bias))
            .iter()
            .zip(&residual)
            .enumerate()
            .map(|(i, (y, r))| (y + image_bias[i / (h * w)]) + r)
            .collect();
        let fused = Fused {
            input_norm: Some(&norm),
            doubled,
            bias: Some(&bias),
            image_bias: Some(&image_bias),
            residual: Some(&residual),
        };
        let bound = if doubled { 1e-5 } else { 0.0 };
        let diff = max_diff(&conv3x3_fused(&input, s, u_fused, fused), &expected);
        assert!(diff <= bound, "{s:?}: max diff {diff}");
        // The output written over the residual: the same values.
        let apart = Fused {
            residual: None,
            ..fused
        };
        let over = conv3x3_onto(&input, s, u_fused, apart, residual.clone());
        let diff = max_diff(&over, &expected);
        assert!(diff <= bound, "{s:?} over the residual: max diff {diff}");
    }
}

/// Planes of (h / 2, w / 2) pixels upsampled to (h, w), nearest.
fn upsampled(planes: &[f32], h: usize, w: usize) -> Vec<f32> {
    let (ih, iw) = (h / 2, w / 2);
    (0..planes.len() * 4)
        .map(|i| {
            let (plane, y, x) = (i / (h * w), i / w % h, i % w);
            planes[plane * ih * iw + y / 2 * iw + x / 2]
        })
        .collect()
}

/// A doubled input through its phases gives the convolution of the upsampled image, on
/// sides that are and are not whole tiles (10 output pixels per phase tile), down to 2x2.
#[test]
fn doubled_input_matches_direct_convolution_of_the_upsampled_image() {
    let shapes = [
        (1, 3, 5, 20, 20),
        (2, 4, 3, 14, 26),
        (1, 8, 16, 34, 6),
        (1, 5, 4, 2, 2),
        (1, 17, 9, 160, 82),
    ];
    for (batch, cin, cout, h, w) in shapes {
        let s = shape(batch, cin, cout, h, w);
        let (ih, iw) = (h / 2, w / 2);
        let input = pattern(batch * cin * ih * iw, 0.3);
        let weight = pattern(cout * cin * 9, 1.7);
        let bias = pattern(cout, 2.9);
        let expected = direct(&upsampled(&input, h, w), s, &weight, Some(&bias));
        let u = Filters::by_phases(&weight, cout, cin);
        let fused = Fused {
            doubled: true,
            bias: Some(&bias),
            ..Fused::default()
        };
        let diff = max_diff(&expected, &conv3x3_fused(&input, s, &u, fused));
        assert!(diff < 1e-4, "{s:?}: max diff {diff}");
    }
}

/// Makes every convolution take the portable lanes while set; both paths give the same
/// bits, so the tests running beside the one that sets it see no difference.
pub(super) static PORTABLE_ONLY: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// The AVX2 lanes (where the CPU has them) and the portable ones agree to the bit, fused
/// ops and ragged edges included, with and without the phases.
#[test]
fn portable_lanes_give_the_same_bits() {
    use std::sync::atomic::Ordering::Relaxed;
    for (cin, cout, h, w, tiling) in [
        (3, 5, 13, 70, Tiling::F4),
        (4, 3, 22, 90, Tiling::Phases),
        (3, 4, 14, 100, Tiling::F6),
    ] {
        let doubled = tiling == Tiling::Phases;
        let (ih, iw) = if doubled { (h / 2, w / 2) } else { (h, w) };
        let input = pattern(cin * ih * iw, 0.3);
        let norm: Vec<(f32, f32)> = (0..cin).map(|i| (0.5 + i as f32, 0.1)).collect();
        let s = shape(1, cin, cout, h, w);
        let weight = pattern(cout * cin * 9, 1.7);
        let (bias, image_bias) = (pattern(cout, 2.9), pattern(cout, 4.1));
        let residual = pattern(cout * h * w, 0.9);
        let u = match tiling {
            Tiling::Phases => Filters::by_phases(&weight, cout, cin),
            Tiling::F4 => Filters::new(&weight, cout, cin),
            Tiling::F6 => Filters::f6(&weight, cout, cin),
        };
        let fused = Fused {
            input_norm: Some(&norm),
            doubled,
            bias: Some(&bias),
            image_bias: Some(&image_bias),
            residual: Some(&residual),
        };
        let apart = Fused {
            residual: None,
            ..fused
        };
        let zeros = vec![0f32; residual.len()];
        let plus_zeros = Fused {
            residual: Some(&zeros),
            ..fused
        };
        let run = |portable: bool| {
            PORTABLE_ONLY.store(portable, Relaxed);
            // Without a residual, the phases' rows of whole lanes are stored in place with
            // their biases added in the tiles' lanes: the values a residual of zeros gets
            // (F(6x6, 3x3)'s get it in the lanes too).
            let no_residual = conv3x3_fused(&input, s, &u, apart);
            assert_eq!(no_residual, conv3x3_fused(&input, s, &u, plus_zeros));
            let outputs = [
                no_residual,
                conv3x3_fused(&input, s, &u, fused),
                conv3x3_onto(&input, s, &u, apart, residual.clone()),
                conv3x3_fused(
                    &input,
                    s,
                    &u,
                    Fused {
                        doubled,
                        ..Fused::default()
                    },
                ),
            ];
            PORTABLE_ONLY.store(false, Relaxed);
            outputs
        };
        assert_eq!(run(false), run(true), "{s:?}");
    }
}

/// The register tiles' products, where the CPU has them, give the gemm crate's values:
/// over output channels that leave a part tile, rows of tiles that start mid-panel and end
/// mid-group, a block's last half panel, and every tiling. (On an AVX2 CPU the same bits:
/// both sum each product in order along the input channels, fused; the gemm crate's
/// AVX-512 kernels need not.)
#[test]
fn register_tiles_give_the_gemm_crates_values() {
    if !Products::Tiles.runs() {
        return;
    }
    for (batch, cin, cout, h, w, doubled) in [
        (1, 3, 5, 13, 70, false),
        (2, 7, 13, 22, 90, true),
        (1, 9, 4, 40, 104, false),
        (1, 16, 7, 600, 36, false),
        (1, 5, 6, 8, 8, true),
        (1, 2, 1, 1, 1, false),
    ] {
        let case = Case::new(shape(batch, cin, cout, h, w), doubled);
        let (s, fused) = (case.shape, case.fused());
        let tilings = match doubled {
            true => vec![Tiling::Phases, Tiling::F4],
            false => vec![Tiling::F4, Tiling::F6],
        };
        for tiling in tilings {
            let run = |products| {
                let u = Filters::made(&case.weight, cout, cin, tiling, products);
                conv3x3_fused(&case.input, s, &u, fused)
            };
            let diff = max_diff(&run(Products::Gemm), &run(Products::Tiles));
            assert!(diff < 1e-5, "{s:?} by {tiling:?}: max diff {diff}");
        }
    }
}

/// A convolution's operands with every fused op: a norm, biases and a residual.
struct Case {
    shape: Shape,
    doubled: bool,
    input: Vec<f32>,
    weight: Vec<f32>,
    norm: Vec<(f32, f32)>,
    bias: Vec<f32>,
    image_bias: Vec<f32>,
    residual: Vec<f32>,
}

impl Case {
    fn new(shape: Shape, doubled: bool) -> Self {
        let Shape {
            batch,
            in_channels: cin,
            out_channels: cout,
            ..
        } = shape;
        let input_plane = shape.plane() / if doubled { 4 } else { 1 };
        Self {
            shape,
            doubled,
            input: pattern(batch * cin * input_plane, 0.3),
            weight: pattern(cout * cin * 9, 1.7),
            norm: (0..batch * cin).map(|i| (0.5 + i as f32, 0.1)).collect(),
            bias: pattern(cout, 2.9),
            image_bias: pattern(batch * cout, 4.1),
            residual: pattern(batch * cout * shape.plane(), 0.9),
        }
    }

    fn fused(&self) -> Fused<'_> {
        Fused {
            input_norm: Some(&self.norm),
            doubled: self.doubled,
            bias: Some(&self.bias),
            image_bias: Some(&self.image_bias),
            residual: Some(&self.residual),
        }
    }
}

/// U made a few output channels at a time as the blocks run ([`Weights::Raw`]) gives the
/// bits of U made whole first, with the same register tiles: over output channels that
/// leave a part chunk and a part tile, blocks that split the channels between them,
/// input channels past whole lanes, batches, a doubled input and every fused op, written
/// apart and over the residual; and the f64 convolution's values.
#[test]
fn u_made_by_chunks_gives_the_values_of_u_made_whole() {
    if !Products::Tiles.runs() {
        return;
    }
    for (batch, cin, cout, h, w, doubled) in [
        (1, 13, 31, 16, 16, false),
        (2, 8, 40, 12, 20, false),
        (1, 5, 7, 16, 16, true),
        (2, 17, 26, 10, 6, true),
        (1, 3, 1, 5, 3, false),
    ] {
        let case = Case::new(shape(batch, cin, cout, h, w), doubled);
        let (s, fused) = (case.shape, case.fused());
        let (input, weight, bias, residual) =
            (&case.input, &case.weight, &case.bias, &case.residual);
        let apart = Fused {
            residual: None,
            ..fused
        };
        let made = Filters::made(weight, cout, cin, Tiling::F4, Products::Tiles);
        let by_chunks = |fused: Fused, output| {
            const OUT: usize = LANES * M;
            let weights = Weights::Raw(weight);
            run_tiles::<M, 1, 1, OUT, ALPHA>(input, s, weights, Products::Tiles, fused, output)
        };
        let over = || Output::over(residual.clone(), s, apart);
        assert_eq!(
            by_chunks(fused, Output::Fresh),
            conv3x3_fused(input, s, &made, fused),
            "{s:?}"
        );
        assert_eq!(
            by_chunks(apart, over()),
            conv3x3_onto(input, s, &made, apart, residual.clone()),
            "{s:?} over the residual"
        );
        if !doubled {
            let plain = Fused {
                bias: Some(bias),
                ..Fused::default()
            };
            let expected = direct(input, s, weight, Some(bias));
            let diff = max_diff(&expected, &by_chunks(plain, Output::Fresh));
            assert!(diff < 1e-4, "{s:?}: max diff {diff}");
        }
    }
}

/// A weight given one output channel at a time makes the U, and the convolution, of the same
/// weight given whole, in each tiling.
#[test]
fn a_weight_given_by_output_channel_gives_the_same_bits() {
    let (cout, cin) = (19, 11);
    let weight = pattern(cout * cin * 9, 1.3);
    let filter_of = |o: usize, filter: &mut [f32]| {
        filter.copy_from_slice(&weight[o * cin * 9..][..cin * 9]);
    };
    let by_output = Source::ByOutput(&filter_of);
    for tiling in [Tiling::F4, Tiling::F6, Tiling::Phases] {
        let products = Products::detect();
        let whole = Filters::made(&weight, cout, cin, tiling, products);
        let given = Filters::made_from(by_output, cout, cin, tiling, products);
        assert_eq!(whole.u, given.u, "{tiling:?}");
    }
    // U made whole from the one, by chunks from the other where that pays (16x16 tiles
    // and 512 output channels, on AVX2's register tiles).
    for (cout, h, w, doubled) in [(19, 20, 12, false), (19, 9, 7, true), (512, 16, 16, false)] {
        let input = pattern(cin * h * w, 0.7);
        let weight = pattern(cout * cin * 9, 1.1);
        let filter_of = |o: usize, filter: &mut [f32]| {
            filter.copy_from_slice(&weight[o * cin * 9..][..cin * 9]);
        };
        let fused = Fused {
            doubled,
            ..Fused::default()
        };
        let (rows, cols) = if doubled { (2 * h, 2 * w) } else { (h, w) };
        let s = shape(1, cin, cout, rows, cols);
        assert_eq!(
            conv3x3_from(&input, s, Source::ByOutput(&filter_of), fused, None),
            conv3x3_weight(&input, s, &weight, fused, None),
            "{s:?} doubled {doubled}"
        );
    }
}

/// Which convolutions make U by chunks: the UNet's 16x16 and 24x24 levels on CPUs whose
/// widest vectors are AVX2's; not its 8x8 one (one GEMM wins), nor its 32x32 one (U is
/// read by few enough blocks), nor any without the register tiles.
#[test]
fn u_is_made_by_chunks_on_small_wide_images() {
    let only_avx2 = Products::Tiles.runs() && !super::super::math::has_avx512();
    for (cin, cout, side, doubled, small) in [
        (1280, 1280, 16, false, true),
        (2560, 1280, 16, false, true),
        (1280, 1280, 16, true, true),
        (1280, 1280, 24, false, true),
        (1280, 1280, 8, false, false),
        (1280, 1280, 32, false, false),
        (320, 320, 16, false, false),
        (512, 512, 128, false, false),
    ] {
        let s = shape(1, cin, cout, side, side);
        assert_eq!(by_chunks_pay(s, doubled), small && only_avx2, "{s:?}");
    }
}

#[test]
fn matches_direct_convolution_on_ragged_shapes() {
    let shapes = [
        (1, 3, 5, 8, 8),
        (2, 4, 3, 7, 13),
        (1, 8, 16, 33, 5),
        (1, 2, 2, 1, 1),
    ];
    check_against_direct(&shapes, |input, s, weight, bias| {
        let u = Filters::new(weight, s.out_channels, s.in_channels);
        conv3x3(input, s, &u, bias)
    });
}

/// F(6x6, 3x3)'s larger constants grow the error: within 1e-4 of the f64 direct
/// convolution up to 8 input channels, growing as the square root of their count past
/// that (the errors of the input channels' terms add up independently).
#[test]
fn f6_matches_direct_convolution_on_ragged_shapes() {
    for (batch, cin, cout, h, w) in [
        (1, 3, 5, 8, 8),
        (2, 4, 3, 7, 13),
        (1, 8, 16, 33, 5),
        (1, 2, 2, 1, 1),
        (1, 5, 4, 20, 100),
        (1, 32, 8, 14, 50),
    ] {
        let s = shape(batch, cin, cout, h, w);
        let input = pattern(batch * cin * h * w, 0.3);
        let weight = pattern(cout * cin * 9, 1.7);
        let bias = pattern(cout, 2.9);
        let expected = direct(&input, s, &weight, Some(&bias));
        let u = Filters::f6(&weight, cout, cin);
        let diff = max_diff(&expected, &conv3x3(&input, s, &u, Some(&bias)));
        let budget = 1e-4 * (cin as f32 / 8.0).sqrt().max(1.0);
        assert!(diff < budget, "{s:?}: max diff {diff}");
    }
}

/// F(6x6, 3x3)'s matrices compute the 1-D correlation of a 3-tap filter:
/// A^T ((G g) * (B^T d)) is `y[i] = sum_k d[i + k] g[k]`; F(4x4, 3x3)'s too.
#[test]
fn each_tiling_computes_a_correlation() {
    fn check<const TM: usize, const A: usize>(
        bt: &[[f32; A]; A],
        g_matrix: &[[f32; 3]; A],
        at: &[[f32; A]; TM],
    ) {
        let d: [f64; A] = std::array::from_fn(|i| (i as f64 * 0.7).cos());
        let g = [0.3, -1.1, 0.6];
        let gd: [f64; A] = std::array::from_fn(|a| {
            let filter: f64 = (0..3).map(|k| g_matrix[a][k] as f64 * g[k]).sum();
            let data: f64 = (0..A).map(|j| bt[a][j] as f64 * d[j]).sum();
            filter * data
        });
        for i in 0..TM {
            let y: f64 = (0..A).map(|a| at[i][a] as f64 * gd[a]).sum();
            let expected: f64 = (0..3).map(|k| d[i + k] * g[k]).sum();
            assert!(
                (y - expected).abs() < 1e-6,
                "output {i}: {y} against {expected}"
            );
        }
    }
    check(&BT, &filters::G, &AT);
    check(&BT6, &filters::G6, &AT6);
}
