//! 3x3, stride-1, padding-1 convolution by Winograd's F(4x4, 3x3) on CPU f32.
//!
//! A direct (im2col + GEMM) 3x3 convolution spends 9 multiplies per output per input channel;
//! F(4x4, 3x3) produces each 4x4 output tile from a 6x6 input tile with 36 element-wise
//! products, 2.25 per output: four times fewer. The products of all tiles at one of the 36
//! positions form one matrix product (out channels x in channels) x (in channels x tiles),
//! so the work is 36 GEMMs plus cheap linear transforms on either side.
//!
//! Rounding: the transforms use the points 0, +-1, +-2, whose error growth is small: within
//! 1e-4 of an f64 direct convolution in the tests below, and the pipeline parity cases keep
//! their 4e-3 budget.
//!
//! Layout: input and output stay NCHW. A block is a few rows of tiles across the whole
//! width; the transforms work on eight tiles at a time in registers, and blocks write
//! disjoint output rows, which lets them run in parallel without locks.

// The transforms index several matrices with the same loop variables, as the formulas do.
#![allow(clippy::needless_range_loop)]

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::gemm;

/// Input transform B^T (6x6) for the points 0, 1, -1, 2, -2, infinity. The kernels run it
/// factored ([`input_1d`]); the tests hold that to this.
#[cfg_attr(not(test), allow(dead_code))]
const BT: [[f32; 6]; 6] = [
    [4., 0., -5., 0., 1., 0.],
    [0., -4., -4., 1., 1., 0.],
    [0., 4., -4., -1., 1., 0.],
    [0., -2., -1., 2., 1., 0.],
    [0., 2., -1., -2., 1., 0.],
    [0., 4., 0., -5., 0., 1.],
];

/// Filter transform G (6x3).
const G: [[f32; 3]; 6] = [
    [1. / 4., 0., 0.],
    [-1. / 6., -1. / 6., -1. / 6.],
    [-1. / 6., 1. / 6., -1. / 6.],
    [1. / 24., 1. / 12., 1. / 6.],
    [1. / 24., -1. / 12., 1. / 6.],
    [0., 0., 1.],
];

/// Output transform A^T (4x6), run factored as [`output_1d`].
#[cfg_attr(not(test), allow(dead_code))]
const AT: [[f32; 6]; 4] = [
    [1., 1., 1., 1., 1., 0.],
    [0., 1., -1., 2., -2., 0.],
    [0., 1., 1., 4., 4., 0.],
    [0., 1., -1., 8., -8., 1.],
];

/// Output pixels per tile side, and input pixels per tile side.
const M: usize = 4;
const ALPHA: usize = 6;
const POSITIONS: usize = ALPHA * ALPHA;

/// Aim for about this many tiles per block: enough columns for the GEMMs to run at full
/// speed, few enough that a block's buffers stay in the cache.
const TARGET_TILES_PER_BLOCK: usize = 96;

/// Shape of one convolution: `x` is (batch, in, height, width), `weight` (out, in, 3, 3).
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub batch: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub height: usize,
    pub width: usize,
}

impl Shape {
    /// Pixels in one channel of the output.
    pub fn plane(&self) -> usize {
        self.height * self.width
    }

    pub fn tiles(&self) -> usize {
        self.height.div_ceil(M) * self.width.div_ceil(M)
    }
}

/// `weight` (out, in, 3, 3) to U = G g G^T laid out (out, 36, in): the GEMM operand of
/// position p is the (out x in) matrix at offset p * in with row stride 36 * in. That layout
/// lets every output channel be transformed in parallel straight into place, each value
/// written once into memory never zeroed first: this runs on every call, and U is 36/9 times
/// the weight (236 MB for one of the SDXL UNet's 1280-channel layers).
pub fn transform_weights(weight: &[f32], out_channels: usize, in_channels: usize) -> Vec<f32> {
    let c_count = in_channels;
    assert_eq!(weight.len(), out_channels * c_count * 9);
    let len = out_channels * POSITIONS * c_count;
    let mut u = Vec::with_capacity(len);
    u.spare_capacity_mut()[..len]
        .par_chunks_mut(POSITIONS * c_count)
        .zip(weight.par_chunks(c_count * 9))
        .for_each_init(
            || (vec![0f32; 9 * c_count], vec![0f32; ALPHA * 3 * c_count]),
            |(taps, rows), (dst, g)| transform_filter(g, taps, rows, dst),
        );
    // SAFETY: the chunks cover the `len` values, and `transform_filter` writes every value of
    // its chunk.
    #[allow(unsafe_code)]
    unsafe {
        u.set_len(len)
    };
    u
}

