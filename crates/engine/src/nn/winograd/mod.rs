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
mod transforms;
mod vector;

use filters::Tiling;
pub use filters::{Filters, Source};
pub use products::Products;
use transforms::{input_1d, output_1d};
use vector::Vector;

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
    conv3x3_from(input, shape, Source::Values(weight), fused, onto)
}

/// [`conv3x3_weight`] from a weight in any [`Source`]; one given by output channel has its U
/// made whole first.
pub fn conv3x3_from(
    input: &[f32],
    shape: Shape,
    weight: Source,
    fused: Fused,
    onto: Option<Vec<f32>>,
) -> Vec<f32> {
    let output = match onto {
        Some(onto) => Output::over(onto, shape, fused),
        None => Output::Fresh,
    };
    match weight {
        Source::Values(weight) if by_chunks_pay(shape, fused.doubled) => {
            let weights = Weights::Raw(weight);
            let products = Products::Tiles;
            run_tiles::<M, 1, 1, { LANES * M }, ALPHA>(
                input, shape, weights, products, fused, output,
            )
        }
        _ => {
            let u = Filters::for_shape_from(weight, shape, fused.doubled);
            run(input, shape, &u, fused, output)
        }
    }
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

#[cfg(test)]
pub(crate) mod tests;
