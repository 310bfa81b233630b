//! 3x3, stride-1, padding-1 convolution by Winograd's F(4x4, 3x3) or F(6x6, 3x3) on CPU f32.
//!
//! A direct (im2col + GEMM) 3x3 convolution spends 9 multiplies per output per input channel;
//! F(4x4, 3x3) produces each 4x4 output tile from a 6x6 input tile with 36 element-wise
//! products, 2.25 per output: four times fewer. The products of all tiles at one of the 36
//! positions form one matrix product (out channels x in channels) x (in channels x tiles),
//! so the work is 36 GEMMs plus cheap linear transforms on either side. F(6x6, 3x3) makes
//! each 6x6 tile from an 8x8 one with 64 products, 1.78 per output: it wins on the large
//! images of a VAE decoding 1024x1024 ([`Filters::for_shape`] picks).
//!
//! Rounding: F(4x4, 3x3)'s transforms use the points 0, +-1, +-2, whose error growth is
//! small: within 1e-4 of an f64 direct convolution in the tests below. F(6x6, 3x3) adds
//! +-1/2, whose larger constants about double the error (relative RMS 4.5e-6 against 2.3e-6
//! for 128 channels, 8.7e-6 against 4.5e-6 for 512 to 256); the pipeline parity cases keep
//! their 4e-3 budget.
//!
//! Layout: input and output stay NCHW. A block is a few rows of tiles across the whole
//! width; the transforms work on eight tiles at a time in registers, and blocks write
//! disjoint output rows, which lets them run in parallel without locks.
//!
//! A convolution of a nearest-2x-upsampled input (an upsampler's) runs on the input as it is:
//! each of the four output pixels of a 2x2 block sees a 2x2 window of the input, through a
//! 2x2 kernel made of sums of the 3x3 one's taps (its "phase"). Winograd's F(5x5, 2x2) with
//! the same six points (so the same input transform) gives each phase's 5x5 tile from 36
//! products: 1.44 per output pixel where F(4x4, 3x3) on the upsampled image takes 2.25, and a
//! quarter of the input tiles to transform per phase.
//!
//! U (the transformed weight, 36/9 times its size) is made on every call: kept, it would
//! quadruple a model's memory. Made whole first ([`Filters`]), it goes to memory and is read
//! back by every block, which a large image's products pay for easily; a UNet's 16x16 level
//! has 16 tiles for its 1280 channels, and there ([`by_chunks_pay`]) each block makes U a few
//! output channels at a time just before their products instead ([`Weights::Raw`]), the
//! blocks splitting the output channels between them: in the cache, U costs about as much as
//! the products, and the convolution runs in a half to two thirds of one im2col GEMM's time.

// The transforms index several matrices with the same loop variables, as the formulas do.
#![allow(clippy::needless_range_loop)]

use std::mem::MaybeUninit;

use rayon::prelude::*;

mod filters;
mod products;
mod vector;

pub use filters::Filters;
use filters::Tiling;
pub use products::Products;
use vector::Vector;

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

/// Output transform A^T (4x6), run factored as [`output_1d`].
#[cfg_attr(not(test), allow(dead_code))]
const AT: [[f32; 6]; 4] = [
    [1., 1., 1., 1., 1., 0.],
    [0., 1., -1., 2., -2., 0.],
    [0., 1., 1., 4., 4., 0.],
    [0., 1., -1., 8., -8., 1.],
];

/// Output transform of F(5x5, 2x2) (5x6).
#[cfg_attr(not(test), allow(dead_code))]
const AT5: [[f32; 6]; 5] = [
    [1., 1., 1., 1., 1., 0.],
    [0., 1., -1., 2., -2., 0.],
    [0., 1., 1., 4., 4., 0.],
    [0., 1., -1., 8., -8., 0.],
    [0., 1., 1., 16., 16., 1.],
];

/// Output pixels per tile side (F(4x4, 3x3); F(5x5, 2x2) for a doubled input's phases), and
/// input pixels per tile side.
const M: usize = 4;
const M_DOUBLED: usize = 5;
const ALPHA: usize = 6;
/// F(6x6, 3x3)'s output and input pixels per tile side.
const M6: usize = 6;
const ALPHA6: usize = 8;

/// Input rows kept per thread: a tile row's six (eight) and room for the next one's new rows
/// without evicting the two (five) it shares with them.
const RING: usize = 10;

/// Phases of a doubled input: the 2x2 output pixels each input pixel stands for.
const PHASES: usize = 4;

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

/// The convolution: `input` (batch, in, h, w) NCHW, `filters` of F(4x4, 3x3), an optional
/// bias per output channel. Returns (batch, out, h, w).
pub fn conv3x3(input: &[f32], shape: Shape, u: &Filters, bias: Option<&[f32]>) -> Vec<f32> {
    let fused = Fused {
        bias,
        ..Fused::default()
    };
    conv3x3_fused(input, shape, u, fused)
}

/// [`conv3x3`] with the work of the ops around it ([`Fused`]); `shape` is the output's, and the
/// input's too unless it is `doubled`.
pub fn conv3x3_fused(input: &[f32], shape: Shape, u: &Filters, fused: Fused) -> Vec<f32> {
    run(input, shape, u, fused, Output::Fresh)
}

/// [`conv3x3_fused`] with the residual in `onto`, which the output is written over (each value
/// read just before its place is written): one full-size image fewer alive. `fused` has no
/// residual of its own.
pub fn conv3x3_onto(
    input: &[f32],
    shape: Shape,
    u: &Filters,
    fused: Fused,
    onto: Vec<f32>,
) -> Vec<f32> {
    run(input, shape, u, fused, Output::over(onto, shape, fused))
}

