//! Prompt encoding for SD and SDXL.
//!
//! SD 1.x / 2.x condition on the last hidden state of their one CLIP encoder. SDXL conditions
//! on the penultimate hidden states of both encoders, concatenated, plus the projected pooled
//! output of the second one.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use super::SdKind;
use crate::error::Result;
use crate::shared::load_shared;
use crate::text::clip::ClipTextModel;
use crate::text::clip::tokenizer::ClipTokenizer;
use crate::weights::Variant;

pub struct PromptEmbedding {
    /// `(1, 77, D)`.
    pub embeds: Tensor,
    /// SDXL only: `(1, P)`.
    pub pooled: Option<Tensor>,
}

struct Encoder {
    tokenizer: ClipTokenizer,
    model: Arc<ClipTextModel>,
}

impl Encoder {
    fn load(
        model_dir: &Path,
        suffix: &str,
        variant: Variant,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let encoder_dir = model_dir.join(format!("text_encoder{suffix}"));
        Ok(Self {
            tokenizer: ClipTokenizer::from_dir(&model_dir.join(format!("tokenizer{suffix}")))?,
            model: load_shared(&encoder_dir, variant, dtype, device, || {
                ClipTextModel::load(&encoder_dir, variant, dtype, device)
            })?,
        })
    }

    fn ids(&self, prompt: &str, device: &Device) -> Result<Tensor> {
        let ids = self.tokenizer.encode(prompt);
        Ok(Tensor::new(ids.as_slice(), device)?.unsqueeze(0)?)
    }
}

pub struct TextEncoder {
    kind: SdKind,
    first: Encoder,
    second: Option<Encoder>,
    device: Device,
}

impl TextEncoder {
    /// Loads `tokenizer/` + `text_encoder/` (and `_2` for SDXL) from the model folder.
    pub fn load(
        model_dir: &Path,
        kind: SdKind,
        variant: Variant,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let first = Encoder::load(model_dir, "", variant, dtype, device)?;
        let second = match kind {
            SdKind::Sd => None,
            SdKind::Xl => Some(Encoder::load(model_dir, "_2", variant, dtype, device)?),
        };
        Ok(Self {
            kind,
            first,
            second,
            device: device.clone(),
        })
    }

    /// The first text encoder's model (shared with other pipelines loaded from its files).
    pub fn first_model(&self) -> &ClipTextModel {
        &self.first.model
    }

    /// Ids of the first tokenizer.
    pub fn token_ids(&self, prompt: &str) -> Vec<u32> {
        self.first.tokenizer.encode(prompt)
    }

    /// Whether the prompt is longer than the encoder sees (the rest is cut off); stops
    /// tokenizing one id past the limit, so a long prompt costs no more than a short one.
    pub fn is_truncated(&self, prompt: &str) -> bool {
        self.first.tokenizer.is_truncated(prompt)
    }

    /// SD 1.x/2.x read the first encoder's last hidden state; SDXL both encoders' penultimate
    /// states and the second's pooled output, so their last layers run only as far as that
    /// needs ([`ClipTextModel::forward_penultimate`]).
    pub fn encode(&self, prompt: &str) -> Result<PromptEmbedding> {
        let first = self.first.ids(prompt, &self.device)?;
        match (&self.kind, &self.second) {
            (SdKind::Xl, Some(second)) => {
                let (first, _) = self.first.model.forward_penultimate(&first, false)?;
                let ids = second.ids(prompt, &self.device)?;
                let (second, pooled) = second.model.forward_penultimate(&ids, true)?;
                Ok(PromptEmbedding {
                    embeds: Tensor::cat(&[&first, &second], 2)?,
                    pooled,
                })
            }
            _ => Ok(PromptEmbedding {
                embeds: self.first.model.forward(&first)?.last_hidden_state,
                pooled: None,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{assert_close, case_tensors, model_dir};

    fn encoder(model: &str, kind: SdKind) -> TextEncoder {
        TextEncoder::load(
            &model_dir(model),
            kind,
            Variant::Auto,
            DType::F32,
            &Device::Cpu,
        )
        .unwrap()
    }

    #[test]
    fn sd_prompt_embeddings_match_reference() {
        let text = encoder("tiny-sd", SdKind::Sd);
        let case = case_tensors("sd-ddim-cfg");
        let ours = text
            .encode("a photograph of an astronaut riding a horse")
            .unwrap();
        assert_close("prompt_embeds", &ours.embeds, &case["prompt_embeds"]);
        let negative = text.encode("blurry").unwrap();
        assert_close(
            "negative_prompt_embeds",
            &negative.embeds,
            &case["negative_prompt_embeds"],
        );
        assert!(ours.pooled.is_none());
    }

    #[test]
    fn sdxl_prompt_embeddings_match_reference() {
        let text = encoder("tiny-sdxl", SdKind::Xl);
        let case = case_tensors("sdxl-euler-turbo");
        let ours = text.encode("a cinematic photo of a lighthouse").unwrap();
        assert_close("prompt_embeds", &ours.embeds, &case["prompt_embeds"]);
        assert_close(
            "pooled",
            ours.pooled.as_ref().unwrap(),
            &case["pooled_prompt_embeds"],
        );
    }

    #[test]
    fn weights_without_text_model_prefix_load_the_same() {
        let tmp = tempfile::tempdir().unwrap();
        let source = model_dir("tiny-sd").join("text_encoder");
        let dest = tmp.path().join("text_encoder");
        std::fs::create_dir_all(&dest).unwrap();
        std::fs::copy(source.join("config.json"), dest.join("config.json")).unwrap();
        let tensors =
            candle_core::safetensors::load(source.join("model.safetensors"), &Device::Cpu).unwrap();
        let stripped: std::collections::HashMap<String, Tensor> = tensors
            .into_iter()
            .map(|(k, v)| (k.strip_prefix("text_model.").unwrap_or(&k).to_string(), v))
            .collect();
        assert!(stripped.keys().all(|k| !k.starts_with("text_model.")));
        candle_core::safetensors::save(&stripped, dest.join("model.safetensors")).unwrap();
        let ids = Tensor::new(&[[49406u32, 320, 49407]], &Device::Cpu).unwrap();
        let a = ClipTextModel::load(&source, Variant::Auto, DType::F32, &Device::Cpu).unwrap();
        let b = ClipTextModel::load(&dest, Variant::Auto, DType::F32, &Device::Cpu).unwrap();
        assert_close(
            "stripped",
            &b.forward(&ids).unwrap().last_hidden_state,
            &a.forward(&ids).unwrap().last_hidden_state,
        );
    }
}
