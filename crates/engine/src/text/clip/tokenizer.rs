//! The CLIP BPE tokenizer, computing the same ids as transformers' `CLIPTokenizer` (the
//! `tokenizers`-backed one that diffusers uses):
//!
//! 1. special tokens written in the prompt (`<|endoftext|>`, and `!` where it is the pad
//!    token) are cut out first and kept as single ids;
//! 2. the rest is normalised: Unicode NFC, every run of whitespace to one space, lowercase;
//! 3. split into words by CLIP's pattern (letter runs, single digits, punctuation runs,
//!    English contractions), then by GPT-2's byte-level pattern;
//! 4. each word's UTF-8 bytes are mapped to printable characters and merged by BPE, the
//!    last symbol carrying the `</w>` suffix;
//! 5. bos/eos around, truncated to `model_max_length` keeping eos, padded with the pad id.
//!
//! A prompt's cost is bounded by what the model sees: `encode` stops tokenizing at the first
//! word boundary past `model_max_length`, and one word (which may be a pasted blob of any
//! length) is merged in O(n log n) (see `bpe`); only the normalisation reads all the text.

mod bpe;
mod files;
// Generated data: one prompt per line reads better than rustfmt's layout.
#[cfg(test)]
#[rustfmt::skip]
mod reference_ids;
#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::LazyLock;

use regex::Regex;
use unicode_normalization::UnicodeNormalization;

use crate::error::{EngineError, Result};
use bpe::Bpe;
use files::AddedToken;

/// CLIP's word pattern. The special token texts come first so that, once lowercased, they
/// stay one word (which the byte-level pattern below then splits like the reference does).
static WORDS: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+",
    )
    .expect("constant pattern")
});

/// GPT-2's byte-level pattern, which the reference applies to every CLIP word as well. Words
/// hold no whitespace, so its `\s+(?!\S)` alternative (unsupported by `regex`) never matters.
static BYTE_LEVEL_WORDS: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+")
        .expect("constant pattern")
});

static WHITESPACE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\s+").expect("constant pattern"));

pub struct ClipTokenizer {
    bpe: Bpe,
    /// Special tokens matched in the raw prompt.
    raw_tokens: Vec<AddedToken>,
    /// Special tokens matched after normalisation.
    normalized_tokens: Vec<AddedToken>,
    bos: u32,
    eos: u32,
    pad: u32,
    max_length: usize,
}

