//! diffusers' `SD3Transformer2DModel`, the MMDiT of SD3 and the MMDiT-X of SD3.5: latent
//! patches (plus a cropped, stored position table) and the projected text sequence go through
//! the joint blocks side by side, then an output norm modulated by the conditioning and a
//! projection back to latent patches. The conditioning vector is the timestep's sinusoidal
//! embedding through an MLP plus the projection of the pooled CLIP vectors.

mod attention;
mod blocks;
mod config;
mod patches;
#[cfg(test)]
mod tests;

use std::path::Path;

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

pub use config::Sd3Config;

use crate::nn::embeddings::{TimestepEmbedding, sinusoidal};
use crate::nn::layers::{self, Linear};
use crate::weights::{NameScheme, Variant, build_component};
use blocks::{JointBlock, Modulation};
use patches::PatchEmbed;

/// Sinusoidal width of the timestep embedding (`Timesteps(256, flip_sin_to_cos=True)`).
const TIME_CHANNELS: usize = 256;

pub struct Sd3Transformer {
    config: Sd3Config,
    pos_embed: PatchEmbed,
    timestep_embedder: TimestepEmbedding,
    /// `PixArtAlphaTextProjection` with SiLU: linear, silu, linear.
    text_embedder: TimestepEmbedding,
    context_embedder: Linear,
    blocks: Vec<JointBlock>,
    norm_out: Modulation,
    proj_out: Linear,
    dtype: DType,
}

impl Sd3Transformer {
    /// Load a `transformer/` folder.
    pub fn load(
        dir: &Path,
        variant: Variant,
        dtype: DType,
        device: &Device,
    ) -> crate::Result<Self> {
        let config = Sd3Config::read(&dir.join("config.json"))?;
        build_component(dir, variant, NameScheme::Exact, dtype, device, |vb| {
            Self::new(config, vb)
        })
    }

    pub fn new(config: Sd3Config, vb: VarBuilder) -> Result<Self> {
        let width = config.inner_dim();
        let time = vb.pp("time_text_embed");
        let patch_features = config.patch_size * config.patch_size * config.out_channels();
        Ok(Self {
            pos_embed: PatchEmbed::new(&config, vb.pp("pos_embed"))?,
            timestep_embedder: TimestepEmbedding::new(
                TIME_CHANNELS,
                width,
                time.pp("timestep_embedder"),
            )?,
            text_embedder: TimestepEmbedding::new(
                config.pooled_projection_dim,
                width,
                time.pp("text_embedder"),
            )?,
            context_embedder: layers::linear(
                config.joint_attention_dim,
                config.caption_projection_dim,
                vb.pp("context_embedder"),
            )?,
            blocks: (0..config.num_layers)
                .map(|i| JointBlock::new(&config, i, vb.pp(format!("transformer_blocks.{i}"))))
                .collect::<Result<_>>()?,
            norm_out: Modulation::new(width, 2, vb.pp("norm_out"))?,
            proj_out: layers::linear(width, patch_features, vb.pp("proj_out"))?,
            dtype: layers::compute_dtype(vb.dtype(), vb.device()),
            config,
        })
    }

    pub fn config(&self) -> &Sd3Config {
        &self.config
    }

    /// The predicted velocity `(B, out_channels, H, W)` for latents `(B, in_channels, H, W)`,
    /// text states `(B, T, joint_attention_dim)`, pooled vectors `(B, pooled_projection_dim)`
    /// and the timestep argument (sigma * 1000), shared by the batch.
    pub fn forward(
        &self,
        latents: &Tensor,
        text: &Tensor,
        pooled: &Tensor,
        timestep: f32,
    ) -> Result<Tensor> {
        let (batch, _, height, width) = latents.dims4()?;
        let (rows, cols) = self.pos_embed.grid(height, width)?;
        if text.dim(0)? != batch || pooled.dim(0)? != batch {
            candle_core::bail!(
                "SD3: {batch} latents but {} text sequences and {} pooled vectors",
                text.dim(0)?,
                pooled.dim(0)?
            );
        }
        let mut image = self.pos_embed.forward(&latents.to_dtype(self.dtype)?)?;
        let mut text = self.context_embedder.forward(&text.to_dtype(self.dtype)?)?;
        // Every modulation takes silu(conditioning): computed once here, not per block.
        let conditioning = self.conditioning(pooled, timestep, batch)?.silu()?;
        for block in &self.blocks {
            (image, text) = block.forward(&image, &text, &conditioning)?;
        }
        // AdaLayerNormContinuous: (scale, shift), in that order.
        let out = self.norm_out.forward(&conditioning)?;
        let normed = blocks::modulate(&blocks::plain_norm(&image)?, &out[1], &out[0])?;
        let patches = self.proj_out.forward(&normed)?;
        patches::unpatchify(
            &patches,
            rows,
            cols,
            self.config.patch_size,
            self.config.out_channels(),
        )
    }

    /// The timestep's sinusoidal embedding (`[cos, sin]`) through its MLP plus the pooled
    /// text projection: `(B, width)`.
    fn conditioning(&self, pooled: &Tensor, timestep: f32, batch: usize) -> Result<Tensor> {
        let device = pooled.device();
        let sinusoid = sinusoidal(
            &vec![f64::from(timestep); batch],
            TIME_CHANNELS,
            true,
            0.0,
            device,
        )?;
        let time = self
            .timestep_embedder
            .forward(&sinusoid.to_dtype(self.dtype)?)?;
        time + self.text_embedder.forward(&pooled.to_dtype(self.dtype)?)?
    }
}
