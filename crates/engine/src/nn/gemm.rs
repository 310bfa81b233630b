//! The one place the engine calls the `gemm` crate directly: a bounds-checked f32 matrix product
//! on strided views, single-threaded for kernels that already run in parallel.

use std::mem::MaybeUninit;

/// A `rows x cols` matrix read from `data` at `row * row_stride + col * col_stride`.
#[derive(Clone, Copy)]
pub struct View<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> View<'a> {
    /// A dense row-major matrix whose rows are `row_stride` apart.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize, row_stride: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride,
            col_stride: 1,
        }
    }

    /// The transpose, without moving data.
    pub fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    /// Rows `band` of the matrix.
    fn band(self, band: std::ops::Range<usize>) -> Self {
        assert!(
            band.start <= band.end && band.end <= self.rows,
            "band past the rows"
        );
        let start = (band.start * self.row_stride).min(self.data.len());
        Self {
            data: &self.data[start..],
            rows: band.len(),
            ..self
        }
    }

    fn fits(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride
                < self.data.len()
    }
}

/// `dst = scale * lhs * rhs`, `dst` row-major `lhs.rows x rhs.cols`.
pub fn matmul(lhs: View, rhs: View, dst: &mut [f32], scale: f32) {
    let row_stride = rhs.cols;
    assert_eq!(dst.len(), lhs.rows * rhs.cols, "destination size");
    matmul_into(lhs, rhs, dst, row_stride, scale, 1);
}

/// `dst = scale * lhs * rhs` into the `lhs.rows x rhs.cols` block that starts at `dst[0]` with
/// rows `dst_row_stride` apart (a band of columns of a wider matrix), on up to `threads`
/// threads of the rayon pool (1 for kernels that already run in parallel).
pub fn matmul_into(
    lhs: View,
    rhs: View,
    dst: &mut [f32],
    dst_row_stride: usize,
    scale: f32,
    threads: usize,
) {
    // SAFETY: `product` writes only initialised values.
    #[allow(unsafe_code)]
    let data = unsafe { super::buffers::as_uninit_mut(dst) };
    product(lhs, rhs, Dst::new(data, dst_row_stride, 1), scale, threads);
}

/// `dst = x w^T` with `w` a linear layer's weight as stored, `out x inner` (`x` is
/// `rows x inner`, `dst` row-major `rows x out`), on up to `threads` threads. The gemm crate
/// is asked for `dst^T = w x^T`, written through `dst`'s transposed strides: that form packs
/// `w` once per call, and with a few hundred rows or more runs within a few tens of percent of
/// the product with a pre-transposed weight, faster on some shapes (`cargo bench -p
/// seedbed-engine --bench kernels -- stored`). With a few threads, each takes a band of `w`'s
/// rows ([`bands`]). The result is written into fresh memory, never zeroed first.
pub fn times_transposed(x: View, w: View, threads: usize) -> Vec<f32> {
    let len = x.rows * w.rows;
    let mut values = Vec::with_capacity(len);
    let start = SharedPtr(values.spare_capacity_mut().as_mut_ptr());
    let band_product = |band: std::ops::Range<usize>, threads: usize| {
        // SAFETY: `values` has room for `len` elements and outlives this call. Band `b` of
        // `w`'s rows is the block of rows `b` of `dst^T` (row stride 1, column stride
        // `w.rows`): elements `i + j * w.rows` for `i` in the band, so bands share none,
        // and each block ends inside the buffer.
        #[allow(unsafe_code)]
        let dst = unsafe {
            Dst::from_raw(
                start.at(band.start),
                len.saturating_sub(band.start),
                1,
                w.rows,
            )
        };
        product(w.band(band), x.t(), dst, 1.0, threads);
    };
    let bands = bands(w.rows, threads);
    if bands.len() <= 1 {
        band_product(0..w.rows, threads);
    } else {
        use rayon::prelude::*;
        bands.into_par_iter().for_each(|band| band_product(band, 1));
    }
    // SAFETY: with row stride 1 and column stride `w.rows`, the bands' blocks together are
    // all `len` elements, and `product` writes every element of its block.
    #[allow(unsafe_code)]
    unsafe {
        values.set_len(len)
    };
    values
}

