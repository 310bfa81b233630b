//! A CLIP text encoder's `config.json` (transformers' `CLIPTextConfig`). Keys a file leaves
//! out take transformers' defaults, since that is what the reference runs with.

use std::path::Path;

use candle_core::{Result, Tensor};
use serde::Deserialize;

use crate::error::EngineError;
use crate::nn::rounded::Activations;

#[derive(Debug, Clone, Deserialize)]
pub struct ClipConfig {
    #[serde(default = "defaults::vocab_size")]
    pub vocab_size: usize,
    #[serde(default = "defaults::hidden_size")]
    pub hidden_size: usize,
    #[serde(default = "defaults::intermediate_size")]
    pub intermediate_size: usize,
    #[serde(default = "defaults::projection_dim")]
    pub projection_dim: usize,
    #[serde(default = "defaults::num_hidden_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "defaults::num_attention_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "defaults::max_position_embeddings")]
    pub max_position_embeddings: usize,
    #[serde(default = "defaults::hidden_act")]
    pub hidden_act: String,
    #[serde(default = "defaults::layer_norm_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "defaults::eos_token_id")]
    eos_token_id: EosTokenId,
    /// `CLIPTextModel` or `CLIPTextModelWithProjection`.
    #[serde(default)]
    pub architectures: Vec<String>,
}

/// transformers accepts one id or a list of them.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum EosTokenId {
    One(u32),
    Many(Vec<u32>),
}

mod defaults {
    pub fn vocab_size() -> usize {
        49408
    }
    pub fn hidden_size() -> usize {
        512
    }
    pub fn intermediate_size() -> usize {
        2048
    }
    pub fn projection_dim() -> usize {
        512
    }
    pub fn num_hidden_layers() -> usize {
        12
    }
    pub fn num_attention_heads() -> usize {
        8
    }
    pub fn max_position_embeddings() -> usize {
        77
    }
    pub fn hidden_act() -> String {
        "quick_gelu".into()
    }
    pub fn layer_norm_eps() -> f64 {
        1e-5
    }
    pub(super) fn eos_token_id() -> super::EosTokenId {
        super::EosTokenId::One(49407)
    }
}

impl ClipConfig {
    pub fn read(path: &Path) -> crate::Result<Self> {
        let config: Self = crate::config_files::read_json(path)?;
        config
            .validate()
            .map_err(|message| EngineError::config(path, message))?;
        Ok(config)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        let positive = [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_attention_heads", self.num_attention_heads),
            ("num_hidden_layers", self.num_hidden_layers),
            ("max_position_embeddings", self.max_position_embeddings),
            ("vocab_size", self.vocab_size),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return Err(format!("{name} must be positive"));
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return Err(format!(
                "layer_norm_eps {} must be positive",
                self.layer_norm_eps
            ));
        }
        if let EosTokenId::Many(ids) = &self.eos_token_id
            && ids.len() != 1
        {
            return Err(format!("eos_token_id {ids:?}: expected one id"));
        }
        Activation::parse(&self.hidden_act).map(|_| ())
    }

    pub fn eos_token_id(&self) -> u32 {
        match &self.eos_token_id {
            EosTokenId::One(id) => *id,
            // `validate` guarantees exactly one.
            EosTokenId::Many(ids) => ids.first().copied().unwrap_or(49407),
        }
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    pub fn activation(&self) -> Activation {
        // Checked by `validate`; quick_gelu is only a fallback that is never reached.
        Activation::parse(&self.hidden_act).unwrap_or(Activation::QuickGelu)
    }

    /// Whether the config names the class with a `text_projection`; `None` when it does not
    /// say (then the weights decide).
    pub fn has_projection(&self) -> Option<bool> {
        if self.architectures.is_empty() {
            return None;
        }
        Some(
            self.architectures
                .iter()
                .any(|a| a == "CLIPTextModelWithProjection"),
        )
    }
}

/// transformers' `ACT2FN` entries that CLIP text encoders use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `x * sigmoid(1.702 x)`: OpenAI CLIP (SD 1.x, SDXL's first encoder).
    QuickGelu,
    /// Exact GELU with erf: OpenCLIP models (SD 2.x, SDXL's second encoder).
    GeluErf,
    /// The tanh approximation (`gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`, `gelu_accurate`).
    GeluTanh,
    Relu,
    Silu,
}

impl Activation {
    fn parse(name: &str) -> std::result::Result<Self, String> {
        Ok(match name {
            "quick_gelu" => Self::QuickGelu,
            "gelu" | "gelu_python" => Self::GeluErf,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_python_tanh" | "gelu_fast"
            | "gelu_accurate" => Self::GeluTanh,
            "relu" => Self::Relu,
            "silu" | "swish" => Self::Silu,
            other => return Err(format!("unsupported hidden_act `{other}`")),
        })
    }

    /// The activation of `x`, as rows rounded to bf16 where `rounded` (for the linear layer
    /// that [takes them](crate::nn::layers::Linear::takes_rounded)) and the activation has a
    /// CPU kernel that writes them, else as a tensor.
    pub fn apply_as(self, x: &Tensor, rounded: bool) -> Result<Activations> {
        use crate::nn::activation;
        match self {
            Self::QuickGelu => activation::quick_gelu_as(x, rounded),
            Self::GeluErf => activation::gelu_erf_as(x, rounded),
            Self::GeluTanh => activation::gelu_tanh_as(x, rounded),
            Self::Relu => x.relu().map(Activations::Tensor),
            Self::Silu => x.silu().map(Activations::Tensor),
        }
    }
}