/// One output channel's filters `g` (in, 3, 3) into `dst` (36, in), built for AVX2 where the
/// CPU has it (the same operations, so the same bits, as the baseline copy); `taps` and
/// `rows` are scratch of 9 and 18 values per input channel.
fn transform_filter(g: &[f32], taps: &mut [f32], rows: &mut [f32], dst: &mut [MaybeUninit<f32>]) {
    #[cfg(target_arch = "x86_64")]
    {
        if super::math::has_avx2_fma() {
            // SAFETY: the CPU has the features the copy is built for.
            #[allow(unsafe_code)]
            return unsafe { transform_filter_avx2(g, taps, rows, dst) };
        }
    }
    transform_filter_with(g, taps, rows, dst)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn transform_filter_avx2(g: &[f32], t: &mut [f32], r: &mut [f32], d: &mut [MaybeUninit<f32>]) {
    transform_filter_with(g, t, r, d)
}

#[inline(always)]
fn transform_filter_with(
    g: &[f32],
    taps: &mut [f32],
    rows: &mut [f32],
    dst: &mut [MaybeUninit<f32>],
) {
    let c_count = g.len() / 9;
    // taps[tap][c], contiguous in c so the loops below vectorise.
    for (c, filter) in g.chunks_exact(9).enumerate() {
        for (tap, &value) in filter.iter().enumerate() {
            taps[tap * c_count + c] = value;
        }
    }
    // rows[a][col][c] = sum_r G[a][r] g[r][col]
    for a in 0..ALPHA {
        for col in 0..3 {
            let taps = [0, 1, 2].map(|r| &taps[(r * 3 + col) * c_count..][..c_count]);
            combine(&mut rows[(a * 3 + col) * c_count..][..c_count], G[a], taps);
        }
    }
    // U[a][b][c] = sum_col rows[a][col][c] G[b][col]
    for a in 0..ALPHA {
        for b in 0..ALPHA {
            let rows = [0, 1, 2].map(|col| &rows[(a * 3 + col) * c_count..][..c_count]);
            combine(&mut dst[(a * ALPHA + b) * c_count..][..c_count], G[b], rows);
        }
    }
}

/// `out = w[0] x[0] + w[1] x[1] + w[2] x[2]`, each output written once (one pass over memory
/// where accumulating term by term made four).
#[inline(always)]
fn combine<T: Written>(out: &mut [T], w: [f32; 3], x: [&[f32]; 3]) {
    for (((o, &a), &b), &c) in out.iter_mut().zip(x[0]).zip(x[1]).zip(x[2]) {
        o.set(w[0] * a + w[1] * b + w[2] * c);
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

/// What a convolution does to its input as it reads it and adds to its output, beyond the
/// weight: the work of the ops around it in a ResNet block or an upsampler, without their
/// full-size intermediate images (hundreds of megabytes each in a VAE decoder at 512x512).
/// Each value is what the separate ops compute, in the same order, so the same bits.
#[derive(Clone, Copy, Debug, Default)]
pub struct Fused<'a> {
    /// `(scale, shift)` per image and input channel (`batch x in`): the input is read as
    /// `silu(x scale + shift)`, a GroupNorm and SiLU on the way in
    /// ([`super::norm::GroupNormSilu::affine`]); the zero padding stays zero.
    pub input_norm: Option<&'a [(f32, f32)]>,
    /// The input has half the output's height and width, each pixel standing for a 2x2
    /// block: nearest 2x upsampling.
    pub doubled: bool,
    /// One value per output channel.
    pub bias: Option<&'a [f32]>,
    /// One value per image and output channel (`batch x out`), added after the bias: a UNet
    /// ResNet block's time embedding.
    pub image_bias: Option<&'a [f32]>,
    /// Added to the output (after the biases), laid out as it: a ResNet block's shortcut.
    pub residual: Option<&'a [f32]>,
}

impl Fused<'_> {
    /// Pixels of each of `shape`'s input channels: a quarter of the output's where the input
    /// is `doubled` (whose sides must then be even).
    pub(crate) fn input_plane(&self, shape: Shape) -> usize {
        if !self.doubled {
            return shape.plane();
        }
        assert!(
            shape.height.is_multiple_of(2) && shape.width.is_multiple_of(2),
            "a doubled input has even sides"
        );
        shape.plane() / 4
    }

    /// The norm fits `batch` images of `in_channels`, the image biases and the residual
    /// `batch` images of `out` channels of `plane` pixels.
    pub(crate) fn check(&self, batch: usize, in_channels: usize, out: usize, plane: usize) {
        if let Some(norm) = self.input_norm {
            assert_eq!(
                norm.len(),
                batch * in_channels,
                "a (scale, shift) per image and channel"
            );
        }
        if let Some(image_bias) = self.image_bias {
            assert_eq!(
                image_bias.len(),
                batch * out,
                "a bias per image and channel"
            );
        }
        if let Some(residual) = self.residual {
            assert_eq!(residual.len(), batch * out * plane, "the residual's size");
        }
    }
}

/// The convolution: `input` (batch, in, h, w) NCHW, `u` from [`transform_weights`], an
/// optional bias per output channel. Returns (batch, out, h, w).
pub fn conv3x3(input: &[f32], shape: Shape, u: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let fused = Fused {
        bias,
        ..Fused::default()
    };
    conv3x3_fused(input, shape, u, fused)
}

/// [`conv3x3`] with the work of the ops around it ([`Fused`]); `shape` is the output's, and the
/// input's too unless it is `doubled`.
pub fn conv3x3_fused(input: &[f32], shape: Shape, u: &[f32], fused: Fused) -> Vec<f32> {
    run(input, shape, u, fused, Output::Fresh)
}

/// [`conv3x3_fused`] with the residual in `onto`, which the output is written over (each value
/// read just before its place is written): one full-size image fewer alive. `fused` has no
/// residual of its own.
pub fn conv3x3_onto(
    input: &[f32],
    shape: Shape,
    u: &[f32],
    fused: Fused,
    onto: Vec<f32>,
) -> Vec<f32> {
    assert!(
        fused.residual.is_none(),
        "the residual is the one in `onto`"
    );
    let expected = shape.batch * shape.out_channels * shape.plane();
    assert_eq!(onto.len(), expected, "the residual's size");
    run(input, shape, u, fused, Output::OverResidual(onto))
}

/// Where the output goes.
enum Output {
    /// A buffer of its own, never zeroed: every value is written once by the output
    /// transform, where a zeroing pass beforehand took a sixteenth of an SDXL VAE decode
    /// (up to 1 GiB written, read back and written again per convolution).
    Fresh,
    /// Over the residual it holds.
    OverResidual(Vec<f32>),
}

fn run(input: &[f32], shape: Shape, u: &[f32], fused: Fused, output: Output) -> Vec<f32> {
    let Shape {
        batch,
        in_channels,
        out_channels,
        height,
        width,
    } = shape;
    let input_plane = fused.input_plane(shape);
    assert_eq!(input.len(), batch * in_channels * input_plane);
    assert_eq!(u.len(), out_channels * POSITIONS * in_channels);
    fused.check(batch, in_channels, out_channels, height * width);
    let tiles_w = width.div_ceil(M);
    let tiles_h = height.div_ceil(M);
    // Whole rows of tiles per block, and a block count that is a multiple of the threads so
    // that none idles at the end (a 64x64 latent is only 4 blocks).
    let blocks_wanted = (tiles_h * tiles_w)
        .div_ceil(TARGET_TILES_PER_BLOCK)
        .next_multiple_of(rayon::current_num_threads());
    let tile_rows_per_block = tiles_h.div_ceil(blocks_wanted).max(1);
    let rows_per_block = tile_rows_per_block * M;
    let plane = height * width;
    let len = batch * out_channels * plane;
    let (mut output, over_residual) = match output {
        Output::Fresh => (Vec::with_capacity(len), false),
        Output::OverResidual(output) => (output, true),
    };
    let values: &mut [MaybeUninit<f32>] = match over_residual {
        // SAFETY: the blocks write only initialised values.
        #[allow(unsafe_code)]
        true => unsafe { super::buffers::as_uninit_mut(output.as_mut_slice()) },
        false => &mut output.spare_capacity_mut()[..len],
    };

    // Hand every block the rows it owns in every output channel: disjoint mutable slices.
    let blocks_per_image = tiles_h.div_ceil(tile_rows_per_block);
    let mut blocks: Vec<Block> = (0..batch * blocks_per_image)
        .map(|i| Block {
            image: i / blocks_per_image,
            first_tile_row: (i % blocks_per_image) * tile_rows_per_block,
            out_rows: Vec::with_capacity(out_channels),
            residual_rows: Vec::new(),
            over_residual,
        })
        .collect();
    for (index, channel) in values.chunks_mut(plane).enumerate() {
        let image = index / out_channels;
        for (b, rows) in channel.chunks_mut(rows_per_block * width).enumerate() {
            blocks[image * blocks_per_image + b].out_rows.push(rows);
        }
    }
    if let Some(residual) = fused.residual {
        for (index, channel) in residual.chunks(plane).enumerate() {
            let image = index / out_channels;
            for (b, rows) in channel.chunks(rows_per_block * width).enumerate() {
                blocks[image * blocks_per_image + b]
                    .residual_rows
                    .push(rows);
            }
        }
    }

    let geometry = Geometry {
        shape,
        tiles_w,
        tiles_h,
        tile_rows_per_block,
    };
    blocks.into_par_iter().for_each_init(
        || Scratch::new(&geometry),
        |scratch, block| geometry.run_block(input, u, fused, block, scratch),
    );
    // SAFETY: the blocks own every output row between them, and each wrote every value of
    // its rows (the output transform covers every pixel of every row it is handed).
    #[allow(unsafe_code)]
    unsafe {
        output.set_len(len)
    };
    output
}

/// How a block reads the input ([`Fused`]), for one image.
#[derive(Clone, Copy)]
struct Reading<'a> {
    /// `(scale, shift)` per input channel.
    norm: Option<&'a [(f32, f32)]>,
    doubled: bool,
}

