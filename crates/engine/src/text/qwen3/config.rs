//! `config.json` of a `Qwen3Model`: the keys the encoder reads, refusing what it does not
//! implement (sliding-window attention, scaled RoPE, an activation other than SiLU).
//!
//! transformers 5 writes the RoPE base under `rope_parameters.rope_theta`; configs written by
//! transformers 4 (the real Z-Image repository's) have a top-level `rope_theta` and a
//! `rope_scaling` instead. Both are read.

use std::path::Path;

use serde::Deserialize;

use crate::error::{EngineError, Result};

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Qwen3Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    /// Width of one attention head; `num_attention_heads * head_dim` need not equal
    /// `hidden_size`. transformers defaults it to `hidden_size / num_attention_heads`.
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "eps")]
    pub rms_norm_eps: f64,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default = "silu")]
    pub hidden_act: String,
    #[serde(default)]
    pub use_sliding_window: bool,
    /// transformers 4's RoPE base.
    #[serde(default)]
    rope_theta: Option<f64>,
    /// transformers 5's RoPE settings.
    #[serde(default)]
    rope_parameters: Option<RopeParameters>,
    /// transformers 4's RoPE scaling; `null` (none) is all this encoder implements.
    #[serde(default)]
    rope_scaling: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
struct RopeParameters {
    rope_theta: Option<f64>,
    #[serde(default = "default_rope")]
    rope_type: String,
}

fn eps() -> f64 {
    1e-6
}
fn silu() -> String {
    "silu".into()
}
fn default_rope() -> String {
    "default".into()
}

impl Qwen3Config {
    pub fn read(path: &Path) -> Result<Self> {
        let config: Self = crate::config_files::read_json(path)?;
        config.check().map_err(|e| EngineError::config(path, e))?;
        Ok(config)
    }

    fn check(&self) -> std::result::Result<(), String> {
        if self.hidden_act != "silu" {
            return Err(format!(
                "`hidden_act` {:?}: only \"silu\" is supported",
                self.hidden_act
            ));
        }
        if self.use_sliding_window {
            return Err("sliding-window attention is not supported".into());
        }
        let rope_type = self.rope_parameters.as_ref().map(|p| p.rope_type.as_str());
        if let Some(other) = rope_type.filter(|t| *t != "default") {
            return Err(format!(
                "`rope_type` {other:?}: only \"default\" RoPE is supported"
            ));
        }
        if self.rope_scaling.as_ref().is_some_and(|s| !s.is_null()) {
            return Err("`rope_scaling` is not supported (only unscaled RoPE)".into());
        }
        let sizes = [
            self.vocab_size,
            self.hidden_size,
            self.intermediate_size,
            self.num_attention_heads,
            self.num_key_value_heads,
            self.head_dim(),
        ];
        if sizes.contains(&0) {
            return Err("a size is zero".into());
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(format!(
                "{} attention heads do not share {} key/value heads evenly",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(format!(
                "`head_dim` {} is odd: RoPE rotates pairs",
                self.head_dim()
            ));
        }
        if self.num_hidden_layers < 2 {
            return Err(format!(
                "{} layers: the embedding is the second-to-last layer's output",
                self.num_hidden_layers
            ));
        }
        Ok(())
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// The RoPE base: `rope_parameters.rope_theta`, else the top-level `rope_theta`, else
    /// transformers' default 10,000.
    pub fn rope_theta(&self) -> f64 {
        self.rope_parameters
            .as_ref()
            .and_then(|p| p.rope_theta)
            .or(self.rope_theta)
            .unwrap_or(10_000.0)
    }
}
