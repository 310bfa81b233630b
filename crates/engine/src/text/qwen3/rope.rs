//! Qwen3's rotary position embedding, transformers' default ("rotate half") kind: feature `i`
//! of the first half of a head pairs with feature `i` of the second half, rotated by
//! `position / theta^(2i / head_dim)`. The frequencies and angles are computed in f32, as
//! transformers computes them.

use candle_core::{DType, Device, Result, Tensor};

/// `(cos, sin)`, each `(tokens, head_dim / 2)` f32, for positions `0..tokens`.
pub fn tables(
    tokens: usize,
    head_dim: usize,
    theta: f64,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let half = head_dim / 2;
    let frequencies: Vec<f32> = (0..half)
        .map(|i| (1.0 / theta.powf((2 * i) as f64 / head_dim as f64)) as f32)
        .collect();
    let angles: Vec<f32> = (0..tokens)
        .flat_map(|position| frequencies.iter().map(move |f| position as f32 * f))
        .collect();
    let cos = angles.iter().map(|a| a.cos()).collect();
    let sin = angles.iter().map(|a| a.sin()).collect();
    Ok((
        Tensor::from_vec(cos, (tokens, half), device)?,
        Tensor::from_vec(sin, (tokens, half), device)?,
    ))
}

/// Rotate `x` `(B, H, tokens, head_dim)` by the tables (cast to `x`'s dtype, as transformers
/// casts them).
pub fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (cos, sin) = match x.dtype() {
        DType::F32 => (cos.clone(), sin.clone()),
        dtype => (cos.to_dtype(dtype)?, sin.to_dtype(dtype)?),
    };
    candle_nn::rotary_emb::rope(&x.contiguous()?, &cos, &sin)
}
