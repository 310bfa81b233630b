//! The CLIP byte-level BPE tokenizer, computing the same ids as the reference (transformers'
//! `CLIPTokenizer`): NFC, collapsed whitespace and lowercase; CLIP's pre-tokenisation regex;
//! byte-to-unicode mapping; BPE with a `</w>` end-of-word marker; bos/eos; truncation that
//! keeps the end token; padding with the pad token (`<|endoftext|>` for SD 1.x, `!` for the
//! OpenCLIP tokenizers of SD 2.x and SDXL).

use std::collections::HashMap;
use std::path::Path;

use regex::Regex;
use unicode_normalization::UnicodeNormalization;

use crate::error::{EngineError, Result};
use crate::model::read_json;

const END_OF_WORD: &str = "</w>";

pub struct ClipTokenizer {
    vocab: HashMap<String, u32>,
    merge_ranks: HashMap<(String, String), usize>,
    pattern: Regex,
    byte_chars: [char; 256],
    bos: u32,
    eos: u32,
    pad: u32,
    unk: u32,
    max_length: usize,
}

/// A special token in `tokenizer_config.json`: a plain string or `{"content": ...}`.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum SpecialToken {
    Plain(String),
    Object { content: String },
}

impl SpecialToken {
    fn text(&self) -> &str {
        match self {
            Self::Plain(s) | Self::Object { content: s } => s,
        }
    }
}

#[derive(Default, serde::Deserialize)]
struct TokenizerConfig {
    bos_token: Option<SpecialToken>,
    eos_token: Option<SpecialToken>,
    pad_token: Option<SpecialToken>,
    unk_token: Option<SpecialToken>,
    model_max_length: Option<f64>,
}

#[derive(serde::Deserialize)]
struct TokenizerJson {
    model: BpeModel,
}

#[derive(serde::Deserialize)]
struct BpeModel {
    vocab: HashMap<String, u32>,
    merges: Vec<Merge>,
}

/// `tokenizer.json` stores merges as `"a b"` (older) or `["a", "b"]` (newer).
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Merge {
    Joined(String),
    Pair(String, String),
}

