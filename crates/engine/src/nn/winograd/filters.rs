//! A convolution's weight transformed for Winograd's products ([`Filters`]): U = G g G^T per
//! output channel, for F(4x4, 3x3), F(6x6, 3x3) or the four phases of a doubled input by
//! F(5x5, 2x2).

// The transforms index several matrices with the same loop variables, as the formulas do.
#![allow(clippy::needless_range_loop)]

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::products::Products;
use super::vector::Vector;
use super::{ALPHA, ALPHA6, LANES, PHASES, Shape};

/// Filter transform G (6x3).
pub(super) const G: [[f32; 3]; 6] = [
    [1. / 4., 0., 0.],
    [-1. / 6., -1. / 6., -1. / 6.],
    [-1. / 6., 1. / 6., -1. / 6.],
    [1. / 24., 1. / 12., 1. / 6.],
    [1. / 24., -1. / 12., 1. / 6.],
    [0., 0., 1.],
];

/// F(6x6, 3x3)'s filter transform (8x3).
pub(super) const G6: [[f32; 3]; 8] = [
    [1., 0., 0.],
    [-2. / 9., -2. / 9., -2. / 9.],
    [-2. / 9., 2. / 9., -2. / 9.],
    [1. / 90., 1. / 45., 2. / 45.],
    [1. / 90., -1. / 45., 2. / 45.],
    [32. / 45., 16. / 45., 8. / 45.],
    [32. / 45., -16. / 45., 8. / 45.],
    [0., 0., 1.],
];

/// Filter transform for 2x2 kernels, F(5x5, 2x2) at the same points: G's rows for degree 1.
const G2: [[f32; 2]; 6] = [
    [1. / 4., 0.],
    [-1. / 6., -1. / 6.],
    [-1. / 6., 1. / 6.],
    [1. / 24., 1. / 12.],
    [1. / 24., -1. / 12.],
    [0., 1.],
];

/// A convolution's weight transformed for the products: F(4x4, 3x3)'s U, F(6x6, 3x3)'s, or
/// the phases' for a doubled input.
pub struct Filters {
    pub(super) u: Vec<f32>,
    pub(super) tiling: Tiling,
    /// How the convolution computes its products.
    pub(super) products: Products,
}

/// The tiles a convolution runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Tiling {
    /// F(4x4, 3x3): 6x6 input tiles, 36 positions.
    F4,
    /// F(6x6, 3x3): 8x8 input tiles, 64 positions, 1.78 products per output where F4 takes
    /// 2.25.
    F6,
    /// F(5x5, 2x2) for each of a doubled input's four phases.
    Phases,
}

impl Filters {
    /// F(4x4, 3x3)'s U of `weight` (out, in, 3, 3), for any input.
    pub fn new(weight: &[f32], out_channels: usize, in_channels: usize) -> Self {
        Self::new_from(Source::Values(weight), out_channels, in_channels)
    }

    /// [`Filters::new`] of a weight in any [`Source`].
    pub fn new_from(weight: Source, out_channels: usize, in_channels: usize) -> Self {
        let (out, cin, products) = (out_channels, in_channels, Products::detect());
        Self::made_from(weight, out, cin, Tiling::F4, products)
    }

    /// F(6x6, 3x3)'s U of `weight` (out, in, 3, 3), for any input.
    pub fn f6(weight: &[f32], out_channels: usize, in_channels: usize) -> Self {
        Self::made(
            weight,
            out_channels,
            in_channels,
            Tiling::F6,
            Products::detect(),
        )
    }

    /// The four phases' F(5x5, 2x2) U of `weight` (out, in, 3, 3), for a doubled input only.
    pub fn by_phases(weight: &[f32], out_channels: usize, in_channels: usize) -> Self {
        Self::made(
            weight,
            out_channels,
            in_channels,
            Tiling::Phases,
            Products::detect(),
        )
    }

    /// U by `tiling`, its products computed by `products`.
    pub(super) fn made(
        weight: &[f32],
        out_channels: usize,
        in_channels: usize,
        tiling: Tiling,
        products: Products,
    ) -> Self {
        let weight = Source::Values(weight);
        Self::made_from(weight, out_channels, in_channels, tiling, products)
    }

