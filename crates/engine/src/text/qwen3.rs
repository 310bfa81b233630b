//! The Qwen3 text encoder of Z-Image: transformers' `Qwen3Model` as `ZImagePipeline` uses it,
//! every size read from the component's `config.json`.
//!
//! The pipeline takes `hidden_states[-2]`: the output of the second-to-last decoder layer,
//! before the final norm. So the last layer and the final norm are neither loaded nor run.
//! It then keeps only the rows of the real (unmasked) tokens.
//!
//! The pipeline runs the model on the prompt right-padded to `max_sequence_length` with a
//! causal + padding mask. Under a causal mask a token attends only to itself and the tokens
//! before it, and with right padding those are all real tokens: the real tokens' outputs do
//! not depend on the pads at all. So [`Qwen3Encoder::embed`] runs on the real tokens only (a
//! plain causal mask, positions `0..L`), which for a short prompt is a small fraction of the
//! 512-token batch; the tests compare it with the reference computed on the padded batch.

mod chat_template;
mod config;
mod layer;
mod rope;
#[cfg(test)]
mod tests;
mod tokenizer;

use std::path::Path;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;

pub use config::Qwen3Config;
pub use tokenizer::{Qwen3Tokenizer, TokenizedPrompt};

use crate::nn::embeddings::TokenTable;
use crate::nn::{attention, layers};
use crate::weights::{NameScheme, Variant, build_component};
use layer::DecoderLayer;

pub struct Qwen3Encoder {
    config: Qwen3Config,
    embedding: TokenTable,
    device: Device,
    /// The first `num_hidden_layers - 1` decoder layers: all the embedding needs.
    layers: Vec<DecoderLayer>,
    dtype: DType,
}

impl Qwen3Encoder {
    /// Load a text encoder folder (e.g. `model/text_encoder`): `config.json` plus
    /// `model.safetensors` (or a variant, or shards).
    pub fn load(
        dir: &Path,
        variant: Variant,
        dtype: DType,
        device: &Device,
    ) -> crate::Result<Self> {
        let config = Qwen3Config::read(&dir.join("config.json"))?;
        build_component(dir, variant, NameScheme::Exact, dtype, device, |vb| {
            Self::new(config, vb)
        })
    }

    /// The weights may be stored under `model.` (a `Qwen3ForCausalLM` checkpoint, the real
    /// Z-Image repository) or without it (a `Qwen3Model` saved by transformers 5).
    pub fn new(config: Qwen3Config, vb: VarBuilder) -> Result<Self> {
        let vb = if vb.contains_tensor("model.embed_tokens.weight") {
            vb.pp("model")
        } else {
            vb
        };
        let embedding = TokenTable::new(
            config.vocab_size,
            config.hidden_size,
            "embed_tokens.weight",
            &vb,
        )?;
        // Only the tensors asked for are read from the file: the last layer's never are.
        let layers = (0..config.num_hidden_layers.saturating_sub(1))
            .map(|i| DecoderLayer::new(&config, vb.pp(format!("layers.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        // LLM residual streams carry a few very large activations, and Qwen's are known to
        // overflow f16 (its models are published and run in bf16): f16 weights compute in
        // f32; bf16 has f32's range and computes in bf16 on a GPU.
        let dtype = match layers::compute_dtype(vb.dtype(), vb.device()) {
            DType::F16 => DType::F32,
            other => other,
        };
        Ok(Self {
            embedding,
            device: vb.device().clone(),
            layers,
            dtype,
            config,
        })
    }

    pub fn config(&self) -> &Qwen3Config {
        &self.config
    }

    /// The prompt embedding `(1, L, hidden)` of `ids`, the `L` real tokens of one prompt
    /// ([`TokenizedPrompt::real_ids`]): the second-to-last layer's output, in the compute
    /// dtype.
    pub fn embed(&self, ids: &[u32]) -> Result<Tensor> {
        if ids.is_empty() {
            candle_core::bail!("Qwen3 encoder: no tokens to encode");
        }
        let device = &self.device;
        let tokens = ids.len();
        let input = Tensor::from_slice(ids, (1, tokens), device)?;
        let mut hidden = self.embedding.forward(&input)?.to_dtype(self.dtype)?;
        let mask = attention::causal_mask(tokens, device)?;
        let (cos, sin) = rope::tables(
            tokens,
            self.config.head_dim(),
            self.config.rope_theta(),
            device,
        )?;
        for layer in &self.layers {
            hidden = layer.forward(&hidden, &mask, &cos, &sin)?;
        }
        Ok(hidden)
    }
}
