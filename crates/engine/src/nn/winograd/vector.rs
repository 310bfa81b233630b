//! The eight lanes the transforms work in (lane `l` holds tile `l`): plain `[f32; 8]` arrays on
//! every CPU, AVX2 registers where the CPU has them. From the arrays, the compiler built the
//! lane vectors of eight tiles' columns on the stack from single values and read them back
//! whole (a store-forwarding stall per vector), and spilled the transforms' results the same
//! way: a sixth of a 128-channel convolution's time. The AVX2 type gathers the columns by
//! transposes of 4x4 blocks, keeps the values in registers and stores them whole. Both run the
//! same operations in the same order (no fused multiply-adds), so they give the same bits.

use std::mem::MaybeUninit;

use super::{LANES, Lanes};

pub(super) trait Vector: Copy {
    fn splat(value: f32) -> Self;
    /// The first eight of `values`.
    fn load(values: &[f32]) -> Self;
    /// Into the first eight of `out`.
    fn store(self, out: &mut [f32]);
    fn store_uninit(self, out: &mut [MaybeUninit<f32>]);
    fn lanes(self) -> Lanes;
    fn add(self, other: Self) -> Self;
    fn sub(self, other: Self) -> Self;
    /// Each lane times `k`.
    fn scaled(self, k: f32) -> Self;
    /// The first `A` (up to 8) columns of eight tiles `TM` apart: lane `l` of column `j` is
    /// `row[TM l + j]`. `row` holds at least [`row_len::<TM>`] values.
    fn columns<const TM: usize, const A: usize>(row: &[f32]) -> [Self; A];
    /// The row of eight tiles four wide, from their four columns: value `4 l + j` of the
    /// row is lane `l` of `y[j]`.
    fn row4(y: &[Self; 4]) -> [Self; 4];
    /// The row of eight tiles six wide (F(6x6, 3x3)'s), written into the first 48 of `row`:
    /// value `6 l + j` is lane `l` of `y[j]`.
    fn row6(y: &[Self; 6], row: &mut [MaybeUninit<f32>]);
    /// The row of eight tiles ten wide (F(5x5, 2x2)'s two phases side by side), written
    /// into the first 80 of `row`: value `10 l + q` is lane `l` of `y[q]`.
    fn row10(y: &[Self; 10], row: &mut [MaybeUninit<f32>]);
}

/// Values [`Vector::columns`] reads from its row: whole lanes from the last tile's start.
pub(super) const fn row_len<const TM: usize>() -> usize {
    (LANES - 1) * TM + LANES
}

impl Vector for Lanes {
    #[inline(always)]
    fn splat(value: f32) -> Self {
        [value; LANES]
    }

    #[inline(always)]
    fn load(values: &[f32]) -> Self {
        values[..LANES].try_into().unwrap()
    }

    #[inline(always)]
    fn store(self, out: &mut [f32]) {
        out[..LANES].copy_from_slice(&self);
    }

    #[inline(always)]
    fn store_uninit(self, out: &mut [MaybeUninit<f32>]) {
        for (out, value) in out[..LANES].iter_mut().zip(self) {
            out.write(value);
        }
    }

    #[inline(always)]
    fn lanes(self) -> Lanes {
        self
    }

    #[inline(always)]
    fn add(self, other: Self) -> Self {
        let mut out = self;
        for (o, b) in out.iter_mut().zip(other) {
            *o += b;
        }
        out
    }

    #[inline(always)]
    fn sub(self, other: Self) -> Self {
        let mut out = self;
        for (o, b) in out.iter_mut().zip(other) {
            *o -= b;
        }
        out
    }

    #[inline(always)]
    fn scaled(self, k: f32) -> Self {
        let mut out = self;
        for o in out.iter_mut() {
            *o *= k;
        }
        out
    }

    #[inline(always)]
    fn columns<const TM: usize, const A: usize>(row: &[f32]) -> [Self; A] {
        let span = &row[..row_len::<TM>()];
        let mut columns = [[0f32; LANES]; A];
        for (j, column) in columns.iter_mut().enumerate() {
            for (l, value) in column.iter_mut().enumerate() {
                *value = span[l * TM + j];
            }
        }
        columns
    }

    #[inline(always)]
    fn row4(y: &[Self; 4]) -> [Self; 4] {
        let mut row = [[0f32; LANES]; 4];
        for (x, value) in row.as_flattened_mut().iter_mut().enumerate() {
            *value = y[x % 4][x / 4];
        }
        row
    }

    #[inline(always)]
    fn row6(y: &[Self; 6], row: &mut [MaybeUninit<f32>]) {
        lanes_row(y, row);
    }

    #[inline(always)]
    fn row10(y: &[Self; 10], row: &mut [MaybeUninit<f32>]) {
        lanes_row(y, row);
    }
}

