//! diffusers' `Transformer2DModel` over a feature map: GroupNorm, projection in, a stack of
//! `BasicTransformerBlock`s (self-attention, cross-attention to the text, GEGLU feed-forward),
//! projection out, residual.

use candle_core::{Module, Result, Tensor};

use crate::nn::activation::gelu_erf_mul_as;
use crate::nn::attention::scaled_dot_product_for;
use crate::nn::conv::Conv1x1;
use crate::nn::layers::{self, GroupNorm, LayerNorm, Linear, Weights};
use crate::nn::resnet::conv1x1;
use crate::nn::rounded::Activations;
use crate::nn::transpose::{heads_to_tokens_as, transposed_items};

struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    scale: f64,
}

impl Attention {
    fn new(
        query_dim: usize,
        context_dim: usize,
        heads: usize,
        head_dim: usize,
        vb: Weights,
    ) -> Result<Self> {
        let inner = heads * head_dim;
        Ok(Self {
            to_q: layers::linear_no_bias(query_dim, inner, vb.pp("to_q"))?,
            to_k: layers::linear_no_bias(context_dim, inner, vb.pp("to_k"))?,
            to_v: layers::linear_no_bias(context_dim, inner, vb.pp("to_v"))?,
            to_out: layers::linear(inner, query_dim, vb.pp("to_out.0"))?,
            heads,
            scale: (head_dim as f64).powf(-0.5),
        })
    }

    /// `x: (B, N, C)`, normed (as rows rounded to bf16 where [`Self::takes_rounded`]);
    /// `context: (B, M, D)` for cross-attention, `None` for self-attention (keys and values
    /// from `x`).
    fn forward(&self, x: &Activations, context: Option<&Tensor>) -> Result<Tensor> {
        let split = |t: Tensor| -> Result<Tensor> {
            let (b, n, inner) = t.dims3()?;
            t.reshape((b, n, self.heads, inner / self.heads))?
                .transpose(1, 2)
        };
        let q = split(self.to_q.forward_activations(x)?)?;
        let (k, v) = match context {
            Some(context) => (self.to_k.forward(context)?, self.to_v.forward(context)?),
            None => (
                self.to_k.forward_activations(x)?,
                self.to_v.forward_activations(x)?,
            ),
        };
        let weights = self.to_q.weight_dtype();
        let out = scaled_dot_product_for(weights, &q, &split(k)?, &split(v)?, self.scale)?;
        let out = heads_to_tokens_as(&out, self.to_out.takes_rounded())?;
        self.to_out.forward_activations(&out)
    }

    /// Whether every layer reading `x` takes it as rounded rows: the queries' projection, and
    /// the keys' and values' in self-attention.
    fn takes_rounded(&self, self_attention: bool) -> bool {
        self.to_q.takes_rounded()
            && (!self_attention || (self.to_k.takes_rounded() && self.to_v.takes_rounded()))
    }
}

/// `Linear(dim, 2*inner)` split into value and gate: `value * gelu(gate)` (exact GELU).
struct GegluFeedForward {
    proj: Linear,
    out: Linear,
}

impl GegluFeedForward {
    fn new(dim: usize, vb: Weights) -> Result<Self> {
        let inner = dim * 4;
        Ok(Self {
            proj: layers::linear(dim, inner * 2, vb.pp("net.0.proj"))?,
            out: layers::linear(inner, dim, vb.pp("net.2"))?,
        })
    }

    fn forward(&self, x: &Activations) -> Result<Tensor> {
        let projected = self.proj.forward_activations(x)?;
        let inner = projected.dim(2)? / 2;
        let value = projected.narrow(2, 0, inner)?;
        let gate = projected.narrow(2, inner, inner)?;
        let rounded = self.out.takes_rounded();
        self.out
            .forward_activations(&gelu_erf_mul_as(&gate, &value, rounded)?)
    }
}

struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff: GegluFeedForward,
}

impl BasicTransformerBlock {
    fn new(dim: usize, heads: usize, context_dim: usize, vb: Weights) -> Result<Self> {
        let head_dim = dim / heads;
        Ok(Self {
            norm1: layers::layer_norm(dim, 1e-5, vb.dense("norm1"))?,
            attn1: Attention::new(dim, dim, heads, head_dim, vb.pp("attn1"))?,
            norm2: layers::layer_norm(dim, 1e-5, vb.dense("norm2"))?,
            attn2: Attention::new(dim, context_dim, heads, head_dim, vb.pp("attn2"))?,
            norm3: layers::layer_norm(dim, 1e-5, vb.dense("norm3"))?,
            ff: GegluFeedForward::new(dim, vb.pp("ff"))?,
        })
    }

    fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        // Each norm's output feeds linear layers alone: in bf16 rows where they take them.
        let normed = self.norm1.forward_as(x, self.attn1.takes_rounded(true))?;
        let x = (self.attn1.forward(&normed, None)? + x)?;
        let normed = self.norm2.forward_as(&x, self.attn2.takes_rounded(false))?;
        let x = (self.attn2.forward(&normed, Some(context))? + &x)?;
        let normed = self.norm3.forward_as(&x, self.ff.proj.takes_rounded())?;
        self.ff.forward(&normed)? + x
    }
}

enum Projection {
    Linear(Linear),
    Conv(Conv1x1),
}

pub struct Transformer2D {
    norm: GroupNorm,
    proj_in: Projection,
    blocks: Vec<BasicTransformerBlock>,
    proj_out: Projection,
}

pub struct Transformer2DConfig {
    pub channels: usize,
    pub heads: usize,
    pub layers: usize,
    pub context_dim: usize,
    pub groups: usize,
    pub use_linear_projection: bool,
}

impl Transformer2D {
    pub fn new(config: &Transformer2DConfig, vb: Weights) -> Result<Self> {
        let c = config.channels;
        let projection = |name: &str| -> Result<Projection> {
            Ok(if config.use_linear_projection {
                Projection::Linear(layers::linear(c, c, vb.pp(name))?)
            } else {
                Projection::Conv(conv1x1(c, c, vb.dense(name))?)
            })
        };
        let blocks = (0..config.layers)
            .map(|i| {
                BasicTransformerBlock::new(
                    c,
                    config.heads,
                    config.context_dim,
                    vb.pp(format!("transformer_blocks.{i}")),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            // The transformer's own GroupNorm uses eps 1e-6 whatever the UNet's norm_eps.
            norm: layers::group_norm(config.groups, c, 1e-6, vb.dense("norm"))?,
            proj_in: projection("proj_in")?,
            blocks,
            proj_out: projection("proj_out")?,
        })
    }

    pub fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let normed = self.norm.forward(x)?;
        // Channels-first maps to rows of tokens and back: parallel transposes (candle's
        // strided copies run on one thread).
        let to_tokens = |t: Tensor| transposed_items(&t.reshape((b, c, h * w))?);
        let mut tokens = match &self.proj_in {
            Projection::Linear(linear) => linear.forward(&to_tokens(normed)?)?,
            Projection::Conv(conv) => to_tokens(conv.forward(&normed)?)?,
        };
        for block in &self.blocks {
            tokens = block.forward(&tokens, context)?;
        }
        let to_map = |t: Tensor| transposed_items(&t)?.reshape((b, c, h, w));
        let out = match &self.proj_out {
            Projection::Linear(linear) => to_map(linear.forward(&tokens)?)?,
            Projection::Conv(conv) => conv.forward(&to_map(tokens)?)?,
        };
        out + x
    }
}
