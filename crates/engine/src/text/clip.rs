//! The CLIP text transformer: transformers' `CLIPTextModel` and
//! `CLIPTextModelWithProjection`, with every size read from the component's `config.json`.
//!
//! Pre-norm transformer layers with causal self-attention over token + position embeddings,
//! a final layer norm, and a pooled output taken at the end-of-text token (projected by
//! `text_projection` for the WithProjection class).

mod config;
#[cfg(test)]
mod tests;
pub mod tokenizer;

use std::path::Path;

use candle_core::{DType, Device, IndexOp, Module, Result, Tensor};
use candle_nn::VarBuilder;

pub use config::{Activation, ClipConfig};

use crate::nn::attention;
use crate::nn::embeddings::TokenTable;
use crate::nn::layers::{self, LayerNorm, Linear};
use crate::weights::{NameScheme, Variant, build_component};

pub struct ClipOutput {
    /// `(B, T, D)` after `final_layer_norm`.
    pub last_hidden_state: Tensor,
    /// `(B, T, D)`: `hidden_states[-2]` of the reference, the input of the last layer, without
    /// the final norm (what SDXL conditions on).
    pub penultimate_hidden_state: Tensor,
    /// `(B, D)` final-normed state at the eos position, or `(B, projection_dim)` after
    /// `text_projection` for `CLIPTextModelWithProjection`.
    pub pooled: Tensor,
}

pub struct ClipTextModel {
    config: ClipConfig,
    token_embedding: TokenTable,
    position_embedding: TokenTable,
    layers: Vec<EncoderLayer>,
    final_layer_norm: LayerNorm,
    text_projection: Option<Linear>,
    /// What the layers compute in: the weights' dtype, or f32 for half weights on CPU.
    dtype: DType,
}

impl ClipTextModel {
    /// Load a text encoder folder (e.g. `model/text_encoder`): `config.json` plus
    /// `model.safetensors` (or a variant), with or without the `text_model.` name prefix.
    pub fn load(
        dir: &Path,
        variant: Variant,
        dtype: DType,
        device: &Device,
    ) -> crate::Result<Self> {
        let config = ClipConfig::read(&dir.join("config.json"))?;
        build_component(
            dir,
            variant,
            NameScheme::OptionalTextModelPrefix,
            dtype,
            device,
            |vb| Self::new(config, vb),
        )
    }

