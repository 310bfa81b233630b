//! The matrix products at the heart of a Winograd convolution: for each position (and phase)
//! of a block's tiles, M (out x tiles) = U (out x in) V (in x tiles).
//!
//! The gemm crate packs both operands into its own layouts on every call, 36 to 256 calls per
//! block, each a product of only a hundred or so tiles. The opt-in path, a 6x16 AVX2 register
//! tile, reads the operands where they are made instead: U's rows as the filter transform lays them
//! out, each a stream of values broadcast in turn, and V in panels of [`PANEL`] tiles, the
//! layout the input transform writes for it. The products then run with no packing at all.
//! A block's 36 products alone, one thread of a Zen 3 EPYC, with U packed: 128 channels by
//! 96 tiles 58-68 against 44-57 GFLOP/s, 512 channels 59-80 against 49-78. Whole
//! convolutions, weight transform included, both paths alternating in one process, fastest of
//! six, 2 threads: 0.96-0.97x the gemm path's time for the SD VAE decoder's 128 channels at
//! 512x512, 256 at 256x256 and its upsampler to 512x512, 1.02x for 512 at 128x128, 0.87x
//! for the UNet's 1280 channels at 16x16. Around the products the transforms move V and M
//! through memory (2.25 values per pixel and channel each way), which the products do not
//! change. On AVX2 the two paths give the same bits up to 512 input channels (both sum each
//! product along the input channels with fused multiply-adds from zero); past that the gemm
//! crate sums in blocks.
//!
//! The gemm crate stays the default ([`Products::detect`]): on that Zen 3 machine the tiles
//! left the SD-Turbo-shaped pipeline where it was and made the SDXL-shaped UNet step at
//! 1024x1024 a third slower, where U (up to 6.5 MB a position at 1280 channels) streams from
//! memory six rows at a time for only 32-96 tiles. `SEEDBED_WINOGRAD_PRODUCTS=tiles` takes
//! them where the CPU runs them (AVX2 and FMA), to measure.

use super::super::gemm;

/// Output channels of a register tile: the rows of U it reads, each broadcast.
pub(super) const TILE_OUT: usize = 6;
/// Tiles of a panel of V: the 16 lanes of two AVX2 registers.
pub(super) const PANEL: usize = 16;
/// Tiles of a block's last panel where they leave only that many: one register.
const HALF_PANEL: usize = 8;

/// How a convolution's products are computed, and so how its operands are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Products {
    /// The gemm crate: U (out, positions, in), V (in, positions, tiles) per phase.
    Gemm,
    /// AVX2 register tiles: U as for the gemm crate, V (positions, tiles / [`PANEL`], in,
    /// [`PANEL`]) per phase.
    Tiles,
}

impl Products {
    /// The path convolutions take: the gemm crate, unless `SEEDBED_WINOGRAD_PRODUCTS=tiles`
    /// asks for the register tiles on a CPU that runs them. On the Zen 3 machine they were
    /// measured on the tiles ran the SD-Turbo-shaped pipeline as fast as the gemm crate (within
    /// its drift) but the SDXL-shaped UNet step at 1024x1024 a third slower (bench/RESULTS.md).
    pub fn detect() -> Self {
        static DETECTED: std::sync::OnceLock<Products> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(|| {
            let wanted = std::env::var("SEEDBED_WINOGRAD_PRODUCTS").unwrap_or_default();
            match wanted.as_str() {
                "tiles" if Self::Tiles.runs() => Self::Tiles,
                _ => Self::Gemm,
            }
        })
    }

    /// Whether this CPU runs the path.
    pub fn runs(self) -> bool {
        match self {
            Self::Gemm => true,
            Self::Tiles => cfg!(target_arch = "x86_64") && super::super::math::has_avx2_fma(),
        }
    }

    /// The columns a block of `tiles` tiles takes in V and M: whole groups of lanes for the
    /// tiles, in panels of [`PANEL`] and at most one of [`HALF_PANEL`] last.
    pub(super) fn columns(self, tiles: usize) -> usize {
        match self {
            Self::Gemm => tiles,
            Self::Tiles => tiles.next_multiple_of(HALF_PANEL),
        }
    }

