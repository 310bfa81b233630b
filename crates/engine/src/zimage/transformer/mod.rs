//! diffusers' `ZImageTransformer2DModel` (standard mode: one image, one caption).
//!
//! The latents are cut into 2x2 patches (features ordered row-in-patch, column-in-patch,
//! channel) and embedded; the Qwen3 caption states are RMS-normed and embedded. Each sequence is
//! padded to a multiple of 32 with its stored pad token. The image tokens go through the noise
//! refiner (modulated by the timestep), the caption tokens through the context refiner (not
//! modulated), then both as one sequence `[image, caption]` through the main layers. The final
//! layer scales a plain LayerNorm by the SiLU'd timestep embedding and projects the image tokens
//! back to patches. Nothing is masked: with one sequence per call, diffusers attends over the
//! pad slots too.

mod blocks;
mod config;
pub mod rope;
#[cfg(test)]
mod tests;

use std::path::Path;

use candle_core::{D, DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

pub use blocks::ZImageBlock;
pub use config::{FRAME_PATCH, PATCH, ZImageConfig};

use crate::nn::embeddings::sinusoidal;
use crate::nn::layers::{self, Linear, RmsNorm};
use crate::weights::{NameScheme, Variant, build_component};

/// Sinusoidal width of the timestep embedding.
const TIME_CHANNELS: usize = 256;
/// Hidden width of the timestep MLP.
const TIME_HIDDEN: usize = 1024;

pub struct ZImageTransformer {
    config: ZImageConfig,
    /// `all_x_embedder.2-1`: one patch's features to the model width.
    x_embedder: Linear,
    /// `cap_embedder`: RMS norm, then a linear to the model width.
    cap_norm: RmsNorm,
    cap_linear: Linear,
    /// `t_embedder.mlp`: linear, SiLU, linear.
    time_in: Linear,
    time_out: Linear,
    x_pad_token: Tensor,
    cap_pad_token: Tensor,
    noise_refiner: Vec<ZImageBlock>,
    context_refiner: Vec<ZImageBlock>,
    layers: Vec<ZImageBlock>,
    /// `all_final_layer.2-1`: modulation `linear(silu(t))` for the scale, then the projection.
    final_modulation: Linear,
    final_linear: Linear,
    dtype: DType,
}

impl ZImageTransformer {
    /// Load a `transformer/` folder.
    pub fn load(
        dir: &Path,
        variant: Variant,
        dtype: DType,
        device: &Device,
    ) -> crate::Result<Self> {
        let config = ZImageConfig::read(&dir.join("config.json"))?;
        build_component(dir, variant, NameScheme::Exact, dtype, device, |vb| {
            Self::new(config, vb)
        })
    }

    pub fn new(config: ZImageConfig, vb: VarBuilder) -> Result<Self> {
        let dim = config.dim;
        let patch = format!("{PATCH}-{FRAME_PATCH}");
        let final_layer = vb.pp(format!("all_final_layer.{patch}"));
        let blocks = |name: &str, count: usize, modulated: bool| -> Result<Vec<ZImageBlock>> {
            (0..count)
                .map(|i| ZImageBlock::new(&config, modulated, vb.pp(format!("{name}.{i}"))))
                .collect()
        };
        Ok(Self {
            x_embedder: layers::linear(
                config.patch_features(),
                dim,
                vb.pp(format!("all_x_embedder.{patch}")),
            )?,
            cap_norm: layers::rms_norm(
                config.cap_feat_dim,
                config.norm_eps,
                vb.pp("cap_embedder.0"),
            )?,
            cap_linear: layers::linear(config.cap_feat_dim, dim, vb.pp("cap_embedder.1"))?,
            time_in: layers::linear(TIME_CHANNELS, TIME_HIDDEN, vb.pp("t_embedder.mlp.0"))?,
            time_out: layers::linear(TIME_HIDDEN, config.adaln_dim(), vb.pp("t_embedder.mlp.2"))?,
            x_pad_token: vb.get((1, dim), "x_pad_token")?,
            cap_pad_token: vb.get((1, dim), "cap_pad_token")?,
            noise_refiner: blocks("noise_refiner", config.n_refiner_layers, true)?,
            context_refiner: blocks("context_refiner", config.n_refiner_layers, false)?,
            layers: blocks("layers", config.n_layers, true)?,
            final_modulation: layers::linear(
                config.adaln_dim(),
                dim,
                final_layer.pp("adaLN_modulation.1"),
            )?,
            final_linear: layers::linear(dim, config.patch_features(), final_layer.pp("linear"))?,
            dtype: layers::compute_dtype(vb.dtype(), vb.device()),
            config,
        })
    }

    pub fn config(&self) -> &ZImageConfig {
        &self.config
    }

    /// Latents `(1, in_channels, h, w)`, caption states `(1, L, cap_feat_dim)` (the real tokens
    /// only) and the timestep argument `1 - sigma` to the raw prediction `(1, in_channels, h, w)`
    /// (the pipeline negates it before its Euler step), in the compute dtype (f32 on CPU, the
    /// weights' dtype elsewhere). One image per call: classifier-free guidance runs its two
    /// branches as two calls, which diffusers' masked batch matches to within 1e-6.
    pub fn forward(&self, latents: &Tensor, caption: &Tensor, timestep: f32) -> Result<Tensor> {
        let (rows, cols, caption_tokens) = self.check_inputs(latents, caption)?;
        let device = latents.device();
        let adaln = self.time_embedding(timestep, device)?;
        let image = self
            .x_embedder
            .forward(&patchify(&latents.to_dtype(self.dtype)?)?)?;
        let image = with_pad_slots(&image, &self.x_pad_token)?.unsqueeze(0)?;
        let caption = self
            .cap_norm
            .forward(&caption.to_dtype(self.dtype)?.squeeze(0)?)?;
        let caption = self.cap_linear.forward(&caption)?;
        let caption = with_pad_slots(&caption, &self.cap_pad_token)?.unsqueeze(0)?;

        // One table for the joint sequence [image, caption]; each refiner reads its part.
        let mut ids = rope::image_ids(caption_tokens, rows, cols);
        let image_slots = ids.len();
        ids.extend(rope::caption_ids(caption_tokens));
        let config = &self.config;
        let (cos, sin) = rope::tables(
            &ids,
            &config.axes_dims,
            &config.axes_lens,
            config.rope_theta,
            device,
        )?;
        let part = |start: usize, len: usize| -> Result<(Tensor, Tensor)> {
            Ok((cos.narrow(0, start, len)?, sin.narrow(0, start, len)?))
        };
        let (image_cos, image_sin) = part(0, image_slots)?;
        let (caption_cos, caption_sin) = part(image_slots, ids.len() - image_slots)?;

        let mut image = image;
        for block in &self.noise_refiner {
            image = block.forward(&image, (&image_cos, &image_sin), Some(&adaln))?;
        }
        let mut caption = caption;
        for block in &self.context_refiner {
            caption = block.forward(&caption, (&caption_cos, &caption_sin), None)?;
        }
        let mut joint = Tensor::cat(&[image, caption], 1)?;
        for block in &self.layers {
            joint = block.forward(&joint, (&cos, &sin), Some(&adaln))?;
        }
        self.final_layer(&joint.narrow(1, 0, rows * cols)?, &adaln, rows, cols)
    }

    /// `(patch rows, patch cols, caption tokens)` of inputs this transformer can run.
    fn check_inputs(&self, latents: &Tensor, caption: &Tensor) -> Result<(usize, usize, usize)> {
        let (batch, channels, height, width) = latents.dims4()?;
        let (caption_batch, caption_tokens, _) = caption.dims3()?;
        if batch != 1 || caption_batch != 1 {
            candle_core::bail!(
                "Z-Image transformer: one image per call, got latents batch {batch} and caption \
                 batch {caption_batch}"
            );
        }
        if channels != self.config.in_channels || height % PATCH != 0 || width % PATCH != 0 {
            candle_core::bail!(
                "Z-Image transformer: latents (1, {channels}, {height}, {width}) must have {} \
                 channels and even sides",
                self.config.in_channels
            );
        }
        if caption_tokens == 0 {
            candle_core::bail!("Z-Image transformer: the caption has no tokens");
        }
        Ok((height / PATCH, width / PATCH, caption_tokens))
    }

    /// The image tokens `(1, rows * cols, dim)` to latents: LayerNorm scaled by
    /// `1 + linear(silu(t))` (no shift), projected to patches and put back on the grid.
    fn final_layer(
        &self,
        image: &Tensor,
        adaln: &Tensor,
        rows: usize,
        cols: usize,
    ) -> Result<Tensor> {
        let scale = (self.final_modulation.forward(&adaln.silu()?)? + 1.0)?;
        let normed = plain_norm(image)?.broadcast_mul(&scale.unsqueeze(1)?)?;
        let patches = self.final_linear.forward(&normed)?.squeeze(0)?;
        unpatchify(&patches, self.config.in_channels, rows, cols)
    }

    /// `t_embedder(timestep * t_scale)`: `(1, adaln_dim)`, `[cos, sin]` sinusoid in f32.
    fn time_embedding(&self, timestep: f32, device: &Device) -> Result<Tensor> {
        let scaled = timestep * self.config.t_scale as f32;
        let sinusoid = sinusoidal(&[f64::from(scaled)], TIME_CHANNELS, true, 0.0, device)?;
        let hidden = self
            .time_in
            .forward(&sinusoid.to_dtype(self.dtype)?)?
            .silu()?;
        self.time_out.forward(&hidden)
    }
}

/// `(1, C, h, w)` to `(h/2 * w/2, 2 * 2 * C)` tokens, row-major, features (dy, dx, channel).
fn patchify(latents: &Tensor) -> Result<Tensor> {
    let (_, c, h, w) = latents.dims4()?;
    let (rows, cols) = (h / PATCH, w / PATCH);
    latents
        .reshape((c, rows, PATCH, cols, PATCH))?
        .permute((1, 3, 2, 4, 0))?
        .reshape((rows * cols, PATCH * PATCH * c))
}

/// The inverse of [`patchify`]: `(rows * cols, 2 * 2 * C)` to `(1, C, 2 rows, 2 cols)`.
fn unpatchify(patches: &Tensor, channels: usize, rows: usize, cols: usize) -> Result<Tensor> {
    patches
        .reshape((rows, cols, PATCH, PATCH, channels))?
        .permute((4, 0, 2, 1, 3))?
        .reshape((1, channels, rows * PATCH, cols * PATCH))
}

/// `tokens (n, dim)` followed by `pad_token` in each slot up to the next multiple of 32.
fn with_pad_slots(tokens: &Tensor, pad_token: &Tensor) -> Result<Tensor> {
    let (n, dim) = tokens.dims2()?;
    let pads = rope::padded(n) - n;
    if pads == 0 {
        return Ok(tokens.clone());
    }
    let pad_token = layers::like(pad_token, tokens)?;
    Tensor::cat(&[tokens, &pad_token.broadcast_as((pads, dim))?], 0)
}

/// LayerNorm without a learned scale or shift, eps 1e-6 (the final layer's `norm_final`),
/// computed in f32 as PyTorch's half-precision LayerNorm is, returned in `x`'s dtype.
fn plain_norm(x: &Tensor) -> Result<Tensor> {
    let wide = x.to_dtype(DType::F32)?;
    let mean = wide.mean_keepdim(D::Minus1)?;
    let centred = wide.broadcast_sub(&mean)?;
    let variance = centred.sqr()?.mean_keepdim(D::Minus1)?;
    centred
        .broadcast_div(&(variance + 1e-6)?.sqrt()?)?
        .to_dtype(x.dtype())
}
