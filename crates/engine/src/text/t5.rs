//! The T5 v1.1 text encoder: transformers' `T5EncoderModel`, as FLUX.1 and SD3.5 use it (the
//! "T5-XXL" of their model folders), every size read from the component's `config.json`.
//!
//! Pre-norm layers of self-attention and a gated-GELU feed-forward, with T5's own details: RMS
//! norms without bias or mean, unscaled attention scores plus a learned bias per relative-position
//! bucket (computed once, by the first layer, and shared by all), the token embedding stored once
//! as `shared.weight`. The diffusers pipelines run it without an attention mask: pad tokens
//! attend and are attended to, so this encoder takes no mask either.

mod config;
#[cfg(test)]
mod tests;
mod tokenizer;

use std::path::Path;

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

pub use config::T5Config;
pub use tokenizer::T5Tokenizer;

use crate::nn::embeddings::TokenTable;
use crate::nn::layers::{self, Linear, RmsNorm};
use crate::nn::{activation, attention};
use crate::weights::{NameScheme, Variant, build_component};

pub struct T5Encoder {
    config: T5Config,
    embedding: TokenTable,
    /// `(buckets, heads)`: the first layer's relative-attention bias table.
    relative_bias: Tensor,
    layers: Vec<Layer>,
    final_norm: RmsNorm,
    dtype: DType,
}

impl T5Encoder {
    /// Load a text encoder folder (e.g. `model/text_encoder_2`): `config.json` plus
    /// `model.safetensors` (or a variant, or shards).
    pub fn load(
        dir: &Path,
        variant: Variant,
        dtype: DType,
        device: &Device,
    ) -> crate::Result<Self> {
        let config = T5Config::read(&dir.join("config.json"))?;
        build_component(dir, variant, NameScheme::Exact, dtype, device, |vb| {
            Self::new(config, vb)
        })
    }

