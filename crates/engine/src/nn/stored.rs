//! Products with an f32 weight as stored, `(out, in)`: a linear layer's weight read in place
//! from the weights file ([`super::mapped`]), with no transposed copy kept.
//!
//! The gemm crate packs such a weight on every call with a strided gather, which costs as much
//! as the product itself when there are few rows (a text encoder's 77 tokens). Here each task
//! takes a panel of output columns and, [`K_BLOCK`] inner products at a time, transposes its
//! weight rows into a buffer of its own with 8x8 register transposes (at most 192 KiB, which
//! stays in L2), then walks every row of the activations through it a tile of rows at a time:
//! the register tile of [`super::bf16`], in f32. The activations are packed once per call, tile
//! by tile, so that the kernel reads them as one stream. With the rows this takes the time of
//! a product with a pre-transposed weight (`cargo bench -p seedbed-engine --bench kernels --
//! stored`; [`super::layers`] has the numbers).
//!
//! AVX-512F: panels of 48 columns, tiles of 8 rows (24 accumulators of 32 registers). AVX2
//! with FMA: 16 columns, 6 rows (12 of 16). Elsewhere [`Kernel::detect`] finds none and the
//! layer keeps a transposed copy instead.

use std::cell::RefCell;
use std::mem::MaybeUninit;

use rayon::prelude::*;

/// The register tile this CPU runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// AVX-512F: 8 rows by 48 columns.
    Avx512,
    /// AVX2 and FMA: 6 rows by 16 columns.
    Avx2,
}

impl Kernel {
    /// The best tile this CPU has, if any. `SEEDBED_STORED_KERNEL=avx2` takes the AVX2 tile on
    /// an AVX-512 CPU and `off` none, to measure each path on one machine.
    pub fn detect() -> Option<Self> {
        static DETECTED: std::sync::OnceLock<Option<Kernel>> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(|| {
            let wanted = std::env::var("SEEDBED_STORED_KERNEL").unwrap_or_default();
            Self::supported()
                .into_iter()
                .find(|kernel| match wanted.as_str() {
                    "off" => false,
                    "avx2" => *kernel == Self::Avx2,
                    _ => true,
                })
        })
    }

    /// The tiles this CPU can run, best first.
    pub fn supported() -> Vec<Self> {
        let mut kernels = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if super::math::has_avx512() {
                kernels.push(Self::Avx512);
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                kernels.push(Self::Avx2);
            }
        }
        kernels
    }

    /// Output columns a task takes.
    fn panel(self) -> usize {
        match self {
            Self::Avx512 => 48,
            Self::Avx2 => 16,
        }
    }

    /// Activation rows per register tile.
    fn tile_rows(self) -> usize {
        match self {
            Self::Avx512 => 8,
            Self::Avx2 => 6,
        }
    }
}

/// `x w^T` with `x` `rows x inner` and `w` `out x inner`, both row-major, as row-major
/// `rows x out`, on the rayon pool, through `kernel`'s tiles, which this CPU must have
/// ([`Kernel::supported`]).
pub fn times_transposed(
    kernel: Kernel,
    x: &[f32],
    w: &[f32],
    rows: usize,
    inner: usize,
    out: usize,
) -> Vec<f32> {
    assert_eq!(x.len(), rows * inner, "activations size");
    assert_eq!(w.len(), out * inner, "weight size");
    assert!(
        Kernel::supported().contains(&kernel),
        "this CPU has no {kernel:?} tile"
    );
    let (panel, tile_rows) = (kernel.panel(), kernel.tile_rows());
    let lhs = pack_rows(x, rows, inner, tile_rows);
    let mut dst = Vec::with_capacity(rows * out);
    let dst_ptr = SharedOut(dst.spare_capacity_mut().as_mut_ptr());
    (0..out.div_ceil(panel)).into_par_iter().for_each(|task| {
        let first_col = task * panel;
        let cols = panel.min(out - first_col);
        PANEL.with_borrow_mut(|packed| {
            // Columns past `cols` keep whatever an earlier panel left: each output lane
            // reads only its own column, and those lanes are never stored.
            if packed.len() < K_BLOCK * panel {
                packed.resize(K_BLOCK * panel, 0.0);
            }
            for first_k in (0..inner.max(1)).step_by(K_BLOCK) {
                let depth = K_BLOCK.min(inner - first_k);
                super::transpose::transpose_into(
                    &w[first_col * inner + first_k..],
                    inner,
                    cols,
                    depth,
                    packed,
                    panel,
                );
                for first_row in (0..rows).step_by(tile_rows) {
                    let tile = Tile {
                        rows: tile_rows.min(rows - first_row),
                        depth,
                        cols,
                        dst_stride: out,
                        accumulate: first_k > 0,
                    };
                    // SAFETY: `supported` checked the instructions; `lhs` holds this tile's
                    // `inner x tile_rows` values at `first_row * inner`, of which this block
                    // reads `depth` groups from `first_k`; `packed` holds `depth x panel`;
                    // this task alone writes columns `first_col..first_col + cols` of rows
                    // `first_row..first_row + tile.rows`, inside `dst`'s capacity
                    // (`rows x out`), which outlives the parallel loop, and it reads back
                    // only what its earlier blocks wrote.
                    #[allow(unsafe_code)]
                    unsafe {
                        tile.run(
                            kernel,
                            lhs[first_row * inner + first_k * tile_rows..].as_ptr(),
                            packed.as_ptr(),
                            dst_ptr.at(first_row * out + first_col),
                        )
                    };
                }
            }
        });
    });
    // SAFETY: the tiles cover every row and the panels every column, so the first block of
    // inner products stored each of the `rows x out` elements (later blocks add to them).
    #[allow(unsafe_code)]
    unsafe {
        dst.set_len(rows * out)
    };
    dst
}

