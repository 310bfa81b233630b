//! `transformer/config.json` of an `SD3Transformer2DModel` (SD3 MMDiT, SD3.5 MMDiT-X).

use std::path::Path;

use serde::Deserialize;

use crate::error::{EngineError, Result};

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Sd3Config {
    /// Side of the square patches the latents are cut into.
    #[serde(default = "two")]
    pub patch_size: usize,
    #[serde(default = "sixteen")]
    pub in_channels: usize,
    #[serde(default)]
    pub out_channels: Option<usize>,
    /// Joint blocks; the last one only lets the text condition the image (`context_pre_only`).
    #[serde(default = "eighteen")]
    pub num_layers: usize,
    #[serde(default = "sixty_four")]
    pub attention_head_dim: usize,
    #[serde(default = "eighteen")]
    pub num_attention_heads: usize,
    /// Width of the text sequence (T5's, with the CLIP states zero-padded to it).
    #[serde(default = "t5_width")]
    pub joint_attention_dim: usize,
    /// Width the text is projected to; the blocks need it to be the model width.
    #[serde(default = "caption_width")]
    pub caption_projection_dim: usize,
    /// Width of the pooled CLIP-L + CLIP-G vector.
    #[serde(default = "pooled_width")]
    pub pooled_projection_dim: usize,
    /// Side of the stored position table, in patches.
    #[serde(default = "ninety_six")]
    pub pos_embed_max_size: usize,
    /// `rms_norm` (SD3.5) or none (SD3): a per-head norm of queries and keys.
    #[serde(default)]
    pub qk_norm: Option<String>,
    /// The blocks with MMDiT-X's second, image-only attention.
    #[serde(default)]
    pub dual_attention_layers: Vec<usize>,
    /// Training size in latents a side (128: 1024 pixels); only the default size reads it.
    #[serde(default = "one_twenty_eight")]
    pub sample_size: usize,
}

fn two() -> usize {
    2
}
fn sixteen() -> usize {
    16
}
fn eighteen() -> usize {
    18
}
fn sixty_four() -> usize {
    64
}
fn t5_width() -> usize {
    4096
}
fn caption_width() -> usize {
    1152
}
fn pooled_width() -> usize {
    2048
}
fn ninety_six() -> usize {
    96
}
fn one_twenty_eight() -> usize {
    128
}

impl Sd3Config {
    pub fn read(path: &Path) -> Result<Self> {
        let config: Self = crate::config_files::read_json(path)?;
        config.check().map_err(|m| EngineError::config(path, m))?;
        Ok(config)
    }

    fn check(&self) -> std::result::Result<(), String> {
        if let Some(norm) = self.qk_norm.as_deref()
            && norm != "rms_norm"
        {
            return Err(format!(
                "`qk_norm` {norm:?} is not supported (only \"rms_norm\" or none)"
            ));
        }
        if self.caption_projection_dim != self.inner_dim() {
            return Err(format!(
                "`caption_projection_dim` {} must equal heads x head width {}",
                self.caption_projection_dim,
                self.inner_dim()
            ));
        }
        if self.patch_size == 0 || self.num_layers == 0 {
            return Err("`patch_size` and `num_layers` must be positive".into());
        }
        if let Some(layer) = self
            .dual_attention_layers
            .iter()
            .find(|&&i| i >= self.num_layers)
        {
            return Err(format!(
                "`dual_attention_layers` names layer {layer} of {}",
                self.num_layers
            ));
        }
        Ok(())
    }

    /// The model width: heads x head width.
    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    pub fn out_channels(&self) -> usize {
        self.out_channels.unwrap_or(self.in_channels)
    }

    pub fn has_qk_norm(&self) -> bool {
        self.qk_norm.is_some()
    }
}
