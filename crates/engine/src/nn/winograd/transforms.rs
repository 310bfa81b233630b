//! Winograd's input and output transforms along one side of eight tiles, factored into shared
//! terms so that every index is a constant and the tiles stay in registers, and the matrices
//! they factor (the tests hold each to its matrix).

use super::vector::Vector;
use super::{ALPHA, ALPHA6, M6};

/// Input transform B^T (6x6) for the points 0, 1, -1, 2, -2, infinity. The kernels run it
/// factored ([`input_1d`]); the tests hold that to this.
#[cfg_attr(not(test), allow(dead_code))]
pub(super) const BT: [[f32; 6]; 6] = [
    [4., 0., -5., 0., 1., 0.],
    [0., -4., -4., 1., 1., 0.],
    [0., 4., -4., -1., 1., 0.],
    [0., -2., -1., 2., 1., 0.],
    [0., 2., -1., -2., 1., 0.],
    [0., 4., 0., -5., 0., 1.],
];

/// Output transform A^T (4x6), run factored as [`output_1d`].
#[cfg_attr(not(test), allow(dead_code))]
pub(super) const AT: [[f32; 6]; 4] = [
    [1., 1., 1., 1., 1., 0.],
    [0., 1., -1., 2., -2., 0.],
    [0., 1., 1., 4., 4., 0.],
    [0., 1., -1., 8., -8., 1.],
];

/// Output transform of F(5x5, 2x2) (5x6).
#[cfg_attr(not(test), allow(dead_code))]
pub(super) const AT5: [[f32; 6]; 5] = [
    [1., 1., 1., 1., 1., 0.],
    [0., 1., -1., 2., -2., 0.],
    [0., 1., 1., 4., 4., 0.],
    [0., 1., -1., 8., -8., 0.],
    [0., 1., 1., 16., 16., 1.],
];

/// `B^T d` along one side of eight input tiles `A` wide: 6 (F(4x4, 3x3) and the phases' F(5x5,
/// 2x2)) or 8 (F(6x6, 3x3)).
#[inline(always)]
pub(super) fn input_1d<const A: usize, V: Vector>(d: &[V; A]) -> [V; A] {
    let mut out = [d[0]; A];
    match A {
        ALPHA => out.copy_from_slice(&input_1d_6(d[..ALPHA].try_into().unwrap())),
        ALPHA6 => out.copy_from_slice(&input_1d_8(d[..ALPHA6].try_into().unwrap())),
        _ => unreachable!("tiles are 6 or 8 wide"),
    }
    out
}

/// `A^T m` along one side of eight tiles of products `A` wide, `TM` outputs: see
/// [`input_1d`].
#[inline(always)]
pub(super) fn output_1d<const TM: usize, const A: usize, V: Vector>(m: &[V; A]) -> [V; TM] {
    let mut out = [m[0]; TM];
    match A {
        ALPHA => out.copy_from_slice(&output_1d_6::<TM, V>(m[..ALPHA].try_into().unwrap())),
        ALPHA6 => out.copy_from_slice(&output_1d_8(m[..ALPHA6].try_into().unwrap())),
        _ => unreachable!("tiles are 6 or 8 wide"),
    }
    out
}

/// `B^T d` along one side of eight 6x6 input tiles, factored into shared terms: a dozen
/// adds where the matrix has 22 non-zeros, every index constant so the tiles stay in
/// registers (a loop over the matrix's rows kept its sums in memory).
#[inline(always)]
pub(super) fn input_1d_6<V: Vector>(d: &[V; ALPHA]) -> [V; ALPHA] {
    let d4_minus_4d2 = sub(d[4], scaled(4.0, d[2]));
    let four_d1_minus_d3 = sub(scaled(4.0, d[1]), d[3]);
    let d4_minus_d2 = sub(d[4], d[2]);
    let twice_d1_minus_d3 = scaled(2.0, sub(d[1], d[3]));
    [
        add(sub(scaled(4.0, d[0]), scaled(5.0, d[2])), d[4]),
        sub(d4_minus_4d2, four_d1_minus_d3),
        add(d4_minus_4d2, four_d1_minus_d3),
        sub(d4_minus_d2, twice_d1_minus_d3),
        add(d4_minus_d2, twice_d1_minus_d3),
        add(sub(scaled(4.0, d[1]), scaled(5.0, d[3])), d[5]),
    ]
}

