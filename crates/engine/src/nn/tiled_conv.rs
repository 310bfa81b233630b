//! 3x3 and 1x1 "same" convolutions with bf16 weights on AMX tiles ([`super::amx`]), where
//! `--dtype bf16` runs on a CPU that has them: what oneDNN gives PyTorch's bf16 convolutions.
//!
//! No im2col: the image is rounded to bf16 once per call into channels-last rows with a zero
//! border (`width + 2` pixels a row, channels padded to a whole tile step). Output pixel
//! `(y, x)` is then position `q = y (width + 2) + x` of that padded grid, and its 3x3
//! neighbourhood's tap `(ky, kx)` is the padded pixel `q + ky (width + 2) + kx`: for each tap,
//! 32 consecutive outputs read 32 consecutive padded pixels, one tile of rows in place. The
//! two padding columns of each grid row compute values nobody reads (3% of the work at width
//! 64). The weight is packed once per layer into the word-pair panels the tiles read
//! ([`PackedConv`]); a task takes one panel and four blocks of positions, which take turns on
//! a few steps of a tap's channels at a time (that part of the panel stays in L1), their sums
//! kept between turns; each block's are then written back channels-first with the bias. The
//! operands the tiles read start on cache lines ([`super::aligned`]).

use half::bf16;
use rayon::prelude::*;

use super::amx::{BLOCK, STEP, Tiles};
use super::bf16::SharedOut;
use super::buffers::{Block, Lines};
use super::winograd::{Fused, Shape};

/// Blocks of [`BLOCK`] output positions a task computes for its panel of output channels.
const BLOCKS_PER_TASK: usize = 4;
/// Steps of a tap's input channels each of a task's blocks takes in turn before the next
/// steps: 12 KiB of the panel, read from L1 by the blocks after the first, where a block
/// taking all of a tap at once read it from L2 (3% faster at 960 and 1920 channels).
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
        let taps = self.kernel * self.kernel;
        let mut weight = vec![bf16::ZERO; self.out_channels * self.in_channels * taps];
        for (o, filter) in weight.chunks_exact_mut(self.in_channels * taps).enumerate() {
            let words = self.panel(o / BLOCK);
            for (channel, taps_of) in filter.chunks_exact_mut(taps).enumerate() {
                for (tap, value) in taps_of.iter_mut().enumerate() {
                    let word = words[(tap * self.depth / 2 + channel / 2) * BLOCK + o % BLOCK];
                    *value = bf16::from_bits((word >> (16 * (channel % 2))) as u16);
                }
            }
        }
        weight
    }

    fn panel(&self, panel: usize) -> &[u32] {
        let len = self.kernel * self.kernel * self.depth / 2 * BLOCK;
        &self.words[panel * len..][..len]
    }
}

/// `input` (`batch, in, height, width`, f32) convolved with `weight` ("same" padding), plus
/// `bias`: (`batch, out, height, width`) f32. `None` where this CPU has no AMX.
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

