//! `config.json` of a `T5EncoderModel`: the keys the encoder reads, refusing the variants it
//! does not implement (T5 v1.0's ReLU feed-forward, a decoder).

use std::path::Path;

use serde::Deserialize;

use crate::error::{EngineError, Result};

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct T5Config {
    pub vocab_size: usize,
    pub d_model: usize,
    /// Width of one attention head; `num_heads * d_kv` need not equal `d_model`.
    pub d_kv: usize,
    pub d_ff: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    #[serde(default = "buckets")]
    pub relative_attention_num_buckets: usize,
    #[serde(default = "max_distance")]
    pub relative_attention_max_distance: usize,
    #[serde(default = "eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "relu")]
    pub feed_forward_proj: String,
}

fn buckets() -> usize {
    32
}
fn max_distance() -> usize {
    128
}
fn eps() -> f64 {
    1e-6
}
fn relu() -> String {
    "relu".into()
}

impl T5Config {
    pub fn read(path: &Path) -> Result<Self> {
        let config: Self = crate::config_files::read_json(path)?;
        if config.feed_forward_proj != "gated-gelu" {
            return Err(EngineError::config(
                path,
                format!(
                    "`feed_forward_proj` {:?}: only T5 v1.1's \"gated-gelu\" is supported",
                    config.feed_forward_proj
                ),
            ));
        }
        let sizes = [
            config.vocab_size,
            config.d_model,
            config.d_kv,
            config.d_ff,
            config.num_heads,
            config.relative_attention_num_buckets,
        ];
        if sizes.contains(&0) || config.relative_attention_num_buckets < 4 {
            return Err(EngineError::config(
                path,
                "a size is zero (or fewer than 4 buckets)",
            ));
        }
        Ok(config)
    }

    /// Width of the attention's projections: `num_heads * d_kv`.
    pub fn inner_dim(&self) -> usize {
        self.num_heads * self.d_kv
    }
}