impl ClipTokenizer {
    /// Load from a tokenizer folder: `tokenizer.json`, or `vocab.json` + `merges.txt`, with
    /// special tokens from `tokenizer_config.json` / `special_tokens_map.json`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let json_path = dir.join("tokenizer.json");
        let (vocab, merges) = if json_path.is_file() {
            let parsed: TokenizerJson = read_json(&json_path)?;
            let merges = parsed
                .model
                .merges
                .into_iter()
                .map(|m| match m {
                    Merge::Pair(a, b) => Ok((a, b)),
                    Merge::Joined(line) => split_merge(&line).ok_or_else(|| {
                        EngineError::config(&json_path, format!("bad merge `{line}`"))
                    }),
                })
                .collect::<Result<Vec<_>>>()?;
            (parsed.model.vocab, merges)
        } else {
            let vocab: HashMap<String, u32> = read_json(&dir.join("vocab.json"))?;
            let merges_path = dir.join("merges.txt");
            let text = crate::model::read_text(&merges_path)?;
            let merges = text
                .lines()
                .filter(|l| !l.starts_with("#version") && !l.trim().is_empty())
                .map(|line| {
                    split_merge(line).ok_or_else(|| {
                        EngineError::config(&merges_path, format!("bad merge `{line}`"))
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            (vocab, merges)
        };
        let config = read_special_tokens(dir)?;
        let id_of = |token: &Option<SpecialToken>, default: &str| -> Result<u32> {
            let text = token.as_ref().map_or(default, SpecialToken::text);
            vocab.get(text).copied().ok_or_else(|| {
                EngineError::config(
                    dir.join("tokenizer_config.json"),
                    format!("special token `{text}` is not in the vocabulary"),
                )
            })
        };
        let bos = id_of(&config.bos_token, "<|startoftext|>")?;
        let eos = id_of(&config.eos_token, "<|endoftext|>")?;
        let pad = id_of(&config.pad_token, "<|endoftext|>")?;
        let unk = id_of(&config.unk_token, "<|endoftext|>")?;
        // Some configs carry a huge sentinel ("no limit"); CLIP's text model has 77 positions.
        let max_length = match config.model_max_length {
            Some(n) if (2.0..=4096.0).contains(&n) => n as usize,
            _ => 77,
        };
        let merge_ranks = merges
            .into_iter()
            .enumerate()
            .map(|(rank, pair)| (pair, rank))
            .collect();
        let pattern = Regex::new(
            r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+",
        )
        .map_err(|e| EngineError::config(dir, e))?;
        Ok(Self {
            vocab,
            merge_ranks,
            pattern,
            byte_chars: byte_to_unicode(),
            bos,
            eos,
            pad,
            unk,
            max_length,
        })
    }

    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// Ids with bos/eos, truncated to `max_length` (eos kept) and padded with the pad id.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = self.encode_unpadded(text);
        if ids.len() > self.max_length {
            ids.truncate(self.max_length - 1);
            ids.push(self.eos);
        }
        ids.resize(self.max_length, self.pad);
        ids
    }

    /// Ids with bos/eos, neither truncated nor padded.
    pub fn encode_unpadded(&self, text: &str) -> Vec<u32> {
        let cleaned: String = text.nfc().collect::<String>();
        let cleaned = cleaned
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_lowercase();
        let mut ids = vec![self.bos];
        for piece in self.pattern.find_iter(&cleaned) {
            let piece = piece.as_str();
            if let Some(&id) = self.vocab.get(piece).filter(|_| piece.starts_with("<|")) {
                ids.push(id);
                continue;
            }
            let mapped: String = piece.bytes().map(|b| self.byte_chars[b as usize]).collect();
            for symbol in self.bpe(&mapped) {
                ids.push(self.vocab.get(&symbol).copied().unwrap_or(self.unk));
            }
        }
        ids.push(self.eos);
        ids
    }

    /// Merge the characters of one word (the last one marked end-of-word) by merge rank.
    fn bpe(&self, word: &str) -> Vec<String> {
        let chars: Vec<char> = word.chars().collect();
        let Some((last, rest)) = chars.split_last() else {
            return Vec::new();
        };
        let mut symbols: Vec<String> = rest.iter().map(|c| c.to_string()).collect();
        symbols.push(format!("{last}{END_OF_WORD}"));
        loop {
            let best = symbols
                .windows(2)
                .enumerate()
                .filter_map(|(i, w)| {
                    let rank = self.merge_ranks.get(&(w[0].clone(), w[1].clone()))?;
                    Some((*rank, i))
                })
                .min();
            let Some((_, at)) = best else { break };
            let (left, right) = (symbols[at].clone(), symbols[at + 1].clone());
            // Merge every occurrence of the best pair, left to right, as the reference does.
            let mut merged = Vec::with_capacity(symbols.len());
            let mut i = 0;
            while i < symbols.len() {
                if i + 1 < symbols.len() && symbols[i] == left && symbols[i + 1] == right {
                    merged.push(format!("{left}{right}"));
                    i += 2;
                } else {
                    merged.push(std::mem::take(&mut symbols[i]));
                    i += 1;
                }
            }
            symbols = merged;
        }
        symbols
    }
}

fn split_merge(line: &str) -> Option<(String, String)> {
    let (a, b) = line.split_once(' ')?;
    Some((a.to_string(), b.to_string()))
}

fn read_special_tokens(dir: &Path) -> Result<TokenizerConfig> {
    let mut config = TokenizerConfig::default();
    for name in ["special_tokens_map.json", "tokenizer_config.json"] {
        let path = dir.join(name);
        if !path.is_file() {
            continue;
        }
        let file: TokenizerConfig = read_json(&path)?;
        config.bos_token = file.bos_token.or(config.bos_token);
        config.eos_token = file.eos_token.or(config.eos_token);
        config.pad_token = file.pad_token.or(config.pad_token);
        config.unk_token = file.unk_token.or(config.unk_token);
        config.model_max_length = file.model_max_length.or(config.model_max_length);
    }
    Ok(config)
}

/// GPT-2's reversible byte -> printable character table: printable Latin-1 bytes map to
/// themselves, the rest to code points from 256 upwards in byte order.
fn byte_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for byte in 0..=255u8 {
        let printable = matches!(byte, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        table[byte as usize] = if printable {
            char::from(byte)
        } else {
            let c = char::from_u32(next).unwrap_or('\u{FFFD}');
            next += 1;
            c
        };
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{case_tensors, fixtures_dir, model_dir};

    #[test]
    fn readme_example() {
        let tok = ClipTokenizer::from_dir(&fixtures_dir().join("clip-tokenizer")).unwrap();
        let ids = tok.encode_unpadded("a photograph of an astronaut riding a horse");
        assert_eq!(
            ids,
            [49406, 320, 8853, 539, 550, 18376, 6765, 320, 4558, 49407]
        );
    }

    #[test]
    fn case_ids_match_with_both_file_layouts() {
        let cases: Vec<serde_json::Value> =
            read_json(&fixtures_dir().join("cases/cases.json")).unwrap();
        let dir = tempfile_copy_without_json();
        for tokenizer in [
            ClipTokenizer::from_dir(&fixtures_dir().join("clip-tokenizer")).unwrap(),
            ClipTokenizer::from_dir(dir.path()).unwrap(),
        ] {
            for case in &cases {
                let name = case["name"].as_str().unwrap();
                let expected: Vec<i64> = case_tensors(name)["prompt_token_ids"]
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                let ours: Vec<i64> = tokenizer
                    .encode(case["prompt"].as_str().unwrap())
                    .into_iter()
                    .map(i64::from)
                    .collect();
                assert_eq!(ours, expected, "{name}");
            }
        }
    }

    /// vocab.json + merges.txt only, as older model repos ship them.
    fn tempfile_copy_without_json() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for name in ["vocab.json", "merges.txt", "tokenizer_config.json"] {
            let from = fixtures_dir().join("clip-tokenizer").join(name);
            std::fs::copy(from, dir.path().join(name)).unwrap();
        }
        dir
    }

    #[test]
    fn sdxl_second_tokenizer_pads_with_its_own_pad_token() {
        let first = ClipTokenizer::from_dir(&model_dir("tiny-sdxl").join("tokenizer")).unwrap();
        let second = ClipTokenizer::from_dir(&model_dir("tiny-sdxl").join("tokenizer_2")).unwrap();
        let a = first.encode("a bird");
        let b = second.encode("a bird");
        assert_eq!(a[..4], b[..4]);
        assert_eq!(a.len(), 77);
        assert_eq!(a[76], first.pad);
        assert_eq!(b[76], second.pad);
    }

    /// Ids printed by transformers' CLIPTokenizer for the fixture tokenizer.
    #[test]
    fn tricky_strings_match_transformers() {
        let tok = ClipTokenizer::from_dir(&fixtures_dir().join("clip-tokenizer")).unwrap();
        let cases: [(&str, &[u32]); 4] = [
            ("wow! great!!", &[49406, 2781, 256, 830, 748, 49407]),
            ("a <|endoftext|> b", &[49406, 320, 49407, 321, 49407]),
            (
                "Héllo   Wörld 😀 café",
                &[49406, 71, 3459, 19293, 86, 31762, 730, 7334, 15304, 49407],
            ),
            (
                "it's 12,345.6 don't",
                &[
                    49406, 585, 568, 272, 273, 267, 274, 275, 276, 269, 277, 847, 713, 49407,
                ],
            ),
        ];
        for (text, ids) in cases {
            assert_eq!(tok.encode_unpadded(text), ids, "{text}");
        }
    }

    #[test]
    fn long_prompts_keep_the_end_token() {
        let tok = ClipTokenizer::from_dir(&fixtures_dir().join("clip-tokenizer")).unwrap();
        let ids = tok.encode(&"horse ".repeat(200));
        assert_eq!(ids.len(), 77);
        assert_eq!(ids[0], 49406);
        assert_eq!(ids[76], 49407);
        assert!(tok.encode_unpadded(&"horse ".repeat(200)).len() > 77);
    }

    #[test]
    fn missing_files_name_the_file() {
        let err = match ClipTokenizer::from_dir(Path::new("/nonexistent/tokenizer")) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("loaded"),
        };
        assert!(err.contains("/nonexistent/tokenizer/vocab.json"), "{err}");
    }
}