/// What an output channel's rows get added: its bias, its image's bias, then its rows of the
/// residual.
#[derive(Clone, Copy)]
struct Added<'a> {
    bias: f32,
    image_bias: Option<f32>,
    residual: Option<&'a [f32]>,
    /// The residual is the output rows' own values.
    over_residual: bool,
}

struct Block<'a> {
    image: usize,
    first_tile_row: usize,
    /// Per output channel, this block's rows of the output plane, each value written once.
    out_rows: Vec<&'a mut [MaybeUninit<f32>]>,
    /// The same rows of the residual, when there is one apart from the output.
    residual_rows: Vec<&'a [f32]>,
    /// The output rows hold the residual (initialised), to be added before each value is
    /// written over.
    over_residual: bool,
}

struct Geometry {
    shape: Shape,
    tiles_w: usize,
    tiles_h: usize,
    tile_rows_per_block: usize,
}

/// Per-thread buffers, reused across blocks.
struct Scratch {
    /// Transformed input, (in, 36, tiles): what one input channel's transform writes is
    /// together, and position p's GEMM operand is read with a row stride.
    v: Vec<f32>,
    /// GEMM results, (out, 36, tiles): what one output channel's transform reads is together
    /// (laid out by position it was scattered over megabytes, its loads missing the cache).
    m: Vec<f32>,
    /// Six input rows with a zero column each side, room for whole lanes: (6, padded).
    padded: Vec<f32>,
    /// The rows after the vertical input transform: (6, padded).
    vertical: Vec<f32>,
    /// One input row normalized, before it is doubled.
    normalized: Vec<f32>,
}

