//! 3x3 and 1x1 "same" convolutions with bf16 weights in bf16 blocks of sums ([`super::tiles`]:
//! AMX tiles, or AVX-512 registers), where `--dtype bf16` runs on a CPU with AVX512-BF16:
//! what oneDNN gives PyTorch's bf16 convolutions.
//!
//! No im2col: the image is rounded to bf16 into channels-last rows with a zero border
//! (`width + 2` pixels a row, channels padded to a whole tile step), a band of rows at a time
//! (with the rows above and below it) so that the rounded copy stays small beside the f32
//! images; a GroupNorm with SiLU and a nearest 2x upsampling are applied on the way in
//! ([`Fused`]), and the output may be written over the residual it adds. Output pixel
//! `(y, x)` is then position `q = y (width + 2) + x` of that padded grid, and its 3x3
//! neighbourhood's tap `(ky, kx)` is the padded pixel `q + ky (width + 2) + kx`: for each tap,
//! 32 consecutive outputs read 32 consecutive padded pixels, one tile of rows in place. The
//! two padding columns of each grid row compute values nobody reads (3% of the work at width
//! 64). The weight is packed once per layer into the word-pair panels the tiles read
//! ([`PackedConv`]); a task takes one panel and four blocks of positions, which take turns on
//! a few steps of a tap's channels at a time (that part of the panel stays in L1), their sums
//! kept between turns; each block's are then written back channels-first with the bias. The
//! operands the tiles read start on cache lines ([`super::buffers::Lines`]).

use half::bf16;
use rayon::prelude::*;

use super::bf16::SharedOut;
use super::buffers::{Block, Lines};
use super::tiles::{BLOCK, STEP, Tiles, Unit};
use super::winograd::{Fused, Shape};

/// Blocks of [`BLOCK`] output positions a task computes for its panel of output channels.
const BLOCKS_PER_TASK: usize = 4;
/// Steps of input channels (the taps' one after another) each of a task's blocks takes in
/// turn before the next steps, on AMX: 12 KiB of the panel, read from L1 by the blocks after
/// the first, where a block taking all of a tap at once read it from L2 (3% faster at 960 and
/// 1920 channels). 3, 6 or 18 made no difference at 128-512 channels. In registers a block
/// takes every step at once: there the sums' copies between turns cost more than L2 reads
/// (an SD-Turbo-shaped bf16 UNet call on a Zen 4 EPYC, 2 threads: 2.51 -> 2.41 s).
const CHUNK_STEPS: usize = 6;

/// A convolution's bf16 weight laid out for the tiles: per panel of 32 output channels, per
/// tap, per pair of input channels, 32 words (one per output channel) each holding the pair.
pub struct PackedConv {
    words: Lines<u32>,
    kernel: usize,
    in_channels: usize,
    out_channels: usize,
    /// Input channels rounded up to a whole tile step.
    depth: usize,
}

impl PackedConv {
    /// Packs `weight` (`out, in, kernel, kernel`), each panel in parallel.
    pub fn new(weight: &[bf16], out_channels: usize, in_channels: usize, kernel: usize) -> Self {
        let taps = kernel * kernel;
        assert_eq!(
            weight.len(),
            out_channels * in_channels * taps,
            "weight size"
        );
        let depth = in_channels.div_ceil(STEP) * STEP;
        let panel_words = taps * depth / 2 * BLOCK;
        let mut words = Lines::zeroed(out_channels.div_ceil(BLOCK) * panel_words);
        words
            .par_chunks_mut(panel_words)
            .enumerate()
            .for_each(|(panel, dst)| {
                let first = panel * BLOCK;
                for col in 0..BLOCK.min(out_channels - first) {
                    let filter =
                        &weight[(first + col) * in_channels * taps..][..in_channels * taps];
                    for (channel, taps_of) in filter.chunks_exact(taps).enumerate() {
                        let shift = 16 * (channel % 2);
                        for (tap, value) in taps_of.iter().enumerate() {
                            let at = (tap * depth / 2 + channel / 2) * BLOCK + col;
                            dst[at] |= (value.to_bits() as u32) << shift;
                        }
                    }
                }
            });
        Self {
            words,
            kernel,
            in_channels,
            out_channels,
            depth,
        }
    }

