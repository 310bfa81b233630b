//! Z-Image's token layout and rotary position embedding.
//!
//! Image and caption tokens are each padded to a multiple of [`SEQ_MULTIPLE`]. Each token has a
//! 3-axis position id: caption slot `i` (pad slots included) is `(1 + i, 0, 0)`; image patch
//! `(row, col)` is `(caption_padded + 1, row, col)`, so every image sits one "frame" after its
//! caption; image pad slots are `(0, 0, 0)`. Each axis rotates its own slice of a head's
//! features, consecutive pairs `(x0, x1)` as complex numbers (not rotate-half), which is
//! candle's interleaved `rope_i` kernel: one pass instead of the half-dozen tensor ops of a
//! rotate-by-hand. Angles are formed in f64, rounded to f32 and then turned into cos/sin in
//! f32, as diffusers' `RopeEmbedder` builds its complex64 table.

use candle_core::{DType, Device, Result, Tensor};

/// Image and caption sequences are each padded to a multiple of this.
pub const SEQ_MULTIPLE: usize = 32;

/// `len` rounded up to a whole number of [`SEQ_MULTIPLE`] slots.
pub fn padded(len: usize) -> usize {
    len.next_multiple_of(SEQ_MULTIPLE)
}

/// Ids of the padded caption of `caption_tokens` real tokens: `(1 + i, 0, 0)` for every slot.
pub fn caption_ids(caption_tokens: usize) -> Vec<[u32; 3]> {
    (0..padded(caption_tokens))
        .map(|i| [1 + i as u32, 0, 0])
        .collect()
}

/// Ids of the padded image of `rows x cols` patches after a caption of `caption_tokens`:
/// `(caption_padded + 1, row, col)` row-major, then `(0, 0, 0)` for the pad slots.
pub fn image_ids(caption_tokens: usize, rows: usize, cols: usize) -> Vec<[u32; 3]> {
    let frame = padded(caption_tokens) as u32 + 1;
    let patches = (0..rows).flat_map(|r| (0..cols).map(move |c| [frame, r as u32, c as u32]));
    let pads = std::iter::repeat_n([0; 3], padded(rows * cols) - rows * cols);
    patches.chain(pads).collect()
}

/// `(cos, sin)`, each `(tokens, head_dim / 2)` f32: one angle per feature pair.
/// Fails when an id is beyond its axis' table (`axes_lens`), where diffusers' lookup fails too.
pub fn tables(
    ids: &[[u32; 3]],
    axes_dims: &[usize],
    axes_lens: &[usize],
    theta: f64,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let frequencies: Vec<Vec<f64>> = axes_dims
        .iter()
        .map(|&dim| {
            (0..dim / 2)
                .map(|i| 1.0 / theta.powf((2 * i) as f64 / dim as f64))
                .collect()
        })
        .collect();
    let width = axes_dims.iter().sum::<usize>() / 2;
    let mut cos = Vec::with_capacity(ids.len() * width);
    let mut sin = Vec::with_capacity(ids.len() * width);
    for id in ids {
        for (axis, axis_frequencies) in frequencies.iter().enumerate() {
            let position = id[axis];
            if position as usize >= axes_lens[axis] {
                candle_core::bail!(
                    "position {position} on RoPE axis {axis} is beyond `axes_lens` {}",
                    axes_lens[axis]
                );
            }
            for frequency in axis_frequencies {
                let angle = (f64::from(position) * frequency) as f32;
                let (c, s) = (angle.cos(), angle.sin());
                cos.push(c);
                sin.push(s);
            }
        }
    }
    let shape = (ids.len(), width);
    Ok((
        Tensor::from_vec(cos, shape, device)?,
        Tensor::from_vec(sin, shape, device)?,
    ))
}

/// Rotate `x` `(B, tokens, heads, D)` by the `(tokens, D / 2)` tables: each pair `(x0, x1)`
/// becomes `(x0 cos - x1 sin, x0 sin + x1 cos)`. Returned heads first, `(B, heads, tokens, D)`
/// (the layout the kernel needs, which the attention reads as well as any); computed in f32,
/// as diffusers does whatever the weights, and returned in `x`'s dtype.
pub fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let heads_first = x.to_dtype(DType::F32)?.transpose(1, 2)?.contiguous()?;
    candle_nn::rotary_emb::rope_i(&heads_first, cos, sin)?.to_dtype(x.dtype())
}