/// Bands of a weight's `out` rows for [`times_transposed`]: one per thread, or one for the
/// gemm crate's own threads, which each pack every block of the weight they multiply (with
/// two, the whole weight twice), where a band packs its part of the weight and all of the
/// activations. Intel Xeon (AVX-512), 2 threads, one band against two: 1024 rows of 1280 ->
/// 10240 93 against 85 ms, of 5120 -> 1280 47 against 44, 4096 rows of 2560 -> 640 43
/// against 41 (PyTorch 97, 42, 41). A band takes at least [`MIN_BAND`] rows, so that packing
/// the activations stays small beside its product, in whole groups of 16 (a vector).
fn bands(out: usize, threads: usize) -> Vec<std::ops::Range<usize>> {
    let count = threads.min(out / MIN_BAND).max(1);
    let size = out.div_ceil(count).next_multiple_of(16).max(1);
    (0..out)
        .step_by(size)
        .map(|first| first..(first + size).min(out))
        .collect()
}

/// The fewest weight rows a band of [`times_transposed`] takes.
const MIN_BAND: usize = 256;

/// The destination's start, handed to the bands, which write disjoint elements through it.
#[derive(Clone, Copy)]
struct SharedPtr(*mut MaybeUninit<f32>);

// SAFETY: the bands write disjoint elements (see `times_transposed`) of a buffer that
// outlives them.
#[allow(unsafe_code)]
unsafe impl Send for SharedPtr {}
#[allow(unsafe_code)]
unsafe impl Sync for SharedPtr {}

impl SharedPtr {
    /// The element `offset` past the start (a method, so that closures capture the wrapper,
    /// not its raw pointer).
    fn at(self, offset: usize) -> *mut MaybeUninit<f32> {
        self.0.wrapping_add(offset)
    }
}

/// A destination matrix: element `(i, j)` at `i * row_stride + j * col_stride` of the `len`
/// elements from `data`, written without being read (it may start uninitialised).
struct Dst<'a> {
    data: *mut MaybeUninit<f32>,
    len: usize,
    row_stride: usize,
    col_stride: usize,
    _borrow: std::marker::PhantomData<&'a mut [MaybeUninit<f32>]>,
}

impl<'a> Dst<'a> {
    fn new(data: &'a mut [MaybeUninit<f32>], row_stride: usize, col_stride: usize) -> Self {
        Self {
            len: data.len(),
            data: data.as_mut_ptr(),
            row_stride,
            col_stride,
            _borrow: std::marker::PhantomData,
        }
    }

    /// Safety: `data` is valid for writes of `len` elements while the result lives, and
    /// nothing else touches the elements of the block that [`product`] writes through it.
    #[allow(unsafe_code)]
    unsafe fn from_raw(
        data: *mut MaybeUninit<f32>,
        len: usize,
        row_stride: usize,
        col_stride: usize,
    ) -> Self {
        Self {
            data,
            len,
            row_stride,
            col_stride,
            _borrow: std::marker::PhantomData,
        }
    }
}

