//! The Z-Image transformer block (`ZImageTransformerBlock`), used three ways: modulated on the
//! image tokens (noise refiner), unmodulated on the caption tokens (context refiner), and
//! modulated on the joint `[image, caption]` sequence (main layers).
//!
//! Each half of the block is sandwiched between two RMS norms: the sub-layer's output is normed
//! again before it joins the residual. With modulation, the timestep embedding (taken as it is,
//! no SiLU) gives per-block `scale` for the inputs and `tanh` gates for the outputs; there is
//! no shift.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::ZImageConfig;
use super::rope;
use crate::nn::activation;
use crate::nn::attention::scaled_dot_product_for;
use crate::nn::layers::{self, Linear, RmsNorm};

/// Self-attention with per-head q/k RMS norms and RoPE; no biases.
struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    norm_q: Option<RmsNorm>,
    norm_k: Option<RmsNorm>,
    to_out: Linear,
    heads: usize,
}

impl Attention {
    fn new(config: &ZImageConfig, vb: VarBuilder) -> Result<Self> {
        let (dim, head) = (config.dim, config.head_dim());
        // diffusers' `Attention` uses eps 1e-5 here whatever `norm_eps` says.
        let qk_norm = |name: &str| -> Result<Option<RmsNorm>> {
            config
                .qk_norm
                .then(|| layers::rms_norm(head, 1e-5, vb.pp(name)))
                .transpose()
        };
        Ok(Self {
            to_q: layers::linear_no_bias(dim, dim, vb.pp("to_q"))?,
            to_k: layers::linear_no_bias(dim, dim, vb.pp("to_k"))?,
            to_v: layers::linear_no_bias(dim, dim, vb.pp("to_v"))?,
            norm_q: qk_norm("norm_q")?,
            norm_k: qk_norm("norm_k")?,
            to_out: layers::linear_no_bias(dim, dim, vb.pp("to_out.0"))?,
            heads: config.n_heads,
        })
    }

    /// `x (B, tokens, dim)` attending to itself, every token to every token: diffusers masks
    /// only the batch padding of unequal sequences, never the pad slots of one sequence.
    fn forward(&self, x: &Tensor, (cos, sin): (&Tensor, &Tensor)) -> Result<Tensor> {
        let (b, n, _) = x.dims3()?;
        let heads = |t: Tensor| t.reshape((b, n, self.heads, ()));
        let normed = |t: Tensor, norm: &Option<RmsNorm>| match norm {
            Some(norm) => norm.forward(&t),
            None => Ok(t),
        };
        let q = normed(heads(self.to_q.forward(x)?)?, &self.norm_q)?;
        let k = normed(heads(self.to_k.forward(x)?)?, &self.norm_k)?;
        let v = heads(self.to_v.forward(x)?)?;
        // Heads first, (B, heads, tokens, D): q and k as RoPE leaves them, v a transposed view
        // (the attention kernel reads any strides).
        let q = rope::apply(&q, cos, sin)?;
        let k = rope::apply(&k, cos, sin)?;
        let scale = 1.0 / (q.dim(3)? as f64).sqrt();
        // In bf16 for a bf16 model where the CPU has the products, as PyTorch computes it.
        let weights = self.to_q.weight_dtype();
        let out = scaled_dot_product_for(weights, &q, &k, &v.transpose(1, 2)?, scale)?;
        self.to_out
            .forward(&crate::nn::transpose::heads_to_tokens(&out)?)
    }
}

/// SwiGLU: `w2(silu(w1 x) * w3 x)`, no biases.
struct FeedForward {
    w1: Linear,
    w2: Linear,
    w3: Linear,
}

impl FeedForward {
    fn new(config: &ZImageConfig, vb: VarBuilder) -> Result<Self> {
        let (dim, hidden) = (config.dim, config.ffn_dim());
        Ok(Self {
            w1: layers::linear_no_bias(dim, hidden, vb.pp("w1"))?,
            w2: layers::linear_no_bias(hidden, dim, vb.pp("w2"))?,
            w3: layers::linear_no_bias(dim, hidden, vb.pp("w3"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gated = activation::silu_mul(&self.w1.forward(x)?, &self.w3.forward(x)?)?;
        self.w2.forward(&gated)
    }
}

pub struct ZImageBlock {
    attention: Attention,
    feed_forward: FeedForward,
    attention_norm1: RmsNorm,
    attention_norm2: RmsNorm,
    ffn_norm1: RmsNorm,
    ffn_norm2: RmsNorm,
    /// `adaLN_modulation.0`: the timestep embedding to (scale_msa, gate_msa, scale_mlp,
    /// gate_mlp); absent in the context refiner.
    modulation: Option<Linear>,
}

impl ZImageBlock {
    pub fn new(config: &ZImageConfig, modulated: bool, vb: VarBuilder) -> Result<Self> {
        let norm = |name: &str| layers::rms_norm(config.dim, config.norm_eps, vb.pp(name));
        let modulation = modulated
            .then(|| {
                layers::linear(
                    config.adaln_dim(),
                    4 * config.dim,
                    vb.pp("adaLN_modulation.0"),
                )
            })
            .transpose()?;
        Ok(Self {
            attention: Attention::new(config, vb.pp("attention"))?,
            feed_forward: FeedForward::new(config, vb.pp("feed_forward"))?,
            attention_norm1: norm("attention_norm1")?,
            attention_norm2: norm("attention_norm2")?,
            ffn_norm1: norm("ffn_norm1")?,
            ffn_norm2: norm("ffn_norm2")?,
            modulation,
        })
    }

    /// `x (B, tokens, dim)` through the block; `adaln (B, adaln_dim)` is the timestep embedding,
    /// required by a modulated block and ignored by the context refiner's.
    pub fn forward(
        &self,
        x: &Tensor,
        rope: (&Tensor, &Tensor),
        adaln: Option<&Tensor>,
    ) -> Result<Tensor> {
        let Some(modulation) = &self.modulation else {
            let attended = self
                .attention
                .forward(&self.attention_norm1.forward(x)?, rope)?;
            let x = (x + self.attention_norm2.forward(&attended)?)?;
            let ff = self.feed_forward.forward(&self.ffn_norm1.forward(&x)?)?;
            return &x + self.ffn_norm2.forward(&ff)?;
        };
        let Some(adaln) = adaln else {
            candle_core::bail!("a modulated Z-Image block needs the timestep embedding");
        };
        // Each (B, 1, dim), broadcast over the tokens.
        let m = modulation.forward(adaln)?.unsqueeze(1)?.chunk(4, 2)?;
        let (scale_msa, scale_mlp) = ((&m[0] + 1.0)?, (&m[2] + 1.0)?);
        let (gate_msa, gate_mlp) = (m[1].tanh()?, m[3].tanh()?);

        let attn_in = self.attention_norm1.forward(x)?.broadcast_mul(&scale_msa)?;
        let attended = self.attention.forward(&attn_in, rope)?;
        let x = (x + self
            .attention_norm2
            .forward(&attended)?
            .broadcast_mul(&gate_msa)?)?;
        let ff_in = self.ffn_norm1.forward(&x)?.broadcast_mul(&scale_mlp)?;
        let ff = self.feed_forward.forward(&ff_in)?;
        &x + self.ffn_norm2.forward(&ff)?.broadcast_mul(&gate_mlp)?
    }
}
