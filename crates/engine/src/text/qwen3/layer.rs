//! One Qwen3 decoder layer: pre-norm grouped-query self-attention, then a pre-norm SwiGLU
//! feed-forward, each added to the residual stream.
//!
//! Qwen3's attention normalises each head's queries and keys (an RMS norm over `head_dim`,
//! one learned scale shared by all heads) before rotating them, and several query heads share
//! one key/value head.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::Qwen3Config;
use super::rope;
use crate::nn::layers::{self, Linear, RmsNorm};
use crate::nn::{activation, attention};

pub struct DecoderLayer {
    input_norm: RmsNorm,
    attention: Attention,
    post_attention_norm: RmsNorm,
    gate: Linear,
    up: Linear,
    down: Linear,
}

impl DecoderLayer {
    pub fn new(config: &Qwen3Config, vb: VarBuilder) -> Result<Self> {
        let (width, ff, eps) = (
            config.hidden_size,
            config.intermediate_size,
            config.rms_norm_eps,
        );
        let mlp = vb.pp("mlp");
        Ok(Self {
            input_norm: layers::rms_norm(width, eps, vb.pp("input_layernorm"))?,
            attention: Attention::new(config, vb.pp("self_attn"))?,
            post_attention_norm: layers::rms_norm(width, eps, vb.pp("post_attention_layernorm"))?,
            gate: layers::linear_no_bias(width, ff, mlp.pp("gate_proj"))?,
            up: layers::linear_no_bias(width, ff, mlp.pp("up_proj"))?,
            down: layers::linear_no_bias(ff, width, mlp.pp("down_proj"))?,
        })
    }

    /// `x` `(B, T, hidden)`; `mask` an additive bias broadcasting to `(B, heads, T, T)`;
    /// `cos`/`sin` the RoPE tables of positions `0..T`.
    pub fn forward(&self, x: &Tensor, mask: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let attended = self
            .attention
            .forward(&self.input_norm.forward(x)?, mask, cos, sin)?;
        let x = (x + attended)?;
        let h = self.post_attention_norm.forward(&x)?;
        let gated = activation::silu_mul(&self.gate.forward(&h)?, &self.up.forward(&h)?)?;
        x + self.down.forward(&gated)?
    }
}

struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    q_norm: RmsNorm,
    k_norm: RmsNorm,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn new(config: &Qwen3Config, vb: VarBuilder) -> Result<Self> {
        let (width, head_dim) = (config.hidden_size, config.head_dim());
        let (heads, kv_heads) = (config.num_attention_heads, config.num_key_value_heads);
        let projection = |cin, cout, name| {
            if config.attention_bias {
                layers::linear(cin, cout, vb.pp(name))
            } else {
                layers::linear_no_bias(cin, cout, vb.pp(name))
            }
        };
        Ok(Self {
            q: projection(width, heads * head_dim, "q_proj")?,
            k: projection(width, kv_heads * head_dim, "k_proj")?,
            v: projection(width, kv_heads * head_dim, "v_proj")?,
            o: projection(heads * head_dim, width, "o_proj")?,
            q_norm: layers::rms_norm(head_dim, config.rms_norm_eps, vb.pp("q_norm"))?,
            k_norm: layers::rms_norm(head_dim, config.rms_norm_eps, vb.pp("k_norm"))?,
            heads,
            kv_heads,
            head_dim,
        })
    }

    fn forward(&self, x: &Tensor, mask: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let (batch, tokens, _) = x.dims3()?;
        // (B, T, heads * D) -> (B, heads, T, D), the per-head norm taken before the transpose.
        let split = |t: Tensor, heads: usize, norm: Option<&RmsNorm>| {
            let t = t.reshape((batch, tokens, heads, self.head_dim))?;
            let t = match norm {
                Some(norm) => norm.forward(&t)?,
                None => t,
            };
            t.transpose(1, 2)
        };
        let q = split(self.q.forward(x)?, self.heads, Some(&self.q_norm))?;
        let k = split(self.k.forward(x)?, self.kv_heads, Some(&self.k_norm))?;
        let v = split(self.v.forward(x)?, self.kv_heads, None)?;
        let q = rope::apply(&q, cos, sin)?;
        let k = self.repeat_kv(&rope::apply(&k, cos, sin)?)?;
        let v = self.repeat_kv(&v)?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let out = attention::with_bias(&q, &k, &v, scale, mask)?;
        self.o.forward(&out)
    }

    /// `(B, kv_heads, T, D)` to `(B, heads, T, D)`: query head `h` uses key/value head
    /// `h / (heads / kv_heads)`, as transformers' `repeat_kv` lays them out.
    fn repeat_kv(&self, x: &Tensor) -> Result<Tensor> {
        let group = self.heads / self.kv_heads;
        if group == 1 {
            return Ok(x.clone());
        }
        let (batch, kv_heads, tokens, head_dim) = x.dims4()?;
        x.unsqueeze(2)?
            .broadcast_as((batch, kv_heads, group, tokens, head_dim))?
            .reshape((batch, kv_heads * group, tokens, head_dim))
    }
}