impl Scratch {
    fn new(g: &Geometry) -> Self {
        let tiles = g.tile_rows_per_block * g.tiles_w;
        // Tile t reads columns 4t .. 4t+5; lanes round the tile count up to a multiple of 8.
        let row_len = g.tiles_w.next_multiple_of(LANES) * M + LANES;
        Self {
            v: vec![0f32; POSITIONS * g.shape.in_channels * tiles],
            m: vec![0f32; POSITIONS * g.shape.out_channels * tiles],
            padded: vec![0f32; ALPHA * row_len],
            vertical: vec![0f32; ALPHA * row_len],
            normalized: vec![0f32; g.shape.width],
        }
    }
}

impl Geometry {
    /// One block, its transforms built for AVX2 where the CPU has it: at the baseline (SSE2)
    /// they took over a quarter of a 128-channel convolution's time. AVX-512 CPUs run the AVX2
    /// copy too: the transforms work on eight lanes, and a copy built with AVX-512 enabled ran
    /// 3-10 % slower than the baseline one on a Zen 4 EPYC. The same operations in the same
    /// order on every path (no fused multiply-adds), so the same bits.
    fn run_block(&self, input: &[f32], u: &[f32], fused: Fused, block: Block, s: &mut Scratch) {
        #[cfg(target_arch = "x86_64")]
        {
            if super::math::has_avx2_fma() {
                // SAFETY: the CPU has the features the copy is built for.
                #[allow(unsafe_code)]
                return unsafe { self.run_block_avx2(input, u, fused, block, s) };
            }
        }
        self.run_block_with(input, u, fused, block, s)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn run_block_avx2(&self, input: &[f32], u: &[f32], fused: Fused, b: Block, s: &mut Scratch) {
        self.run_block_with(input, u, fused, b, s)
    }

    #[inline(always)]
    fn run_block_with(
        &self,
        input: &[f32],
        u: &[f32],
        fused: Fused,
        mut block: Block,
        s: &mut Scratch,
    ) {
        let tile_rows = self
            .tile_rows_per_block
            .min(self.tiles_h - block.first_tile_row);
        let tiles = tile_rows * self.tiles_w;
        let (cin, cout) = (self.shape.in_channels, self.shape.out_channels);
        let image_len = input.len() / self.shape.batch;
        let image = &input[block.image * image_len..][..image_len];
        let norm = fused.input_norm.map(|n| &n[block.image * cin..][..cin]);
        let reading = Reading {
            norm,
            doubled: fused.doubled,
        };
        self.transform_input(image, reading, block.first_tile_row, tile_rows, s);
        for p in 0..POSITIONS {
            let lhs = gemm::View::row_major(&u[p * cin..], cout, cin, POSITIONS * cin);
            let rhs = gemm::View::row_major(&s.v[p * tiles..], cin, tiles, POSITIONS * tiles);
            let dst = &mut s.m[p * tiles..][..(cout - 1) * POSITIONS * tiles + tiles];
            gemm::matmul_into(lhs, rhs, dst, POSITIONS * tiles, 1.0, 1);
        }
        for (k, rows) in block.out_rows.iter_mut().enumerate() {
            let added = Added {
                bias: fused.bias.map_or(0.0, |b| b[k]),
                image_bias: fused.image_bias.map(|b| b[block.image * cout + k]),
                residual: block.residual_rows.get(k).copied(),
                over_residual: block.over_residual,
            };
            let m = &s.m[..POSITIONS * cout * tiles];
            for r in 0..tile_rows {
                self.transform_output(m, k, tiles, r, added, rows);
            }
        }
    }

    /// Input row `y` of `channel` (`c`) as the convolution reads it, into `padded` (`w`
    /// values); `normalized` has room for a row.
    #[inline(always)]
    fn fill_row(
        &self,
        channel: &[f32],
        c: usize,
        y: usize,
        reading: Reading,
        normalized: &mut [f32],
        padded: &mut [f32],
    ) {
        let w = self.shape.width;
        let (source_w, source_y) = match reading.doubled {
            true => (w / 2, y / 2),
            false => (w, y),
        };
        let mut row = &channel[source_y * source_w..][..source_w];
        if let Some(norm) = reading.norm {
            let (scale, shift) = norm[c];
            let normalized = &mut normalized[..source_w];
            super::norm::silu_affine(row, normalized, scale, shift);
            row = normalized;
        }
        match reading.doubled {
            true => {
                for (pair, &value) in padded.chunks_exact_mut(2).zip(row) {
                    pair.fill(value);
                }
            }
            false => padded.copy_from_slice(row),
        }
    }

    /// Fill `s.v` (in, 36, tiles) for `tile_rows` rows of tiles starting at `first`.
    #[inline(always)]
    fn transform_input(
        &self,
        image: &[f32],
        reading: Reading,
        first: usize,
        tile_rows: usize,
        s: &mut Scratch,
    ) {
        let (h, w) = (self.shape.height, self.shape.width);
        let (tw, tiles) = (self.tiles_w, tile_rows * self.tiles_w);
        let cin = self.shape.in_channels;
        let (padded_len, vertical_len) = (s.padded.len() / ALPHA, s.vertical.len() / ALPHA);
        let channel_len = image.len() / cin;
        for c in 0..cin {
            let channel = &image[c * channel_len..][..channel_len];
            for r in 0..tile_rows {
                // The six input rows of this tile row, shifted right by one (the left pad),
                // zero outside the image.
                let top = (first + r) * M;
                for i in 0..ALPHA {
                    match (top + i).checked_sub(1).filter(|&y| y < h) {
                        Some(y) => {
                            let padded = &mut s.padded[i * padded_len + 1..][..w];
                            self.fill_row(channel, c, y, reading, &mut s.normalized, padded);
                        }
                        None => s.padded[i * padded_len + 1..][..w].fill(0.0),
                    }
                }
                // vertical[a][x] = sum_i BT[a][i] padded[i][x], eight columns at a time.
                for x in (0..vertical_len).step_by(LANES) {
                    let mut rows = [[0f32; LANES]; ALPHA];
                    for (i, row) in rows.iter_mut().enumerate() {
                        *row = lanes(&s.padded[i * padded_len + x..]);
                    }
                    for (a, out) in input_1d(&rows).iter().enumerate() {
                        s.vertical[a * vertical_len + x..][..LANES].copy_from_slice(out);
                    }
                }
                // v[a][b][c][t] = sum_j BT[b][j] vertical[a][4 t + j], eight tiles at a time.
                for a in 0..ALPHA {
                    let row = &s.vertical[a * vertical_len..][..vertical_len];
                    for t0 in (0..tw).step_by(LANES) {
                        // Eight tiles' columns from one span of the row (the row has room
                        // past the last tile), lane l of column j at l * M + j: constant
                        // indices, which compile to shuffles.
                        let span: &[f32; SPAN] = row[t0 * M..][..SPAN].try_into().unwrap();
                        let mut columns = [[0f32; LANES]; ALPHA];
                        for (j, column) in columns.iter_mut().enumerate() {
                            for (l, value) in column.iter_mut().enumerate() {
                                *value = span[l * M + j];
                            }
                        }
                        let count = LANES.min(tw - t0);
                        for (b, out) in input_1d(&columns).iter().enumerate() {
                            let at = (c * POSITIONS + a * ALPHA + b) * tiles + r * tw + t0;
                            match count {
                                LANES => s.v[at..][..LANES].copy_from_slice(out),
                                _ => s.v[at..][..count].copy_from_slice(&out[..count]),
                            }
                        }
                    }
                }
            }
        }
    }

    /// Write output channel `k`, tile row `r` of this block: Y = A^T m A (+ bias).
    #[inline(always)]
    fn transform_output(
        &self,
        m: &[f32],
        k: usize,
        tiles: usize,
        r: usize,
        added: Added,
        rows: &mut [MaybeUninit<f32>],
    ) {
        let (tw, w) = (self.tiles_w, self.shape.width);
        let row_count = rows.len() / w;
        for t0 in (0..tw).step_by(LANES) {
            let count = LANES.min(tw - t0);
            // Plain loops throughout: closures here (`std::array::from_fn`) stayed calls of
            // their own, built without this copy's vector features, their arrays copied out
            // by `memmove`.
            let mut products = [[0f32; LANES]; POSITIONS];
            for (p, lanes_p) in products.iter_mut().enumerate() {
                let src = &m[(k * POSITIONS + p) * tiles + r * tw + t0..];
                match count {
                    LANES => *lanes_p = lanes(src),
                    _ => lanes_p[..count].copy_from_slice(&src[..count]),
                }
            }
            // horizontal[a][j] = sum_b AT[j][b] m[a][b]
            let mut horizontal = [[[0f32; LANES]; M]; ALPHA];
            for (a, h) in horizontal.iter_mut().enumerate() {
                let row: &[Lanes; ALPHA] = products[a * ALPHA..][..ALPHA].try_into().unwrap();
                *h = output_1d(row);
            }
            // y[j][i] = sum_a AT[i][a] horizontal[a][j]: output row 4r+i at x = 4t + j.
            let mut y = [[[0f32; LANES]; M]; M];
            for (j, y) in y.iter_mut().enumerate() {
                let mut column = [[0f32; LANES]; ALPHA];
                for (a, value) in column.iter_mut().enumerate() {
                    *value = horizontal[a][j];
                }
                *y = output_1d(&column);
            }
            // The eight tiles cover M * 8 adjacent pixels of each row, the last ones cut at
            // the image's edge.
            let x0 = t0 * M;
            let valid = (count * M).min(w - x0);
            for i in 0..M.min(row_count.saturating_sub(r * M)) {
                let mut row = [0f32; SPAN_OUT];
                for (x, value) in row.iter_mut().enumerate() {
                    *value = y[x % M][i][x / M];
                }
                let at = (r * M + i) * w + x0;
                match valid {
                    SPAN_OUT => added.write(&row, &mut rows[at..][..SPAN_OUT], at),
                    _ => added.write(&row[..valid], &mut rows[at..][..valid], at),
                }
            }
        }
    }
}

impl Added<'_> {
    /// `out = value + bias (+ image bias) (+ residual)`, in that order as the separate ops
    /// add them; `at` is where `out` starts in the rows.
    #[inline(always)]
    fn write(&self, values: &[f32], out: &mut [MaybeUninit<f32>], at: usize) {
        // One loop per case, no branch inside: each compiles to whole vectors.
        let bias = self.bias;
        let image_bias = self.image_bias.unwrap_or(0.0);
        let plus_image_bias = self.image_bias.is_some();
        match (self.residual, self.over_residual) {
            (Some(residual), _) => {
                let residual = &residual[at..][..values.len()];
                for ((out, &value), &residual) in out.iter_mut().zip(values).zip(residual) {
                    out.write(sum(value, bias, plus_image_bias, image_bias) + residual);
                }
            }
            (None, true) => {
                for (out, &value) in out.iter_mut().zip(values) {
                    // SAFETY: over the residual the rows are initialised (`Block`), and each
                    // value is read before it is written over.
                    #[allow(unsafe_code)]
                    let residual = unsafe { out.assume_init_read() };
                    out.write(sum(value, bias, plus_image_bias, image_bias) + residual);
                }
            }
            (None, false) => {
                for (out, &value) in out.iter_mut().zip(values) {
                    out.write(sum(value, bias, plus_image_bias, image_bias));
                }
            }
        }
    }
}

