//! Tiled decoding: overlapping latent tiles decoded one at a time and cross-faded where
//! they overlap (linear ramps, as diffusers' `tiled_decode` blends them), so peak memory
//! depends on the tile size instead of the image size.

use candle_core::{Device, Result, Tensor};

use super::Vae;

#[derive(Debug, Clone, Copy)]
pub struct Tiling {
    /// Tile side in latent pixels.
    pub tile_latent: usize,
    /// Overlap between neighbouring tiles in latent pixels.
    pub overlap_latent: usize,
}

impl Default for Tiling {
    /// 512-pixel tiles overlapping by a quarter, diffusers' defaults for SD.
    fn default() -> Self {
        Self {
            tile_latent: 64,
            overlap_latent: 16,
        }
    }
}

pub fn decode(vae: &Vae, latents: &Tensor, tiling: Tiling) -> Result<Tensor> {
    let (_, _, h, w) = latents.dims4()?;
    let tile = tiling.tile_latent.max(1);
    let stride = tile.saturating_sub(tiling.overlap_latent).max(1);
    let factor = vae.downscale_factor();
    let blend = tiling.overlap_latent.min(tile - stride) * factor;
    let keep = stride * factor;

    let mut rows: Vec<Vec<Tensor>> = Vec::new();
    for top in (0..h).step_by(stride) {
        let mut row = Vec::new();
        for left in (0..w).step_by(stride) {
            let tile_latents =
                latents
                    .narrow(2, top, tile.min(h - top))?
                    .narrow(3, left, tile.min(w - left))?;
            row.push(vae.decode(&tile_latents)?);
        }
        rows.push(row);
    }

    // Neighbours are blended in their already-blended state, as the reference does.
    let mut out_rows = Vec::with_capacity(rows.len());
    for i in 0..rows.len() {
        let mut pieces = Vec::with_capacity(rows[i].len());
        for j in 0..rows[i].len() {
            let mut tile = rows[i][j].clone();
            if i > 0 {
                tile = blend_edge(&rows[i - 1][j], &tile, blend, 2)?;
            }
            if j > 0 {
                tile = blend_edge(&rows[i][j - 1], &tile, blend, 3)?;
            }
            // Each tile contributes its first `keep` pixels; the rest is covered by the next.
            let (_, _, th, tw) = tile.dims4()?;
            pieces.push(
                tile.narrow(2, 0, keep.min(th))?
                    .narrow(3, 0, keep.min(tw))?,
            );
            rows[i][j] = tile;
        }
        out_rows.push(Tensor::cat(&pieces, 3)?);
    }
    Tensor::cat(&out_rows, 2)
}

/// Cross-fade the first `extent` pixels of `next` along `dim` with the last ones of `prev`.
fn blend_edge(prev: &Tensor, next: &Tensor, extent: usize, dim: usize) -> Result<Tensor> {
    let extent = extent.min(prev.dim(dim)?).min(next.dim(dim)?);
    if extent == 0 {
        return Ok(next.clone());
    }
    let prev_tail = prev.narrow(dim, prev.dim(dim)? - extent, extent)?;
    let next_head = next.narrow(dim, 0, extent)?;
    let ramp: Vec<f32> = (0..extent).map(|y| y as f32 / extent as f32).collect();
    let mut shape = [1usize; 4];
    shape[dim] = extent;
    let ramp = Tensor::from_vec(ramp, &shape[..], &Device::Cpu)?
        .to_device(next.device())?
        .to_dtype(next.dtype())?;
    let blended = (prev_tail.broadcast_mul(&(1.0 - &ramp)?)? + next_head.broadcast_mul(&ramp)?)?;
    let rest = next.narrow(dim, extent, next.dim(dim)? - extent)?;
    Tensor::cat(&[&blended, &rest], dim)
}