    /// [`Filters::made`] from a weight in any [`Source`].
    pub(super) fn made_from(
        weight: Source,
        out_channels: usize,
        in_channels: usize,
        tiling: Tiling,
        products: Products,
    ) -> Self {
        let (out, cin) = (out_channels, in_channels);
        let u = match tiling {
            Tiling::F4 => {
                let positions = ALPHA * ALPHA;
                transform_each_output(weight, out, cin, positions, |g, _: &mut (), dst| {
                    transform_f4(g, dst)
                })
            }
            Tiling::F6 => transform_weights::<ALPHA6>(weight, out, cin, &G6),
            Tiling::Phases => transform_weights_doubled(weight, out, cin),
        };
        Self {
            u,
            tiling,
            products,
        }
    }

    /// The filters `shape`'s convolution runs fastest with: by phases where the input is
    /// `doubled` and [`phases_pay`] for its size, by F(6x6, 3x3) where [`f6_pays`].
    pub fn for_shape(weight: &[f32], shape: Shape, doubled: bool) -> Self {
        Self::for_shape_on(weight, shape, doubled, Products::detect())
    }

    /// [`Filters::for_shape`] of a weight given by output channel.
    pub fn for_shape_from(weight: Source, shape: Shape, doubled: bool) -> Self {
        let tiling = Self::tiling_for(shape, doubled);
        let (out, cin) = (shape.out_channels, shape.in_channels);
        Self::made_from(weight, out, cin, tiling, Products::detect())
    }

    /// [`Filters::for_shape`] with its products computed by `products`, which this CPU must
    /// run ([`Products::runs`]): to compare the paths on one machine.
    pub fn for_shape_on(weight: &[f32], shape: Shape, doubled: bool, products: Products) -> Self {
        assert!(products.runs(), "this CPU does not run {products:?}");
        let tiling = Self::tiling_for(shape, doubled);
        let (out, cin) = (shape.out_channels, shape.in_channels);
        Self::made(weight, out, cin, tiling, products)
    }

    /// The tiles [`Filters::for_shape`] takes.
    pub(super) fn tiling_for(shape: Shape, doubled: bool) -> Tiling {
        match doubled {
            true if phases_pay(shape) => Tiling::Phases,
            false if f6_pays(shape) => Tiling::F6,
            _ => Tiling::F4,
        }
    }
}

/// Whether a doubled input of `shape` is faster convolved by phases than by F(4x4, 3x3) on
/// the upsampled image (each input pixel read twice each way). The phases' U is four times
/// F(4x4, 3x3)'s and is made on every call, a cost that grows with the channels as the
/// convolution's does, so the image's size alone decides. 2 threads of a Zen 4 EPYC, AVX2,
/// weights and convolution (ms), by phases against F(4x4, 3x3): 512 channels at 128x128 168
/// against 148, at 256x256 512 against 541; 256 channels at 512x512 539 against 700
/// (bench/RESULTS.md).
fn phases_pay(shape: Shape) -> bool {
    shape.plane() >= MIN_PLANE_BY_PHASES
}

/// The smallest output plane a doubled input is convolved by phases for (256x256).
const MIN_PLANE_BY_PHASES: usize = 256 * 256;

/// Whether `shape`'s convolution is faster by F(6x6, 3x3) than by F(4x4, 3x3): a fifth fewer
/// products, for transforms that cost about as much per output and a U 64/36 the size, made
/// on every call. The products' share grows with `in x out / (in + out)` (products against
/// transforms per pixel), and F(6x6, 3x3)'s larger blocks (a block is whole rows of tiles)
/// pay only on large images. 2 threads of a Zen 4 EPYC, AVX2, U made and the convolution
/// run with a fused GroupNorm+SiLU, min of 3, F(4x4) against F(6x6) (ms): 128 channels at
/// 1024x1024 852-1055 against 789-1018, 256 to 128 there 1568-1724 against 1247-1358; 256
/// at 512x512 702-712 against 569-603, 512 to 256 there 1197-1358 against 964-1160; even:
/// 64 at 1024x1024, 256 to 128 at 512x512, 512 at 256x256; F(4x4) faster: 128 at 512x512
/// 186-212 against 192-306, and every UNet shape (1280 at 32x32 108-128 against 176-189)
/// (bench/RESULTS.md).
fn f6_pays(shape: Shape) -> bool {
    let (cin, cout) = (shape.in_channels, shape.out_channels);
    // The widths' harmonic mean: 128 for 128 to 128, 171 for 256 to 128.
    let width = 2 * cin * cout / (cin + cout).max(1);
    match shape.plane() {
        plane if plane >= 1024 * 1024 => width >= 128,
        plane if plane >= 512 * 512 => width >= 256,
        _ => false,
    }
}