    /// `(out, in, kernel, kernel)`.
    pub fn dims(&self) -> (usize, usize, usize, usize) {
        let (k, cin, cout) = (self.kernel, self.in_channels, self.out_channels);
        (cout, cin, k, k)
    }

    /// The weight it was packed from, `(out, in, kernel, kernel)` (for candle's convolution).
    pub fn stored(&self) -> Vec<bf16> {
        self.unpacked(bf16::from_bits)
    }

    /// [`Self::stored`] widened to f32.
    pub fn widened(&self) -> Vec<f32> {
        self.unpacked(|bits| f32::from_bits(u32::from(bits) << 16))
    }

    /// Output channel `o`'s filters `(in, kernel, kernel)` widened to f32 into `filter`: for
    /// the f32 Winograd path ([`super::conv`]), one channel just before its transform.
    pub fn widen_output(&self, o: usize, filter: &mut [f32]) {
        self.unpack_output(o, filter, |bits| f32::from_bits(u32::from(bits) << 16));
    }

    /// Each value of the weight as `(out, in, kernel, kernel)`, its bits through `value`, each
    /// output channel's filter in parallel.
    fn unpacked<T: Copy + Default + Send>(&self, value: impl Fn(u16) -> T + Sync) -> Vec<T> {
        let taps = self.kernel * self.kernel;
        let mut weight = vec![T::default(); self.out_channels * self.in_channels * taps];
        weight
            .par_chunks_mut(self.in_channels * taps)
            .enumerate()
            .for_each(|(o, filter)| self.unpack_output(o, filter, &value));
        weight
    }

    fn unpack_output<T>(&self, o: usize, filter: &mut [T], value: impl Fn(u16) -> T) {
        let taps = self.kernel * self.kernel;
        assert_eq!(
            filter.len(),
            self.in_channels * taps,
            "one output's filters"
        );
        let words = self.panel(o / BLOCK);
        for (channel, taps_of) in filter.chunks_exact_mut(taps).enumerate() {
            for (tap, slot) in taps_of.iter_mut().enumerate() {
                let word = words[(tap * self.depth / 2 + channel / 2) * BLOCK + o % BLOCK];
                *slot = value((word >> (16 * (channel % 2))) as u16);
            }
        }
    }

    fn panel(&self, panel: usize) -> &[u32] {
        let len = self.kernel * self.kernel * self.depth / 2 * BLOCK;
        &self.words[panel * len..][..len]
    }
}

/// `input` (`batch, in, height, width`, f32) convolved with `weight` ("same" padding), plus
/// `bias`: (`batch, out, height, width`) f32. `None` where this CPU has no AVX512-BF16.
pub fn conv(
    input: &[f32],
    shape: Shape,
    weight: &PackedConv,
    bias: Option<&[f32]>,
) -> Option<Vec<f32>> {
    let fused = Fused {
        bias,
        ..Fused::default()
    };
    conv_fused(input, shape, weight, fused)
}

/// [`conv`] with the work of the ops around it, as [`Fused`] describes.
pub fn conv_fused(
    input: &[f32],
    shape: Shape,
    weight: &PackedConv,
    fused: Fused,
) -> Option<Vec<f32>> {
    Tiles::configure()?;
    let len = shape.batch * shape.out_channels * shape.plane();
    // Every element is stored once: no zeros written first.
    let mut output = Vec::with_capacity(len);
    let out = SharedOut(output.spare_capacity_mut().as_mut_ptr().cast::<f32>());
    run(
        Input::Apart(input),
        shape,
        weight,
        fused,
        Dest::Fresh(out),
        BAND_BYTES,
    );
    // SAFETY: for each image the tasks covered every band of rows, every panel of channels
    // and every block of positions, whose runs cover every pixel: each element was stored.
    #[allow(unsafe_code)]
    unsafe {
        output.set_len(len)
    };
    Some(output)
}

