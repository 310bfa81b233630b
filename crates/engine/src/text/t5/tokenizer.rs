//! T5's SentencePiece Unigram tokenizer, through Hugging Face's `tokenizers` crate reading the
//! folder's `tokenizer.json` (what `T5TokenizerFast` reads): it implements the Unigram model,
//! the precompiled normalizer and the `</s>` template exactly as transformers runs them, which a
//! tokenizer of our own would have to reproduce byte for byte. A folder with only
//! `spiece.model` is refused with a message.

use std::path::Path;

use tokenizers::{PaddingDirection, PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::error::{EngineError, Result};

pub struct T5Tokenizer {
    inner: Tokenizer,
    pad_id: u32,
}

impl T5Tokenizer {
    /// Read `dir/tokenizer.json` (e.g. `model/tokenizer_2`).
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(EngineError::config(
                dir,
                "a T5 tokenizer needs tokenizer.json (spiece.model alone is not read; \
                 transformers' T5TokenizerFast writes tokenizer.json)",
            ));
        }
        let inner = Tokenizer::from_file(&path).map_err(|e| EngineError::config(&path, e))?;
        let pad_id = inner.token_to_id("<pad>").unwrap_or(0);
        Ok(Self { inner, pad_id })
    }

    /// The ids of `text` with `</s>`, cut to `length` (keeping `</s>` last) and padded with
    /// `<pad>` to exactly `length`, as the pipelines call it (`padding="max_length"`,
    /// `truncation=True`).
    pub fn encode(&self, text: &str, length: usize) -> Result<Vec<u32>> {
        let mut tokenizer = self.inner.clone();
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: length,
                ..Default::default()
            }))
            .map_err(|e| EngineError::invalid("prompt", e.to_string()))?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(length),
            direction: PaddingDirection::Right,
            pad_id: self.pad_id,
            pad_token: "<pad>".into(),
            ..Default::default()
        }));
        let encoding = tokenizer
            .encode(text, true)
            .map_err(|e| EngineError::invalid("prompt", e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }
}
