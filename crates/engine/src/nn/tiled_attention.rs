//! Attention of a bf16 model in bf16 blocks of sums ([`super::tiles`]: AMX tiles, or AVX-512
//! registers): `softmax(scale q k^T) v` with q, k and v rounded to bf16 and the scores, the
//! softmax and the sums in f32, as PyTorch's bf16 attention computes on such CPUs.
//!
//! Per head, k and v are rounded to bf16 rows and packed once into the word-pair panels the
//! tiles read (`k` is laid out as a linear layer's stored weight, `(keys, dim)`; `v` as a
//! transposed one, `(keys, dim_v)`). Then each task takes 32 queries: their scores against
//! every key (one block of tiles per panel of 32 keys), then per row `exp(scale (s - max))`
//! in f32, summed and rounded to bf16 in the same pass, their product with v, and that divided
//! by the sum: PyTorch's CPU flash attention rounds these unnormalised weights too, and the
//! division touches `dim_v` values a row where normalising touched every key.

use half::bf16;
use rayon::prelude::*;

use super::buffers::Lines;
use super::gemm::View;
use super::tiles::{BLOCK, STEP, Tiles};

/// One head's operands: `q` (`queries x dim`), `k` (`keys x dim`), `v` (`keys x dim_v`).
pub struct Head<'a> {
    pub q: View<'a>,
    pub k: View<'a>,
    pub v: View<'a>,
}

/// Attention for `count` heads, the head `head(i)` returns writing `queries x dim_v` values
/// at `out[i * queries * dim_v..]`. `None` (nothing written) where this CPU has no AVX512-BF16.
pub fn attend<'a>(
    count: usize,
    head: impl Fn(usize) -> Head<'a> + Sync,
    scale: f32,
    out: &mut [f32],
) -> Option<()> {
    Tiles::configure()?;
    let first = head(0);
    let (queries, dim, keys, dim_v) = (first.q.rows, first.q.cols, first.k.rows, first.v.cols);
    assert_eq!(out.len(), count * queries * dim_v, "output size");
    let depth = dim.div_ceil(STEP) * STEP;
    let key_depth = keys.div_ceil(STEP) * STEP;
    let packed: Vec<(Lines<u32>, Lines<u32>)> = (0..count)
        .into_par_iter()
        .map(|i| {
            let Head { k, v, .. } = head(i);
            (pack_keys(&k, depth), pack_values(&v, key_depth))
        })
        .collect();
    out.par_chunks_mut(queries * dim_v)
        .enumerate()
        .flat_map(|(i, head_out)| {
            head_out
                .par_chunks_mut(BLOCK * dim_v)
                .enumerate()
                .map(move |(block, rows)| (i, block, rows))
        })
        .for_each(|(i, block, rows)| {
            let (k_panels, v_panels) = &packed[i];
            let q = head(i).q;
            let first = block * BLOCK;
            let count = rows.len() / dim_v.max(1);
            let mut tiles = Tiles::configure().expect("the bf16 kernels ran a moment ago");
            tiles.set_rows(count);
            BUFFERS.with_borrow_mut(|buffers| {
                buffers.reset(depth, key_depth);
                buffers.queries(&q, first, count);
                buffers.scores(&mut tiles, k_panels);
                buffers.exponentials(keys, scale);
                buffers.weighted_sum(&mut tiles, v_panels, rows, count, dim_v);
                buffers.divide(rows, count, dim_v);
            });
        });
    Some(())
}

thread_local! {
    /// Each worker's buffers, kept between tasks and calls: fresh ones for every task cost a
    /// page fault every 4 KiB (a sixth of a 4096-token attention's time).
    static BUFFERS: std::cell::RefCell<Buffers> = const {
        std::cell::RefCell::new(Buffers {
            depth: 0,
            key_depth: 0,
            queries: Lines::empty(),
            scores: Lines::empty(),
            weights: Lines::empty(),
            sums: [1.0; BLOCK],
        })
    };
}

/// A task's operands and scores: 32 queries' bf16 rows, their f32 scores against the keys
/// (rows `key_depth` apart), the exponentials rounded to bf16 and each row's sum of them.
struct Buffers {
    depth: usize,
    key_depth: usize,
    queries: Lines<u16>,
    scores: Lines<f32>,
    weights: Lines<u16>,
    sums: [f32; BLOCK],
}

impl Buffers {
    /// Sized for `depth` and `key_depth`.
    fn reset(&mut self, depth: usize, key_depth: usize) {
        if (self.depth, self.key_depth) != (depth, key_depth) {
            self.depth = depth;
            self.key_depth = key_depth;
            self.queries = Lines::zeroed(BLOCK * depth);
            self.scores = Lines::zeroed(BLOCK * key_depth);
            self.weights = Lines::zeroed(BLOCK * key_depth);
        }
    }