/// [`conv_fused`] with the residual in `onto`, which the output is written over (each value
/// read just before the same task writes its place): one full-size image fewer alive.
/// `fused` has no residual of its own. `Err(onto)`, as it was, where this CPU has no AVX512-BF16.
pub fn conv_onto(
    input: &[f32],
    shape: Shape,
    weight: &PackedConv,
    fused: Fused,
    mut onto: Vec<f32>,
) -> Result<Vec<f32>, Vec<f32>> {
    assert!(
        fused.residual.is_none(),
        "the residual is the one in `onto`"
    );
    let len = shape.batch * shape.out_channels * shape.plane();
    assert_eq!(onto.len(), len, "the residual's size");
    if Tiles::configure().is_none() {
        return Err(onto);
    }
    let out = SharedOut(onto.as_mut_ptr());
    let input = Input::Apart(input);
    run(
        input,
        shape,
        weight,
        fused,
        Dest::OverResidual(out),
        BAND_BYTES,
    );
    Ok(onto)
}

/// A 1x1 convolution written over its input `data` (moved in), for no more output channels
/// than input ones (a VAE ResNet block's shortcut, 256 -> 128 channels of 1024x1024 pixels:
/// 1 GiB in, 512 MiB out, and no second buffer). A band's pixels of every channel are rounded
/// into the grid before its outputs are written to their places in the output's layout, which
/// hold only that band's pixels, of this image or earlier ones (the output's offsets are
/// never past the input's, and differ from them by whole planes). The buffer is then cut to
/// the output's length. `Err(data)`, as it was, where this CPU has no AVX512-BF16.
pub fn conv1x1_over(
    data: Vec<f32>,
    shape: Shape,
    weight: &PackedConv,
    bias: Option<&[f32]>,
) -> Result<Vec<f32>, Vec<f32>> {
    conv1x1_over_in_bands(data, shape, weight, bias, BAND_BYTES)
}

fn conv1x1_over_in_bands(
    mut data: Vec<f32>,
    shape: Shape,
    weight: &PackedConv,
    bias: Option<&[f32]>,
    band_bytes: usize,
) -> Result<Vec<f32>, Vec<f32>> {
    assert_eq!(weight.kernel, 1, "a 1x1 convolution");
    assert!(
        shape.out_channels <= shape.in_channels,
        "the output fits in place of the input"
    );
    if Tiles::configure().is_none() {
        return Err(data);
    }
    let at = SharedOut(data.as_mut_ptr());
    let input = Input::Under(at, data.len());
    let fused = Fused {
        bias,
        ..Fused::default()
    };
    run(input, shape, weight, fused, Dest::Fresh(at), band_bytes);
    data.truncate(shape.batch * shape.out_channels * shape.plane());
    data.shrink_to_fit();
    Ok(data)
}

/// Bytes of the rounded, padded image a band of rows takes at most (at least
/// [`MIN_BAND_ROWS`] rows): rounded whole, a 1024x1024 image of 256 channels took 0.5 GiB
/// beside the f32 input and output.
const BAND_BYTES: usize = 64 << 20;
const MIN_BAND_ROWS: usize = 8;

/// Where the input is: `batch x in x plane` f32 values (a quarter of the plane if doubled).
#[derive(Clone, Copy)]
enum Input<'a> {
    /// Apart from the output.
    Apart(&'a [f32]),
    /// Under the output (this many values), which is written over it: a band's values are
    /// read before its outputs are written, and never after.
    Under(SharedOut, usize),
}

