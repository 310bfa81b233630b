//! Z-Image's prompt tokenizer: the chat template, then Qwen2's byte-level BPE through Hugging
//! Face's `tokenizers` crate reading `tokenizer.json` (what transformers' fast tokenizer
//! reads), then truncation and right padding to the pipeline's `max_sequence_length`, as
//! `ZImagePipeline` calls it (`padding="max_length"`, `truncation=True`; no BOS: the
//! tokenizer adds none).

use std::path::Path;

use tokenizers::Tokenizer;

use super::chat_template::{ChatTemplate, token_name};
use crate::error::{EngineError, Result};

pub struct Qwen3Tokenizer {
    inner: Tokenizer,
    template: ChatTemplate,
    pad_id: u32,
}

/// A prompt's ids, padded to the requested length, and how many of them are real tokens (the
/// attention mask is 1 on exactly those, which come first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedPrompt {
    pub ids: Vec<u32>,
    pub real: usize,
}

impl TokenizedPrompt {
    /// The real tokens, the only ones the encoder needs (see `Qwen3Encoder::embed`).
    pub fn real_ids(&self) -> &[u32] {
        &self.ids[..self.real]
    }

    /// transformers' attention mask: 1 for the real tokens, 0 for the padding.
    pub fn attention_mask(&self) -> Vec<u32> {
        (0..self.ids.len())
            .map(|i| u32::from(i < self.real))
            .collect()
    }
}

impl Qwen3Tokenizer {
    /// Read a tokenizer folder (e.g. `model/tokenizer`): `tokenizer.json` and
    /// `tokenizer_config.json` (the chat template and the pad token).
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(EngineError::config(
                dir,
                "a Qwen3 tokenizer needs tokenizer.json (vocab.json + merges.txt alone are not \
                 read; transformers' fast tokenizer writes tokenizer.json)",
            ));
        }
        let inner = Tokenizer::from_file(&path).map_err(|e| EngineError::config(&path, e))?;
        let config_path = dir.join("tokenizer_config.json");
        let config: serde_json::Value = crate::config_files::read_json(&config_path)?;
        let pad_token = token_name(config.get("pad_token")).ok_or_else(|| {
            EngineError::config(&config_path, "no `pad_token`: the prompt cannot be padded")
        })?;
        let pad_id = inner.token_to_id(pad_token).ok_or_else(|| {
            EngineError::config(
                &config_path,
                format!("the pad token {pad_token:?} is not in tokenizer.json"),
            )
        })?;
        let template = ChatTemplate::load(dir, &config)?;
        Ok(Self {
            inner,
            template,
            pad_id,
        })
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// The chat-templated `prompt` as ids, cut to `max_len` (the cut drops the template's
    /// tail too, as transformers' truncation does) and padded to exactly `max_len`.
    pub fn encode(&self, prompt: &str, max_len: usize) -> Result<TokenizedPrompt> {
        let text = self
            .template
            .render(prompt)
            .map_err(|e| EngineError::invalid("prompt", format!("chat template: {e}")))?;
        let encoding = self
            .inner
            .encode(text, true)
            .map_err(|e| EngineError::invalid("prompt", e.to_string()))?;
        let mut ids = encoding.get_ids().to_vec();
        ids.truncate(max_len);
        let real = ids.len();
        ids.resize(max_len, self.pad_id);
        Ok(TokenizedPrompt { ids, real })
    }
}