impl ClipTokenizer {
    /// Load a tokenizer folder (`tokenizer/` of a diffusers model): `tokenizer.json` when
    /// present, else `vocab.json` + `merges.txt`; `tokenizer_config.json` (and
    /// `special_tokens_map.json` when present) for the special tokens and the length.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(EngineError::MissingFile {
                path: dir.to_path_buf(),
            });
        }
        let files = files::read(dir)?;
        let source = if dir.join("tokenizer.json").is_file() {
            dir.join("tokenizer.json")
        } else {
            dir.join("merges.txt")
        };
        let bpe = Bpe::new(files.vocab, &files.merges, files.unk)
            .map_err(|message| EngineError::config(source, message))?;
        let (normalized_tokens, raw_tokens) = files.added.into_iter().partition(|t| t.normalized);
        Ok(Self {
            bpe,
            raw_tokens,
            normalized_tokens,
            bos: files.bos,
            eos: files.eos,
            pad: files.pad,
            max_length: files.max_length,
        })
    }

    /// `model_max_length`: the length every encoded prompt is padded or truncated to.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    pub fn pad_id(&self) -> u32 {
        self.pad
    }

    pub fn eos_id(&self) -> u32 {
        self.eos
    }

    /// Ids with bos/eos, truncated to max_length (eos kept) and padded with the pad id.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        // `from_dir` guarantees room for bos and eos.
        let room = self.max_length.saturating_sub(2);
        let mut content = self.content_ids(text, room);
        content.truncate(room);
        let mut ids = Vec::with_capacity(self.max_length);
        ids.push(self.bos);
        ids.extend_from_slice(&content);
        ids.push(self.eos);
        ids.resize(self.max_length, self.pad);
        ids
    }

    /// Ids with bos/eos, neither truncated nor padded. Its cost grows with the whole prompt;
    /// to know whether `encode` cuts a prompt short, [`Self::is_truncated`] stops early.
    pub fn encode_unpadded(&self, text: &str) -> Vec<u32> {
        let content = self.content_ids(text, usize::MAX);
        let mut ids = Vec::with_capacity(content.len() + 2);
        ids.push(self.bos);
        ids.extend_from_slice(&content);
        ids.push(self.eos);
        ids
    }

    /// Whether `encode` drops ids of `text`: `encode_unpadded(text).len() > max_length()`,
    /// but tokenizing only until one id past what fits, so a huge prompt costs no more
    /// than its normalisation and the words that fit (plus the one that overflows).
    pub fn is_truncated(&self, text: &str) -> bool {
        let room = self.max_length.saturating_sub(2);
        self.content_ids(text, room.saturating_add(1)).len() > room
    }

    /// The content ids (no bos/eos) in order, stopping at the first word boundary once there
    /// are at least `limit`: the ids past the model's length are thrown away, and producing
    /// them is what made a long prompt hold the device. Stopping between words keeps the ids
    /// exact, since a word's ids never depend on the words after it (cutting a word short
    /// would not be exact: BPE merges are not local, the end of a word can change its start).
    /// The normalisation before still reads the whole text, in linear time.
    fn content_ids(&self, text: &str, limit: usize) -> Vec<u32> {
        let mut ids = Vec::new();
        for piece in split_special(text, &self.raw_tokens) {
            if ids.len() >= limit {
                break;
            }
            let raw = match piece {
                Piece::Special(id) => {
                    ids.push(id);
                    continue;
                }
                Piece::Text(raw) => raw,
            };
            let normalized = normalize(raw);
            for piece in split_special(&normalized, &self.normalized_tokens) {
                if ids.len() >= limit {
                    break;
                }
                match piece {
                    Piece::Special(id) => ids.push(id),
                    Piece::Text(text) => self.encode_text(text, limit, &mut ids),
                }
            }
        }
        ids
    }

    /// BPE of every word of `text`, until there are `limit` ids (see `content_ids`).
    fn encode_text(&self, text: &str, limit: usize, ids: &mut Vec<u32>) {
        for word in WORDS.find_iter(text) {
            for part in BYTE_LEVEL_WORDS.find_iter(word.as_str()) {
                if ids.len() >= limit {
                    return;
                }
                self.bpe.encode_word(part.as_str(), ids);
            }
        }
    }
}

/// NFC, whitespace runs to one space, then lowercase character by character (the reference
/// maps each character on its own, so a final capital sigma becomes `σ`, not `ς`).
fn normalize(text: &str) -> String {
    let composed: String = text.nfc().collect();
    let collapsed = WHITESPACE.replace_all(&composed, " ");
    collapsed.chars().flat_map(char::to_lowercase).collect()
}

enum Piece<'a> {
    Text(&'a str),
    Special(u32),
}

/// Cut `text` at every occurrence of a special token: the leftmost match wins, and the
/// longest token among those starting there.
fn split_special<'a>(text: &'a str, tokens: &[AddedToken]) -> Vec<Piece<'a>> {
    let mut pieces = Vec::new();
    if tokens.is_empty() {
        pieces.push(Piece::Text(text));
        return pieces;
    }
    let mut start = 0;
    let mut pos = 0;
    while pos < text.len() {
        let rest = &text[pos..];
        let found = tokens
            .iter()
            .filter(|t| rest.starts_with(t.content.as_str()))
            .max_by_key(|t| t.content.len());
        match found {
            Some(token) => {
                if start < pos {
                    pieces.push(Piece::Text(&text[start..pos]));
                }
                pieces.push(Piece::Special(token.id));
                pos += token.content.len();
                start = pos;
            }
            None => pos += rest.chars().next().map_or(1, char::len_utf8),
        }
    }
    if start < text.len() {
        pieces.push(Piece::Text(&text[start..]));
    }
    pieces
}