impl Input<'_> {
    fn len(self) -> usize {
        match self {
            Input::Apart(values) => values.len(),
            Input::Under(_, len) => len,
        }
    }

    /// `read` given values `first..first + len`, borrowed only while it runs.
    fn read<R>(self, first: usize, len: usize, read: impl FnOnce(&[f32]) -> R) -> R {
        match self {
            Input::Apart(values) => read(&values[first..][..len]),
            Input::Under(at, total) => {
                assert!(first + len <= total, "inside the input");
                // SAFETY: the range lies inside the buffer (`total` values), which nothing
                // writes while `read` runs: `run` computes a band only after reading it.
                #[allow(unsafe_code)]
                let values = unsafe { std::slice::from_raw_parts(at.at(first), len) };
                read(values)
            }
        }
    }
}

/// Where the output goes: `batch x out x plane` f32 values.
#[derive(Clone, Copy)]
enum Dest {
    /// Storage of its own, uninitialised.
    Fresh(SharedOut),
    /// Over the residual it holds.
    OverResidual(SharedOut),
}

/// The convolution a band of at most `band_bytes` of rounded rows at a time.
fn run(
    input: Input,
    shape: Shape,
    weight: &PackedConv,
    fused: Fused,
    dest: Dest,
    band_bytes: usize,
) {
    let Shape {
        batch,
        in_channels,
        out_channels,
        height,
        width,
    } = shape;
    assert_eq!(
        (in_channels, out_channels),
        (weight.in_channels, weight.out_channels),
        "the packed weight's channels"
    );
    let plane = height * width;
    let input_plane = fused.input_plane(shape);
    assert_eq!(input.len(), batch * in_channels * input_plane, "input size");
    fused.check(batch, in_channels, out_channels, plane);
    let (kernel, depth) = (weight.kernel, weight.depth);
    let pad = kernel / 2;
    let row_bytes = (width + 2 * pad) * depth * 2;
    // As many rows as fit, the image split evenly.
    let bands = height.div_ceil((band_bytes / row_bytes).max(MIN_BAND_ROWS));
    let band_rows = height.div_ceil(bands);
    let largest = Grid {
        width,
        height: band_rows,
        pad,
    };
    let mut padded = Lines::zeroed(largest.pixels() * depth);
    for n in 0..batch {
        let norm = fused
            .input_norm
            .map(|norm| &norm[n * in_channels..][..in_channels]);
        for first_row in (0..height).step_by(band_rows) {
            let grid = Grid {
                height: band_rows.min(height - first_row),
                ..largest
            };
            let image_values = in_channels * input_plane;
            input.read(n * image_values, image_values, |image| {
                let source = Source {
                    image,
                    norm,
                    channels: in_channels,
                    depth,
                    height,
                    doubled: fused.doubled,
                };
                grid.fill(&source, first_row, &mut padded)
            });
            let band = Band {
                image: n,
                first_pixel: first_row * width,
                grid,
            };
            band.compute(&padded, shape, weight, &fused, dest);
        }
    }
}

/// Rows of one image, rounded into the padded grid.
#[derive(Clone, Copy)]
struct Band {
    image: usize,
    /// The image pixel the grid's first row starts at.
    first_pixel: usize,
    grid: Grid,
}

