//! The two kinds of FLUX block. A double-stream block keeps text and image tokens apart, each
//! with its own modulation, projections and feed-forward, and lets them attend jointly; a
//! single-stream block runs one sequence `[text, image]` through attention and an MLP side by
//! side. Modulation (AdaLayerNorm-Zero) turns the conditioning vector into per-block shift,
//! scale and gate vectors.

use candle_core::{D, DType, Module, Result, Tensor};

use super::config::FluxConfig;
use super::rope;
use crate::nn::activation::gelu_tanh;
use crate::nn::attention::scaled_dot_product_for;
use crate::nn::layers::{self, FeedForward, Linear, RmsNorm, Weights};

/// LayerNorm without a learned scale or shift (eps 1e-6), as every FLUX norm before modulation.
pub(super) fn plain_norm(x: &Tensor) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let centred = x.broadcast_sub(&mean)?;
    let variance = centred.sqr()?.mean_keepdim(D::Minus1)?;
    centred.broadcast_div(&(variance + 1e-6)?.sqrt()?)
}

/// `x * (1 + scale) + shift`, with `scale, shift: (B, D)` broadcast over tokens.
fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    x.broadcast_mul(&(scale.unsqueeze(1)? + 1.0)?)?
        .broadcast_add(&shift.unsqueeze(1)?)
}

/// `linear(silu(conditioning))` split into `parts` vectors of the model width.
pub(super) struct Modulation {
    linear: Linear,
    parts: usize,
}

impl Modulation {
    pub fn new(width: usize, parts: usize, vb: Weights) -> Result<Self> {
        Ok(Self {
            linear: layers::linear(width, parts * width, vb.pp("linear"))?,
            parts,
        })
    }

    pub fn forward(&self, conditioning: &Tensor) -> Result<Vec<Tensor>> {
        self.linear
            .forward(&conditioning.silu()?)?
            .chunk(self.parts, 1)
    }
}

/// Query, key and value projections with their per-head RMS norms.
struct Projections {
    q: Linear,
    k: Linear,
    v: Linear,
    norm_q: RmsNorm,
    norm_k: RmsNorm,
}

impl Projections {
    fn new(config: &FluxConfig, vb: &Weights, names: [&str; 5]) -> Result<Self> {
        let (width, head) = (config.inner_dim(), config.attention_head_dim);
        Ok(Self {
            q: layers::linear(width, width, vb.pp(names[0]))?,
            k: layers::linear(width, width, vb.pp(names[1]))?,
            v: layers::linear(width, width, vb.pp(names[2]))?,
            norm_q: layers::rms_norm(head, 1e-6, vb.vb().pp(names[3]))?,
            norm_k: layers::rms_norm(head, 1e-6, vb.vb().pp(names[4]))?,
        })
    }

    /// `(q, k, v)`, each `(B, heads, tokens, head)`, q and k normed.
    fn forward(&self, x: &Tensor, heads: usize) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, n, _) = x.dims3()?;
        let split = |t: Tensor| t.reshape((b, n, heads, ()))?.transpose(1, 2)?.contiguous();
        let q = self.norm_q.forward(&split(self.q.forward(x)?)?)?;
        let k = self.norm_k.forward(&split(self.k.forward(x)?)?)?;
        Ok((q, k, split(self.v.forward(x)?)?))
    }
}

/// Rotary attention over `(q, k, v)`, back to `(B, tokens, width)`; its products in bf16 for a
/// bf16 model where the CPU has them (`weights`: the projections' dtype), as PyTorch's are.
fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    (cos, sin): (&Tensor, &Tensor),
    weights: Option<DType>,
) -> Result<Tensor> {
    let q = rope::apply(q, cos, sin)?;
    let k = rope::apply(k, cos, sin)?;
    let scale = 1.0 / (q.dim(3)? as f64).sqrt();
    let out = scaled_dot_product_for(weights, &q, &k, v, scale)?;
    crate::nn::transpose::heads_to_tokens(&out)
}

pub(super) struct DoubleBlock {
    norm1: Modulation,
    norm1_context: Modulation,
    image: Projections,
    text: Projections,
    to_out: Linear,
    to_add_out: Linear,
    ff: FeedForward,
    ff_context: FeedForward,
    heads: usize,
}