    /// Queries `first..first + count` rounded to bf16; the rows past `count` zero.
    fn queries(&mut self, q: &View, first: usize, count: usize) {
        self.queries.fill(0);
        for (r, row) in self
            .queries
            .chunks_exact_mut(self.depth)
            .take(count)
            .enumerate()
        {
            round_row(q, first + r, &mut row[..q.cols]);
        }
    }

    /// Every query's scores against every key, one block of tiles per panel of 32 keys.
    fn scores(&mut self, tiles: &mut Tiles, k_panels: &[u32]) {
        let panel_words = self.depth / 2 * BLOCK;
        for (p, panel) in k_panels.chunks_exact(panel_words).enumerate() {
            tiles.zero();
            // SAFETY: the queries are `BLOCK` rows of `depth` values and the panel `depth / 2`
            // rows of `BLOCK` words; the scores have `BLOCK` rows of `key_depth` values, which
            // holds this panel's 32 columns.
            #[allow(unsafe_code)]
            unsafe {
                tiles.accumulate(
                    self.queries.as_ptr().cast(),
                    self.depth * 2,
                    panel.as_ptr().cast(),
                    BLOCK * 4,
                    STEP / 2 * BLOCK * 4,
                    self.depth / STEP,
                );
                tiles.store(self.scores.as_mut_ptr().add(p * BLOCK), self.key_depth);
            }
        }
    }

    /// Each row's `exp(scale (s - max))` over its first `keys` scores, rounded to bf16
    /// weights, and their sum (of the unrounded values, as PyTorch sums them).
    fn exponentials(&mut self, keys: usize, scale: f32) {
        for ((scores, weights), sum) in self
            .scores
            .chunks_exact_mut(self.key_depth)
            .zip(self.weights.chunks_exact_mut(self.key_depth))
            .zip(&mut self.sums)
        {
            let scores = &mut scores[..keys];
            *sum = super::attention::exponentials_in_place(scores, scale);
            super::bf16::round_into(scores, &mut weights[..keys]);
            // An earlier call's weights past the keys meet v's zero rows; zero them anyway.
            weights[keys..].fill(0);
        }
    }

    /// The first `count` rows of `rows` (`dim_v` apart) divided by their sums.
    fn divide(&self, rows: &mut [f32], count: usize, dim_v: usize) {
        for (row, sum) in rows.chunks_exact_mut(dim_v).take(count).zip(self.sums) {
            let inverse = 1.0 / sum;
            row.iter_mut().for_each(|value| *value *= inverse);
        }
    }

    /// The weights times v into the first `count` rows of `rows` (`dim_v` apart).
    fn weighted_sum(
        &self,
        tiles: &mut Tiles,
        v_panels: &[u32],
        rows: &mut [f32],
        count: usize,
        dim_v: usize,
    ) {
        let panel_words = self.key_depth / 2 * BLOCK;
        for (p, panel) in v_panels.chunks_exact(panel_words).enumerate() {
            tiles.zero();
            // SAFETY: the weights are `BLOCK` rows of `key_depth` values and the panel
            // `key_depth / 2` rows of `BLOCK` words; `rows` holds `count` rows of `dim_v`,
            // this panel's columns among them.
            #[allow(unsafe_code)]
            unsafe {
                tiles.accumulate(
                    self.weights.as_ptr().cast(),
                    self.key_depth * 2,
                    panel.as_ptr().cast(),
                    BLOCK * 4,
                    STEP / 2 * BLOCK * 4,
                    self.key_depth / STEP,
                );
                let cols = BLOCK.min(dim_v - p * BLOCK);
                tiles.store_part(rows.as_mut_ptr().add(p * BLOCK), dim_v, count, cols);
            }
        }
    }
}

/// Row `r` of `m` rounded to bf16 bits into `dst` (`m.cols` values): 16 at a time where the
/// row is contiguous.
fn round_row(m: &View, r: usize, dst: &mut [u16]) {
    let start = r * m.row_stride;
    if m.col_stride == 1 {
        super::bf16::round_into(&m.data[start..][..m.cols], dst);
    } else {
        for (c, value) in dst.iter_mut().enumerate() {
            *value = bf16::from_f32(m.data[start + c * m.col_stride]).to_bits();
        }
    }
}

/// `k` (`keys x dim`) as the right operand of its transpose's product: per panel of 32 keys,
/// `depth / 2` rows of 32 words, each the pair `(k[r][2p], k[r][2p + 1])` in bf16. Past the
/// keys and `dim` zero. A key's bf16 row is already its words, so a panel is the 32-bit
/// transpose of its 32 rows.
fn pack_keys(k: &View, depth: usize) -> Lines<u32> {
    let panel_words = depth / 2 * BLOCK;
    let mut words = Lines::zeroed(k.rows.div_ceil(BLOCK) * panel_words);
    // Words, so that the 32-bit view of the rounded values is aligned.
    let mut rows = vec![0u32; BLOCK * depth / 2];
    for (panel, dst) in words.chunks_exact_mut(panel_words).enumerate() {
        let first = panel * BLOCK;
        let count = BLOCK.min(k.rows - first);
        let values: &mut [u16] = bytemuck::cast_slice_mut(&mut rows);
        for (r, row) in values.chunks_exact_mut(depth).take(count).enumerate() {
            round_row(k, first + r, &mut row[..k.cols]);
        }
        // The last panel's missing keys: zero, not the previous panel's.
        values[count * depth..].fill(0);
        super::transpose::transpose_into(&rows, depth / 2, BLOCK, depth / 2, dst, BLOCK);
    }
    words
}