/// `value + bias (+ image_bias)`, in the order the separate ops add them.
#[inline(always)]
fn sum(value: f32, bias: f32, plus_image_bias: bool, image_bias: f32) -> f32 {
    let sum = value + bias;
    if plus_image_bias {
        sum + image_bias
    } else {
        sum
    }
}

/// Values processed together: eight f32 fill one AVX2 register, and the transforms written
/// out over `[f32; 8]` compile to straight-line SIMD code.
const LANES: usize = 8;
type Lanes = [f32; LANES];

/// Input values the eight tiles of one lane group read along a row, and output values they
/// write along one.
const SPAN: usize = (LANES - 1) * M + ALPHA;
const SPAN_OUT: usize = LANES * M;

#[inline(always)]
fn lanes(src: &[f32]) -> Lanes {
    src[..LANES].try_into().unwrap()
}

/// `B^T d` along one side of eight 6x6 input tiles, factored into shared terms: a dozen
/// adds where the matrix has 22 non-zeros, every index constant so the tiles stay in
/// registers (a loop over the matrix's rows kept its sums in memory).
#[inline(always)]
fn input_1d(d: &[Lanes; ALPHA]) -> [Lanes; ALPHA] {
    let d4_minus_4d2 = sub(d[4], scaled(4.0, d[2]));
    let four_d1_minus_d3 = sub(scaled(4.0, d[1]), d[3]);
    let d4_minus_d2 = sub(d[4], d[2]);
    let twice_d1_minus_d3 = scaled(2.0, sub(d[1], d[3]));
    [
        add(sub(scaled(4.0, d[0]), scaled(5.0, d[2])), d[4]),
        sub(d4_minus_4d2, four_d1_minus_d3),
        add(d4_minus_4d2, four_d1_minus_d3),
        sub(d4_minus_d2, twice_d1_minus_d3),
        add(d4_minus_d2, twice_d1_minus_d3),
        add(sub(scaled(4.0, d[1]), scaled(5.0, d[3])), d[5]),
    ]
}