    /// Build from a `VarBuilder` rooted where `text_model.` and `text_projection` live.
    pub fn new(config: ClipConfig, vb: VarBuilder) -> Result<Self> {
        let hidden = config.hidden_size;
        let text = vb.pp("text_model");
        let embeddings = text.pp("embeddings");
        let token_embedding = TokenTable::new(
            config.vocab_size,
            hidden,
            "weight",
            &embeddings.pp("token_embedding"),
        )?;
        let position_embedding = TokenTable::new(
            config.max_position_embeddings,
            hidden,
            "weight",
            &embeddings.pp("position_embedding"),
        )?;
        let layers = (0..config.num_hidden_layers)
            .map(|i| EncoderLayer::new(&config, text.pp(format!("encoder.layers.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        let final_layer_norm =
            layers::layer_norm(hidden, config.layer_norm_eps, text.pp("final_layer_norm"))?;
        let projection = config
            .has_projection()
            .unwrap_or_else(|| vb.contains_tensor("text_projection.weight"));
        let text_projection = if projection {
            Some(layers::linear_no_bias(
                hidden,
                config.projection_dim,
                vb.pp("text_projection"),
            )?)
        } else {
            None
        };
        Ok(Self {
            dtype: layers::compute_dtype(vb.dtype(), vb.device()),
            config,
            token_embedding,
            position_embedding,
            layers,
            final_layer_norm,
            text_projection,
        })
    }

    pub fn config(&self) -> &ClipConfig {
        &self.config
    }

    /// Width of `last_hidden_state` and `penultimate_hidden_state`.
    pub fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    pub fn has_projection(&self) -> bool {
        self.text_projection.is_some()
    }

    pub fn forward(&self, input_ids: &Tensor /* (B, T) u32 */) -> Result<ClipOutput> {
        let (_, tokens) = input_ids.dims2()?;
        let positions = self.config.max_position_embeddings;
        if tokens == 0 || tokens > positions {
            candle_core::bail!("{tokens} tokens; this text encoder takes 1 to {positions}");
        }
        let position_ids = Tensor::arange(0u32, tokens as u32, input_ids.device())?;
        // Widened before the sum, so half-precision tables are not added in half precision.
        let tokens_embedded = self
            .token_embedding
            .forward(input_ids)?
            .to_dtype(self.dtype)?;
        let positions_embedded = self
            .position_embedding
            .forward(&position_ids)?
            .to_dtype(self.dtype)?;
        let mut hidden = tokens_embedded.broadcast_add(&positions_embedded)?;

        let mask = attention::causal_mask(tokens, input_ids.device())?;
        // With one layer the reference's hidden_states[-2] is the embedding output.
        let mut penultimate = hidden.clone();
        for layer in &self.layers {
            penultimate = hidden;
            hidden = layer.forward(&penultimate, &mask)?;
        }
        let last_hidden_state = self.final_layer_norm.forward(&hidden)?;

        let eos_positions = self.eos_positions(input_ids)?;
        let rows = eos_positions
            .iter()
            .enumerate()
            .map(|(b, &pos)| last_hidden_state.i((b, pos)))
            .collect::<Result<Vec<_>>>()?;
        let mut pooled = Tensor::stack(&rows, 0)?;
        if let Some(projection) = &self.text_projection {
            pooled = projection.forward(&pooled)?;
        }
        Ok(ClipOutput {
            last_hidden_state,
            penultimate_hidden_state: penultimate,
            pooled,
        })
    }

    /// Where each sequence's pooled state is read, as transformers does: configs written
    /// before transformers fixed CLIP's `eos_token_id` say 2, and for them the position of the
    /// largest id is used (eos has the largest id in CLIP's vocabulary); otherwise the first
    /// position holding `eos_token_id` (pad may equal eos), or 0 when there is none.
    fn eos_positions(&self, input_ids: &Tensor) -> Result<Vec<usize>> {
        let eos = self.config.eos_token_id();
        let ids = input_ids.to_dtype(DType::U32)?.to_vec2::<u32>()?;
        Ok(ids
            .iter()
            .map(|row| {
                if eos == 2 {
                    // First maximum, like torch.argmax.
                    let max = row.iter().copied().max().unwrap_or(0);
                    row.iter().position(|&id| id == max).unwrap_or(0)
                } else {
                    row.iter().position(|&id| id == eos).unwrap_or(0)
                }
            })
            .collect())
    }
}

struct EncoderLayer {
    layer_norm1: LayerNorm,
    attention: SelfAttention,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    activation: Activation,
}

impl EncoderLayer {
    fn new(config: &ClipConfig, vb: VarBuilder) -> Result<Self> {
        let hidden = config.hidden_size;
        let eps = config.layer_norm_eps;
        let mlp = vb.pp("mlp");
        Ok(Self {
            layer_norm1: layers::layer_norm(hidden, eps, vb.pp("layer_norm1"))?,
            attention: SelfAttention::new(config, vb.pp("self_attn"))?,
            layer_norm2: layers::layer_norm(hidden, eps, vb.pp("layer_norm2"))?,
            fc1: layers::linear(hidden, config.intermediate_size, mlp.pp("fc1"))?,
            fc2: layers::linear(config.intermediate_size, hidden, mlp.pp("fc2"))?,
            activation: config.activation(),
        })
    }

    fn forward(&self, x: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let attended = self
            .attention
            .forward(&self.layer_norm1.forward(x)?, mask)?;
        let x = (x + attended)?;
        let h = self.fc1.forward(&self.layer_norm2.forward(&x)?)?;
        let h = self.fc2.forward(&self.activation.apply(&h)?)?;
        x + h
    }
}

struct SelfAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    heads: usize,
    head_dim: usize,
}

impl SelfAttention {
    fn new(config: &ClipConfig, vb: VarBuilder) -> Result<Self> {
        let hidden = config.hidden_size;
        Ok(Self {
            q_proj: layers::linear(hidden, hidden, vb.pp("q_proj"))?,
            k_proj: layers::linear(hidden, hidden, vb.pp("k_proj"))?,
            v_proj: layers::linear(hidden, hidden, vb.pp("v_proj"))?,
            out_proj: layers::linear(hidden, hidden, vb.pp("out_proj"))?,
            heads: config.num_attention_heads,
            head_dim: config.head_dim(),
        })
    }

    /// Causal attention over at most 77 tokens.
    fn forward(&self, x: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (batch, tokens, _) = x.dims3()?;
        let split = |t: Tensor| {
            t.reshape((batch, tokens, self.heads, self.head_dim))?
                .transpose(1, 2)
        };
        let q = split(self.q_proj.forward(x)?)?;
        let k = split(self.k_proj.forward(x)?)?;
        let v = split(self.v_proj.forward(x)?)?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let out = attention::with_bias(&q, &k, &v, scale, mask)?;
        self.out_proj.forward(&out)
    }
}
