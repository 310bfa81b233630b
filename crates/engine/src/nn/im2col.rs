//! 3x3, stride-1, padding-1 convolution as one GEMM over an im2col matrix, on CPU f32, for
//! the small latents where Winograd's tiles are too few (the UNet's 16x16 and 8x8 levels);
//! and 1x1 convolution, which needs no im2col at all.
//!
//! Also any convolution's rows of taps per output pixel ([`pixel_rows`]), for a strided one's
//! product with a packed bf16 weight.
//!
//! The weight (out, in, 3, 3) is already the (out, in * 9) matrix the GEMM needs, so unlike
//! candle's convolution nothing is copied or re-laid out per call; the im2col rows follow
//! the same (in, ky, kx) order and are built straight from the NCHW planes.

use rayon::prelude::*;

use super::gemm;
use super::winograd::Shape;

/// `input` (batch, in, h, w), `weight` (out, in, 3, 3), optional bias; returns (batch, out, h, w).
pub fn conv3x3(input: &[f32], shape: Shape, weight: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let Shape {
        batch,
        in_channels,
        out_channels,
        height,
        width,
    } = shape;
    let plane = height * width;
    assert_eq!(input.len(), batch * in_channels * plane);
    assert_eq!(weight.len(), out_channels * in_channels * 9);
    let mut output = vec![0f32; batch * out_channels * plane];
    let mut columns = vec![0f32; in_channels * 9 * plane];
    for (image, out) in input
        .chunks(in_channels * plane)
        .zip(output.chunks_mut(out_channels * plane))
    {
        columns
            .par_chunks_mut(9 * plane)
            .zip(image.par_chunks(plane))
            .for_each(|(rows, channel)| fill_columns(channel, height, width, rows));
        banded_matmul(weight, in_channels * 9, &columns, out, plane, bias);
    }
    output
}

/// 1x1 convolution: per image one GEMM (out x in) x (in x h*w) straight on the NCHW data.
pub fn conv1x1(input: &[f32], shape: Shape, weight: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let plane = shape.height * shape.width;
    let (cin, cout) = (shape.in_channels, shape.out_channels);
    assert_eq!(input.len(), shape.batch * cin * plane);
    assert_eq!(weight.len(), cout * cin);
    let mut output = vec![0f32; shape.batch * cout * plane];
    for (image, out) in input
        .chunks(cin * plane)
        .zip(output.chunks_mut(cout * plane))
    {
        banded_matmul(weight, cin, image, out, plane, bias);
    }
    output
}

/// [`conv1x1`] written over its input `data` (moved in), for no more output channels than
/// input ones (a VAE ResNet block's shortcut, 256 -> 128 channels of 1024x1024 pixels: 1 GiB
/// in, 512 MiB out, and no second buffer). Each block of pixels of an image is copied out,
/// multiplied and written to its places in the output's layout, which hold only that block's
/// pixels of channels already copied, or earlier images: the images one after another, each
/// step's copies and product on every thread. The buffer is then cut to the output's length,
/// its tail handed back to the allocator.
pub fn conv1x1_over(
    data: Vec<f32>,
    shape: Shape,
    weight: &[f32],
    bias: Option<&[f32]>,
) -> Vec<f32> {
    // About 8 MiB of input columns per block.
    let block = ((2 << 20) / shape.in_channels.max(1)).max(256);
    conv1x1_over_in_blocks(data, shape, weight, bias, block)
}