/// `v` (`keys x dim_v`) as the right operand of a product with the weights (`x keys`): per
/// panel of 32 of its columns, `key_depth / 2` rows of 32 words, row `p` pairing keys `2p` and
/// `2p + 1` in bf16. Past the keys and `dim_v` zero.
fn pack_values(v: &View, key_depth: usize) -> Lines<u32> {
    let panels = v.cols.div_ceil(BLOCK);
    let width = panels * BLOCK;
    let panel_words = key_depth / 2 * BLOCK;
    let mut words = Lines::zeroed(panels * panel_words);
    let (mut even, mut odd) = (vec![0u16; width], vec![0u16; width]);
    for pair in 0..v.rows.div_ceil(2) {
        round_row(v, 2 * pair, &mut even[..v.cols]);
        if 2 * pair + 1 < v.rows {
            round_row(v, 2 * pair + 1, &mut odd[..v.cols]);
        } else {
            odd.fill(0);
        }
        for (panel, (even, odd)) in even
            .chunks_exact(BLOCK)
            .zip(odd.chunks_exact(BLOCK))
            .enumerate()
        {
            let dst = &mut words[panel * panel_words + pair * BLOCK..][..BLOCK];
            for ((word, &e), &o) in dst.iter_mut().zip(even).zip(odd) {
                *word = e as u32 | (o as u32) << 16;
            }
        }
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::testing::random;

    fn round(v: f32) -> f64 {
        bf16::from_f32(v).to_f32() as f64
    }

    /// The attention of the bf16-rounded operands in f64, the exponentials rounded too and
    /// divided by their sum after the product with v.
    fn reference(q: &[f32], k: &[f32], v: &[f32], dims: (usize, usize, usize, usize)) -> Vec<f32> {
        let (queries, keys, dim, dim_v) = dims;
        let scale = (dim as f64).powf(-0.5);
        let mut out = vec![0f32; queries * dim_v];
        for i in 0..queries {
            let scores: Vec<f64> = (0..keys)
                .map(|j| {
                    (0..dim)
                        .map(|d| round(q[i * dim + d]) * round(k[j * dim + d]))
                        .sum::<f64>()
                        * scale
                })
                .collect();
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let sum: f64 = exps.iter().sum();
            for c in 0..dim_v {
                let value: f64 = (0..keys)
                    .map(|j| round(exps[j] as f32) * round(v[j * dim_v + c]))
                    .sum();
                out[i * dim_v + c] = (value / sum) as f32;
            }
        }
        out
    }

    /// Query and key counts off a block, head sizes off a step and a panel, two heads, keys
    /// read through a transposed layout.
    #[test]
    fn tiles_compute_the_rounded_operands_attention() {
        if !crate::nn::tiles::available() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        // 77 then 70 keys: the same padded width, so a worker's buffers are reused with
        // fewer keys.
        let cases = [
            (1, 1, 1, 1),
            (37, 77, 40, 24),
            (37, 70, 40, 24),
            (64, 100, 64, 70),
        ];
        for (queries, keys, dim, dim_v) in cases {
            let heads = 2;
            let q = random(heads * queries * dim, 21);
            let k = random(heads * keys * dim, 22);
            let v = random(heads * keys * dim_v, 23);
            // k stored transposed, (dim, keys) per head, and read through its strides.
            let mut k_t = vec![0f32; k.len()];
            for h in 0..heads {
                for j in 0..keys {
                    for d in 0..dim {
                        k_t[h * keys * dim + d * keys + j] = k[h * keys * dim + j * dim + d];
                    }
                }
            }
            let head = |h: usize| Head {
                q: View::row_major(&q[h * queries * dim..], queries, dim, dim),
                k: View::row_major(&k_t[h * keys * dim..], dim, keys, keys).t(),
                v: View::row_major(&v[h * keys * dim_v..], keys, dim_v, dim_v),
            };
            let mut out = vec![0f32; heads * queries * dim_v];
            let scale = (dim as f32).powf(-0.5);
            attend(heads, head, scale, &mut out).unwrap();
            for h in 0..heads {
                let want = reference(
                    &q[h * queries * dim..][..queries * dim],
                    &k[h * keys * dim..][..keys * dim],
                    &v[h * keys * dim_v..][..keys * dim_v],
                    (queries, keys, dim, dim_v),
                );
                let got = &out[h * queries * dim_v..][..queries * dim_v];
                for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (a - b).abs() <= 2e-3,
                        "{queries}x{keys} dim {dim}->{dim_v} head {h} [{i}]: {a} vs {b}"
                    );
                }
            }
        }
    }
}