/// [`conv3x3_fused`] from `weight` (out, in, 3, 3) itself, written over `onto` where given
/// ([`conv3x3_onto`]): its U made a few output channels at a time as it runs where the
/// image is small ([`by_chunks_pay`]), else whole first ([`Filters::for_shape`]).
pub fn conv3x3_weight(
    input: &[f32],
    shape: Shape,
    weight: &[f32],
    fused: Fused,
    onto: Option<Vec<f32>>,
) -> Vec<f32> {
    let output = match onto {
        Some(onto) => Output::over(onto, shape, fused),
        None => Output::Fresh,
    };
    if !by_chunks_pay(shape, fused.doubled) {
        let u = Filters::for_shape(weight, shape, fused.doubled);
        return run(input, shape, &u, fused, output);
    }
    let weights = Weights::Raw(weight);
    let products = Products::Tiles;
    run_tiles::<M, 1, 1, { LANES * M }, ALPHA>(input, shape, weights, products, fused, output)
}

/// Whether `shape`'s convolution runs faster with U made a few output channels at a time
/// ([`Weights::Raw`]) than made whole first, or by one im2col GEMM: on the UNet's 16x16 and
/// 24x24 levels, where an image has too few tiles for its channels for U (four times the
/// weight, 236 MB for 1280 channels) to be worth writing to memory and reading back, and
/// enough (16) for Winograd's four times fewer products to beat the GEMM. On the CPUs it was
/// measured on: those whose widest vectors are AVX2's (the register tiles' own,
/// [`Products::Tiles`]). Where AVX-512 doubles the GEMM's width (a Zen 5 EPYC) the AVX2 tiles
/// won only the 1280-channel 16x16 case and lost the 2560-channel one by a third, each chunk
/// reading all of V (5.9 MB) again: off there.
pub fn by_chunks_pay(shape: Shape, doubled: bool) -> bool {
    let tiles = shape.tiles();
    (MIN_TILES_BY_CHUNKS..=shape.out_channels / 32).contains(&tiles)
        && Products::Tiles.runs()
        && !super::math::has_avx512()
        && Filters::tiling_for(shape, doubled) == Tiling::F4
}

/// The fewest tiles an image is convolved by chunks of U for: below, one im2col GEMM wins.
const MIN_TILES_BY_CHUNKS: usize = 16;