/// [`conv1x1_over`], `block` pixels at a time.
fn conv1x1_over_in_blocks(
    mut data: Vec<f32>,
    shape: Shape,
    weight: &[f32],
    bias: Option<&[f32]>,
    block: usize,
) -> Vec<f32> {
    let plane = shape.height * shape.width;
    let (cin, cout) = (shape.in_channels, shape.out_channels);
    assert!(cout <= cin, "the output fits in place of the input");
    assert_eq!(data.len(), shape.batch * cin * plane);
    assert_eq!(weight.len(), cout * cin);
    let block = block.min(plane).max(1);
    let mut columns = vec![0f32; cin * block];
    let mut products = vec![0f32; cout * block];
    let threads = rayon::current_num_threads();
    for n in 0..shape.batch {
        for first in (0..plane).step_by(block) {
            let width = block.min(plane - first);
            let image = &data[n * cin * plane..][..cin * plane];
            columns[..cin * width]
                .par_chunks_mut(width)
                .zip(image.par_chunks(plane))
                .for_each(|(dst, channel)| dst.copy_from_slice(&channel[first..][..width]));
            let lhs = gemm::View::row_major(weight, cout, cin, cin);
            let rhs = gemm::View::row_major(&columns, cin, width, width);
            let dst = &mut products[..cout * width];
            gemm::matmul_into(lhs, rhs, dst, width, 1.0, threads);
            data[n * cout * plane..][..cout * plane]
                .par_chunks_mut(plane)
                .zip(products.par_chunks(width))
                .enumerate()
                .for_each(|(k, (channel, values))| {
                    let add = bias.map_or(0.0, |b| b[k]);
                    let dst = &mut channel[first..][..width];
                    for (d, &v) in dst.iter_mut().zip(values) {
                        *d = v + add;
                    }
                });
        }
    }
    data.truncate(shape.batch * cout * plane);
    data.shrink_to_fit();
    data
}

/// `out (rows x n) = weight (rows x k) * columns (k x n) + bias`, the rows split into one
/// band per thread, each its own GEMM.
fn banded_matmul(
    weight: &[f32],
    k: usize,
    columns: &[f32],
    out: &mut [f32],
    n: usize,
    bias: Option<&[f32]>,
) {
    let rows = out.len() / n;
    let band = rows.div_ceil(rayon::current_num_threads()).max(1);
    out.par_chunks_mut(band * n)
        .zip(weight.par_chunks(band * k))
        .enumerate()
        .for_each(|(i, (dst, lhs))| {
            let lhs = gemm::View::row_major(lhs, dst.len() / n, k, k);
            gemm::matmul(lhs, gemm::View::row_major(columns, k, n, n), dst, 1.0);
            if let Some(bias) = bias {
                for (row, &b) in dst.chunks_mut(n).zip(&bias[i * band..]) {
                    row.iter_mut().for_each(|v| *v += b);
                }
            }
        });
}

/// The geometry of a convolution with a square kernel, stride and zero padding.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl Window {
    /// Output size along a side of `size` input pixels.
    pub fn out(self, size: usize) -> usize {
        (size + 2 * self.padding).saturating_sub(self.kernel) / self.stride + 1
    }
}

/// One image (`channels, height, width`) as a row per output pixel (row-major), each the
/// window's values in the weight's `(channel, ky, kx)` order, zero outside the image: the
/// left operand of the convolution as a product with its `(out, in k k)` weight. Pixel rows
/// in parallel.
pub fn pixel_rows(
    image: &[f32],
    channels: usize,
    height: usize,
    width: usize,
    w: Window,
) -> Vec<f32> {
    let (out_h, out_w) = (w.out(height), w.out(width));
    let inner = channels * w.kernel * w.kernel;
    assert_eq!(image.len(), channels * height * width, "image size");
    super::buffers::par_filled(out_h * out_w * inner, inner, |p, row: &mut [f32]| {
        pixel_row(image, (channels, height, width), w, p, row)
    })
}

/// Output pixel `p`'s row of [`pixel_rows`] (`channels x kernel x kernel` values), written
/// whole into `row`, zeros included.
pub fn pixel_row(
    image: &[f32],
    (channels, height, width): (usize, usize, usize),
    w: Window,
    p: usize,
    row: &mut [f32],
) {
    let out_w = w.out(width);
    let (oy, ox) = (p / out_w, p % out_w);
    let taps = w.kernel * w.kernel;
    for (c, values) in row[..channels * taps].chunks_exact_mut(taps).enumerate() {
        let plane = &image[c * height * width..][..height * width];
        for (t, value) in values.iter_mut().enumerate() {
            let y = (oy * w.stride + t / w.kernel).checked_sub(w.padding);
            let x = (ox * w.stride + t % w.kernel).checked_sub(w.padding);
            *value = match (y, x) {
                (Some(y), Some(x)) if y < height && x < width => plane[y * width + x],
                _ => 0.0,
            };
        }
    }
}

