//! SD3.5's prompt conditioning, as `StableDiffusion3Pipeline.encode_prompt` computes it: CLIP-L
//! and CLIP-G each give their penultimate hidden states (77 tokens, no final norm) and their
//! projected pooled output; the two sequences are concatenated on features, zero-padded to T5's
//! width, and T5's last hidden state is appended on the sequence. The pooled vector is both
//! projected pooled outputs side by side. CLIP-G's tokenizer pads with `!` (id 0), which its
//! `special_tokens_map.json` says and our CLIP tokenizer reads.
//!
//! A folder without T5 (`text_encoder_3` null in `model_index.json`, a common way to save
//! memory) gets zeros in its place, as diffusers does.

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::error::{EngineError, Result};
use crate::pipeline::LoadOptions;
use crate::residency::Component;
use crate::text::clip::tokenizer::ClipTokenizer;
use crate::text::clip::{ClipConfig, ClipTextModel};
use crate::text::t5::{T5Encoder, T5Tokenizer};

/// An encoded prompt: `(1, 77 + L, D_t5)` token states and `(1, P_l + P_g)` pooled.
#[derive(Debug, Clone)]
pub struct Sd3Prompt {
    pub text: Tensor,
    pub pooled: Tensor,
}

/// The token ids of one prompt: CLIP-L, CLIP-G (77 each) and T5 (`length`, none without T5).
#[derive(Debug, Clone, PartialEq)]
pub struct Sd3TokenIds {
    pub clip_l: Vec<u32>,
    pub clip_g: Vec<u32>,
    pub t5: Option<Vec<u32>>,
}

struct T5 {
    tokenizer: T5Tokenizer,
    model: Component<T5Encoder>,
}

pub struct Sd3TextEncoders {
    clip_l_tokenizer: ClipTokenizer,
    clip_l: Component<ClipTextModel>,
    clip_g_tokenizer: ClipTokenizer,
    clip_g: Component<ClipTextModel>,
    t5: Option<T5>,
    /// T5's width, which the CLIP states are padded to: the transformer's
    /// `joint_attention_dim` (also what stands in for T5 when it is absent).
    width: usize,
    device: Device,
}

impl Sd3TextEncoders {
    /// `tokenizer{,_2,_3}/` and `text_encoder{,_2,_3}/` of the model folder; `with_t5` false
    /// when the folder has none. `width`: the transformer's `joint_attention_dim`.
    pub fn load(
        dir: &Path,
        with_t5: bool,
        width: usize,
        sequential: bool,
        options: &LoadOptions,
    ) -> Result<Self> {
        let clip = |sub: &str| {
            Component::new("clip", sequential, &dir.join(sub), options, |dir, o| {
                ClipTextModel::load(dir, o.variant, o.dtype, &o.device)
            })
        };
        let clip_width = ["text_encoder", "text_encoder_2"]
            .iter()
            .map(|sub| Ok(ClipConfig::read(&dir.join(sub).join("config.json"))?.hidden_size))
            .sum::<Result<usize>>()?;
        if clip_width > width {
            return Err(EngineError::config(
                dir.join("transformer/config.json"),
                format!(
                    "`joint_attention_dim` {width} is narrower than the two CLIP encoders' \
                     states side by side ({clip_width})"
                ),
            ));
        }
        let t5 = if with_t5 {
            Some(T5 {
                tokenizer: T5Tokenizer::load(&dir.join("tokenizer_3"))?,
                model: Component::new(
                    "t5",
                    sequential,
                    &dir.join("text_encoder_3"),
                    options,
                    |dir, o| T5Encoder::load(dir, o.variant, o.dtype, &o.device),
                )?,
            })
        } else {
            None
        };
        Ok(Self {
            clip_l_tokenizer: ClipTokenizer::from_dir(&dir.join("tokenizer"))?,
            clip_l: clip("text_encoder")?,
            clip_g_tokenizer: ClipTokenizer::from_dir(&dir.join("tokenizer_2"))?,
            clip_g: clip("text_encoder_2")?,
            t5,
            width,
            device: options.device.clone(),
        })
    }

    pub fn token_ids(&self, prompt: &str, length: usize) -> Result<Sd3TokenIds> {
        Ok(Sd3TokenIds {
            clip_l: self.clip_l_tokenizer.encode(prompt),
            clip_g: self.clip_g_tokenizer.encode(prompt),
            t5: self
                .t5
                .as_ref()
                .map(|t5| t5.tokenizer.encode(prompt, length))
                .transpose()?,
        })
    }

    /// The conditioning for `prompt` with T5 run on `length` tokens.
    pub fn encode(&self, prompt: &str, length: usize) -> Result<Sd3Prompt> {
        let ids = self.token_ids(prompt, length)?;
        let row = |ids: Vec<u32>| {
            let n = ids.len();
            Tensor::from_vec(ids, (1, n), &self.device)
        };
        // One encoder at a time in memory under the sequential plan.
        let (l, l_pooled) = self
            .clip_l
            .get()?
            .forward_penultimate(&row(ids.clip_l)?, true)?;
        let (g, g_pooled) = self
            .clip_g
            .get()?
            .forward_penultimate(&row(ids.clip_g)?, true)?;
        let clip = Tensor::cat(&[&l, &g], 2)?.to_dtype(DType::F32)?;
        let pooled = [l_pooled, g_pooled].map(|p| p.expect("asked for the pooled output"));
        let pooled = Tensor::cat(&pooled, 1)?.to_dtype(DType::F32)?;
        let t5 = match (&self.t5, ids.t5) {
            (Some(t5), Some(ids)) => t5.model.get()?.forward(&row(ids)?)?.to_dtype(DType::F32)?,
            _ => Tensor::zeros((1, length, self.width), DType::F32, &self.device)?,
        };
        // `load` checked that the CLIP widths fit.
        let clip = clip.pad_with_zeros(2, 0, self.width.saturating_sub(clip.dim(2)?))?;
        Ok(Sd3Prompt {
            text: Tensor::cat(&[&clip, &t5], 1)?,
            pooled,
        })
    }
}

#[cfg(test)]
mod tests;