/// The row of eight tiles `W` wide from their columns in arrays: value `W l + q` is lane `l`
/// of `y[q]`.
#[inline(always)]
fn lanes_row<const W: usize>(y: &[Lanes; W], row: &mut [MaybeUninit<f32>]) {
    for (x, value) in row[..W * LANES].iter_mut().enumerate() {
        value.write(y[x % W][x / W]);
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) use x86::Avx2;

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod x86 {
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    use super::{LANES, Lanes, Vector, row_len};

    /// Eight lanes in an AVX2 register. Made only where the CPU has AVX2 (the convolution
    /// picks this type after asking), which every `unsafe` below relies on.
    #[derive(Clone, Copy)]
    pub(in super::super) struct Avx2(__m256);

    /// A 4x4 transpose within each 128-bit half: lane `i` of `out[j]` is lane `j` of `v[i]`,
    /// half by half. Only for `Avx2`'s methods.
    #[inline(always)]
    fn transpose_halves(v: [__m256; 4]) -> [__m256; 4] {
        // SAFETY: called only where an `Avx2` exists, so the CPU has AVX2.
        unsafe {
            // Per half: [v0_0 v1_0 v0_1 v1_1] and [v0_2 v1_2 v0_3 v1_3], v2 and v3 alike.
            let (low01, high01) = (
                _mm256_unpacklo_ps(v[0], v[1]),
                _mm256_unpackhi_ps(v[0], v[1]),
            );
            let (low23, high23) = (
                _mm256_unpacklo_ps(v[2], v[3]),
                _mm256_unpackhi_ps(v[2], v[3]),
            );
            [
                _mm256_shuffle_ps::<0x44>(low01, low23),
                _mm256_shuffle_ps::<0xEE>(low01, low23),
                _mm256_shuffle_ps::<0x44>(high01, high23),
                _mm256_shuffle_ps::<0xEE>(high01, high23),
            ]
        }
    }

    /// Lane `l` of `first` and of `second` side by side at `at + stride l`, for each tile
    /// `l`. Only for `Avx2`'s methods.
    ///
    /// Safety: the CPU has AVX2; the eight pairs' places are writable.
    #[inline(always)]
    unsafe fn store_pairs(first: __m256, second: __m256, at: *mut f32, stride: usize) {
        // SAFETY: as the caller promises.
        unsafe {
            // Per half: the pairs of tiles (0, 1 | 4, 5) and (2, 3 | 6, 7).
            let pairs = [
                (_mm256_unpacklo_ps(first, second), [0, 1, 4, 5]),
                (_mm256_unpackhi_ps(first, second), [2, 3, 6, 7]),
            ];
            for (pairs, tiles) in pairs {
                let (low, high) = (
                    _mm_castps_si128(_mm256_castps256_ps128(pairs)),
                    _mm_castps_si128(_mm256_extractf128_ps::<1>(pairs)),
                );
                let values = [
                    _mm_cvtsi128_si64(low),
                    _mm_extract_epi64::<1>(low),
                    _mm_cvtsi128_si64(high),
                    _mm_extract_epi64::<1>(high),
                ];
                for (l, pair) in tiles.into_iter().zip(values) {
                    at.add(stride * l).cast::<i64>().write_unaligned(pair);
                }
            }
        }
    }

    /// Values `j0 .. j0 + 4` of tiles `l` (low half) and `l + 4` (high half) of eight tiles
    /// `TM` apart. Only for `Avx2`'s methods. A function, not a closure or an array's `map`,
    /// so that it is inlined into the AVX2 copy: those were built apart without AVX and
    /// called, their intrinsics with them, for each column.
    #[inline(always)]
    fn pair<const TM: usize>(row: &[f32], l: usize, j0: usize) -> __m256 {
        let (low, high) = (&row[l * TM + j0..][..4], &row[(l + 4) * TM + j0..][..4]);
        // SAFETY: called only where an `Avx2` exists, so the CPU has AVX2; four values each.
        unsafe {
            let low = _mm_loadu_ps(low.as_ptr());
            let high = _mm_loadu_ps(high.as_ptr());
            _mm256_insertf128_ps::<1>(_mm256_castps128_ps256(low), high)
        }
    }

    impl Vector for Avx2 {
        #[inline(always)]
        fn splat(value: f32) -> Self {
            // SAFETY: see `Avx2`.
            Self(unsafe { _mm256_set1_ps(value) })
        }

        #[inline(always)]
        fn load(values: &[f32]) -> Self {
            let values = &values[..LANES];
            // SAFETY: see `Avx2`; eight values are there.
            Self(unsafe { _mm256_loadu_ps(values.as_ptr()) })
        }

        #[inline(always)]
        fn store(self, out: &mut [f32]) {
            let out = &mut out[..LANES];
            // SAFETY: see `Avx2`; eight values are there.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr(), self.0) }
        }

        #[inline(always)]
        fn store_uninit(self, out: &mut [MaybeUninit<f32>]) {
            let out = &mut out[..LANES];
            // SAFETY: see `Avx2`; room for eight values, which the store initialises.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr().cast(), self.0) }
        }

        #[inline(always)]
        fn lanes(self) -> Lanes {
            // SAFETY: eight f32 either way.
            unsafe { std::mem::transmute::<__m256, Lanes>(self.0) }
        }

        #[inline(always)]
        fn add(self, other: Self) -> Self {
            // SAFETY: see `Avx2`.
            Self(unsafe { _mm256_add_ps(self.0, other.0) })
        }

        #[inline(always)]
        fn sub(self, other: Self) -> Self {
            // SAFETY: see `Avx2`.
            Self(unsafe { _mm256_sub_ps(self.0, other.0) })
        }

        #[inline(always)]
        fn scaled(self, k: f32) -> Self {
            // SAFETY: see `Avx2`.
            Self(unsafe { _mm256_mul_ps(self.0, _mm256_set1_ps(k)) })
        }

        /// Tiles `l` and `l + 4` share a vector (one per half), so that 4x4 transposes
        /// within the halves make the columns with their lanes in order.
        #[inline(always)]
        fn columns<const TM: usize, const A: usize>(row: &[f32]) -> [Self; A] {
            let row = &row[..row_len::<TM>()];
            let mut pairs = [[Self::splat(0.0).0; 4]; 2];
            for (half, pairs) in pairs.iter_mut().enumerate() {
                for (l, tiles) in pairs.iter_mut().enumerate() {
                    *tiles = pair::<TM>(row, l, 4 * half);
                }
            }
            let [c0, c1, c2, c3] = transpose_halves(pairs[0]);
            // Of values 4..8 the first A - 4 are columns (the others' shuffles are dropped).
            let [c4, c5, c6, c7] = transpose_halves(pairs[1]);
            let all = [c0, c1, c2, c3, c4, c5, c6, c7];
            let mut columns = [Self(c0); A];
            for (column, &values) in columns.iter_mut().zip(&all) {
                *column = Self(values);
            }
            columns
        }

        /// The inverse transpose: tiles `l` and `l + 4` made in the two halves of a vector,
        /// then the halves put in order.
        #[inline(always)]
        fn row4(y: &[Self; 4]) -> [Self; 4] {
            // Tiles (0 | 4), (1 | 5), (2 | 6), (3 | 7).
            let [t04, t15, t26, t37] = transpose_halves([y[0].0, y[1].0, y[2].0, y[3].0]);
            // SAFETY: see `Avx2`.
            unsafe {
                [
                    Self(_mm256_permute2f128_ps::<0x20>(t04, t15)),
                    Self(_mm256_permute2f128_ps::<0x20>(t26, t37)),
                    Self(_mm256_permute2f128_ps::<0x31>(t04, t15)),
                    Self(_mm256_permute2f128_ps::<0x31>(t26, t37)),
                ]
            }
        }

        /// Values 0..4 of tiles (l | l + 4) by 4x4 transposes in the halves, stored a half at
        /// a time; 4 and 5 interleaved and stored in pairs.
        #[inline(always)]
        fn row6(y: &[Self; 6], row: &mut [MaybeUninit<f32>]) {
            let r = [y[0].0, y[1].0, y[2].0, y[3].0, y[4].0, y[5].0];
            let quads = transpose_halves([r[0], r[1], r[2], r[3]]);
            let row = &mut row[..48];
            // SAFETY: see `Avx2`; each store ends at 6 l + 4 or 6 l + 6 <= 48, and between
            // them they write all 48 values.
            unsafe {
                let at = row.as_mut_ptr().cast::<f32>();
                for (l, quad) in quads.into_iter().enumerate() {
                    _mm_storeu_ps(at.add(6 * l), _mm256_castps256_ps128(quad));
                    _mm_storeu_ps(at.add(6 * (l + 4)), _mm256_extractf128_ps::<1>(quad));
                }
                store_pairs(r[4], r[5], at.add(4), 6);
            }
        }

        /// Values 0..8 of each tile by an 8x8 transpose, stored whole; 8 and 9 interleaved
        /// and stored in pairs.
        #[inline(always)]
        fn row10(y: &[Self; 10], row: &mut [MaybeUninit<f32>]) {
            let mut r = [y[0].0; 10];
            for (r, y) in r.iter_mut().zip(y) {
                *r = y.0;
            }
            // Halves: values 0..4 of tiles (j | j + 4) in first[j], 4..8 in second[j].
            let first = transpose_halves([r[0], r[1], r[2], r[3]]);
            let second = transpose_halves([r[4], r[5], r[6], r[7]]);
            let row = &mut row[..80];
            // SAFETY: see `Avx2`; each store ends at 10 l + 8 or 10 l + 10 <= 80, and
            // between them they write all 80 values.
            unsafe {
                let at = row.as_mut_ptr().cast::<f32>();
                for j in 0..4 {
                    let low = _mm256_permute2f128_ps::<0x20>(first[j], second[j]);
                    let high = _mm256_permute2f128_ps::<0x31>(first[j], second[j]);
                    _mm256_storeu_ps(at.add(10 * j), low);
                    _mm256_storeu_ps(at.add(10 * (j + 4)), high);
                }
                store_pairs(r[8], r[9], at.add(8), 10);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::ALPHA;
    use super::*;

    fn columns_agree<const TM: usize>() {
        let row: Vec<f32> = (0..row_len::<TM>() + 3).map(|i| i as f32 + 0.5).collect();
        let expected: [Lanes; ALPHA] =
            std::array::from_fn(|j| std::array::from_fn(|l| row[TM * l + j]));
        assert_eq!(<Lanes as Vector>::columns::<TM, ALPHA>(&row), expected);
        #[cfg(target_arch = "x86_64")]
        if crate::nn::math::has_avx2_fma() {
            assert_eq!(
                Avx2::columns::<TM, ALPHA>(&row).map(Vector::lanes),
                expected
            );
        }
        let expected: [Lanes; 8] =
            std::array::from_fn(|j| std::array::from_fn(|l| row[TM * l + j]));
        assert_eq!(<Lanes as Vector>::columns::<TM, 8>(&row), expected);
        #[cfg(target_arch = "x86_64")]
        if crate::nn::math::has_avx2_fma() {
            assert_eq!(Avx2::columns::<TM, 8>(&row).map(Vector::lanes), expected);
        }
    }

    #[test]
    fn columns_are_the_tiles_values() {
        columns_agree::<4>();
        columns_agree::<5>();
        columns_agree::<6>();
    }

    /// `write` (a row of eight tiles `W` wide, `N = 8 W` values) puts value `W l + q` from lane
    /// `l` of `y[q]`, and writes nothing past the row.
    fn row_agrees<const W: usize, const N: usize>(
        write_lanes: fn(&[Lanes; W], &mut [MaybeUninit<f32>]),
        #[cfg(target_arch = "x86_64")] write_avx2: fn(&[Avx2; W], &mut [MaybeUninit<f32>]),
    ) {
        let y: [Lanes; W] = std::array::from_fn(|q| std::array::from_fn(|l| (100 * l + q) as f32));
        let expected: Vec<f32> = (0..N).map(|x| (100 * (x / W) + x % W) as f32).collect();
        // One past the row, to see that nothing is written there.
        let written = |row: Vec<MaybeUninit<f32>>| {
            let row: Vec<f32> = row
                .into_iter()
                .map(|v| {
                    // SAFETY: initialised below before the row is written over it.
                    #[allow(unsafe_code)]
                    unsafe {
                        v.assume_init()
                    }
                })
                .collect();
            assert_eq!(row[N], -1.0);
            row[..N].to_vec()
        };
        let mut row = vec![MaybeUninit::new(-1f32); N + 1];
        write_lanes(&y, &mut row);
        assert_eq!(written(row), expected);
        #[cfg(target_arch = "x86_64")]
        if crate::nn::math::has_avx2_fma() {
            let mut row = vec![MaybeUninit::new(-1f32); N + 1];
            write_avx2(&y.map(|y| Avx2::load(&y)), &mut row);
            assert_eq!(written(row), expected);
        }
    }

    #[test]
    fn row6_and_row10_put_each_tile_in_its_place() {
        row_agrees::<6, 48>(
            <Lanes as Vector>::row6,
            #[cfg(target_arch = "x86_64")]
            Avx2::row6,
        );
        row_agrees::<10, 80>(
            <Lanes as Vector>::row10,
            #[cfg(target_arch = "x86_64")]
            Avx2::row10,
        );
    }

    #[test]
    fn row4_puts_each_tile_in_its_place() {
        let y: [Lanes; 4] = std::array::from_fn(|j| std::array::from_fn(|l| (10 * l + j) as f32));
        let expected: Vec<f32> = (0..32).map(|x| (10 * (x / 4) + x % 4) as f32).collect();
        assert_eq!(<Lanes as Vector>::row4(&y).as_flattened(), expected);
        #[cfg(target_arch = "x86_64")]
        if crate::nn::math::has_avx2_fma() {
            let y = y.map(|y| Avx2::load(&y));
            assert_eq!(Avx2::row4(&y).map(Vector::lanes).as_flattened(), expected);
        }
    }
}