/// The nine shifted copies of one channel plane, zero where the 3x3 window leaves the image:
/// row (ky, kx) at pixel (y, x) holds input (y + ky - 1, x + kx - 1).
fn fill_columns(channel: &[f32], height: usize, width: usize, rows: &mut [f32]) {
    for (tap, row) in rows.chunks_mut(height * width).enumerate() {
        let (dy, dx) = (tap / 3, tap % 3);
        for y in 0..height {
            let dst = &mut row[y * width..][..width];
            let Some(source_y) = (y + dy).checked_sub(1).filter(|&sy| sy < height) else {
                dst.fill(0.0);
                continue;
            };
            let src = &channel[source_y * width..][..width];
            // dst[x] = src[x + dx - 1] where that lies inside the row.
            match dx {
                0 => {
                    dst[0] = 0.0;
                    dst[1..].copy_from_slice(&src[..width - 1]);
                }
                1 => dst.copy_from_slice(src),
                _ => {
                    dst[..width - 1].copy_from_slice(&src[1..]);
                    dst[width - 1] = 0.0;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::winograd::tests::{check_against_direct, pattern};

    #[test]
    fn matches_direct_convolution() {
        let shapes = [(1, 3, 5, 8, 8), (2, 4, 3, 7, 13), (1, 2, 2, 1, 1)];
        check_against_direct(&shapes, conv3x3);
    }

    #[test]
    fn pointwise_matches_its_definition() {
        let s = Shape {
            batch: 2,
            in_channels: 3,
            out_channels: 5,
            height: 4,
            width: 7,
        };
        let input = pattern(s.batch * s.in_channels * s.plane(), 0.3);
        let weight = pattern(s.out_channels * s.in_channels, 1.7);
        let bias = pattern(s.out_channels, 2.9);
        let got = conv1x1(&input, s, &weight, Some(&bias));
        check_pointwise(s, &input, &weight, &bias, &got);
    }

    /// Written over its input, as many channels or fewer, with blocks of pixels that do not
    /// divide the plane: the same values.
    #[test]
    fn pointwise_over_its_input_matches_its_definition() {
        for (batch, cin, cout, side) in [(3, 5, 2, 30), (2, 4, 4, 9), (1, 600, 7, 33)] {
            let s = Shape {
                batch,
                in_channels: cin,
                out_channels: cout,
                height: side,
                width: side + 1,
            };
            let input = pattern(batch * cin * s.plane(), 0.3);
            let weight = pattern(cout * cin, 1.7);
            let bias = pattern(cout, 2.9);
            for block in [7, 256, usize::MAX] {
                let got = conv1x1_over_in_blocks(input.clone(), s, &weight, Some(&bias), block);
                check_pointwise(s, &input, &weight, &bias, &got);
            }
        }
    }

    fn check_pointwise(s: Shape, input: &[f32], weight: &[f32], bias: &[f32], got: &[f32]) {
        let plane = s.plane();
        assert_eq!(got.len(), s.batch * s.out_channels * plane);
        for n in 0..s.batch {
            for k in 0..s.out_channels {
                for i in 0..plane {
                    // In f64, so that the reference's own rounding over 600 inputs stays
                    // out of the comparison.
                    let want = bias[k] as f64
                        + (0..s.in_channels)
                            .map(|c| {
                                weight[k * s.in_channels + c] as f64
                                    * input[(n * s.in_channels + c) * plane + i] as f64
                            })
                            .sum::<f64>();
                    let at = (n * s.out_channels + k) * plane + i;
                    let diff = (got[at] as f64 - want).abs();
                    assert!(diff < 1e-5, "{s:?} {n} {k} {i}: {diff}");
                }
            }
        }
    }
}