    /// Where tile `t`'s value of input channel `c` at `position` goes in V (one phase's, of
    /// `columns` columns and `in_channels` rows per position).
    #[inline(always)]
    pub(super) fn v_index(
        self,
        c: usize,
        position: usize,
        t: usize,
        columns: usize,
        in_channels: usize,
        positions: usize,
    ) -> usize {
        match self {
            Self::Gemm => (c * positions + position) * columns + t,
            Self::Tiles => {
                let (start, width) = panel(t, columns);
                (position * columns + start) * in_channels + c * width + t - start
            }
        }
    }

    /// How many tiles from `t` on sit next to it in V, `t`'s included.
    #[inline(always)]
    pub(super) fn adjacent(self, t: usize, columns: usize) -> usize {
        match self {
            Self::Gemm => columns - t,
            Self::Tiles => {
                let (start, width) = panel(t, columns);
                start + width - t
            }
        }
    }
}

/// The first column and the width of the panel column `t` is in, of `columns`.
#[inline(always)]
fn panel(t: usize, columns: usize) -> (usize, usize) {
    let start = t / PANEL * PANEL;
    (start, PANEL.min(columns - start))
}

/// One block's operands: U the filters' (out, phase, position, in), V the input transform's
/// (`columns` tiles, laid out for the products that run).
pub(super) struct Operands<'a> {
    pub u: &'a [f32],
    pub v: &'a [f32],
    pub in_channels: usize,
    pub out_channels: usize,
    pub phases: usize,
    pub positions: usize,
    pub columns: usize,
}

impl Products {
    /// M (out, phase, position, columns) = U V for every phase and position of one block.
    pub(super) fn multiply(self, o: Operands, m: &mut [f32]) {
        let (cin, cout, columns) = (o.in_channels, o.out_channels, o.columns);
        let at_count = o.phases * o.positions;
        assert!(o.u.len() >= cout * at_count * cin, "U is short");
        assert!(o.v.len() >= at_count * cin * columns, "V is short");
        assert!(m.len() >= cout * at_count * columns, "M is short");
        let row_stride = at_count * columns;
        if cout == 0 {
            return;
        }
        match self {
            Self::Gemm => {
                for phase in 0..o.phases {
                    for p in 0..o.positions {
                        let at = phase * o.positions + p;
                        let lhs =
                            gemm::View::row_major(&o.u[at * cin..], cout, cin, at_count * cin);
                        let v = &o.v[(phase * cin * o.positions + p) * columns..];
                        let rhs = gemm::View::row_major(v, cin, columns, o.positions * columns);
                        let dst = &mut m[at * columns..][..(cout - 1) * row_stride + columns];
                        gemm::matmul_into(lhs, rhs, dst, row_stride, 1.0, 1);
                    }
                }
            }
            Self::Tiles => {
                assert_eq!(columns % HALF_PANEL, 0, "V is whole groups of lanes");
                for at in 0..at_count {
                    let v = &o.v[at * columns * cin..][..columns * cin];
                    for first in (0..cout).step_by(TILE_OUT) {
                        let rows = TILE_OUT.min(cout - first);
                        // The tile's rows of U at this position, `at_count * cin` apart.
                        let u = &o.u[(first * at_count + at) * cin..];
                        let u = &u[..(rows - 1) * at_count * cin + cin];
                        for start in (0..columns).step_by(PANEL) {
                            let width = PANEL.min(columns - start);
                            let panel = &v[start * cin..][..width * cin];
                            let at_m = (first * at_count + at) * columns + start;
                            // The tile's rows of M, each `width` values from `at_m`.
                            let last = at_m + (rows - 1) * row_stride + width;
                            let dst = &mut m[at_m..last];
                            tile(rows, width, (u, at_count * cin), panel, (dst, row_stride));
                        }
                    }
                }
            }
        }
    }
}

