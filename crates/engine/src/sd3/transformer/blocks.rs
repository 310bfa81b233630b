//! diffusers' `JointTransformerBlock`: image and text tokens, each modulated by the
//! conditioning vector (AdaLayerNorm-Zero: shift, scale and gate vectors), attend jointly,
//! then each runs its own feed-forward. MMDiT-X blocks add a second, image-only attention with
//! its own modulation (`SD35AdaLayerNormZeroX`); the last block only conditions the image, so
//! its text is modulated by `AdaLayerNormContinuous` and has no output.

use candle_core::{D, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::attention::{ImageAttention, JointAttention};
use super::config::Sd3Config;
use crate::nn::layers::{self, FeedForward, Linear};

/// LayerNorm without a learned scale or shift (eps 1e-6), as every norm before modulation.
pub(super) fn plain_norm(x: &Tensor) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let centred = x.broadcast_sub(&mean)?;
    let variance = centred.sqr()?.mean_keepdim(D::Minus1)?;
    centred.broadcast_div(&(variance + 1e-6)?.sqrt()?)
}

/// `x * (1 + scale) + shift`, with `scale, shift: (B, D)` broadcast over tokens.
pub(super) fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    x.broadcast_mul(&(scale.unsqueeze(1)? + 1.0)?)?
        .broadcast_add(&shift.unsqueeze(1)?)
}

/// `x + gate * y`, with `gate: (B, D)` broadcast over tokens.
fn gated_add(x: &Tensor, gate: &Tensor, y: &Tensor) -> Result<Tensor> {
    x + gate.unsqueeze(1)?.broadcast_mul(y)?
}

/// The modulation linear of an adaptive norm, split into `parts` vectors of the model width.
/// It takes `silu(conditioning)`, computed once per call for every block.
pub(super) struct Modulation {
    linear: Linear,
    parts: usize,
}

impl Modulation {
    pub fn new(width: usize, parts: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            linear: layers::linear(width, parts * width, vb.pp("linear"))?,
            parts,
        })
    }

    pub fn forward(&self, silu_conditioning: &Tensor) -> Result<Vec<Tensor>> {
        self.linear.forward(silu_conditioning)?.chunk(self.parts, 1)
    }
}

/// What a block does with the text tokens.
enum TextStream {
    /// AdaLayerNorm-Zero (6 vectors), the joint attention's text output and a feed-forward.
    Updated { norm1: Modulation, ff: FeedForward },
    /// The last block (`context_pre_only`): an `AdaLayerNormContinuous` (scale, shift) before
    /// the attention, whose text keys and values are all that is used.
    KeysOnly { norm1: Modulation },
}

pub(super) struct JointBlock {
    /// 6 vectors, or 9 with the second attention's shift, scale and gate.
    norm1: Modulation,
    attn: JointAttention,
    attn2: Option<ImageAttention>,
    ff: FeedForward,
    text: TextStream,
}

impl JointBlock {
    pub fn new(config: &Sd3Config, index: usize, vb: VarBuilder) -> Result<Self> {
        let width = config.inner_dim();
        let context_pre_only = index + 1 == config.num_layers;
        let dual = config.dual_attention_layers.contains(&index);
        let text = if context_pre_only {
            TextStream::KeysOnly {
                norm1: Modulation::new(width, 2, vb.pp("norm1_context"))?,
            }
        } else {
            TextStream::Updated {
                norm1: Modulation::new(width, 6, vb.pp("norm1_context"))?,
                ff: FeedForward::new(width, vb.pp("ff_context"))?,
            }
        };
        Ok(Self {
            norm1: Modulation::new(width, if dual { 9 } else { 6 }, vb.pp("norm1"))?,
            attn: JointAttention::new(config, vb.pp("attn"), context_pre_only)?,
            attn2: if dual {
                Some(ImageAttention::new(config, vb.pp("attn2"))?)
            } else {
                None
            },
            ff: FeedForward::new(width, vb.pp("ff"))?,
            text,
        })
    }

    /// `(image, text)` after the block; the text comes back unchanged from the last block,
    /// where nothing reads it.
    pub fn forward(
        &self,
        image: &Tensor,
        text: &Tensor,
        silu_conditioning: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        // shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp
        // [, shift_msa2, scale_msa2, gate_msa2]
        let m = self.norm1.forward(silu_conditioning)?;
        let image_normed = plain_norm(image)?;
        let image_in = modulate(&image_normed, &m[0], &m[1])?;

        let text_normed = plain_norm(text)?;
        let (text_in, c) = match &self.text {
            TextStream::Updated { norm1, .. } => {
                let c = norm1.forward(silu_conditioning)?;
                (modulate(&text_normed, &c[0], &c[1])?, c)
            }
            TextStream::KeysOnly { norm1 } => {
                let c = norm1.forward(silu_conditioning)?;
                (modulate(&text_normed, &c[1], &c[0])?, c)
            }
        };

        let (image_attended, text_attended) = self.attn.forward(&image_in, &text_in)?;
        let mut image = gated_add(image, &m[2], &image_attended)?;
        if let Some(attn2) = &self.attn2 {
            // The second attention modulates the same normed input with its own vectors.
            let image_in2 = modulate(&image_normed, &m[6], &m[7])?;
            image = gated_add(&image, &m[8], &attn2.forward(&image_in2)?)?;
        }
        let ff = self
            .ff
            .forward(&modulate(&plain_norm(&image)?, &m[3], &m[4])?)?;
        let image = gated_add(&image, &m[5], &ff)?;

        let (TextStream::Updated { ff, .. }, Some(text_attended)) = (&self.text, text_attended)
        else {
            return Ok((image, text.clone()));
        };
        let text = gated_add(text, &c[2], &text_attended)?;
        let text_ff = ff.forward(&modulate(&plain_norm(&text)?, &c[3], &c[4])?)?;
        Ok((image, gated_add(&text, &c[5], &text_ff)?))
    }
}