/// `weight` (out, in, 3, 3) to U = G g G^T laid out (out, A * A, in): the GEMM operand of
/// position p is the (out x in) matrix at offset p * in with row stride A * A * in. That
/// layout lets every output channel be transformed in parallel straight into place, each
/// value written once into memory never zeroed first: this runs on every call, and U is 36/9
/// times the weight for F(4x4, 3x3) (236 MB for one of the SDXL UNet's 1280-channel layers).
fn transform_weights<const A: usize>(
    weight: Source,
    out_channels: usize,
    in_channels: usize,
    gm: &[[f32; 3]; A],
) -> Vec<f32> {
    transform_each_output(
        weight,
        out_channels,
        in_channels,
        A * A,
        |g, scratch, dst| transform_filter::<3, A>(g, gm, scratch, dst),
    )
}

/// `weight` (out, in, 3, 3) for a doubled input ([`super::Fused::doubled`]): each phase's 2x2 kernel
/// transformed by F(5x5, 2x2), laid out (out, 4 phases, 36, in).
fn transform_weights_doubled(weight: Source, out_channels: usize, in_channels: usize) -> Vec<f32> {
    transform_each_output(
        weight,
        out_channels,
        in_channels,
        PHASES * ALPHA * ALPHA,
        |g, scratch, dst| {
            let (scratch, kernels): &mut (FilterScratch, Vec<f32>) = scratch;
            let c_count = g.len() / 9;
            kernels.resize(4 * c_count, 0.0);
            for (phase, dst) in dst.chunks_exact_mut(ALPHA * ALPHA * c_count).enumerate() {
                phase_kernels(g, phase / 2, phase % 2, kernels);
                transform_filter::<2, ALPHA>(kernels, &G2, scratch, dst);
            }
        },
    )
}

/// The 2x2 kernels (in, 2, 2) that phase `(a, b)` of a doubled input applies: output pixel
/// `2i + a` of the upsampled image reads upsampled pixels `2i + a - 1 ..= 2i + a + 1`, which
/// are input pixels `i - 1, i, i` for `a = 0` and `i, i, i + 1` for `a = 1`; the taps that
/// land on one input pixel add up (`TAPS[a][s]`: the kernel rows that land on the phase
/// kernel's row `s`), and likewise along the width.
fn phase_kernels(g: &[f32], a: usize, b: usize, kernels: &mut [f32]) {
    const TAPS: [[&[usize]; 2]; 2] = [[&[0], &[1, 2]], [&[0, 1], &[2]]];
    for (filter, kernel) in g.chunks_exact(9).zip(kernels.chunks_exact_mut(4)) {
        for (s, row_taps) in TAPS[a].iter().enumerate() {
            for (t, column_taps) in TAPS[b].iter().enumerate() {
                let mut sum = 0.0;
                for &r in *row_taps {
                    for &col in *column_taps {
                        sum += filter[r * 3 + col];
                    }
                }
                kernel[s * 2 + t] = sum;
            }
        }
    }
}

/// F(4x4, 3x3)'s U of the output channels whose filters are `weight` ((out, in, 3, 3), a run
/// of whole channels), into `u` (out, 36, in), one channel after another on this thread: a
/// few channels at a time, just before their products, so that U stays in the cache
/// ([`super::Weights::Raw`]).
pub(super) fn transform_run(weight: &[f32], in_channels: usize, u: &mut Vec<f32>) {
    let per_channel = ALPHA * ALPHA * in_channels;
    assert!(in_channels > 0 && weight.len().is_multiple_of(in_channels * 9));
    let len = weight.len() / (in_channels * 9) * per_channel;
    u.clear();
    u.reserve(len);
    let dst = u.spare_capacity_mut()[..len].chunks_exact_mut(per_channel);
    for (g, dst) in weight.chunks_exact(in_channels * 9).zip(dst) {
        transform_f4(g, dst);
    }
    // SAFETY: each channel's transform wrote every value of its `per_channel`, and the
    // channels cover the `len` values.
    #[allow(unsafe_code)]
    unsafe {
        u.set_len(len)
    };
}

/// Per-task buffers of the weight transforms.
#[derive(Default)]
struct FilterScratch {
    /// `taps[tap][c]`, a kernel's taps contiguous in the input channel.
    taps: Vec<f32>,
    /// `rows[a][col][c]`, after the transform along the kernel's height.
    rows: Vec<f32>,
}

