//! `vae/config.json` of a diffusers `AutoencoderKL`.

use std::path::Path;

use crate::config_files::read_json;
use crate::error::{EngineError, Result};

#[derive(Debug, Clone, serde::Deserialize)]
pub struct VaeConfig {
    #[serde(default = "three")]
    pub in_channels: usize,
    #[serde(default = "three")]
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    #[serde(default)]
    pub down_block_types: Vec<String>,
    #[serde(default)]
    pub up_block_types: Vec<String>,
    #[serde(default = "one")]
    pub layers_per_block: usize,
    #[serde(default = "thirty_two")]
    pub norm_num_groups: usize,
    #[serde(default = "four")]
    pub latent_channels: usize,
    #[serde(default = "yes")]
    pub mid_block_add_attention: bool,
    #[serde(default = "yes")]
    pub use_quant_conv: bool,
    #[serde(default = "yes")]
    pub use_post_quant_conv: bool,
    #[serde(default = "default_scaling")]
    pub scaling_factor: f64,
    #[serde(default)]
    pub shift_factor: Option<f64>,
    /// Run the VAE in f32 even when the rest of the pipeline uses half precision.
    #[serde(default = "yes")]
    pub force_upcast: bool,
    #[serde(default = "default_sample_size")]
    pub sample_size: usize,
    #[serde(default = "silu")]
    pub act_fn: String,
}

fn three() -> usize {
    3
}
fn one() -> usize {
    1
}
fn four() -> usize {
    4
}
fn thirty_two() -> usize {
    32
}
fn yes() -> bool {
    true
}
fn default_scaling() -> f64 {
    0.18215
}
fn default_sample_size() -> usize {
    512
}
fn silu() -> String {
    "silu".into()
}

impl VaeConfig {
    /// Pixels per latent per side: halved at each down block but the last (8 for SD's VAE).
    pub fn downscale_factor(&self) -> usize {
        1 << self.block_out_channels.len().saturating_sub(1)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let config: Self = read_json(path)?;
        let n = config.block_out_channels.len();
        let bad = |message: String| Err(EngineError::config(path, message));
        if n == 0 {
            return bad("block_out_channels is empty".into());
        }
        if config
            .block_out_channels
            .iter()
            .any(|c| c % config.norm_num_groups != 0)
        {
            return bad("block_out_channels must be multiples of norm_num_groups".into());
        }
        for kind in &config.down_block_types {
            if kind != "DownEncoderBlock2D" {
                return bad(format!(
                    "`down_block_types` entry `{kind}` is not supported"
                ));
            }
        }
        for kind in &config.up_block_types {
            if kind != "UpDecoderBlock2D" {
                return bad(format!("`up_block_types` entry `{kind}` is not supported"));
            }
        }
        if config.act_fn != "silu" {
            return bad(format!("`act_fn` = {} is not supported", config.act_fn));
        }
        Ok(config)
    }
}