impl Band {
    /// The band's output pixels, every output channel: a task takes a panel of channels and
    /// [`BLOCKS_PER_TASK`] blocks of positions.
    fn compute(self, padded: &[u16], shape: Shape, weight: &PackedConv, fused: &Fused, dest: Dest) {
        let (kernel, depth, grid) = (weight.kernel, weight.depth, self.grid);
        let out_channels = shape.out_channels;
        let plane = shape.plane();
        let n = self.image;
        let blocks = (grid.height * grid.row()).div_ceil(BLOCK);
        let panels = out_channels.div_ceil(BLOCK);
        let chunks = blocks.div_ceil(BLOCKS_PER_TASK);
        (0..chunks * panels).into_par_iter().for_each(|task| {
            let (chunk, panel) = (task / panels, task % panels);
            let words = weight.panel(panel);
            let first_channel = panel * BLOCK;
            let channels = BLOCK.min(out_channels - first_channel);
            let mut tiles = Tiles::configure().expect("the bf16 kernels ran a moment ago");
            let task_blocks = chunk * BLOCKS_PER_TASK..((chunk + 1) * BLOCKS_PER_TASK).min(blocks);
            let mut block_sums = [Block::ZERO; BLOCKS_PER_TASK];
            // The taps' steps one after another, in chunks that each block takes in turn.
            let steps = depth / STEP;
            let items = kernel * kernel * steps;
            let chunk = match tiles.unit() {
                Unit::Amx => items.div_ceil(items.div_ceil(CHUNK_STEPS)),
                Unit::Registers => items,
            };
            for first_item in (0..items).step_by(chunk) {
                let end = (first_item + chunk).min(items);
                for (block, sums) in task_blocks.clone().zip(&mut block_sums) {
                    // SAFETY: `sums` holds a block; each tap's 32 rows of `depth` values lie
                    // inside `padded` (`Grid::pixels` covers the last block's last tap) and
                    // the panel holds each tap's `depth / 2` rows of 32 words.
                    #[allow(unsafe_code)]
                    unsafe {
                        if first_item == 0 {
                            tiles.zero();
                        } else {
                            tiles.load(sums.0.as_ptr(), BLOCK);
                        }
                        let mut item = first_item;
                        while item < end {
                            let (tap, step) = (item / steps, item % steps);
                            let count = (steps - step).min(end - item);
                            let first = block * BLOCK + (tap / kernel) * grid.row() + tap % kernel;
                            let b = (tap * depth / 2 + step * STEP / 2) * BLOCK;
                            tiles.accumulate(
                                padded[first * depth + step * STEP..].as_ptr().cast(),
                                depth * 2,
                                words[b..].as_ptr().cast(),
                                BLOCK * 4,
                                STEP / 2 * BLOCK * 4,
                                count,
                            );
                            item += count;
                        }
                        tiles.store(sums.0.as_mut_ptr(), BLOCK);
                    }
                }
            }
            let mut by_channel = [0f32; BLOCK * BLOCK];
            let mut runs = Vec::new();
            for (block, sums) in task_blocks.zip(&block_sums) {
                // Channels first, then each channel's runs of image pixels copied whole.
                super::transpose::transpose_into(
                    &sums.0,
                    BLOCK,
                    BLOCK,
                    BLOCK,
                    &mut by_channel,
                    BLOCK,
                );
                runs.clear();
                runs.extend(grid.runs(block * BLOCK, BLOCK));
                for (c, channel) in (first_channel..first_channel + channels).enumerate() {
                    let add = fused.bias.map_or(0.0, |b| b[channel]);
                    let image_add = fused.image_bias.map(|b| b[n * out_channels + channel]);
                    let channel_at = (n * out_channels + channel) * plane + self.first_pixel;
                    let sums = &by_channel[c * BLOCK..][..BLOCK];
                    for &(from, pixel, len) in &runs {
                        let at = channel_at + pixel;
                        // The order of the separate ops: bias, image bias, residual.
                        let mut values = [0f32; BLOCK];
                        let values = &mut values[..len];
                        for (value, &sum) in values.iter_mut().zip(&sums[from..from + len]) {
                            *value = sum + add;
                        }
                        if let Some(image_add) = image_add {
                            values.iter_mut().for_each(|value| *value += image_add);
                        }
                        if let Some(residual) = fused.residual {
                            for (value, &residual) in values.iter_mut().zip(&residual[at..]) {
                                *value += residual;
                            }
                        }
                        // SAFETY: this task alone reads and writes its channels' pixels of
                        // the block's positions, `len` from `at`, inside the destination
                        // (`batch x out x plane`), which holds the residual where it is
                        // written over.
                        #[allow(unsafe_code)]
                        unsafe {
                            match dest {
                                Dest::Fresh(out) => {
                                    std::ptr::copy_nonoverlapping(values.as_ptr(), out.at(at), len)
                                }
                                Dest::OverResidual(out) => {
                                    let held = std::slice::from_raw_parts_mut(out.at(at), len);
                                    for (held, &value) in held.iter_mut().zip(values.iter()) {
                                        *held += value;
                                    }
                                }
                            }
                        };
                    }
                }
            }
        });
    }
}