/// `A^T m` along one side of eight tiles of products, factored as [`input_1d`].
#[inline(always)]
fn output_1d(m: &[Lanes; ALPHA]) -> [Lanes; M] {
    let (sum12, difference12) = (add(m[1], m[2]), sub(m[1], m[2]));
    let (sum34, difference34) = (add(m[3], m[4]), sub(m[3], m[4]));
    [
        add(add(m[0], sum12), sum34),
        add(difference12, scaled(2.0, difference34)),
        add(sum12, scaled(4.0, sum34)),
        add(add(difference12, scaled(8.0, difference34)), m[5]),
    ]
}

#[inline(always)]
fn add(a: Lanes, b: Lanes) -> Lanes {
    let mut out = a;
    for (o, b) in out.iter_mut().zip(b) {
        *o += b;
    }
    out
}

#[inline(always)]
fn sub(a: Lanes, b: Lanes) -> Lanes {
    let mut out = a;
    for (o, b) in out.iter_mut().zip(b) {
        *o -= b;
    }
    out
}

#[inline(always)]
fn scaled(k: f32, a: Lanes) -> Lanes {
    let mut out = a;
    for o in out.iter_mut() {
        *o *= k;
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

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
        for (factored, by_matrix) in [
            (input_1d(&x).to_vec(), apply(&BT, &x).to_vec()),
            (output_1d(&x).to_vec(), apply(&AT, &x).to_vec()),
        ] {
            assert_eq!(factored.len(), by_matrix.len());
            for (a, b) in factored.iter().flatten().zip(by_matrix.iter().flatten()) {
                assert!((a - b).abs() < 1e-5, "{a} against {b}");
            }
        }
    }

    /// The textbook definition, accumulated in f64.
    pub(crate) fn direct(
        input: &[f32],
        s: Shape,
        weight: &[f32],
        bias: Option<&[f32]>,
    ) -> Vec<f32> {
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
                                    let wi =
                                        ((k * s.in_channels + c) * 3) as isize * 3 + dy * 3 + dx;
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
    /// under it) give exactly what the separate ops give: the input normalized and upsampled
    /// first, the residual added after.
    #[test]
    fn fused_ops_give_the_values_of_separate_ones() {
        for (batch, cin, cout, h, w, doubled) in [
            (2, 3, 5, 6, 10, true),
            (1, 4, 2, 9, 7, false),
            (1, 2, 3, 16, 12, true),
        ] {
            let (ih, iw) = if doubled { (h / 2, w / 2) } else { (h, w) };
            let input = pattern(batch * cin * ih * iw, 0.3);
            let norm: Vec<(f32, f32)> = (0..batch * cin)
                .map(|i| (0.5 + i as f32 * 0.25, i as f32 * 0.1 - 0.2))
                .collect();
            let s = shape(batch, cin, cout, h, w);
            let weight = pattern(cout * cin * 9, 1.7);
            let (bias, residual) = (pattern(cout, 2.9), pattern(batch * cout * h * w, 0.9));
            let u = transform_weights(&weight, cout, cin);
            // The separate ops: normalize, upsample, convolve, add the image's bias and the
            // residual.
            let mut normalized = input.clone();
            for (i, plane) in normalized.chunks_mut(ih * iw).enumerate() {
                let source = plane.to_vec();
                super::super::norm::silu_affine(&source, plane, norm[i].0, norm[i].1);
            }
            let upsampled: Vec<f32> = match doubled {
                true => (0..batch * cin * h * w)
                    .map(|i| {
                        let (plane, y, x) = (i / (h * w), i / w % h, i % w);
                        normalized[plane * ih * iw + y / 2 * iw + x / 2]
                    })
                    .collect(),
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
            assert_eq!(conv3x3_fused(&input, s, &u, fused), expected, "{s:?}");
            // The output written over the residual: the same values.
            let apart = Fused {
                residual: None,
                ..fused
            };
            let over = conv3x3_onto(&input, s, &u, apart, residual.clone());
            assert_eq!(over, expected, "{s:?} over the residual");
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
            let u = transform_weights(weight, s.out_channels, s.in_channels);
            conv3x3(input, s, &u, bias)
        });
    }
}