/// `dst = scale * lhs * rhs`, every element of the `lhs.rows x rhs.cols` block written.
fn product(lhs: View, rhs: View, dst: Dst, scale: f32, threads: usize) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert_eq!(rhs.rows, k, "inner dimensions differ");
    assert!(lhs.fits() && rhs.fits(), "a view reaches past its slice");
    if m == 0 || n == 0 {
        return;
    }
    let (rs, cs) = (dst.row_stride, dst.col_stride);
    assert!(
        (cs == 1 && n <= rs) || (rs == 1 && m <= cs),
        "destination elements overlap"
    );
    assert!(
        (m - 1) * rs + (n - 1) * cs < dst.len,
        "the destination block reaches past its slice"
    );
    if k == 0 {
        for i in 0..m {
            for j in 0..n {
                // SAFETY: inside the block, which the check above keeps inside `dst`.
                #[allow(unsafe_code)]
                unsafe {
                    dst.data.add(i * rs + j * cs).write(MaybeUninit::new(0.0))
                };
            }
        }
        return;
    }
    let parallelism = match threads {
        0 | 1 => gemm::Parallelism::None,
        threads => gemm::Parallelism::Rayon(threads),
    };
    // SAFETY: `fits` keeps every element either view can address inside its slice; the
    // destination block's last element is inside `dst`, whose block is this call's alone, so
    // it overlaps neither input, and the stride check keeps its elements apart. Without
    // `read_dst` gemm writes every element of the block and reads none.
    #[allow(unsafe_code)]
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.data.cast::<f32>(),
            cs as isize,
            rs as isize,
            false,
            lhs.data.as_ptr(),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.data.as_ptr(),
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            0.0,
            scale,
            false,
            false,
            false,
            parallelism,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strided_and_transposed_views_multiply_correctly() {
        // a is 2x3 stored with row stride 4; b^T is stored as 2x3, so b is 3x2.
        let a = [1., 2., 3., 0., 4., 5., 6., 0.];
        let bt = [1., 0., 2., 0., 1., 0.];
        let mut dst = [0f32; 4];
        matmul(
            View::row_major(&a, 2, 3, 4),
            View::row_major(&bt, 2, 3, 3).t(),
            &mut dst,
            2.0,
        );
        assert_eq!(dst, [14., 4., 32., 10.]);
    }

    #[test]
    fn a_stored_weight_multiplies_as_its_transpose() {
        // x is 3x2, w (2 outputs of 2 inputs) as a linear layer stores it: dst = x w^T.
        let x = [1., 2., 3., 4., 5., 6.];
        let w = [1., 0., 1., -1.];
        let dst = times_transposed(
            View::row_major(&x, 3, 2, 2),
            View::row_major(&w, 2, 2, 2),
            2,
        );
        assert_eq!(dst, [1., -1., 3., -1., 5., -1.]);
        // No inner dimension: zeros, every one written.
        let empty = times_transposed(
            View::row_major(&[], 3, 0, 0),
            View::row_major(&[], 2, 0, 0),
            1,
        );
        assert_eq!(empty, [0.; 6]);
    }

    #[test]
    fn a_weight_in_bands_gives_the_whole_product() {
        // Bands of whole vectors of rows, at least `MIN_BAND` rows each.
        assert_eq!(bands(600, 2), [0..304, 304..600]);
        assert_eq!(bands(600, 8), [0..304, 304..600]);
        let one = bands(300, 2);
        assert_eq!((one.len(), one[0].clone()), (1, 0..300));
        assert!(bands(0, 2).is_empty());
        let (rows, inner, out) = (37, 19, 600);
        let x = crate::nn::testing::random(rows * inner, 1);
        let w = crate::nn::testing::random(out * inner, 2);
        for threads in [1, 2, 3] {
            let dst = times_transposed(
                View::row_major(&x, rows, inner, inner),
                View::row_major(&w, out, inner, inner),
                threads,
            );
            for r in 0..rows {
                for c in 0..out {
                    let want: f32 = (0..inner)
                        .map(|k| x[r * inner + k] * w[c * inner + k])
                        .sum();
                    let got = dst[r * out + c];
                    assert!((got - want).abs() < 1e-5, "[{r}, {c}] {got} vs {want}");
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "past its slice")]
    fn a_view_larger_than_its_data_is_refused() {
        let mut dst = [0f32; 4];
        matmul(
            View::row_major(&[1.; 5], 2, 3, 3),
            View::row_major(&[1.; 6], 3, 2, 2),
            &mut dst,
            1.0,
        );
    }

    #[test]
    fn a_band_of_columns_is_written_in_place() {
        // 2x2 identity times [[1, 2], [3, 4]] into columns 1..3 of a 2x4 matrix of -1s.
        let mut dst = [-1f32; 8];
        matmul_into(
            View::row_major(&[1., 0., 0., 1.], 2, 2, 2),
            View::row_major(&[1., 2., 3., 4.], 2, 2, 2),
            &mut dst[1..],
            4,
            1.0,
            2,
        );
        assert_eq!(dst, [-1., 1., 2., -1., -1., 3., 4., -1.]);
    }
}
