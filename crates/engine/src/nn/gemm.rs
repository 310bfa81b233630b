//! The one place the engine calls the `gemm` crate directly: a bounds-checked, single-threaded
//! f32 matrix product on strided views, for kernels that already run in parallel.

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
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert_eq!(rhs.rows, k, "inner dimensions differ");
    assert!(lhs.fits() && rhs.fits(), "a view reaches past its slice");
    assert_eq!(dst.len(), m * n, "destination size");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        dst.fill(0.0);
        return;
    }
    // SAFETY: `fits` keeps every element either view can address inside its slice, `dst` is
    // exactly m x n row-major and exclusively borrowed, so it overlaps neither input.
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
            gemm::Parallelism::None,
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
}