/// One image as the grid reads it.
struct Source<'a> {
    /// `channels x plane`, f32, at half the height and width where `doubled`.
    image: &'a [f32],
    /// `(scale, shift)` per channel: each value read as `silu(x scale + shift)`.
    norm: Option<&'a [(f32, f32)]>,
    channels: usize,
    /// Values a pixel takes in the grid: `channels` rounded up to a tile step.
    depth: usize,
    /// The output's height.
    height: usize,
    /// Each pixel stands for a 2x2 block (nearest 2x upsampling).
    doubled: bool,
}

/// A band of the padded image: `height + 2 pad` rows of `width + 2 pad` pixels, channels last.
#[derive(Clone, Copy)]
struct Grid {
    width: usize,
    height: usize,
    pad: usize,
}

impl Grid {
    /// Pixels a padded row holds.
    fn row(self) -> usize {
        self.width + 2 * self.pad
    }

    /// Pixels the tiles read: the last block's last tap reads this far into the grid.
    fn pixels(self) -> usize {
        let blocks = (self.height * self.row()).div_ceil(BLOCK);
        blocks * BLOCK + 2 * self.pad * (self.row() + 1)
    }

    /// The image pixels output positions `first..first + count` compute, as runs along image
    /// rows: `(offset from first, pixel y width + x, length)`. The padding columns and the
    /// positions past the last row compute none.
    fn runs(self, first: usize, count: usize) -> impl Iterator<Item = (usize, usize, usize)> {
        let end = (first + count).min(self.height * self.row());
        let mut q = first;
        std::iter::from_fn(move || {
            while q < end {
                let (y, x) = (q / self.row(), q % self.row());
                let start = q;
                q = (q + self.row() - x).min(end);
                if x < self.width {
                    let len = (self.width - x).min(q - start);
                    return Some((start - first, y * self.width + x, len));
                }
            }
            None
        })
    }