thread_local! {
    /// Each worker's transposed panel, kept between calls.
    static PANEL: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// The destination, written by several tasks at disjoint elements.
#[derive(Clone, Copy)]
struct SharedOut(*mut MaybeUninit<f32>);

// SAFETY: tasks write disjoint elements (see `times_transposed`); the buffer outlives
// them.
#[allow(unsafe_code)]
unsafe impl Send for SharedOut {}
#[allow(unsafe_code)]
unsafe impl Sync for SharedOut {}

impl SharedOut {
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset).cast()
    }
}

/// `x` in tiles of `tile_rows` rows: for each column, the tile's values side by side, so that
/// the kernel reads one stream. The last tile is padded with zero rows.
fn pack_rows(x: &[f32], rows: usize, inner: usize, tile_rows: usize) -> Vec<f32> {
    let mut out = vec![0f32; rows.div_ceil(tile_rows) * tile_rows * inner];
    if inner == 0 {
        return out;
    }
    out.par_chunks_mut(inner * tile_rows)
        .zip(x.par_chunks(inner * tile_rows))
        .for_each(|(tile, x)| {
            let tile_rows_here = x.len() / inner;
            super::transpose::transpose_into(x, inner, tile_rows_here, inner, tile, tile_rows);
        });
    out
}

/// Inner products a panel takes at a time: its transposed block stays in L2 while every tile
/// of rows reads it, however long the rows are.
const K_BLOCK: usize = 1024;

/// One register tile's worth of work: `rows` activation rows by `cols` output columns over
/// `depth` products each, stored or added to what the earlier blocks of products stored.
struct Tile {
    rows: usize,
    depth: usize,
    cols: usize,
    dst_stride: usize,
    accumulate: bool,
}