/// Where a convolution's U comes from.
#[derive(Clone, Copy)]
enum Weights<'a> {
    /// Made beforehand for every output channel: [`Filters::u`].
    Made(&'a [f32]),
    /// The weight itself, (out, in, 3, 3), for F(4x4, 3x3): each block makes U for
    /// [`CHUNK`] of its output channels at a time, just before their products, and the
    /// blocks split the output channels between them (each takes the whole image).
    Raw(&'a [f32]),
}

/// Output channels whose U a block makes at a time from [`Weights::Raw`]: whole register
/// tiles ([`products::TILE_OUT`]), few enough that U (36 x in values each) stays near the
/// products: 6, 12 and 24 ran alike (within the machine's drift) on the UNet's 16x16
/// convolutions on a Zen 3 EPYC, 48 slower.
const CHUNK: usize = 12;

/// Where the output goes.
enum Output {
    /// A buffer of its own, never zeroed: every value is written once by the output
    /// transform, where a zeroing pass beforehand took a sixteenth of an SDXL VAE decode
    /// (up to 1 GiB written, read back and written again per convolution).
    Fresh,
    /// Over the residual it holds.
    OverResidual(Vec<f32>),
}

impl Output {
    /// Over the residual in `onto`, which then replaces `fused`'s own.
    fn over(onto: Vec<f32>, shape: Shape, fused: Fused) -> Self {
        assert!(
            fused.residual.is_none(),
            "the residual is the one in `onto`"
        );
        let expected = shape.batch * shape.out_channels * shape.plane();
        assert_eq!(onto.len(), expected, "the residual's size");
        Self::OverResidual(onto)
    }
}

fn run(input: &[f32], shape: Shape, filters: &Filters, fused: Fused, output: Output) -> Vec<f32> {
    let (u, products) = (Weights::Made(&filters.u), filters.products);
    match filters.tiling {
        Tiling::F4 => {
            run_tiles::<M, 1, 1, { LANES * M }, ALPHA>(input, shape, u, products, fused, output)
        }
        Tiling::F6 => {
            const OUT: usize = LANES * M6;
            run_tiles::<M6, 1, 1, OUT, ALPHA6>(input, shape, u, products, fused, output)
        }
        Tiling::Phases => {
            assert!(fused.doubled, "filters by phases are for a doubled input");
            const OUT: usize = LANES * M_DOUBLED * 2;
            run_tiles::<M_DOUBLED, 2, PHASES, OUT, ALPHA>(input, shape, u, products, fused, output)
        }
    }
}

/// The convolution with tiles of `TM` x `TM` outputs on an input `S` times smaller than the
/// output along each side, from input tiles `A` wide: F(4x4, 3x3) and F(6x6, 3x3) with `S =
/// 1`, F(5x5, 2x2) per phase with `S = 2`. `PH` is `S * S` (the phases) and `OUT` the `LANES *
/// TM * S` output pixels of a row of eight tiles, given apart because stable Rust sizes no
/// array by an expression of const generics.
fn run_tiles<const TM: usize, const S: usize, const PH: usize, const OUT: usize, const A: usize>(
    input: &[f32],
    shape: Shape,
    weights: Weights,
    products: Products,
    fused: Fused,
    output: Output,
) -> Vec<f32> {
    const {
        assert!(
            PH == S * S && OUT == LANES * TM * S && A == TM + 3 - S,
            "PH, OUT and A follow from TM and S"
        )
    };
    let Shape {
        batch,
        in_channels,
        out_channels,
        height,
        width,
    } = shape;
    let input_plane = fused.input_plane(shape);
    assert_eq!(input.len(), batch * in_channels * input_plane);
    let phases = PH;
    let positions = A * A;
    let per_channel = match weights {
        Weights::Made(_) => phases * positions * in_channels,
        Weights::Raw(_) => {
            assert!(
                TM == M && S == 1,
                "U is made as it runs for F(4x4, 3x3) only"
            );
            9 * in_channels
        }
    };
    let (Weights::Made(w) | Weights::Raw(w)) = weights;
    assert_eq!(w.len(), out_channels * per_channel);
    fused.check(batch, in_channels, out_channels, height * width);
    let (grid_h, grid_w) = (height / S, width / S);
    let tiles_w = grid_w.div_ceil(TM);
    let tiles_h = grid_h.div_ceil(TM);
    let threads = rayon::current_num_threads();
    // Whole rows of tiles per block, and a block count that is a multiple of the threads so
    // that none idles at the end (a 64x64 latent is only 4 blocks); where U is made as the
    // blocks run, each takes the whole image and a share of the output channels, a whole
    // number of register tiles ([`products::TILE_OUT`]), so that each channel's U is made
    // once.
    let (tile_rows_per_block, group_len) = match weights {
        Weights::Made(_) => {
            let blocks_wanted = (tiles_h * tiles_w)
                .div_ceil(TARGET_TILES_PER_BLOCK)
                .next_multiple_of(threads);
            (tiles_h.div_ceil(blocks_wanted).max(1), out_channels.max(1))
        }
        Weights::Raw(_) => {
            let share = out_channels.div_ceil(threads).max(1);
            (tiles_h.max(1), share.next_multiple_of(products::TILE_OUT))
        }
    };
    let groups = out_channels.div_ceil(group_len).max(1);
    let rows_per_block = tile_rows_per_block * TM * S;
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

    // Hand every block the rows it owns in each of its output channels: disjoint mutable
    // slices.
    let row_blocks = tiles_h.div_ceil(tile_rows_per_block).max(1);
    let blocks_per_image = groups * row_blocks;
    let mut blocks: Vec<Block> = (0..batch * blocks_per_image)
        .map(|i| {
            let (group, row_block) = (i % blocks_per_image / row_blocks, i % row_blocks);
            let first = group * group_len;
            Block {
                image: i / blocks_per_image,
                first_tile_row: row_block * tile_rows_per_block,
                channels: first..(first + group_len).min(out_channels),
                out_rows: Vec::with_capacity(group_len),
                residual_rows: Vec::new(),
                over_residual,
            }
        })
        .collect();
    // Block `b` of output channel `index` (of all images'), its rows `rows_per_block` a block.
    let block_of = |index: usize, b: usize| {
        let (image, k) = (index / out_channels, index % out_channels);
        image * blocks_per_image + k / group_len * row_blocks + b
    };
    for (index, channel) in values.chunks_mut(plane).enumerate() {
        for (b, rows) in channel.chunks_mut(rows_per_block * width).enumerate() {
            blocks[block_of(index, b)].out_rows.push(rows);
        }
    }
    if let Some(residual) = fused.residual {
        for (index, channel) in residual.chunks(plane).enumerate() {
            for (b, rows) in channel.chunks(rows_per_block * width).enumerate() {
                blocks[block_of(index, b)].residual_rows.push(rows);
            }
        }
    }

    let geometry = Geometry {
        shape,
        grid_h,
        grid_w,
        // F(4x4, 3x3) reads a doubled input's pixels twice each way.
        read_doubled: fused.doubled && S == 1,
        tiles_w,
        tiles_h,
        tile_rows_per_block,
        products,
    };
    let m_channels = match weights {
        Weights::Made(_) => out_channels,
        Weights::Raw(_) => CHUNK.min(out_channels),
    };
    blocks.into_par_iter().for_each_init(
        || Scratch::new::<TM, S, A>(&geometry, m_channels),
        |scratch, block| {
            geometry.run_block::<TM, S, PH, OUT, A>(input, weights, fused, block, scratch)
        },
    );
    // SAFETY: the blocks own every output row between them, and each wrote every value of
    // its rows (the output transform covers every pixel of every row it is handed).
    #[allow(unsafe_code)]
    unsafe {
        output.set_len(len)
    };
    output
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
    /// The output channels the block writes.
    channels: std::ops::Range<usize>,
    /// Per output channel of `channels`, this block's rows of the output plane, each value
    /// written once.
    out_rows: Vec<&'a mut [MaybeUninit<f32>]>,
    /// The same rows of the residual, when there is one apart from the output.
    residual_rows: Vec<&'a [f32]>,
    /// The output rows hold the residual (initialised), to be added before each value is
    /// written over.
    over_residual: bool,
}

struct Geometry {
    shape: Shape,
    /// The height and width of the grid the tiles cover: the output's, or half of them for
    /// the phases of a doubled input.
    grid_h: usize,
    grid_w: usize,
    /// The input rows have half the grid's width and each stands for two rows of it.
    read_doubled: bool,
    tiles_w: usize,
    tiles_h: usize,
    tile_rows_per_block: usize,
    products: Products,
}

/// Per-thread buffers, reused across blocks.
struct Scratch {
    /// Transformed input, per phase (in, positions, tiles) for the gemm crate, which reads
    /// position p's operand with a row stride, and one input channel's transform writes
    /// together; (positions, tiles / PANEL, in, PANEL) for the register tiles
    /// ([`Products`]).
    v: Vec<f32>,
    /// GEMM results, (out, phase, positions, tiles): what one output channel's transform reads is
    /// together (laid out by position it was scattered over megabytes, its loads missing the
    /// cache). For the output channels of one product call.
    m: Vec<f32>,
    /// U of the output channels of one product call where it is made as the block runs
    /// ([`Weights::Raw`]).
    u: Vec<f32>,
    /// Input rows as the tiles read them, a zero column each side, room for whole lanes:
    /// (RING, padded), grid row `y` in slot `y mod RING`.
    padded: Vec<f32>,
    /// The grid row each slot of `padded` holds (`None`: none yet in this channel). A tile
    /// row's six rows share two with the next tile row's (five with the other row phase's),
    /// which stay and are not made again: each input row normalized once, where it was made
    /// 1.5 times (2.4 times for the phases).
    padded_rows: [Option<isize>; RING],
    /// The rows after the vertical input transform: (alpha, padded).
    vertical: Vec<f32>,
    /// One input row normalized, before it is read doubled.
    normalized: Vec<f32>,
}

impl Scratch {
    /// For [`Geometry`]'s blocks, their products computed for `m_channels` output channels
    /// at a time.
    fn new<const TM: usize, const S: usize, const A: usize>(
        g: &Geometry,
        m_channels: usize,
    ) -> Self {
        let tiles = g.columns(g.tile_rows_per_block);
        let phases = S * S;
        let positions = A * A;
        // Tile t reads columns TM t .. TM t + A - 1 (one further for the second phase);
        // lanes round the tile count up to a multiple of 8, and a span is read whole.
        let row_len = g.tiles_w.next_multiple_of(LANES) * TM + SPAN_MAX;
        let row_len = row_len.next_multiple_of(LANES);
        Self {
            v: vec![0f32; phases * positions * g.shape.in_channels * tiles],
            m: vec![0f32; phases * positions * m_channels * tiles],
            u: Vec::new(),
            padded: vec![0f32; RING * row_len],
            padded_rows: [None; RING],
            vertical: vec![0f32; A * row_len],
            normalized: vec![0f32; g.grid_w],
        }
    }
}

impl Geometry {
    /// Columns of V and M for `tile_rows` rows of tiles.
    fn columns(&self, tile_rows: usize) -> usize {
        self.products.columns(tile_rows * self.tiles_w)
    }

    /// One block, its transforms built for AVX2 where the CPU has it: at the baseline (SSE2)
    /// they took over a quarter of a 128-channel convolution's time. AVX-512 CPUs run the AVX2
    /// copy too: the transforms work on eight lanes, and a copy built with AVX-512 enabled ran
    /// 3-10 % slower than the baseline one on a Zen 4 EPYC. That copy keeps its lanes in AVX2
    /// registers ([`vector::Avx2`]), the other in arrays: the same operations in the same
    /// order (no fused multiply-adds), so the same bits.
    fn run_block<
        const TM: usize,
        const S: usize,
        const PH: usize,
        const OUT: usize,
        const A: usize,
    >(
        &self,
        input: &[f32],
        weights: Weights,
        fused: Fused,
        block: Block,
        s: &mut Scratch,
    ) {
        #[cfg(target_arch = "x86_64")]
        {
            #[cfg(test)]
            let portable = tests::PORTABLE_ONLY.load(std::sync::atomic::Ordering::Relaxed);
            #[cfg(not(test))]
            let portable = false;
            if super::math::has_avx2_fma() && !portable {
                // SAFETY: the CPU has the features the copy is built for.
                #[allow(unsafe_code)]
                return unsafe {
                    self.run_block_avx2::<TM, S, PH, OUT, A>(input, weights, fused, block, s)
                };
            }
        }
        self.run_block_with::<TM, S, PH, OUT, A, Lanes>(input, weights, fused, block, s)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn run_block_avx2<
        const TM: usize,
        const S: usize,
        const PH: usize,
        const OUT: usize,
        const A: usize,
    >(
        &self,
        input: &[f32],
        weights: Weights,
        fused: Fused,
        b: Block,
        s: &mut Scratch,
    ) {
        self.run_block_with::<TM, S, PH, OUT, A, vector::Avx2>(input, weights, fused, b, s)
    }

    #[inline(always)]
    fn run_block_with<
        const TM: usize,
        const S: usize,
        const PH: usize,
        const OUT: usize,
        const A: usize,
        V: Vector,
    >(
        &self,
        input: &[f32],
        weights: Weights,
        fused: Fused,
        mut block: Block,
        s: &mut Scratch,
    ) {
        let tile_rows = self
            .tile_rows_per_block
            .min(self.tiles_h - block.first_tile_row);
        let tiles = self.columns(tile_rows);
        let (cin, cout, phases) = (self.shape.in_channels, self.shape.out_channels, PH);
        let positions = A * A;
        let image_len = input.len() / self.shape.batch;
        let image = &input[block.image * image_len..][..image_len];
        let norm = fused.input_norm.map(|n| &n[block.image * cin..][..cin]);
        self.transform_input::<TM, S, A, V>(image, norm, block.first_tile_row, tile_rows, s);
        let channels = block.channels.clone();
        let (chunk, per_channel) = match weights {
            Weights::Made(_) => (channels.len().max(1), phases * positions * cin),
            Weights::Raw(_) => (CHUNK, 9 * cin),
        };
        for first in channels.clone().step_by(chunk) {
            let last = (first + chunk).min(channels.end);
            let count = last - first;
            let u = match weights {
                Weights::Made(u) => &u[first * per_channel..last * per_channel],
                Weights::Raw(weight) => {
                    let weight = &weight[first * per_channel..last * per_channel];
                    filters::transform_run(weight, cin, &mut s.u);
                    &s.u[..]
                }
            };
            let operands = products::Operands {
                u,
                v: &s.v,
                in_channels: cin,
                out_channels: count,
                phases,
                positions,
                columns: tiles,
            };
            self.products.multiply(operands, &mut s.m);
            let m = &s.m[..phases * positions * count * tiles];
            for k in first..last {
                let (j, local) = (k - first, k - channels.start);
                let added = Added {
                    bias: fused.bias.map_or(0.0, |b| b[k]),
                    image_bias: fused.image_bias.map(|b| b[block.image * cout + k]),
                    residual: block.residual_rows.get(local).copied(),
                    over_residual: block.over_residual,
                };
                // The next channel's products, asked into the cache a share per tile row:
                // what this one reads comes from 36 (64) rows per phase at once, more streams
                // than the hardware's prefetcher follows, and waited on memory for a fifth of
                // the transforms' time (two fifths with the phases).
                let channel_len = phases * positions * tiles;
                let next = match j + 1 < count {
                    true => &m[(j + 1) * channel_len..][..channel_len],
                    false => &[],
                };
                let share = next.len().div_ceil(tile_rows);
                let rows = &mut *block.out_rows[local];
                for r in 0..tile_rows {
                    let ahead = next
                        .get(r * share..)
                        .map_or(&[][..], |n| &n[..share.min(n.len())]);
                    self.transform_output::<TM, S, PH, OUT, A, V>(
                        m, j, tiles, r, added, ahead, rows,
                    );
                }
            }
        }
    }

    /// Row `y` of the grid in `channel` (`c`) as the convolution reads it (normalized where
    /// there is a norm, each pixel twice where the input is read doubled), into `padded` (a
    /// row of the grid); `normalized` has room for an input row.
    #[inline(always)]
    fn fill_row(
        &self,
        channel: &[f32],
        c: usize,
        y: usize,
        norm: Option<&[(f32, f32)]>,
        normalized: &mut [f32],
        padded: &mut [f32],
    ) {
        let row = self.source_row(channel, y);
        let source_w = row.len();
        match (norm, self.read_doubled) {
            (Some(norm), false) => {
                let (scale, shift) = norm[c];
                super::norm::silu_affine(row, padded, scale, shift);
            }
            (None, false) => padded.copy_from_slice(row),
            (norm, true) => {
                let mut row = row;
                if let Some(norm) = norm {
                    let (scale, shift) = norm[c];
                    let normalized = &mut normalized[..source_w];
                    super::norm::silu_affine(row, normalized, scale, shift);
                    row = normalized;
                }
                for (pair, &value) in padded.chunks_exact_mut(2).zip(row) {
                    pair.fill(value);
                }
            }
        }
    }

    /// The input row of `channel` that grid row `y` reads.
    #[inline(always)]
    fn source_row<'a>(&self, channel: &'a [f32], y: usize) -> &'a [f32] {
        let (source_w, source_y) = match self.read_doubled {
            true => (self.grid_w / 2, y / 2),
            false => (self.grid_w, y),
        };
        &channel[source_y * source_w..][..source_w]
    }

    /// Fill `s.v` (phase, in, 36, tiles) for `tile_rows` rows of tiles starting at `first`.
    /// Phase `(a, b)` of a doubled input reads the tiles one row down for `a = 1` and one
    /// column right for `b = 1` (the kernels of `filters::phase_kernels`).
    #[inline(always)]
    fn transform_input<const TM: usize, const S: usize, const A: usize, V: Vector>(
        &self,
        image: &[f32],
        norm: Option<&[(f32, f32)]>,
        first: usize,
        tile_rows: usize,
        s: &mut Scratch,
    ) {
        let (h, w) = (self.grid_h, self.grid_w);
        let tiles = self.columns(tile_rows);
        let cin = self.shape.in_channels;
        let (padded_len, vertical_len) = (s.padded.len() / RING, s.vertical.len() / A);
        let positions = A * A;
        // The columns the tiles' lanes read: tile t reads TM t + b .. TM t + b + A - 1.
        let columns = self.tiles_w.next_multiple_of(LANES) * TM + LANES;
        let channel_len = image.len() / cin;
        for c in 0..cin {
            let channel = &image[c * channel_len..][..channel_len];
            s.padded_rows = [None; RING];
            for r in 0..tile_rows {
                for row_phase in 0..S {
                    // The A input rows of this tile row (grid rows top - 1 .. top + A - 1),
                    // shifted right by one (the left pad), zero outside the image.
                    let top = (first + r) * TM + row_phase;
                    let mut slots = [0; A];
                    for (i, slot) in slots.iter_mut().enumerate() {
                        let y = (top + i) as isize - 1;
                        *slot = y.rem_euclid(RING as isize) as usize;
                        if s.padded_rows[*slot] == Some(y) {
                            continue;
                        }
                        s.padded_rows[*slot] = Some(y);
                        let padded = &mut s.padded[*slot * padded_len + 1..][..w];
                        match usize::try_from(y).ok().filter(|&y| y < h) {
                            Some(y) => {
                                // The same row of the next channel, asked into L2 for
                                // when this block's rows of it are made: each channel's
                                // rows are a short stream of their own, megabytes from
                                // the last, which the hardware's prefetcher joins late,
                                // and normalizing them waited on memory (7 % of the SDXL
                                // decode at 1024x1024 in `silu_affine`, 4.6 % since).
                                if c + 1 < cin {
                                    let next = &image[(c + 1) * channel_len..][..channel_len];
                                    prefetch(self.source_row(next, y));
                                }
                                let normalized = &mut s.normalized;
                                self.fill_row(channel, c, y, norm, normalized, padded)
                            }
                            None => padded.fill(0.0),
                        }
                    }
                    // vertical[a][x] = sum_i BT[a][i] padded[i][x], eight columns at a time.
                    for x in (0..columns).step_by(LANES) {
                        let mut rows = [V::splat(0.0); A];
                        for (row, &slot) in rows.iter_mut().zip(&slots) {
                            *row = V::load(&s.padded[slot * padded_len + x..]);
                        }
                        for (a, out) in input_1d::<A, V>(&rows).into_iter().enumerate() {
                            out.store(&mut s.vertical[a * vertical_len + x..]);
                        }
                    }
                    for column_phase in 0..S {
                        let phase = row_phase * S + column_phase;
                        let v = &mut s.v[phase * cin * positions * tiles..];
                        let vertical = &s.vertical;
                        self.transform_row::<TM, A, V>(vertical, v, c, tiles, r, column_phase);
                    }
                }
            }
        }
    }

    /// `v[a][b][c][t] = sum_j BT[b][j] vertical[a][TM t + j + offset]` for tile row `r`, eight
    /// tiles at a time.
    #[inline(always)]
    fn transform_row<const TM: usize, const A: usize, V: Vector>(
        &self,
        vertical: &[f32],
        v: &mut [f32],
        c: usize,
        tiles: usize,
        r: usize,
        offset: usize,
    ) {
        let tw = self.tiles_w;
        let (cin, first) = (self.shape.in_channels, r * tw);
        let vertical_len = vertical.len() / A;
        for a in 0..A {
            let row = &vertical[a * vertical_len..][..vertical_len];
            for t0 in (0..tw).step_by(LANES) {
                // Eight tiles' columns from one span of the row (the row has room past the
                // last tile), lane l of column j at l * TM + j.
                let columns = V::columns::<TM, A>(&row[t0 * TM + offset..]);
                let count = LANES.min(tw - t0);
                for (b, out) in input_1d::<A, V>(&columns).into_iter().enumerate() {
                    let (position, t) = (a * A + b, first + t0);
                    let at = self.products.v_index(c, position, t, tiles, cin, A * A);
                    // The tiles from t on that sit next to it in V: the rest of its panel.
                    let adjacent = self.products.adjacent(t, tiles);
                    if count == LANES && adjacent >= LANES {
                        out.store(&mut v[at..]);
                        continue;
                    }
                    // A row of tiles ends mid-group, or the group spans two panels.
                    let (lanes, here) = (out.lanes(), count.min(adjacent));
                    v[at..][..here].copy_from_slice(&lanes[..here]);
                    if here < count {
                        let at = self
                            .products
                            .v_index(c, position, t + here, tiles, cin, A * A);
                        v[at..][..count - here].copy_from_slice(&lanes[here..count]);
                    }
                }
            }
        }
    }

    /// Write output channel `k`, tile row `r` of this block: Y = A^T m A (+ bias), every
    /// phase's tile interleaved into its pixels where the input is doubled. `ahead` is asked
    /// into the cache on the way.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn transform_output<
        const TM: usize,
        const S: usize,
        const PH: usize,
        const OUT: usize,
        const A: usize,
        V: Vector,
    >(
        &self,
        m: &[f32],
        k: usize,
        tiles: usize,
        r: usize,
        added: Added,
        ahead: &[f32],
        rows: &mut [MaybeUninit<f32>],
    ) {
        let (tw, w, phases, positions) = (self.tiles_w, self.shape.width, PH, A * A);
        let row_count = rows.len() / w;
        let ahead_share = ahead.len().div_ceil(tw.div_ceil(LANES));
        for t0 in (0..tw).step_by(LANES) {
            if let Some(ahead) = ahead.get(t0 / LANES * ahead_share..) {
                prefetch(&ahead[..ahead_share.min(ahead.len())]);
            }
            let count = LANES.min(tw - t0);
            // y[phase][j][i]: output row TM r + i at x = TM t + j of the phase. Plain loops
            // throughout: closures here (`std::array::from_fn`) stayed calls of their own,
            // built without this copy's vector features, their arrays copied out by
            // `memmove`.
            let mut y = [[[V::splat(0.0); TM]; TM]; PH];
            for (phase, y) in y.iter_mut().enumerate() {
                // horizontal[a][j] = sum_b AT[j][b] m[a][b]
                let mut horizontal = [[V::splat(0.0); TM]; A];
                for (a, h) in horizontal.iter_mut().enumerate() {
                    let mut products = [V::splat(0.0); A];
                    for (b, product) in products.iter_mut().enumerate() {
                        let p = a * A + b;
                        let at = ((k * phases + phase) * positions + p) * tiles + r * tw + t0;
                        let src = &m[at..];
                        *product = match count {
                            LANES => V::load(src),
                            _ => {
                                let mut lanes = [0f32; LANES];
                                lanes[..count].copy_from_slice(&src[..count]);
                                V::load(&lanes)
                            }
                        };
                    }
                    *h = output_1d::<TM, A, V>(&products);
                }
                // y[j][i] = sum_a AT[i][a] horizontal[a][j]
                for (j, y) in y.iter_mut().enumerate() {
                    let mut column = [V::splat(0.0); A];
                    for (a, value) in column.iter_mut().enumerate() {
                        *value = horizontal[a][j];
                    }
                    *y = output_1d::<TM, A, V>(&column);
                }
            }
            // The eight tiles cover TM * S * 8 adjacent pixels of each row, the last ones cut
            // at the image's edge; pixel S x + b of output row S i + a is phase (a, b)'s x, i.
            let x0 = t0 * TM * S;
            let valid = (count * TM * S).min(w - x0);
            for i in 0..TM {
                for a in 0..S {
                    let row_index = (r * TM + i) * S + a;
                    if row_index >= row_count {
                        break;
                    }
                    let at = row_index * w + x0;
                    let mut row = [V::splat(0.0); ROW_LANES_MAX];
                    let row = &mut row[..OUT / LANES];
                    match (TM, S) {
                        (4, 1) => {
                            let mut columns = [V::splat(0.0); 4];
                            for (j, column) in columns.iter_mut().enumerate() {
                                *column = y[0][j][i];
                            }
                            row.copy_from_slice(&V::row4(&columns));
                        }
                        (5, 2) | (6, 1) => {
                            // Value q = S j + b of a tile is phase (a, b)'s column j.
                            let mut columns = [V::splat(0.0); 10];
                            for (q, column) in columns[..TM * S].iter_mut().enumerate() {
                                *column = y[a * S + q % S][q / S][i];
                            }
                            // Rows of whole lanes get their biases (and F(6x6, 3x3)'s their
                            // residual, gathered as the input's columns are) in the tiles'
                            // lanes and are stored straight into place: loading them back
                            // whole from the narrower stores stalled on store-forwarding, a
                            // fifth of the phases' output transform.
                            let residual_fits =
                                S == 1 && at + vector::row_len::<TM>() <= rows.len();
                            if valid == OUT && (!added.has_residual() || residual_fits) {
                                for column in &mut columns[..TM * S] {
                                    *column = added.biased(*column);
                                }
                                if let Some(residual) = added.residual_columns::<TM, V>(rows, at) {
                                    for (column, residual) in columns.iter_mut().zip(residual) {
                                        *column = column.add(residual);
                                    }
                                }
                                let out = &mut rows[at..][..OUT];
                                match S {
                                    1 => V::row6(columns[..6].try_into().unwrap(), out),
                                    _ => V::row10(&columns, out),
                                }
                                continue;
                            }
                            let mut values = [MaybeUninit::new(0f32); 80];
                            match S {
                                1 => V::row6(columns[..6].try_into().unwrap(), &mut values),
                                _ => V::row10(&columns, &mut values),
                            }
                            // SAFETY: every value was initialised, to zero if not written.
                            #[allow(unsafe_code)]
                            let values = unsafe { super::buffers::assume_init(&values) };
                            for (lanes, values) in row.iter_mut().zip(values.chunks(LANES)) {
                                *lanes = V::load(values);
                            }
                        }
                        _ => {
                            unreachable!("tiles are F(4x4, 3x3)'s, F(6x6, 3x3)'s or F(5x5, 2x2)'s")
                        }
                    }
                    match valid == OUT {
                        true => added.write(row, &mut rows[at..][..OUT], at),
                        false => {
                            let mut values = [0f32; OUT];
                            for (lanes, values) in row.iter().zip(values.chunks_mut(LANES)) {
                                values.copy_from_slice(&lanes.lanes());
                            }
                            added.write_each(&values[..valid], &mut rows[at..][..valid], at);
                        }
                    }
                }
            }
        }
    }
}

