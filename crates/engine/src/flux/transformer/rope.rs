//! FLUX's rotary position embedding over three axes: a token's id is (0, row, col) for image
//! tokens and (0, 0, 0) for text tokens; each axis rotates its own slice of a head's features.
//! Angles are computed in f64 and their cos/sin stored in f32, each repeated for the pair of
//! features it rotates, as diffusers' `FluxPosEmbed` does.

use candle_core::{DType, Device, Result, Tensor};

/// `(cos, sin)`, each `(tokens, head_dim)` f32, for `ids` (one `[f64; 3]` per token).
pub fn tables(
    ids: &[[f64; 3]],
    axes: &[usize],
    theta: f64,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let width: usize = axes.iter().sum();
    let mut cos = Vec::with_capacity(ids.len() * width);
    let mut sin = Vec::with_capacity(ids.len() * width);
    for id in ids {
        for (axis, &dim) in axes.iter().enumerate() {
            for i in 0..dim / 2 {
                let frequency = 1.0 / theta.powf((2 * i) as f64 / dim as f64);
                let angle = id[axis] * frequency;
                let (c, s) = (angle.cos() as f32, angle.sin() as f32);
                cos.extend([c, c]);
                sin.extend([s, s]);
            }
        }
    }
    let shape = (ids.len(), width);
    Ok((
        Tensor::from_vec(cos, shape, device)?,
        Tensor::from_vec(sin, shape, device)?,
    ))
}

/// Rotate `x` `(B, H, tokens, D)` feature pairs (x0, x1) by the tables: `x * cos + rot(x) * sin`
/// with `rot(x0, x1) = (-x1, x0)`, in f32.
pub fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let (b, h, n, d) = x.dims4()?;
    let pairs = x.reshape((b, h, n, d / 2, 2))?;
    let first = pairs.narrow(4, 0, 1)?;
    let second = pairs.narrow(4, 1, 1)?;
    let rotated = Tensor::cat(&[&second.neg()?, &first], 4)?.reshape((b, h, n, d))?;
    x.broadcast_mul(cos)?
        .add(&rotated.broadcast_mul(sin)?)?
        .to_dtype(dtype)
}

/// Text ids (all zero) then image ids `(0, row, col)` on the packed `rows x cols` grid.
pub fn ids(text_tokens: usize, rows: usize, cols: usize) -> Vec<[f64; 3]> {
    let text = std::iter::repeat_n([0.0; 3], text_tokens);
    let image = (0..rows).flat_map(|r| (0..cols).map(move |c| [0.0, r as f64, c as f64]));
    text.chain(image).collect()
}