/// `A^T m` along one side of eight tiles of products, factored as [`input_1d_6`]: F(4x4, 3x3)'s
/// four rows for `TM = 4`, F(5x5, 2x2)'s five for `TM = 5` (the same points, so the same
/// terms, the point at infinity's product added to the last row).
#[inline(always)]
pub(super) fn output_1d_6<const TM: usize, V: Vector>(m: &[V; ALPHA]) -> [V; TM] {
    let (sum12, difference12) = plus_minus(m[1], m[2]);
    let (sum34, difference34) = plus_minus(m[3], m[4]);
    let rows = [
        add(add(m[0], sum12), sum34),
        add(difference12, scaled(2.0, difference34)),
        add(sum12, scaled(4.0, sum34)),
        add(difference12, scaled(8.0, difference34)),
        add(sum12, scaled(16.0, sum34)),
    ];
    let mut out = [m[0]; TM];
    out.copy_from_slice(&rows[..TM]);
    out[TM - 1] = add(out[TM - 1], m[5]);
    out
}

/// F(6x6, 3x3)'s `B^T d` (points 0, +-1, +-2, +-1/2, infinity), factored as
/// [`input_1d_6`]: rows 1 to 6 come in pairs `even +- odd` of shared halves.
#[inline(always)]
pub(super) fn input_1d_8<V: Vector>(d: &[V; ALPHA6]) -> [V; ALPHA6] {
    let (r1, r2) = plus_minus(
        sub(add(d[2], d[6]), scaled(4.25, d[4])),
        sub(add(d[1], d[5]), scaled(4.25, d[3])),
    );
    let (r3, r4) = plus_minus(
        sub(add(scaled(0.25, d[2]), d[6]), scaled(1.25, d[4])),
        add(sub(scaled(0.5, d[1]), scaled(2.5, d[3])), scaled(2.0, d[5])),
    );
    let (r5, r6) = plus_minus(
        add(sub(scaled(4.0, d[2]), scaled(5.0, d[4])), d[6]),
        add(sub(scaled(2.0, d[1]), scaled(2.5, d[3])), scaled(0.5, d[5])),
    );
    [
        add(sub(d[0], d[6]), scaled(5.25, sub(d[4], d[2]))),
        r1,
        r2,
        r3,
        r4,
        r5,
        r6,
        add(sub(d[7], d[1]), scaled(5.25, sub(d[3], d[5]))),
    ]
}

/// F(6x6, 3x3)'s `A^T m`, factored as [`output_1d_6`].
#[inline(always)]
pub(super) fn output_1d_8<V: Vector>(m: &[V; ALPHA6]) -> [V; M6] {
    let (sum12, difference12) = plus_minus(m[1], m[2]);
    let (sum34, difference34) = plus_minus(m[3], m[4]);
    let (sum56, difference56) = plus_minus(m[5], m[6]);
    [
        add(add(add(m[0], sum12), sum34), sum56),
        add(
            add(difference12, scaled(2.0, difference34)),
            scaled(0.5, difference56),
        ),
        add(add(sum12, scaled(4.0, sum34)), scaled(0.25, sum56)),
        add(
            add(difference12, scaled(8.0, difference34)),
            scaled(0.125, difference56),
        ),
        add(add(sum12, scaled(16.0, sum34)), scaled(0.0625, sum56)),
        add(
            add(
                add(difference12, scaled(32.0, difference34)),
                scaled(0.03125, difference56),
            ),
            m[7],
        ),
    ]
}

/// `(a + b, a - b)`.
#[inline(always)]
pub(super) fn plus_minus<V: Vector>(a: V, b: V) -> (V, V) {
    (add(a, b), sub(a, b))
}

#[inline(always)]
pub(super) fn add<V: Vector>(a: V, b: V) -> V {
    a.add(b)
}

#[inline(always)]
pub(super) fn sub<V: Vector>(a: V, b: V) -> V {
    a.sub(b)
}

#[inline(always)]
pub(super) fn scaled<V: Vector>(k: f32, a: V) -> V {
    a.scaled(k)
}