impl Added<'_> {
    fn has_residual(&self) -> bool {
        self.residual.is_some() || self.over_residual
    }

    /// The residual of eight tiles `TM` wide starting at `at` in the rows, as the tiles'
    /// lanes ([`Vector::columns`]); the rows hold [`vector::row_len`] values from `at`.
    #[inline(always)]
    fn residual_columns<const TM: usize, V: Vector>(
        &self,
        rows: &[MaybeUninit<f32>],
        at: usize,
    ) -> Option<[V; TM]> {
        match (self.residual, self.over_residual) {
            (Some(residual), _) => Some(V::columns::<TM, TM>(&residual[at..])),
            (None, true) => {
                let span = &rows[at..][..vector::row_len::<TM>()];
                // SAFETY: over the residual the rows are initialised (`Block`), and the
                // values are read before they are written over.
                #[allow(unsafe_code)]
                let span = unsafe { super::buffers::assume_init(span) };
                Some(V::columns::<TM, TM>(span))
            }
            (None, false) => None,
        }
    }

    /// `value + bias (+ image bias)`, in that order as the separate ops add them.
    #[inline(always)]
    fn biased<V: Vector>(&self, value: V) -> V {
        let sum = value.add(V::splat(self.bias));
        match self.image_bias {
            Some(image_bias) => sum.add(V::splat(image_bias)),
            None => sum,
        }
    }

    /// `out = value + bias (+ image bias) (+ residual)`, in that order as the separate ops
    /// add them, eight values at a time; `at` is where `out` starts in the rows.
    #[inline(always)]
    fn write<V: Vector>(&self, values: &[V], out: &mut [MaybeUninit<f32>], at: usize) {
        for (x, &value) in values.iter().enumerate() {
            let mut sum = self.biased(value);
            let out = &mut out[x * LANES..][..LANES];
            match (self.residual, self.over_residual) {
                (Some(residual), _) => sum = sum.add(V::load(&residual[at + x * LANES..])),
                (None, true) => {
                    // SAFETY: over the residual the rows are initialised (`Block`), and
                    // they are read before they are written over.
                    #[allow(unsafe_code)]
                    let residual = unsafe { super::buffers::assume_init(out) };
                    sum = sum.add(V::load(residual));
                }
                (None, false) => {}
            }
            sum.store_uninit(out);
        }
    }

    /// As [`Added::write`], one value at a time (a row's values past its last whole lanes).
    #[inline(always)]
    fn write_each(&self, values: &[f32], out: &mut [MaybeUninit<f32>], at: usize) {
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

/// Input values the eight tiles of one lane group read along a row, at most (F(6x6, 3x3)'s
/// tiles are the widest).
const SPAN_MAX: usize = vector::row_len::<M6>();

/// Lanes of the longest row of eight tiles: F(5x5, 2x2)'s, 80 pixels.
const ROW_LANES_MAX: usize = M_DOUBLED * 2;

/// `values` asked into the L2 cache, a line at a time: a hint that reads nothing.
#[inline(always)]
fn prefetch(values: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in values.chunks(16) {
        use std::arch::x86_64::{_MM_HINT_T1, _mm_prefetch};
        // SAFETY: a prefetch never faults, and the address is in the slice.
        #[allow(unsafe_code)]
        unsafe {
            _mm_prefetch::<_MM_HINT_T1>(line.as_ptr().cast())
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = values;
}

/// `B^T d` along one side of eight input tiles `A` wide: 6 (F(4x4, 3x3) and the phases' F(5x5,
/// 2x2)) or 8 (F(6x6, 3x3)).
#[inline(always)]
fn input_1d<const A: usize, V: Vector>(d: &[V; A]) -> [V; A] {
    let mut out = [d[0]; A];
    match A {
        ALPHA => out.copy_from_slice(&input_1d_6(d[..ALPHA].try_into().unwrap())),
        ALPHA6 => out.copy_from_slice(&input_1d_8(d[..ALPHA6].try_into().unwrap())),
        _ => unreachable!("tiles are 6 or 8 wide"),
    }
    out
}

/// `A^T m` along one side of eight tiles of products `A` wide, `TM` outputs: see
/// [`input_1d`].
#[inline(always)]
fn output_1d<const TM: usize, const A: usize, V: Vector>(m: &[V; A]) -> [V; TM] {
    let mut out = [m[0]; TM];
    match A {
        ALPHA => out.copy_from_slice(&output_1d_6::<TM, V>(m[..ALPHA].try_into().unwrap())),
        ALPHA6 => out.copy_from_slice(&output_1d_8(m[..ALPHA6].try_into().unwrap())),
        _ => unreachable!("tiles are 6 or 8 wide"),
    }
    out
}

/// `B^T d` along one side of eight 6x6 input tiles, factored into shared terms: a dozen
/// adds where the matrix has 22 non-zeros, every index constant so the tiles stay in
/// registers (a loop over the matrix's rows kept its sums in memory).
#[inline(always)]
fn input_1d_6<V: Vector>(d: &[V; ALPHA]) -> [V; ALPHA] {
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

/// `A^T m` along one side of eight tiles of products, factored as [`input_1d_6`]: F(4x4, 3x3)'s
/// four rows for `TM = 4`, F(5x5, 2x2)'s five for `TM = 5` (the same points, so the same
/// terms, the point at infinity's product added to the last row).
#[inline(always)]
fn output_1d_6<const TM: usize, V: Vector>(m: &[V; ALPHA]) -> [V; TM] {
    let (sum12, difference12) = plus_minus(m[1], m[2]);
    let (sum34, difference34) = plus_minus(m[3], m[4]);
    let rows = [
        add(add(m[0], sum12), sum34),
        add(difference12, scaled(2.0, difference34)),
        add(sum12, scaled(4.0, sum34)),
        add(difference12, scaled(8.0, difference34)),
        add(sum12, scaled(16.0, sum34)),
    ];
    let mut out = [m[0]; TM];
    out.copy_from_slice(&rows[..TM]);
    out[TM - 1] = add(out[TM - 1], m[5]);
    out
}

/// F(6x6, 3x3)'s `B^T d` (points 0, +-1, +-2, +-1/2, infinity), factored as
/// [`input_1d_6`]: rows 1 to 6 come in pairs `even +- odd` of shared halves.
#[inline(always)]
fn input_1d_8<V: Vector>(d: &[V; ALPHA6]) -> [V; ALPHA6] {
    let (r1, r2) = plus_minus(
        sub(add(d[2], d[6]), scaled(4.25, d[4])),
        sub(add(d[1], d[5]), scaled(4.25, d[3])),
    );
    let (r3, r4) = plus_minus(
        sub(add(scaled(0.25, d[2]), d[6]), scaled(1.25, d[4])),
        add(sub(scaled(0.5, d[1]), scaled(2.5, d[3])), scaled(2.0, d[5])),
    );
    let (r5, r6) = plus_minus(
        add(sub(scaled(4.0, d[2]), scaled(5.0, d[4])), d[6]),
        add(sub(scaled(2.0, d[1]), scaled(2.5, d[3])), scaled(0.5, d[5])),
    );
    [
        add(sub(d[0], d[6]), scaled(5.25, sub(d[4], d[2]))),
        r1,
        r2,
        r3,
        r4,
        r5,
        r6,
        add(sub(d[7], d[1]), scaled(5.25, sub(d[3], d[5]))),
    ]
}

/// F(6x6, 3x3)'s `A^T m`, factored as [`output_1d_6`].
#[inline(always)]
fn output_1d_8<V: Vector>(m: &[V; ALPHA6]) -> [V; M6] {
    let (sum12, difference12) = plus_minus(m[1], m[2]);
    let (sum34, difference34) = plus_minus(m[3], m[4]);
    let (sum56, difference56) = plus_minus(m[5], m[6]);
    [
        add(add(add(m[0], sum12), sum34), sum56),
        add(
            add(difference12, scaled(2.0, difference34)),
            scaled(0.5, difference56),
        ),
        add(add(sum12, scaled(4.0, sum34)), scaled(0.25, sum56)),
        add(
            add(difference12, scaled(8.0, difference34)),
            scaled(0.125, difference56),
        ),
        add(add(sum12, scaled(16.0, sum34)), scaled(0.0625, sum56)),
        add(
            add(
                add(difference12, scaled(32.0, difference34)),
                scaled(0.03125, difference56),
            ),
            m[7],
        ),
    ]
}

/// `(a + b, a - b)`.
#[inline(always)]
fn plus_minus<V: Vector>(a: V, b: V) -> (V, V) {
    (add(a, b), sub(a, b))
}

#[inline(always)]
fn add<V: Vector>(a: V, b: V) -> V {
    a.add(b)
}

#[inline(always)]
fn sub<V: Vector>(a: V, b: V) -> V {
    a.sub(b)
}

#[inline(always)]
fn scaled<V: Vector>(k: f32, a: V) -> V {
    a.scaled(k)
}

#[cfg(test)]
pub(crate) mod tests {
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
}
