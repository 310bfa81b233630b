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
use crate::nn::rounded::Activations;
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
        let (mut hidden, mask) = self.embed(input_ids)?;
        // With one layer the reference's hidden_states[-2] is the embedding output.
        let mut penultimate = hidden.clone();
        for layer in &self.layers {
            penultimate = hidden;
            hidden = layer.forward(&penultimate, &mask)?;
        }
        let last_hidden_state = self.final_layer_norm.forward(&hidden)?;
        let rows = self
            .eos_positions(input_ids)?
            .iter()
            .enumerate()
            .map(|(b, &pos)| last_hidden_state.i((b, pos)))
            .collect::<Result<Vec<_>>>()?;
        let pooled = self.project(Tensor::stack(&rows, 0)?)?;
        Ok(ClipOutput {
            last_hidden_state,
            penultimate_hidden_state: penultimate,
            pooled,
        })
    }

    /// [`ClipOutput::penultimate_hidden_state`] and, where `pooled`, [`ClipOutput::pooled`],
    /// the same values as [`Self::forward`]'s: what SDXL and SD3 read. Nothing reads the last
    /// layer's other rows, so it runs only for the end-of-text row of each sequence (its keys
    /// and values over every token), or not at all without `pooled`: a twelfth of CLIP-L's
    /// work, most of a layer of CLIP-G's.
    pub fn forward_penultimate(
        &self,
        input_ids: &Tensor, /* (B, T) u32 */
        pooled: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let Some((last, before)) = self.layers.split_last() else {
            // No layers: the outputs are the embeddings and their norm.
            let out = self.forward(input_ids)?;
            return Ok((out.penultimate_hidden_state, pooled.then_some(out.pooled)));
        };
        let (mut hidden, mask) = self.embed(input_ids)?;
        for layer in before {
            hidden = layer.forward(&hidden, &mask)?;
        }
        if !pooled {
            return Ok((hidden, None));
        }
        let rows = last.forward_rows(&hidden, &mask, &self.eos_positions(input_ids)?)?;
        let pooled = self.project(self.final_layer_norm.forward(&rows)?.squeeze(1)?)?;
        Ok((hidden, Some(pooled)))
    }

    /// Token plus position embeddings in the compute dtype, and the causal mask.
    fn embed(&self, input_ids: &Tensor) -> Result<(Tensor, Tensor)> {
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
        let hidden = tokens_embedded.broadcast_add(&positions_embedded)?;
        Ok((hidden, attention::causal_mask(tokens, input_ids.device())?))
    }

    /// The pooled rows `(B, D)` through `text_projection` where the model has one.
    fn project(&self, pooled: Tensor) -> Result<Tensor> {
        match &self.text_projection {
            Some(projection) => projection.forward(&pooled),
            None => Ok(pooled),
        }
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

    /// The layer; the norms' and the activation's outputs as rows rounded to bf16 where the
    /// linear layers reading them would round them (a bf16 model on a CPU with AVX512-BF16):
    /// one pass writing half the bytes, where the three projections each rounded a copy.
    fn forward(&self, x: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let normed = self
            .layer_norm1
            .forward_as(x, self.attention.takes_rounded())?;
        let attended = self.attention.forward_self(&normed, mask)?;
        self.feed_forward((x + attended)?)
    }

    /// [`Self::forward`]'s output at one row of each sequence (`rows[b]` of sequence `b`):
    /// `(B, 1, D)`, attending over the whole of `x` under the causal mask.
    fn forward_rows(&self, x: &Tensor, mask: &Tensor, rows: &[usize]) -> Result<Tensor> {
        let normed = self.layer_norm1.forward(x)?;
        let attended = rows
            .iter()
            .enumerate()
            .map(|(b, &row)| {
                let sequence = normed.narrow(0, b, 1)?;
                let query = sequence.narrow(1, row, 1)?;
                let attended =
                    self.attention
                        .forward(&query, &sequence, &mask.narrow(0, row, 1)?)?;
                x.narrow(0, b, 1)?.narrow(1, row, 1)? + attended
            })
            .collect::<Result<Vec<_>>>()?;
        self.feed_forward(Tensor::cat(&attended, 0)?)
    }

    /// The MLP with its residual connection.
    fn feed_forward(&self, x: Tensor) -> Result<Tensor> {
        let normed = self.layer_norm2.forward_as(&x, self.fc1.takes_rounded())?;
        let h = self.fc1.forward_activations(&normed)?;
        let h = self.activation.apply_as(&h, self.fc2.takes_rounded())?;
        x + self.fc2.forward_activations(&h)?
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

    /// Whether the projections of the queries, keys and values all take rows rounded to
    /// bf16 ([`Linear::takes_rounded`]).
    fn takes_rounded(&self) -> bool {
        [&self.q_proj, &self.k_proj, &self.v_proj]
            .iter()
            .all(|projection| projection.takes_rounded())
    }

    /// Attention of `queries` over `keys` (at most 77 tokens; the same rows for self-attention,
    /// or some of them), `mask` holding the queries' rows of the causal mask.
    fn forward(&self, queries: &Tensor, keys: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let q = self.q_proj.forward(queries)?;
        let k = self.k_proj.forward(keys)?;
        let v = self.v_proj.forward(keys)?;
        self.attend(q, k, v, mask)
    }

    /// Self-attention of every row of `x`, rows rounded to bf16 or a tensor.
    fn forward_self(&self, x: &Activations, mask: &Tensor) -> Result<Tensor> {
        let q = self.q_proj.forward_activations(x)?;
        let k = self.k_proj.forward_activations(x)?;
        let v = self.v_proj.forward_activations(x)?;
        self.attend(q, k, v, mask)
    }

    /// The heads' attention of the projected queries over the projected keys and values,
    /// through the output projection.
    fn attend(&self, q: Tensor, k: Tensor, v: Tensor, mask: &Tensor) -> Result<Tensor> {
        let split = |t: Tensor| {
            let (batch, tokens, _) = t.dims3()?;
            t.reshape((batch, tokens, self.heads, self.head_dim))?
                .transpose(1, 2)
        };
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let out = attention::with_bias(&split(q)?, &split(k)?, &split(v)?, scale, mask)?;
        self.out_proj.forward(&out)
    }
}