impl Tile {
    /// Safety: `kernel`'s instructions are present; `lhs` holds `depth` groups of the
    /// kernel's tile rows, `panel` `depth` groups of its panel columns, and `dst` the
    /// `rows x cols` block (rows `dst_stride` apart) written, initialised where `accumulate`.
    #[allow(unsafe_code)]
    unsafe fn run(&self, kernel: Kernel, lhs: *const f32, panel: *const f32, dst: *mut f32) {
        #[cfg(target_arch = "x86_64")]
        {
            macro_rules! dispatch {
                ($f:ident, $($n:literal)*) => {
                    match self.rows {
                        // SAFETY: as the caller promised.
                        $($n => unsafe { x86::$f::<$n>(self, lhs, panel, dst) },)*
                        _ => unreachable!("a tile has 1 to {} rows", kernel.tile_rows()),
                    }
                };
            }
            match kernel {
                Kernel::Avx512 => dispatch!(tile_avx512, 1 2 3 4 5 6 7 8),
                Kernel::Avx2 => dispatch!(tile_avx2, 1 2 3 4 5 6),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("no {kernel:?} tile on this architecture: {lhs:?} {panel:?} {dst:?}");
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod x86 {
    use std::arch::x86_64::*;

    use super::Tile;

    /// Safety: AVX-512F is present; the rest as [`Tile::run`].
    #[target_feature(enable = "avx512f")]
    pub unsafe fn tile_avx512<const R: usize>(
        tile: &Tile,
        lhs: *const f32,
        panel: *const f32,
        dst: *mut f32,
    ) {
        const TILE_ROWS: usize = 8;
        let mut acc = [[_mm512_setzero_ps(); 3]; R];
        // SAFETY: the caller keeps every read and write below in bounds.
        unsafe {
            for k in 0..tile.depth {
                let b = panel.add(k * 48);
                let (b0, b1, b2) = (
                    _mm512_loadu_ps(b),
                    _mm512_loadu_ps(b.add(16)),
                    _mm512_loadu_ps(b.add(32)),
                );
                let a = lhs.add(k * TILE_ROWS);
                for (r, acc) in acc.iter_mut().enumerate() {
                    let a = _mm512_set1_ps(*a.add(r));
                    acc[0] = _mm512_fmadd_ps(a, b0, acc[0]);
                    acc[1] = _mm512_fmadd_ps(a, b1, acc[1]);
                    acc[2] = _mm512_fmadd_ps(a, b2, acc[2]);
                }
            }
            let mask = |from: usize| -> __mmask16 {
                let n = tile.cols.saturating_sub(from).min(16);
                ((1u32 << n) - 1) as __mmask16
            };
            let masks = [mask(0), mask(16), mask(32)];
            for (r, acc) in acc.iter().enumerate() {
                let row = dst.add(r * tile.dst_stride);
                for (i, (&acc, &mask)) in acc.iter().zip(&masks).enumerate() {
                    let at = row.add(16 * i);
                    let sum = match tile.accumulate {
                        true => _mm512_add_ps(acc, _mm512_maskz_loadu_ps(mask, at)),
                        false => acc,
                    };
                    _mm512_mask_storeu_ps(at, mask, sum);
                }
            }
        }
    }

    /// Safety: AVX2 and FMA are present; the rest as [`Tile::run`].
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tile_avx2<const R: usize>(
        tile: &Tile,
        lhs: *const f32,
        panel: *const f32,
        dst: *mut f32,
    ) {
        const TILE_ROWS: usize = 6;
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        // SAFETY: the caller keeps every read and write below in bounds.
        unsafe {
            for k in 0..tile.depth {
                let b = panel.add(k * 16);
                let (b0, b1) = (_mm256_loadu_ps(b), _mm256_loadu_ps(b.add(8)));
                let a = lhs.add(k * TILE_ROWS);
                for (r, acc) in acc.iter_mut().enumerate() {
                    let a = _mm256_broadcast_ss(&*a.add(r));
                    acc[0] = _mm256_fmadd_ps(a, b0, acc[0]);
                    acc[1] = _mm256_fmadd_ps(a, b1, acc[1]);
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                let row = dst.add(r * tile.dst_stride);
                let mut values = [0f32; 16];
                _mm256_storeu_ps(values.as_mut_ptr(), acc[0]);
                _mm256_storeu_ps(values.as_mut_ptr().add(8), acc[1]);
                for (c, value) in values[..tile.cols].iter().enumerate() {
                    let at = row.add(c);
                    *at = match tile.accumulate {
                        true => *at + value,
                        false => *value,
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::testing::random;

    #[test]
    fn every_tile_this_cpu_has_computes_the_product_for_ragged_shapes() {
        let kernels = Kernel::supported();
        if kernels.is_empty() {
            eprintln!("skipped: this CPU has neither AVX2 with FMA nor AVX-512F");
        }
        // Partial tiles of rows and panels of columns, several of each, inner sizes off the
        // 8x8 transpose blocks, one row, no inner dimension.
        for kernel in kernels {
            for (rows, inner, out) in [
                (1, 1, 1),
                (13, 37, 17),
                (29, 64, 70),
                (12, 320, 32),
                (77, 24, 100),
                (1, 300, 40),
                (7, 1100, 50),
                (5, 0, 3),
            ] {
                let x = random(rows * inner, 1);
                let w = random(out * inner, 2);
                let ours = times_transposed(kernel, &x, &w, rows, inner, out);
                assert_eq!(ours.len(), rows * out);
                for r in 0..rows {
                    for c in 0..out {
                        let want: f64 = (0..inner)
                            .map(|k| x[r * inner + k] as f64 * w[c * inner + k] as f64)
                            .sum();
                        let got = ours[r * out + c];
                        // Only the order of the f32 sums differs.
                        assert!(
                            (got as f64 - want).abs() <= 1e-5 * (inner as f64).sqrt() + 1e-6,
                            "{kernel:?} {rows}x{inner}->{out} [{r}, {c}]: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn rows_are_packed_column_by_column_within_a_tile() {
        // Three rows of two in tiles of two: the second tile holds one row and a zero row.
        let x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        assert_eq!(
            pack_rows(&x, 3, 2, 2),
            [1.0, 3.0, 2.0, 4.0, 5.0, 0.0, 6.0, 0.0]
        );
    }
}