    pub fn new(config: T5Config, vb: VarBuilder) -> Result<Self> {
        let (vocab, width) = (config.vocab_size, config.d_model);
        // The table is tied: `shared.weight` always, `encoder.embed_tokens.weight` in some
        // exports instead.
        let name = if vb.contains_tensor("shared.weight") {
            "shared.weight"
        } else {
            "encoder.embed_tokens.weight"
        };
        let embedding = TokenTable::new(vocab, width, name, &vb)?;
        let encoder = vb.pp("encoder");
        let relative_bias = encoder.pp("block.0.layer.0.SelfAttention").get(
            (config.relative_attention_num_buckets, config.num_heads),
            "relative_attention_bias.weight",
        )?;
        let layers = (0..config.num_layers)
            .map(|i| Layer::new(&config, encoder.pp(format!("block.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        let final_norm = layers::rms_norm(
            width,
            config.layer_norm_epsilon,
            encoder.pp("final_layer_norm"),
        )?;
        // T5's activations outgrow f16 (transformers keeps its `wo` in f32 for that reason):
        // f16 weights compute in f32; bf16 has f32's range and computes in bf16 on a GPU.
        let dtype = match layers::compute_dtype(vb.dtype(), vb.device()) {
            DType::F16 => DType::F32,
            other => other,
        };
        Ok(Self {
            embedding,
            relative_bias,
            layers,
            final_norm,
            dtype,
            config,
        })
    }

    pub fn config(&self) -> &T5Config {
        &self.config
    }

    /// `(B, T)` token ids to the last hidden state `(B, T, d_model)`.
    pub fn forward(&self, input_ids: &Tensor) -> Result<Tensor> {
        let (_, tokens) = input_ids.dims2()?;
        let mut hidden = self.embedding.forward(input_ids)?.to_dtype(self.dtype)?;
        let bias = self.position_bias(tokens, input_ids.device())?;
        for layer in &self.layers {
            hidden = layer.forward(&hidden, &bias)?;
        }
        self.final_norm.forward(&hidden)
    }

    /// `(1, heads, T, T)` f32: the learned bias of each (query, key) pair's bucket.
    fn position_bias(&self, tokens: usize, device: &Device) -> Result<Tensor> {
        let (buckets, distance) = (
            self.config.relative_attention_num_buckets,
            self.config.relative_attention_max_distance,
        );
        let ids: Vec<u32> = (0..tokens)
            .flat_map(|query| {
                (0..tokens).map(move |key| bucket(key as i64 - query as i64, buckets, distance))
            })
            .collect();
        let ids = Tensor::from_vec(ids, tokens * tokens, device)?;
        let table = self.relative_bias.to_dtype(DType::F32)?;
        table
            .index_select(&ids, 0)?
            .reshape((tokens, tokens, self.config.num_heads))?
            .permute((2, 0, 1))?
            .unsqueeze(0)?
            .contiguous()
    }
}

/// T5's bidirectional relative-position bucket of `relative` (key position minus query
/// position): half the buckets for keys after the query; within each half, exact buckets for
/// small distances and logarithmically wider ones up to `max_distance`. The logarithm is taken
/// in f32 and truncated, as transformers computes it.
fn bucket(relative: i64, buckets: usize, max_distance: usize) -> u32 {
    let half = (buckets / 2) as i64;
    let mut bucket = if relative > 0 { half } else { 0 };
    let distance = relative.abs();
    let max_exact = half / 2;
    if distance < max_exact {
        bucket += distance;
    } else {
        let ratio = (distance as f32 / max_exact as f32).ln()
            / (max_distance as f32 / max_exact as f32).ln()
            * (half - max_exact) as f32;
        bucket += (max_exact + ratio as i64).min(half - 1);
    }
    bucket as u32
}

struct Layer {
    attention_norm: RmsNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    heads: usize,
    head_dim: usize,
    ff_norm: RmsNorm,
    wi_0: Linear,
    wi_1: Linear,
    wo: Linear,
}

impl Layer {
    fn new(config: &T5Config, vb: VarBuilder) -> Result<Self> {
        let (width, inner, ff) = (config.d_model, config.inner_dim(), config.d_ff);
        let eps = config.layer_norm_epsilon;
        let attention = vb.pp("layer.0");
        let sa = attention.pp("SelfAttention");
        let feed_forward = vb.pp("layer.1");
        let dense = feed_forward.pp("DenseReluDense");
        Ok(Self {
            attention_norm: layers::rms_norm(width, eps, attention.pp("layer_norm"))?,
            q: layers::linear_no_bias(width, inner, sa.pp("q"))?,
            k: layers::linear_no_bias(width, inner, sa.pp("k"))?,
            v: layers::linear_no_bias(width, inner, sa.pp("v"))?,
            o: layers::linear_no_bias(inner, width, sa.pp("o"))?,
            heads: config.num_heads,
            head_dim: config.d_kv,
            ff_norm: layers::rms_norm(width, eps, feed_forward.pp("layer_norm"))?,
            wi_0: layers::linear_no_bias(width, ff, dense.pp("wi_0"))?,
            wi_1: layers::linear_no_bias(width, ff, dense.pp("wi_1"))?,
            wo: layers::linear_no_bias(ff, width, dense.pp("wo"))?,
        })
    }

    fn forward(&self, x: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let x = (x + self.attend(&self.attention_norm.forward(x)?, bias)?)?;
        let h = self.ff_norm.forward(&x)?;
        // Gated GELU, the tanh approximation (transformers' `gelu_new`).
        let gated = activation::gelu_tanh_mul(&self.wi_0.forward(&h)?, &self.wi_1.forward(&h)?)?;
        x + self.wo.forward(&gated)?
    }

    /// Unscaled scores plus the position bias.
    fn attend(&self, x: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let (batch, tokens, _) = x.dims3()?;
        let split = |t: Tensor| {
            t.reshape((batch, tokens, self.heads, self.head_dim))?
                .transpose(1, 2)
        };
        let q = split(self.q.forward(x)?)?;
        let k = split(self.k.forward(x)?)?;
        let v = split(self.v.forward(x)?)?;
        // T5 does not scale its scores.
        let out = attention::with_bias(&q, &k, &v, 1.0, bias)?;
        self.o.forward(&out)
    }
}