impl DoubleBlock {
    pub fn new(config: &FluxConfig, vb: Weights) -> Result<Self> {
        let width = config.inner_dim();
        let attn = vb.pp("attn");
        Ok(Self {
            norm1: Modulation::new(width, 6, vb.pp("norm1"))?,
            norm1_context: Modulation::new(width, 6, vb.pp("norm1_context"))?,
            image: Projections::new(config, &attn, ["to_q", "to_k", "to_v", "norm_q", "norm_k"])?,
            text: Projections::new(
                config,
                &attn,
                [
                    "add_q_proj",
                    "add_k_proj",
                    "add_v_proj",
                    "norm_added_q",
                    "norm_added_k",
                ],
            )?,
            to_out: layers::linear(width, width, attn.pp("to_out.0"))?,
            to_add_out: layers::linear(width, width, attn.pp("to_add_out"))?,
            ff: FeedForward::new(width, vb.pp("ff"))?,
            ff_context: FeedForward::new(width, vb.pp("ff_context"))?,
            heads: config.num_attention_heads,
        })
    }

    /// `(text, image)` after the block.
    pub fn forward(
        &self,
        text: &Tensor,
        image: &Tensor,
        conditioning: &Tensor,
        (cos, sin): (&Tensor, &Tensor),
    ) -> Result<(Tensor, Tensor)> {
        let m = self.norm1.forward(conditioning)?;
        let c = self.norm1_context.forward(conditioning)?;
        // Each: shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp.
        let image_in = modulate(&plain_norm(image)?, &m[0], &m[1])?;
        let text_in = modulate(&plain_norm(text)?, &c[0], &c[1])?;
        let (iq, ik, iv) = self.image.forward(&image_in, self.heads)?;
        let (tq, tk, tv) = self.text.forward(&text_in, self.heads)?;
        let joint = |t: Tensor, i: Tensor| Tensor::cat(&[t, i], 2);
        let weights = self.image.q.weight_dtype();
        let (q, k, v) = (joint(tq, iq)?, joint(tk, ik)?, joint(tv, iv)?);
        let attended = attend(&q, &k, &v, (cos, sin), weights)?;
        let text_tokens = text.dim(1)?;
        let text_attended = self
            .to_add_out
            .forward(&attended.narrow(1, 0, text_tokens)?)?;
        let image_attended =
            self.to_out
                .forward(&attended.narrow(1, text_tokens, image.dim(1)?)?)?;

        let gated = |gate: &Tensor, x: &Tensor| gate.unsqueeze(1)?.broadcast_mul(x);
        let image = (image + gated(&m[2], &image_attended)?)?;
        let ff = self
            .ff
            .forward(&modulate(&plain_norm(&image)?, &m[3], &m[4])?)?;
        let image = (&image + gated(&m[5], &ff)?)?;

        let text = (text + gated(&c[2], &text_attended)?)?;
        let ff = self
            .ff_context
            .forward(&modulate(&plain_norm(&text)?, &c[3], &c[4])?)?;
        let text = (&text + gated(&c[5], &ff)?)?;
        Ok((text, image))
    }
}

pub(super) struct SingleBlock {
    norm: Modulation,
    projections: Projections,
    proj_mlp: Linear,
    proj_out: Linear,
    heads: usize,
}

impl SingleBlock {
    pub fn new(config: &FluxConfig, vb: Weights) -> Result<Self> {
        let width = config.inner_dim();
        let attn = vb.pp("attn");
        Ok(Self {
            norm: Modulation::new(width, 3, vb.pp("norm"))?,
            projections: Projections::new(
                config,
                &attn,
                ["to_q", "to_k", "to_v", "norm_q", "norm_k"],
            )?,
            proj_mlp: layers::linear(width, 4 * width, vb.pp("proj_mlp"))?,
            proj_out: layers::linear(5 * width, width, vb.pp("proj_out"))?,
            heads: config.num_attention_heads,
        })
    }

    /// One sequence `[text, image]` in, the same out.
    pub fn forward(
        &self,
        x: &Tensor,
        conditioning: &Tensor,
        (cos, sin): (&Tensor, &Tensor),
    ) -> Result<Tensor> {
        // shift, scale, gate
        let m = self.norm.forward(conditioning)?;
        let normed = modulate(&plain_norm(x)?, &m[0], &m[1])?;
        let mlp = gelu_tanh(&self.proj_mlp.forward(&normed)?)?;
        let (q, k, v) = self.projections.forward(&normed, self.heads)?;
        let weights = self.projections.q.weight_dtype();
        let attended = attend(&q, &k, &v, (cos, sin), weights)?;
        let out = self.proj_out.forward(&Tensor::cat(&[attended, mlp], 2)?)?;
        x + m[2].unsqueeze(1)?.broadcast_mul(&out)?
    }
}
