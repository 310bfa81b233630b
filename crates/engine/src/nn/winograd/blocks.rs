//! One block of a Winograd convolution ([`Geometry::run_block`]): whole rows of tiles of one
//! image, for a group of output channels, taken from the input's rows (normalized, doubled
//! where the convolution says so) through the input transform, the products and the output
//! transform into the block's rows of the output, with what is added there ([`Added`]).

// The transforms index several matrices with the same loop variables, as the formulas do.
#![allow(clippy::needless_range_loop)]

use std::mem::MaybeUninit;

use super::products::{self, Products};
use super::transforms::{input_1d, output_1d};
use super::vector::{self, Vector};
use super::{
    CHUNK, Fused, LANES, Lanes, RING, ROW_LANES_MAX, SPAN_MAX, Shape, Weights, filters, prefetch,
};

/// What an output channel's rows get added: its bias, its image's bias, then its rows of the
/// residual.
#[derive(Clone, Copy)]
pub(super) struct Added<'a> {
    bias: f32,
    image_bias: Option<f32>,
    residual: Option<&'a [f32]>,
    /// The residual is the output rows' own values.
    over_residual: bool,
}

pub(super) struct Block<'a> {
    pub(super) image: usize,
    pub(super) first_tile_row: usize,
    /// The output channels the block writes.
    pub(super) channels: std::ops::Range<usize>,
    /// Per output channel of `channels`, this block's rows of the output plane, each value
    /// written once.
    pub(super) out_rows: Vec<&'a mut [MaybeUninit<f32>]>,
    /// The same rows of the residual, when there is one apart from the output.
    pub(super) residual_rows: Vec<&'a [f32]>,
    /// The output rows hold the residual (initialised), to be added before each value is
    /// written over.
    pub(super) over_residual: bool,
}

pub(super) struct Geometry {
    pub(super) shape: Shape,
    /// The height and width of the grid the tiles cover: the output's, or half of them for
    /// the phases of a doubled input.
    pub(super) grid_h: usize,
    pub(super) grid_w: usize,
    /// The input rows have half the grid's width and each stands for two rows of it.
    pub(super) read_doubled: bool,
    pub(super) tiles_w: usize,
    pub(super) tiles_h: usize,
    pub(super) tile_rows_per_block: usize,
    pub(super) products: Products,
}

/// Per-thread buffers, reused across blocks.
pub(super) struct Scratch {
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
    pub(super) fn new<const TM: usize, const S: usize, const A: usize>(
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
    pub(super) fn run_block<
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
            let portable = super::tests::PORTABLE_ONLY.load(std::sync::atomic::Ordering::Relaxed);
            #[cfg(not(test))]
            let portable = false;
            if super::super::math::has_avx2_fma() && !portable {
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
                super::super::norm::silu_affine(row, padded, scale, shift);
            }
            (None, false) => padded.copy_from_slice(row),
            (norm, true) => {
                let mut row = row;
                if let Some(norm) = norm {
                    let (scale, shift) = norm[c];
                    let normalized = &mut normalized[..source_w];
                    super::super::norm::silu_affine(row, normalized, scale, shift);
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
                            let values = unsafe { super::super::buffers::assume_init(&values) };
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
                let span = unsafe { super::super::buffers::assume_init(span) };
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
                    let residual = unsafe { super::super::buffers::assume_init(out) };
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