/// [`conv`] with the work of the ops around it, as [`Fused`] describes, except a doubled
/// input.
pub fn conv_fused(
    input: &[f32],
    shape: Shape,
    weight: &PackedConv,
    fused: Fused,
) -> Option<Vec<f32>> {
    assert!(!fused.doubled, "a doubled input is not read on the tiles");
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
    assert_eq!(input.len(), batch * in_channels * plane, "input size");
    fused.check(batch, in_channels, out_channels, plane);
    Tiles::configure()?;
    let (kernel, depth) = (weight.kernel, weight.depth);
    let grid = Grid {
        width,
        height,
        pad: kernel / 2,
    };
    let blocks = (height * grid.row()).div_ceil(BLOCK);
    // The last block's last tap reads this far into the padded image.
    let pixels = blocks * BLOCK + (kernel - 1) * (grid.row() + 1);
    let panels = out_channels.div_ceil(BLOCK);
    let chunks = blocks.div_ceil(BLOCKS_PER_TASK);
    let mut padded = Lines::zeroed(pixels * depth);
    // Every element is stored once below: no zeros written first.
    let mut output = Vec::with_capacity(batch * out_channels * plane);
    let first_out = output.spare_capacity_mut().as_mut_ptr().cast::<f32>();
    for (n, image) in input.chunks(in_channels * plane).enumerate() {
        // The border and the padding channels are never written: they stay zero.
        let norm = fused
            .input_norm
            .map(|norm| &norm[n * in_channels..][..in_channels]);
        grid.fill(image, norm, in_channels, depth, &mut padded);
        let out = SharedOut(first_out.wrapping_add(n * out_channels * plane));
        (0..chunks * panels).into_par_iter().for_each(|task| {
            let (chunk, panel) = (task / panels, task % panels);
            let words = weight.panel(panel);
            let first_channel = panel * BLOCK;
            let channels = BLOCK.min(out_channels - first_channel);
            let mut tiles = Tiles::configure().expect("AMX was available a moment ago");
            let task_blocks = chunk * BLOCKS_PER_TASK..((chunk + 1) * BLOCKS_PER_TASK).min(blocks);
            let mut block_sums = [Block::ZERO; BLOCKS_PER_TASK];
            let steps = depth / STEP;
            let chunk_steps = steps.div_ceil(steps.div_ceil(CHUNK_STEPS));
            for tap in 0..kernel * kernel {
                for first_step in (0..steps).step_by(chunk_steps) {
                    let count = chunk_steps.min(steps - first_step);
                    let b = (tap * depth / 2 + first_step * STEP / 2) * BLOCK;
                    for (block, sums) in task_blocks.clone().zip(&mut block_sums) {
                        let first = block * BLOCK + (tap / kernel) * grid.row() + tap % kernel;
                        // SAFETY: `sums` holds a block; the tap's 32 rows of `depth` values
                        // lie inside `padded` (`pixels` covers the last block's last tap)
                        // and the panel holds each tap's `depth / 2` rows of 32 words.
                        #[allow(unsafe_code)]
                        unsafe {
                            if tap == 0 && first_step == 0 {
                                tiles.zero();
                            } else {
                                tiles.load(sums.0.as_ptr(), BLOCK);
                            }
                            tiles.accumulate(
                                padded[first * depth + first_step * STEP..].as_ptr().cast(),
                                depth * 2,
                                words[b..].as_ptr().cast(),
                                BLOCK * 4,
                                STEP / 2 * BLOCK * 4,
                                count,
                            );
                            tiles.store(sums.0.as_mut_ptr(), BLOCK);
                        }
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
                    let residual = fused
                        .residual
                        .map(|r| &r[(n * out_channels + channel) * plane..][..plane]);
                    let sums = &by_channel[c * BLOCK..][..BLOCK];
                    for &(from, pixel, len) in &runs {
                        for (i, &sum) in sums[from..from + len].iter().enumerate() {
                            // The order of the separate ops: bias, image bias, residual.
                            let mut value = sum + add;
                            if let Some(image_add) = image_add {
                                value += image_add;
                            }
                            if let Some(residual) = residual {
                                value += residual[pixel + i];
                            }
                            // SAFETY: this task alone writes its channels' pixels of the
                            // block's positions, inside `out` (`out_channels x plane`).
                            #[allow(unsafe_code)]
                            unsafe {
                                *out.at(channel * plane + pixel + i) = value
                            };
                        }
                    }
                }
            }
        });
    }
    // SAFETY: for each image the tasks covered every panel of channels and every block of
    // positions, whose runs cover every pixel: each element was stored.
    #[allow(unsafe_code)]
    unsafe {
        output.set_len(batch * out_channels * plane)
    };
    Some(output)
}

/// The padded image: `height + 2 pad` rows of `width + 2 pad` pixels, channels last.
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

    /// `image` (`channels, height, width`, f32) rounded to bf16 into the padded grid, each
    /// pixel's `channels` values `depth` apart, rows in parallel; each channel first
    /// normalized (`silu(x scale + shift)`) where `norm` gives its `(scale, shift)`.
    fn fill(
        self,
        image: &[f32],
        norm: Option<&[(f32, f32)]>,
        channels: usize,
        depth: usize,
        padded: &mut [u16],
    ) {
        let plane = self.height * self.width;
        let row_values = self.row() * depth;
        let first = self.pad * row_values;
        padded[first..first + self.height * row_values]
            .par_chunks_mut(row_values)
            .enumerate()
            .for_each_init(
                || (vec![0u16; channels * self.width], vec![0f32; self.width]),
                |(rounded, normalized), (y, dst)| {
                    for c in 0..channels {
                        let mut src = &image[c * plane + y * self.width..][..self.width];
                        if let Some(norm) = norm {
                            let (scale, shift) = norm[c];
                            super::norm::silu_affine(src, normalized, scale, shift);
                            src = normalized;
                        }
                        super::bf16::round_into(src, &mut rounded[c * self.width..][..self.width]);
                    }
                    let pixels = &mut dst[self.pad * depth..];
                    super::transpose::transpose_into(
                        rounded, self.width, channels, self.width, pixels, depth,
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

    #[test]
    fn tiles_compute_the_rounded_operands_convolution() {
        if !crate::nn::amx::available() {
            eprintln!("skipped: this CPU or OS has no AMX");
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
