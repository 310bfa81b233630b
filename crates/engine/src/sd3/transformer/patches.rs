//! Latents to tokens and back. `PatchEmbed` cuts the `(B, C, H, W)` latents into `p x p`
//! patches with a stride-`p` convolution and adds a learned position table that is stored
//! for a `max x max` patch grid and cropped at its centre to the image's grid (SD3 trained
//! on the centre crop, so the table is read, never recomputed as sin-cos). The output
//! projection's tokens are unpatchified the other way.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

use super::config::Sd3Config;
use crate::nn::layers::{self, Conv2d};

pub(super) struct PatchEmbed {
    proj: Conv2d,
    /// `(max * max, width)`, row-major over the patch grid.
    positions: Tensor,
    max_size: usize,
    patch: usize,
}

impl PatchEmbed {
    pub fn new(config: &Sd3Config, vb: VarBuilder) -> Result<Self> {
        let (width, max_size, patch) = (
            config.inner_dim(),
            config.pos_embed_max_size,
            config.patch_size,
        );
        let conv = Conv2dConfig {
            stride: patch,
            ..Default::default()
        };
        Ok(Self {
            proj: layers::conv2d(config.in_channels, width, patch, conv, vb.pp("proj"))?,
            positions: vb
                .get((1, max_size * max_size, width), "pos_embed")?
                .squeeze(0)?,
            max_size,
            patch,
        })
    }

    /// The patch grid `(rows, cols)` of an `H x W` latent, or an error when the table has
    /// no positions for it.
    pub fn grid(&self, height: usize, width: usize) -> Result<(usize, usize)> {
        let p = self.patch;
        if !height.is_multiple_of(p) || !width.is_multiple_of(p) {
            candle_core::bail!(
                "SD3: a {height}x{width} latent does not split into {p}x{p} patches"
            );
        }
        let (rows, cols) = (height / p, width / p);
        if rows > self.max_size || cols > self.max_size {
            candle_core::bail!(
                "SD3: the {height}x{width} latent is a {rows}x{cols} patch grid, larger than the \
                 model's position table (pos_embed_max_size {})",
                self.max_size
            );
        }
        Ok((rows, cols))
    }

    /// The table's centre `rows x cols` window, `(rows * cols, width)` in the grid's order.
    pub fn positions(&self, rows: usize, cols: usize) -> Result<Tensor> {
        let top = (self.max_size - rows) / 2;
        let left = (self.max_size - cols) / 2;
        let width = self.positions.dim(1)?;
        self.positions
            .reshape((self.max_size, self.max_size, width))?
            .narrow(0, top, rows)?
            .narrow(1, left, cols)?
            .reshape((rows * cols, width))
    }

    /// `(B, C, H, W)` latents to `(B, rows * cols, width)` tokens with their positions.
    pub fn forward(&self, latents: &Tensor) -> Result<Tensor> {
        let (_, _, height, width) = latents.dims4()?;
        let (rows, cols) = self.grid(height, width)?;
        let tokens = self
            .proj
            .forward(latents)?
            .flatten_from(2)?
            .transpose(1, 2)?;
        let positions = layers::like(&self.positions(rows, cols)?, &tokens)?;
        tokens.broadcast_add(&positions.unsqueeze(0)?)
    }
}

/// `(B, rows * cols, p * p * C)` tokens, features ordered (dy, dx, channel), to `(B, C, H, W)`.
pub(super) fn unpatchify(
    tokens: &Tensor,
    rows: usize,
    cols: usize,
    patch: usize,
    channels: usize,
) -> Result<Tensor> {
    let batch = tokens.dim(0)?;
    tokens
        .reshape((batch, rows, cols, patch, patch, channels))?
        .permute((0, 5, 1, 3, 2, 4))?
        .reshape((batch, channels, rows * patch, cols * patch))
}