/// `rows` rows of M of `width` values each, `dst.1` apart in `dst.0`: the products of `rows`
/// rows of U, `u.1` apart in `u.0`, and `panel`'s `width` columns ([`PANEL`] or
/// [`HALF_PANEL`] a step).
fn tile(rows: usize, width: usize, u: (&[f32], usize), panel: &[f32], dst: (&mut [f32], usize)) {
    let ((u, u_stride), (dst, dst_stride)) = (u, dst);
    let depth = panel.len() / width;
    assert!((1..=TILE_OUT).contains(&rows) && (width == PANEL || width == HALF_PANEL));
    assert!(u.len() >= (rows - 1) * u_stride + depth);
    assert!(dst.len() >= (rows - 1) * dst_stride + width);
    #[cfg(target_arch = "x86_64")]
    {
        assert!(
            Products::Tiles.runs(),
            "this CPU has no AVX2 register tiles"
        );
        let operands = x86::Operands {
            depth,
            u: u.as_ptr(),
            u_stride,
            v: panel.as_ptr(),
            m: dst.as_mut_ptr(),
            m_stride: dst_stride,
        };
        // SAFETY: the CPU has the instructions, and the asserts above keep every read and
        // write in bounds.
        #[allow(unsafe_code)]
        unsafe {
            x86::tile(rows, width / HALF_PANEL, operands)
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("no AVX2 register tiles off x86-64: {rows} {width} {u_stride} {dst_stride}");
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod x86 {
    use std::arch::x86_64::*;

    use super::TILE_OUT;

    /// Where a tile reads and writes: `depth` values of each row of U (rows `u_stride` apart)
    /// and `depth` steps of the panel of V, into rows of M `m_stride` apart.
    pub struct Operands {
        pub depth: usize,
        pub u: *const f32,
        pub u_stride: usize,
        pub v: *const f32,
        pub m: *mut f32,
        pub m_stride: usize,
    }

    /// [`rows_of`] for `rows` rows of `registers` registers.
    ///
    /// Safety: as [`rows_of`]'s.
    pub unsafe fn tile(rows: usize, registers: usize, o: Operands) {
        macro_rules! dispatch {
            ($($r:literal)*) => {
                match (rows, registers) {
                    // SAFETY: as the caller promised.
                    $(($r, 2) => unsafe { rows_of::<$r, 2>(o) },
                    ($r, 1) => unsafe { rows_of::<$r, 1>(o) },)*
                    _ => unreachable!("a tile has 1 to {TILE_OUT} rows of 1 or 2 registers"),
                }
            };
        }
        dispatch!(1 2 3 4 5 6)
    }

    /// `R` rows of M by `N` registers of columns: the sums over the depth of each row of U's
    /// values times V's (`N` registers a step). Each of U's rows is read as a stream of its
    /// own, a value broadcast per step.
    ///
    /// Safety: AVX2 and FMA are present, and the pointers hold what is read and written.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn rows_of<const R: usize, const N: usize>(o: Operands) {
        let mut acc = [[_mm256_setzero_ps(); N]; R];
        let mut u = [o.u; R];
        for (r, u) in u.iter_mut().enumerate() {
            *u = o.u.wrapping_add(r * o.u_stride);
        }
        // SAFETY: the caller keeps every read and write below in bounds.
        unsafe {
            for k in 0..o.depth {
                let v = o.v.add(k * 8 * N);
                let mut columns = [_mm256_setzero_ps(); N];
                for (n, column) in columns.iter_mut().enumerate() {
                    *column = _mm256_loadu_ps(v.add(8 * n));
                }
                for (acc, u) in acc.iter_mut().zip(&u) {
                    let u = _mm256_broadcast_ss(&*u.add(k));
                    for (acc, &column) in acc.iter_mut().zip(&columns) {
                        *acc = _mm256_fmadd_ps(u, column, *acc);
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                for (n, &acc) in acc.iter().enumerate() {
                    _mm256_storeu_ps(o.m.add(r * o.m_stride + 8 * n), acc);
                }
            }
        }
    }
}
