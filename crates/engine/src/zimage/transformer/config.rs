//! `transformer/config.json` of a `ZImageTransformer2DModel`.

use std::path::Path;

use serde::Deserialize;

use crate::error::{EngineError, Result};

/// The only patching this engine runs: 2x2 spatial patches, one frame per patch.
pub const PATCH: usize = 2;
pub const FRAME_PATCH: usize = 1;

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ZImageConfig {
    /// Spatial patch sizes the checkpoint has an embedder for; must include [`PATCH`].
    #[serde(default = "patch_sizes")]
    pub all_patch_size: Vec<usize>,
    /// Frame patch sizes, paired index by index with `all_patch_size`.
    #[serde(default = "frame_patch_sizes")]
    pub all_f_patch_size: Vec<usize>,
    /// Latent channels in and out.
    #[serde(default = "sixteen")]
    pub in_channels: usize,
    /// The model width.
    #[serde(default = "width")]
    pub dim: usize,
    /// Main (joint image + caption) layers.
    #[serde(default = "thirty")]
    pub n_layers: usize,
    /// Layers in each of the two refiners (image tokens alone, caption tokens alone).
    #[serde(default = "two")]
    pub n_refiner_layers: usize,
    #[serde(default = "thirty")]
    pub n_heads: usize,
    /// Must equal `n_heads`: diffusers' blocks project keys and values to every head.
    #[serde(default = "thirty")]
    pub n_kv_heads: usize,
    #[serde(default = "norm_eps")]
    pub norm_eps: f64,
    /// Per-head RMS norms on queries and keys.
    #[serde(default = "yes")]
    pub qk_norm: bool,
    /// Width of the Qwen3 states.
    #[serde(default = "caption_width")]
    pub cap_feat_dim: usize,
    #[serde(default = "rope_theta")]
    pub rope_theta: f64,
    /// What the timestep argument (1 - sigma) is multiplied by before its sinusoidal embedding.
    #[serde(default = "t_scale")]
    pub t_scale: f64,
    /// RoPE widths of the three position axes; they sum to the head width.
    #[serde(default = "axes_dims")]
    pub axes_dims: Vec<usize>,
    /// The largest position + 1 each axis has a rotation for.
    #[serde(default = "axes_lens")]
    pub axes_lens: Vec<usize>,
}

fn patch_sizes() -> Vec<usize> {
    vec![PATCH]
}
fn frame_patch_sizes() -> Vec<usize> {
    vec![FRAME_PATCH]
}
fn sixteen() -> usize {
    16
}
fn width() -> usize {
    3840
}
fn thirty() -> usize {
    30
}
fn two() -> usize {
    2
}
fn norm_eps() -> f64 {
    1e-5
}
fn yes() -> bool {
    true
}
fn caption_width() -> usize {
    2560
}
fn rope_theta() -> f64 {
    256.0
}
fn t_scale() -> f64 {
    1000.0
}
fn axes_dims() -> Vec<usize> {
    vec![32, 48, 48]
}
fn axes_lens() -> Vec<usize> {
    vec![1024, 512, 512]
}

impl ZImageConfig {
    pub fn read(path: &Path) -> Result<Self> {
        let config: Self = crate::config_files::read_json(path)?;
        config
            .validate()
            .map_err(|e| EngineError::config(path, e))?;
        Ok(config)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        let has_patch = self
            .all_patch_size
            .iter()
            .zip(&self.all_f_patch_size)
            .any(|pair| pair == (&PATCH, &FRAME_PATCH));
        if !has_patch {
            return Err(format!(
                "patch sizes {:?} / frame patch sizes {:?}: only patch {PATCH} with frame patch \
                 {FRAME_PATCH} is supported",
                self.all_patch_size, self.all_f_patch_size
            ));
        }
        if self.n_heads == 0 || !self.dim.is_multiple_of(self.n_heads) {
            return Err(format!(
                "`dim` {} is not a multiple of `n_heads` {}",
                self.dim, self.n_heads
            ));
        }
        if self.n_kv_heads != self.n_heads {
            return Err(format!(
                "`n_kv_heads` {} must equal `n_heads` {} (as diffusers' blocks use it)",
                self.n_kv_heads, self.n_heads
            ));
        }
        if self.axes_dims.len() != 3 || self.axes_lens.len() != 3 {
            return Err("`axes_dims` and `axes_lens` must have three entries".into());
        }
        if self.axes_dims.iter().sum::<usize>() != self.head_dim()
            || self.axes_dims.iter().any(|d| d % 2 == 1)
        {
            return Err(format!(
                "`axes_dims` {:?} must be even widths summing to the head width {}",
                self.axes_dims,
                self.head_dim()
            ));
        }
        Ok(())
    }

    pub fn head_dim(&self) -> usize {
        self.dim / self.n_heads
    }

    /// Width of the timestep embedding the modulations read: the model width, capped at 256.
    pub fn adaln_dim(&self) -> usize {
        self.dim.min(256)
    }

    /// The SwiGLU hidden width, `int(dim / 3 * 8)` as diffusers computes it.
    pub fn ffn_dim(&self) -> usize {
        (self.dim as f64 / 3.0 * 8.0) as usize
    }

    /// Features of one patch token: frame patch x patch x patch x channels.
    pub fn patch_features(&self) -> usize {
        FRAME_PATCH * PATCH * PATCH * self.in_channels
    }
}
