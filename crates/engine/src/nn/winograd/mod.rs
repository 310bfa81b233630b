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

mod blocks;
mod filters;
mod products;
mod transforms;
mod vector;

use blocks::{Block, Geometry, Scratch};
use filters::Tiling;
pub use filters::{Filters, Source};
pub use products::Products;

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
