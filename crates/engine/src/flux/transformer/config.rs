//! `transformer/config.json` of a `FluxTransformer2DModel`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct FluxConfig {
    #[serde(default = "one")]
    pub patch_size: usize,
    /// Packed input features per token: 16 latent channels x 2 x 2.
    #[serde(default = "sixty_four")]
    pub in_channels: usize,
    #[serde(default)]
    pub out_channels: Option<usize>,
    /// Double-stream blocks.
    #[serde(default = "nineteen")]
    pub num_layers: usize,
    #[serde(default = "thirty_eight")]
    pub num_single_layers: usize,
    #[serde(default = "head_dim")]
    pub attention_head_dim: usize,
    #[serde(default = "heads")]
    pub num_attention_heads: usize,
    /// Width of the T5 states.
    #[serde(default = "t5_width")]
    pub joint_attention_dim: usize,
    /// Width of the CLIP pooled vector.
    #[serde(default = "clip_width")]
    pub pooled_projection_dim: usize,
    /// \[dev\]: a guidance embedding beside the timestep's.
    #[serde(default)]
    pub guidance_embeds: bool,
    /// RoPE widths of the three position axes; they sum to the head width.
    #[serde(default = "axes")]
    pub axes_dims_rope: Vec<usize>,
}

fn one() -> usize {
    1
}
fn sixty_four() -> usize {
    64
}
fn nineteen() -> usize {
    19
}
fn thirty_eight() -> usize {
    38
}
fn head_dim() -> usize {
    128
}
fn heads() -> usize {
    24
}
fn t5_width() -> usize {
    4096
}
fn clip_width() -> usize {
    768
}
fn axes() -> Vec<usize> {
    vec![16, 56, 56]
}

impl FluxConfig {
    pub fn read(path: &Path) -> Result<Self> {
        let config: Self = crate::config_files::read_json(path)?;
        if config.patch_size != 1 {
            return Err(EngineError::config(
                path,
                "`patch_size` must be 1 (tokens come packed 2x2)",
            ));
        }
        if config.axes_dims_rope.iter().sum::<usize>() != config.attention_head_dim
            || config.axes_dims_rope.iter().any(|d| d % 2 == 1)
        {
            return Err(EngineError::config(
                path,
                format!(
                    "`axes_dims_rope` {:?} must be even widths summing to attention_head_dim {}",
                    config.axes_dims_rope, config.attention_head_dim
                ),
            ));
        }
        Ok(config)
    }

    /// The model width: heads x head width.
    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    pub fn out_channels(&self) -> usize {
        self.out_channels.unwrap_or(self.in_channels)
    }
}