/// Where the filter transforms read a convolution's weight, (out, in, 3, 3).
#[derive(Clone, Copy)]
pub enum Source<'a> {
    /// Every value, in f32.
    Values(&'a [f32]),
    /// One output channel's (in, 3, 3) filters at a time, written by the function just
    /// before their transform: a weight kept in another form for other kernels (bf16 packed
    /// for [`crate::nn::tiled_conv`]), widened where a whole f32 copy of it would be written
    /// to memory and read back for nothing.
    ByOutput(&'a (dyn Fn(usize, &mut [f32]) + Sync)),
}

/// U for every output channel in parallel, `positions * in` values each, written by
/// `transform` from the channel's (in, 3, 3) filters into memory never zeroed first, with
/// scratch `S` of its own per task.
fn transform_each_output<S: Default + Send>(
    weight: Source,
    out_channels: usize,
    in_channels: usize,
    positions: usize,
    transform: impl Fn(&[f32], &mut S, &mut [MaybeUninit<f32>]) + Sync,
) -> Vec<f32> {
    let c_count = in_channels;
    let filter_len = c_count * 9;
    if let Source::Values(weight) = weight {
        assert_eq!(weight.len(), out_channels * filter_len);
    }
    let chunk = positions * c_count;
    let len = out_channels * chunk;
    let mut u = Vec::with_capacity(len);
    if len > 0 {
        let init = || (S::default(), Vec::new());
        u.spare_capacity_mut()[..len]
            .par_chunks_mut(chunk)
            .enumerate()
            .for_each_init(init, |(scratch, filter), (o, dst)| {
                let g = match weight {
                    Source::Values(weight) => &weight[o * filter_len..][..filter_len],
                    Source::ByOutput(fill) => {
                        filter.resize(filter_len, 0.0);
                        fill(o, filter);
                        &filter[..]
                    }
                };
                transform(g, scratch, dst)
            });
    }
    // SAFETY: the chunks cover the `len` values, and `transform` writes every value of its
    // chunk.
    #[allow(unsafe_code)]
    unsafe {
        u.set_len(len)
    };
    u
}

/// One output channel's filters `g` (in, R, R) into `dst` (A * A, in) by `gm` (G6 for R = 3,
/// G2 for 2), built for AVX2 where the CPU has it (the same operations, so the same bits, as
/// the baseline copy). F(4x4, 3x3)'s G has [`transform_f4`].
fn transform_filter<const R: usize, const A: usize>(
    g: &[f32],
    gm: &[[f32; R]; A],
    scratch: &mut FilterScratch,
    dst: &mut [MaybeUninit<f32>],
) {
    let c_count = g.len() / (R * R);
    scratch.taps.resize(R * R * c_count, 0.0);
    scratch.rows.resize(A * R * c_count, 0.0);
    let (taps, rows) = (&mut scratch.taps[..], &mut scratch.rows[..]);
    #[cfg(target_arch = "x86_64")]
    {
        if crate::nn::math::has_avx2_fma() {
            // SAFETY: the CPU has the features the copy is built for.
            #[allow(unsafe_code)]
            return unsafe { transform_filter_avx2(g, gm, taps, rows, dst) };
        }
    }
    transform_filter_with(g, gm, taps, rows, dst)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn transform_filter_avx2<const R: usize, const A: usize>(
    g: &[f32],
    gm: &[[f32; R]; A],
    taps: &mut [f32],
    rows: &mut [f32],
    dst: &mut [MaybeUninit<f32>],
) {
    transform_filter_with(g, gm, taps, rows, dst)
}

#[inline(always)]
fn transform_filter_with<const R: usize, const A: usize>(
    g: &[f32],
    gm: &[[f32; R]; A],
    taps: &mut [f32],
    rows: &mut [f32],
    dst: &mut [MaybeUninit<f32>],
) {
    let c_count = g.len() / (R * R);
    // taps[tap][c], contiguous in c so the loops below vectorise.
    for (c, filter) in g.chunks_exact(R * R).enumerate() {
        for (tap, &value) in filter.iter().enumerate() {
            taps[tap * c_count + c] = value;
        }
    }
    // rows[a][col][c] = sum_r G[a][r] g[r][col]
    for a in 0..A {
        for col in 0..R {
            let taps = std::array::from_fn(|r| &taps[(r * R + col) * c_count..][..c_count]);
            combine(&mut rows[(a * R + col) * c_count..][..c_count], gm[a], taps);
        }
    }
    // U[a][b][c] = sum_col rows[a][col][c] G[b][col]
    for a in 0..A {
        for b in 0..A {
            let rows = std::array::from_fn(|col| &rows[(a * R + col) * c_count..][..c_count]);
            combine(&mut dst[(a * A + b) * c_count..][..c_count], gm[b], rows);
        }
    }
}

/// F(4x4, 3x3)'s U of one output channel's filters `g` (in, 3, 3) into `dst` (36, in), eight
/// input channels at a time in registers, G applied factored ([`g_1d`]): 99 operations per
/// eight channels where multiplying by G's matrix took 270, each value of U stored once
/// (through buffers of taps and rows it was stored three times), the taps gathered by
/// transposes ([`taps_of`]). Made by chunks for a 1280-channel convolution at 16x16
/// ([`super::Weights::Raw`]), U still takes two thirds of the products' time (35 % of the
/// convolution against 52, AVX2 on a Zen 5), much of it reading the weight (59 MB) from
/// memory; by the matrix it took as long as the products.
#[inline(always)]
fn transform_f4_with<V: Vector>(g: &[f32], dst: &mut [MaybeUninit<f32>]) {
    let c_count = g.len() / 9;
    assert_eq!(dst.len(), ALPHA * ALPHA * c_count, "U's size");
    for c0 in (0..c_count).step_by(LANES) {
        let count = LANES.min(c_count - c0);
        let taps = taps_of::<V>(&g[c0 * 9..][..count * 9]);
        // rows[a][col] = (G g)[a][col], a column of the filter at a time.
        let mut rows = [[V::splat(0.0); 3]; ALPHA];
        for col in 0..3 {
            let column = [0, 1, 2].map(|r| taps[r * 3 + col]);
            for (a, value) in g_1d(column).into_iter().enumerate() {
                rows[a][col] = value;
            }
        }
        // U[a][b] = (G g G^T)[a][b], a row at a time.
        for (a, row) in rows.iter().enumerate() {
            for (b, value) in g_1d(*row).into_iter().enumerate() {
                let out = &mut dst[(a * ALPHA + b) * c_count + c0..];
                match count {
                    LANES => value.store_uninit(out),
                    _ => {
                        for (out, &lane) in out[..count].iter_mut().zip(&value.lanes()) {
                            out.write(lane);
                        }
                    }
                }
            }
        }
    }
}

/// The nine taps of up to eight channels' 3x3 filters `g` (channel after channel): lane `l`
/// of tap `t` is `g[9 l + t]`, zero past the last channel. Eight whole channels are
/// transposed in registers ([`Vector::columns`]: taps 0 to 7, and tap 8 as the last column
/// of the same read one value further on); assembled value by value on the stack, the taps
/// took a quarter of the transform's time.
#[inline(always)]
fn taps_of<V: Vector>(g: &[f32]) -> [V; 9] {
    if g.len() == 9 * LANES {
        let first = V::columns::<9, 8>(g);
        let last = V::columns::<9, 8>(&g[1..])[7];
        return std::array::from_fn(|t| if t < 8 { first[t] } else { last });
    }
    let mut taps = [[0f32; LANES]; 9];
    for (l, filter) in g.chunks_exact(9).enumerate() {
        for (tap, &value) in filter.iter().enumerate() {
            taps[tap][l] = value;
        }
    }
    taps.map(|tap| V::load(&tap))
}

/// G (F(4x4, 3x3)'s, the points 0, +-1, +-2) times three values, factored: the +-1 rows and
/// the +-2 rows share their even part.
#[inline(always)]
fn g_1d<V: Vector>([x0, x1, x2]: [V; 3]) -> [V; ALPHA] {
    let ones = x0.add(x2);
    let twos = x0.scaled(G[3][0]).add(x2.scaled(G[3][2]));
    let odd_twos = x1.scaled(G[3][1]);
    [
        x0.scaled(G[0][0]),
        ones.add(x1).scaled(G[1][0]),
        ones.sub(x1).scaled(G[1][0]),
        twos.add(odd_twos),
        twos.sub(odd_twos),
        x2,
    ]
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn transform_f4_avx2(g: &[f32], dst: &mut [MaybeUninit<f32>]) {
    transform_f4_with::<super::vector::Avx2>(g, dst)
}

/// [`transform_f4_with`] on the widest lanes this CPU has: the same operations, so the same
/// bits.
fn transform_f4(g: &[f32], dst: &mut [MaybeUninit<f32>]) {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::nn::math::has_avx2_fma() {
            // SAFETY: the CPU has the features the copy is built for.
            #[allow(unsafe_code)]
            return unsafe { transform_f4_avx2(g, dst) };
        }
    }
    transform_f4_with::<super::Lanes>(g, dst)
}

/// `out = w[0] x[0] + w[1] x[1] (+ w[2] x[2])`, each output written once (one pass over
/// memory where accumulating term by term made four).
#[inline(always)]
fn combine<T: Written, const R: usize>(out: &mut [T], w: [f32; R], x: [&[f32]; R]) {
    let x = x.map(|x| &x[..out.len()]);
    for (i, o) in out.iter_mut().enumerate() {
        let mut sum = w[0] * x[0][i];
        for r in 1..R {
            sum += w[r] * x[r][i];
        }
        o.set(sum);
    }
}

/// A place [`combine`] writes: scratch, or the output's memory before it is initialised.
trait Written {
    fn set(&mut self, value: f32);
}

impl Written for f32 {
    #[inline(always)]
    fn set(&mut self, value: f32) {
        *self = value;
    }
}

impl Written for MaybeUninit<f32> {
    #[inline(always)]
    fn set(&mut self, value: f32) {
        self.write(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiling(cin: usize, cout: usize, side: usize, doubled: bool) -> Tiling {
        let shape = Shape {
            batch: 1,
            in_channels: cin,
            out_channels: cout,
            height: side,
            width: side,
        };
        let weight = vec![0.5; cout * cin * 9];
        Filters::for_shape(&weight, shape, doubled).tiling
    }

    /// The measured choices: F(6x6, 3x3) for an SDXL VAE's large convolutions, F(4x4, 3x3)
    /// for the UNets' and an SD VAE decoding 512x512, phases for the upsamplers.
    #[test]
    fn each_shape_gets_the_tiles_it_runs_fastest_on() {
        assert_eq!(tiling(128, 128, 1024, false), Tiling::F6);
        assert_eq!(tiling(256, 128, 1024, false), Tiling::F6);
        assert_eq!(tiling(256, 256, 512, false), Tiling::F6);
        assert_eq!(tiling(512, 256, 512, false), Tiling::F6);
        assert_eq!(tiling(64, 64, 1024, false), Tiling::F4);
        assert_eq!(tiling(128, 128, 512, false), Tiling::F4);
        assert_eq!(tiling(256, 128, 512, false), Tiling::F4);
        assert_eq!(tiling(512, 512, 256, false), Tiling::F4);
        assert_eq!(tiling(1280, 1280, 32, false), Tiling::F4);
        assert_eq!(tiling(256, 256, 1024, true), Tiling::Phases);
        assert_eq!(tiling(512, 512, 128, true), Tiling::F4);
    }

    /// F(4x4, 3x3)'s factored transform computes G g G^T (to rounding, against f64), with the
    /// same bits on the portable lanes as on AVX2, past whole groups of eight channels too.
    #[test]
    fn factored_f4_transform_is_g_g_gt() {
        for c_count in [1, 8, 13, 16, 21] {
            let g: Vec<f32> = (0..c_count * 9).map(|i| (i as f32 * 0.71).sin()).collect();
            let transformed = |portable: bool| {
                let mut u = vec![MaybeUninit::new(f32::NAN); ALPHA * ALPHA * c_count];
                match portable {
                    true => transform_f4_with::<crate::nn::winograd::Lanes>(&g, &mut u),
                    false => transform_f4(&g, &mut u),
                }
                // SAFETY: every value was initialised (to NaN where not written).
                #[allow(unsafe_code)]
                let u = unsafe { crate::nn::buffers::assume_init(&u) }.to_vec();
                u
            };
            let u = transformed(false);
            assert_eq!(u, transformed(true), "{c_count} channels");
            for c in 0..c_count {
                for (a, b) in (0..ALPHA).flat_map(|a| (0..ALPHA).map(move |b| (a, b))) {
                    let expected: f64 = (0..3)
                        .flat_map(|r| (0..3).map(move |col| (r, col)))
                        .map(|(r, col)| {
                            G[a][r] as f64 * g[c * 9 + r * 3 + col] as f64 * G[b][col] as f64
                        })
                        .sum();
                    let got = u[(a * ALPHA + b) * c_count + c] as f64;
                    assert!(
                        (got - expected).abs() < 1e-6,
                        "{c}: {got} against {expected}"
                    );
                }
            }
        }
    }
}