    /// Image rows `first_row - pad..first_row + height + pad` (zeros outside the image)
    /// rounded to bf16 into the grid's rows, each pixel's values `depth` apart, rows in
    /// parallel. The padding columns and channels are never written: they stay zero. Past
    /// the grid's rows `padded` keeps what it held, read only for positions past the band.
    fn fill(self, source: &Source, first_row: usize, padded: &mut [u16]) {
        let (channels, depth, width) = (source.channels, source.depth, self.width);
        let (source_width, source_plane) = match source.doubled {
            true => (width / 2, source.height / 2 * (width / 2)),
            false => (width, source.height * width),
        };
        let row_values = self.row() * depth;
        let rows = self.height + 2 * self.pad;
        padded[..rows * row_values]
            .par_chunks_mut(row_values)
            .enumerate()
            .for_each_init(
                || {
                    let rounded = vec![0u16; channels * width];
                    (rounded, vec![0f32; source_width], vec![0u16; source_width])
                },
                |(rounded, normalized, half), (r, dst)| {
                    let y = (first_row + r).checked_sub(self.pad);
                    let Some(y) = y.filter(|&y| y < source.height) else {
                        dst.fill(0);
                        return;
                    };
                    let source_y = if source.doubled { y / 2 } else { y };
                    for c in 0..channels {
                        let first = c * source_plane + source_y * source_width;
                        let mut src = &source.image[first..][..source_width];
                        if let Some(norm) = source.norm {
                            let (scale, shift) = norm[c];
                            super::norm::silu_affine(src, normalized, scale, shift);
                            src = normalized;
                        }
                        let dst = &mut rounded[c * width..][..width];
                        if source.doubled {
                            super::bf16::round_into(src, half);
                            for (pair, &value) in dst.chunks_exact_mut(2).zip(half.iter()) {
                                pair.fill(value);
                            }
                        } else {
                            super::bf16::round_into(src, dst);
                        }
                    }
                    let pixels = &mut dst[self.pad * depth..];
                    super::transpose::transpose_into(
                        rounded, width, channels, width, pixels, depth,
                    );
                },
            );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::testing::random;

    /// The convolution of the bf16-rounded image with the bf16 weight, summed in f64.
    fn reference(
        input: &[f32],
        s: Shape,
        kernel: usize,
        weight: &[bf16],
        bias: &[f32],
    ) -> Vec<f32> {
        let pad = kernel as isize / 2;
        let mut out = vec![0f32; s.batch * s.out_channels * s.height * s.width];
        let at = |n: usize, c: usize, y: isize, x: isize| -> f64 {
            if y < 0 || x < 0 || y >= s.height as isize || x >= s.width as isize {
                return 0.0;
            }
            let i = ((n * s.in_channels + c) * s.height + y as usize) * s.width + x as usize;
            bf16::from_f32(input[i]).to_f32() as f64
        };
        for n in 0..s.batch {
            for o in 0..s.out_channels {
                for y in 0..s.height {
                    for x in 0..s.width {
                        let mut sum = bias[o] as f64;
                        for c in 0..s.in_channels {
                            for ky in 0..kernel {
                                for kx in 0..kernel {
                                    let w = weight
                                        [((o * s.in_channels + c) * kernel + ky) * kernel + kx]
                                        .to_f32()
                                        as f64;
                                    let (yy, xx) = (
                                        y as isize + ky as isize - pad,
                                        x as isize + kx as isize - pad,
                                    );
                                    sum += w * at(n, c, yy, xx);
                                }
                            }
                        }
                        out[((n * s.out_channels + o) * s.height + y) * s.width + x] = sum as f32;
                    }
                }
            }
        }
        out
    }

    /// Both kernel sizes, channel counts off a tile step and a panel, images narrower and
    /// wider than a block, two images in a batch.
    #[test]
    fn runs_skip_the_padding_columns_and_the_positions_past_the_image() {
        // Rows of 5 positions: 3 pixels, 2 padding columns; 2 image rows.
        let grid = Grid {
            width: 3,
            height: 2,
            pad: 1,
        };
        let runs: Vec<_> = grid.runs(2, 12).collect();
        assert_eq!(runs, vec![(0, 2, 1), (3, 3, 3)]);
        assert_eq!(grid.runs(10, 4).count(), 0);
    }

    /// Bands of rows compute the whole image's bits, with every op around the convolution
    /// inside, two images in a batch; written over the residual too.
    #[test]
    fn bands_of_rows_give_the_whole_images_values() {
        if !crate::nn::tiles::available() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        for (kernel, doubled) in [(3, false), (3, true), (1, false)] {
            let s = Shape {
                batch: 2,
                in_channels: 37,
                out_channels: 40,
                height: 22,
                width: 18,
            };
            let input_plane = if doubled { s.plane() / 4 } else { s.plane() };
            let input = random(s.batch * s.in_channels * input_plane, 21);
            let weight: Vec<bf16> = random(s.out_channels * s.in_channels * kernel * kernel, 22)
                .into_iter()
                .map(bf16::from_f32)
                .collect();
            let packed = PackedConv::new(&weight, s.out_channels, s.in_channels, kernel);
            let bias = random(s.out_channels, 23);
            let image_bias = random(s.batch * s.out_channels, 24);
            let residual = random(s.batch * s.out_channels * s.plane(), 25);
            let scales = random(s.batch * s.in_channels, 26);
            let norm: Vec<(f32, f32)> = scales
                .iter()
                .zip(random(s.batch * s.in_channels, 27))
                .map(|(&scale, shift)| (scale, shift))
                .collect();
            let fused = Fused {
                input_norm: Some(&norm),
                doubled,
                bias: Some(&bias),
                image_bias: Some(&image_bias),
                residual: Some(&residual),
            };
            let run_fresh = |band_bytes| {
                let mut out = vec![f32::NAN; residual.len()];
                let dest = Dest::Fresh(SharedOut(out.as_mut_ptr()));
                run(Input::Apart(&input), s, &packed, fused, dest, band_bytes);
                out
            };
            let whole = run_fresh(usize::MAX);
            assert!(whole.iter().all(|v| v.is_finite()), "every value written");
            // Bands of 8 rows: 8, 8 and 6.
            assert_eq!(run_fresh(1), whole, "{kernel}x{kernel}, doubled {doubled}");
            let mut over = residual.clone();
            let dest = Dest::OverResidual(SharedOut(over.as_mut_ptr()));
            let apart = Fused {
                residual: None,
                ..fused
            };
            run(Input::Apart(&input), s, &packed, apart, dest, 1);
            assert_eq!(over, whole, "{kernel}x{kernel}, doubled {doubled}, over");
        }
    }

    /// A 1x1 convolution over its input: the values of one into a buffer of its own, in one
    /// band or several, with more outputs than half the inputs (the second image's outputs
    /// land on the first's input and on its own).
    #[test]
    fn a_1x1_convolution_over_its_input_gives_the_same_values() {
        if !crate::nn::tiles::available() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        let s = Shape {
            batch: 2,
            in_channels: 37,
            out_channels: 30,
            height: 21,
            width: 13,
        };
        let input = random(s.batch * s.in_channels * s.plane(), 31);
        let weight: Vec<bf16> = random(s.out_channels * s.in_channels, 32)
            .into_iter()
            .map(bf16::from_f32)
            .collect();
        let packed = PackedConv::new(&weight, s.out_channels, s.in_channels, 1);
        let bias = random(s.out_channels, 33);
        let want = conv(&input, s, &packed, Some(&bias)).unwrap();
        for band_bytes in [usize::MAX, 1] {
            let got = conv1x1_over_in_bands(input.clone(), s, &packed, Some(&bias), band_bytes);
            assert_eq!(got.unwrap(), want, "bands of {band_bytes} bytes");
        }
    }

    #[test]
    fn tiles_compute_the_rounded_operands_convolution() {
        if !crate::nn::tiles::available() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        for (kernel, batch, in_channels, out_channels, height, width) in [
            (3, 1, 4, 8, 5, 7),
            (3, 2, 37, 40, 9, 13),
            (3, 1, 64, 33, 3, 40),
            (1, 2, 35, 70, 6, 11),
            (1, 1, 64, 32, 8, 8),
        ] {
            let s = Shape {
                batch,
                in_channels,
                out_channels,
                height,
                width,
            };
            let input = random(batch * in_channels * height * width, 11);
            let weight: Vec<bf16> = random(out_channels * in_channels * kernel * kernel, 12)
                .into_iter()
                .map(bf16::from_f32)
                .collect();
            let bias = random(out_channels, 13);
            let packed = PackedConv::new(&weight, out_channels, in_channels, kernel);
            assert_eq!(packed.stored(), weight, "the weight unpacks to itself");
            let widened: Vec<f32> = weight.iter().map(|w| w.to_f32()).collect();
            assert_eq!(packed.widened(), widened, "and widens to its values");
            let got = conv(&input, s, &packed, Some(&bias)).unwrap();
            let want = reference(&input, s, kernel, &weight, &bias);
            let taps = (in_channels * kernel * kernel) as f32;
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-5 * taps.sqrt() + 1e-6,
                    "{kernel}x{kernel} {in_channels}->{out_channels} {height}x{width} [{i}]: {a} vs {b}"
                );
            }
        }
    }
}
