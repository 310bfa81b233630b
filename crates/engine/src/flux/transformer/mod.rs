//! diffusers' `FluxTransformer2DModel`: packed latent tokens and T5 tokens, embedded to the model
//! width, through the double-stream blocks, then the single-stream blocks on `[text, image]`, an
//! output norm modulated by the conditioning and a projection back to packed latents. The
//! conditioning vector is the sum of the timestep's embedding, (dev) the guidance's, and the CLIP
//! pooled vector's projection.

mod blocks;
mod config;
pub mod rope;
#[cfg(test)]
mod tests;

use std::path::Path;

use candle_core::{DType, Device, Module, Result, Tensor};

pub use config::FluxConfig;

use crate::nn::embeddings::{TimestepEmbedding, sinusoidal};
use crate::nn::layers::{self, Linear, Weights};
use crate::weights::{NameScheme, Variant, build_quantizable};
use blocks::{DoubleBlock, Modulation, SingleBlock};

/// Sinusoidal width of the timestep and guidance embeddings.
const TIME_CHANNELS: usize = 256;
const ROPE_THETA: f64 = 10_000.0;

pub struct FluxTransformer {
    config: FluxConfig,
    x_embedder: Linear,
    context_embedder: Linear,
    timestep_embedder: TimestepEmbedding,
    guidance_embedder: Option<TimestepEmbedding>,
    /// `PixArtAlphaTextProjection` with SiLU: linear, silu, linear.
    text_embedder: TimestepEmbedding,
    double_blocks: Vec<DoubleBlock>,
    single_blocks: Vec<SingleBlock>,
    norm_out: Modulation,
    proj_out: Linear,
    dtype: DType,
}

/// One call's inputs besides the latents.
pub struct FluxInputs<'a> {
    /// `(B, L, joint_attention_dim)` T5 states.
    pub text: &'a Tensor,
    /// `(B, pooled_projection_dim)` CLIP pooled output.
    pub pooled: &'a Tensor,
    /// The flow time, sigma in [0, 1] (multiplied by 1000 inside, as diffusers does).
    pub timestep: f32,
    /// \[dev\]: the distilled guidance scale (also x1000 inside); ignored by \[schnell\].
    pub guidance: Option<f32>,
    /// The packed latent grid, `rows x cols` tokens.
    pub rows: usize,
    pub cols: usize,
}

impl FluxTransformer {
    /// Load a `transformer/` folder: diffusers' weights, or a [`crate::checkpoint::POINTER`] to
    /// a single file in BFL's layout, `.safetensors` or GGUF (whose quantized linears stay
    /// quantized).
    pub fn load(
        dir: &Path,
        variant: Variant,
        dtype: DType,
        device: &Device,
    ) -> crate::Result<Self> {
        let config = FluxConfig::read(&dir.join("config.json"))?;
        build_quantizable(dir, variant, NameScheme::Exact, dtype, device, |weights| {
            Self::new(config, weights)
        })
    }

    pub fn new<'a>(config: FluxConfig, vb: impl Into<Weights<'a>>) -> Result<Self> {
        let vb = vb.into();
        let width = config.inner_dim();
        let time = vb.pp("time_text_embed");
        let guidance_embedder = if config.guidance_embeds {
            Some(TimestepEmbedding::new(
                TIME_CHANNELS,
                width,
                time.pp("guidance_embedder"),
            )?)
        } else {
            None
        };
        Ok(Self {
            x_embedder: layers::linear(config.in_channels, width, vb.pp("x_embedder"))?,
            context_embedder: layers::linear(
                config.joint_attention_dim,
                width,
                vb.pp("context_embedder"),
            )?,
            timestep_embedder: TimestepEmbedding::new(
                TIME_CHANNELS,
                width,
                time.pp("timestep_embedder"),
            )?,
            guidance_embedder,
            text_embedder: TimestepEmbedding::new(
                config.pooled_projection_dim,
                width,
                time.pp("text_embedder"),
            )?,
            double_blocks: (0..config.num_layers)
                .map(|i| DoubleBlock::new(&config, vb.pp(format!("transformer_blocks.{i}"))))
                .collect::<Result<_>>()?,
            single_blocks: (0..config.num_single_layers)
                .map(|i| SingleBlock::new(&config, vb.pp(format!("single_transformer_blocks.{i}"))))
                .collect::<Result<_>>()?,
            norm_out: Modulation::new(width, 2, vb.pp("norm_out"))?,
            proj_out: layers::linear(width, config.out_channels(), vb.pp("proj_out"))?,
            dtype: layers::compute_dtype(vb.vb().dtype(), vb.vb().device()),
            config,
        })
    }

    pub fn config(&self) -> &FluxConfig {
        &self.config
    }

    /// Packed latents `(B, rows * cols, in_channels)` to the predicted velocity, same shape.
    pub fn forward(&self, latents: &Tensor, inputs: &FluxInputs) -> Result<Tensor> {
        let device = latents.device();
        let batch = latents.dim(0)?;
        let image = self.x_embedder.forward(&latents.to_dtype(self.dtype)?)?;
        let text = self
            .context_embedder
            .forward(&inputs.text.to_dtype(self.dtype)?)?;
        let conditioning = self.conditioning(inputs, batch, device)?;

        let ids = rope::ids(text.dim(1)?, inputs.rows, inputs.cols);
        let (cos, sin) = rope::tables(&ids, &self.config.axes_dims_rope, ROPE_THETA, device)?;
        let rope = (&cos, &sin);

        let (mut text, mut image) = (text, image);
        for block in &self.double_blocks {
            (text, image) = block.forward(&text, &image, &conditioning, rope)?;
        }
        let text_tokens = text.dim(1)?;
        let mut joint = Tensor::cat(&[text, image], 1)?;
        for block in &self.single_blocks {
            joint = block.forward(&joint, &conditioning, rope)?;
        }
        let image = joint.narrow(1, text_tokens, joint.dim(1)? - text_tokens)?;
        // The output norm's linear gives (scale, shift), in that order.
        let out = self.norm_out.forward(&conditioning)?;
        let (scale, shift) = (&out[0], &out[1]);
        let normed = blocks::plain_norm(&image)?
            .broadcast_mul(&(scale.unsqueeze(1)? + 1.0)?)?
            .broadcast_add(&shift.unsqueeze(1)?)?;
        self.proj_out.forward(&normed)
    }

    /// The timestep's (and guidance's) sinusoidal embedding through their MLPs, plus the
    /// pooled text projection: `(B, width)`.
    fn conditioning(&self, inputs: &FluxInputs, batch: usize, device: &Device) -> Result<Tensor> {
        let embed = |value: f32, mlp: &TimestepEmbedding| -> Result<Tensor> {
            let scaled = f64::from(value * 1000.0);
            let sinusoid = sinusoidal(&vec![scaled; batch], TIME_CHANNELS, true, 0.0, device)?;
            mlp.forward(&sinusoid.to_dtype(self.dtype)?)
        };
        let mut conditioning = embed(inputs.timestep, &self.timestep_embedder)?;
        if let Some(mlp) = &self.guidance_embedder {
            let guidance = inputs.guidance.unwrap_or(0.0);
            conditioning = (conditioning + embed(guidance, mlp)?)?;
        }
        conditioning
            + self
                .text_embedder
                .forward(&inputs.pooled.to_dtype(self.dtype)?)?
    }
}
