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
    // SAFETY: `MaybeUninit<f32>` has the layout of `f32`, and `product` writes only
    // initialised values through it, so `dst` stays initialised.
    #[allow(unsafe_code)]
    let data = unsafe { &mut *(dst as *mut [f32] as *mut [MaybeUninit<f32>]) };
    let dst = Dst {
        data,
        row_stride: dst_row_stride,
        col_stride: 1,
    };
    product(lhs, rhs, dst, scale, threads);
}

/// `dst = x w^T` with `w` a linear layer's weight as stored, `out x inner` (`x` is
/// `rows x inner`, `dst` row-major `rows x out`), on up to `threads` threads. The gemm crate
/// is asked for `dst^T = w x^T`, written through `dst`'s transposed strides: that form packs
/// `w` once per call, and with a few hundred rows or more runs within a few tens of percent of
/// the product with a pre-transposed weight, faster on some shapes (`cargo bench -p
/// seedbed-engine --bench kernels -- stored`). The result is written into fresh memory, never
/// zeroed first.
pub fn times_transposed(x: View, w: View, threads: usize) -> Vec<f32> {
    let len = x.rows * w.rows;
    let mut values = Vec::with_capacity(len);
    let dst = Dst {
        data: &mut values.spare_capacity_mut()[..len],
        row_stride: 1,
        col_stride: w.rows,
    };
    product(w, x.t(), dst, 1.0, threads);
    // SAFETY: with row stride 1 and column stride `w.rows`, the `w.rows x x.rows` block is
    // all `len` elements, and `product` writes every element of its block.
    #[allow(unsafe_code)]
    unsafe {
        values.set_len(len)
    };
    values
}

/// A destination matrix: element `(i, j)` at `i * row_stride + j * col_stride`, written
/// without being read (it may start uninitialised).
struct Dst<'a> {
    data: &'a mut [MaybeUninit<f32>],
    row_stride: usize,
    col_stride: usize,
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
        (m - 1) * rs + (n - 1) * cs < dst.data.len(),
        "the destination block reaches past its slice"
    );
    if k == 0 {
        for i in 0..m {
            for j in 0..n {
                dst.data[i * rs + j * cs] = MaybeUninit::new(0.0);
            }
        }
        return;
    }
    let parallelism = match threads {
        0 | 1 => gemm::Parallelism::None,
        threads => gemm::Parallelism::Rayon(threads),
    };
    // SAFETY: `fits` keeps every element either view can address inside its slice; the
    // destination block's last element is inside `dst`, which is exclusively borrowed, so it
    // overlaps neither input, and the stride check keeps its elements apart. Without
    // `read_dst` gemm writes every element of the block and reads none.
    #[allow(unsafe_code)]
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.data.as_mut_ptr().cast::<f32>(),
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
