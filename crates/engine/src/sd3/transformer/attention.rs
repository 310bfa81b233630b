//! The attentions of a joint block: `JointAttnProcessor2_0` over `[image, text]` tokens, each
//! stream with its own projections, and (MMDiT-X) a second self-attention over the image
//! alone. Queries and keys may be RMS-normed per head (SD3.5's `qk_norm`).

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::Sd3Config;
use crate::nn::attention::scaled_dot_product_for;
use crate::nn::layers::{self, Linear, RmsNorm};

/// A projection to heads, `(B, N, heads, head)`, RMS-normed per head when the model has it.
struct HeadProjection {
    linear: Linear,
    norm: Option<RmsNorm>,
    heads: usize,
}

impl HeadProjection {
    fn new(config: &Sd3Config, vb: &VarBuilder, linear: &str, norm: Option<&str>) -> Result<Self> {
        let width = config.inner_dim();
        let norm = match norm {
            Some(name) if config.has_qk_norm() => Some(layers::rms_norm(
                config.attention_head_dim,
                1e-6,
                vb.pp(name),
            )?),
            _ => None,
        };
        Ok(Self {
            linear: layers::linear(width, width, vb.pp(linear))?,
            norm,
            heads: config.num_attention_heads,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, _) = x.dims3()?;
        let heads = self.linear.forward(x)?.reshape((b, n, self.heads, ()))?;
        match &self.norm {
            Some(norm) => norm.forward(&heads),
            None => Ok(heads),
        }
    }
}

/// The image stream's query, key and value projections (the same names in `attn` and `attn2`).
struct Projections {
    q: HeadProjection,
    k: HeadProjection,
    v: HeadProjection,
}

impl Projections {
    fn new(config: &Sd3Config, vb: &VarBuilder) -> Result<Self> {
        Ok(Self {
            q: HeadProjection::new(config, vb, "to_q", Some("norm_q"))?,
            k: HeadProjection::new(config, vb, "to_k", Some("norm_k"))?,
            v: HeadProjection::new(config, vb, "to_v", None)?,
        })
    }

    /// The dtype the projections' weights are held in, which the attention's products follow.
    fn weights(&self) -> Option<DType> {
        self.q.linear.weight_dtype()
    }
}

/// `softmax(q k^T / sqrt(d)) v` over `(B, N, heads, head)` inputs (read as transposed views,
/// not copied), back to `(B, Nq, width)`; its products in bf16 for a bf16 model where the CPU
/// has them (`weights`: the projections' dtype), as PyTorch's are.
fn attend(q: &Tensor, k: &Tensor, v: &Tensor, weights: Option<DType>) -> Result<Tensor> {
    let d = q.dim(3)?;
    let scale = 1.0 / (d as f64).sqrt();
    let out = scaled_dot_product_for(
        weights,
        &q.transpose(1, 2)?,
        &k.transpose(1, 2)?,
        &v.transpose(1, 2)?,
        scale,
    )?;
    crate::nn::transpose::heads_to_tokens(&out)
}

/// The joint attention of image and text tokens (`attn`).
pub(super) struct JointAttention {
    image: Projections,
    text_k: HeadProjection,
    text_v: HeadProjection,
    /// The text stream's query and output projections; `None` in the last block
    /// (`context_pre_only`), whose text output nothing reads, so that only the text's keys
    /// and values are computed there.
    text_out: Option<(HeadProjection, Linear)>,
    to_out: Linear,
}

impl JointAttention {
    pub fn new(config: &Sd3Config, vb: VarBuilder, context_pre_only: bool) -> Result<Self> {
        let width = config.inner_dim();
        let text_out = if context_pre_only {
            None
        } else {
            Some((
                HeadProjection::new(config, &vb, "add_q_proj", Some("norm_added_q"))?,
                layers::linear(width, width, vb.pp("to_add_out"))?,
            ))
        };
        Ok(Self {
            image: Projections::new(config, &vb)?,
            text_k: HeadProjection::new(config, &vb, "add_k_proj", Some("norm_added_k"))?,
            text_v: HeadProjection::new(config, &vb, "add_v_proj", None)?,
            text_out,
            to_out: layers::linear(width, width, vb.pp("to_out.0"))?,
        })
    }

    /// `(image, text)` attention outputs over the joint `[image, text]` sequence; text is
    /// `None` in the last block.
    pub fn forward(&self, image: &Tensor, text: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        let joint = |a: Tensor, b: Tensor| Tensor::cat(&[a, b], 1);
        let k = joint(self.image.k.forward(image)?, self.text_k.forward(text)?)?;
        let v = joint(self.image.v.forward(image)?, self.text_v.forward(text)?)?;
        let image_q = self.image.q.forward(image)?;
        let Some((text_q, to_add_out)) = &self.text_out else {
            let out = attend(&image_q, &k, &v, self.image.weights())?;
            return Ok((self.to_out.forward(&out)?, None));
        };
        let image_tokens = image.dim(1)?;
        let q = joint(image_q, text_q.forward(text)?)?;
        let out = attend(&q, &k, &v, self.image.weights())?;
        let image_out = self.to_out.forward(&out.narrow(1, 0, image_tokens)?)?;
        let text_out = to_add_out.forward(&out.narrow(1, image_tokens, text.dim(1)?)?)?;
        Ok((image_out, Some(text_out)))
    }
}

/// MMDiT-X's second attention (`attn2`): self-attention over the image tokens only.
pub(super) struct ImageAttention {
    projections: Projections,
    to_out: Linear,
}

impl ImageAttention {
    pub fn new(config: &Sd3Config, vb: VarBuilder) -> Result<Self> {
        let width = config.inner_dim();
        Ok(Self {
            projections: Projections::new(config, &vb)?,
            to_out: layers::linear(width, width, vb.pp("to_out.0"))?,
        })
    }

    pub fn forward(&self, image: &Tensor) -> Result<Tensor> {
        let p = &self.projections;
        let out = attend(
            &p.q.forward(image)?,
            &p.k.forward(image)?,
            &p.v.forward(image)?,
            p.weights(),
        )?;
        self.to_out.forward(&out)
    }
}
