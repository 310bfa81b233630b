//! Reading a tokenizer folder: the vocabulary and merges (from `tokenizer.json`, else from
//! `vocab.json` + `merges.txt`), the special tokens and `model_max_length`.
//!
//! Which special tokens are matched verbatim in a prompt, and whether before or after
//! normalisation, follows what transformers builds from the same files (checked against it in
//! `tokenizer/tests.rs`): entries of `added_tokens_decoder` first, then `tokenizer.json`'s
//! `added_tokens`, then the named tokens (bos, eos, unk, pad) that are not registered yet,
//! where among the named tokens a later one with the same text decides the flags.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::Deserialize;

use crate::config_files::read_json;
use crate::error::{EngineError, Result};

/// A token matched as a whole in the prompt instead of going through BPE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddedToken {
    pub content: String,
    pub id: u32,
    /// Matched in the normalised (lowercased, whitespace-collapsed) text rather than the raw
    /// prompt.
    pub normalized: bool,
}

/// Everything a tokenizer folder says.
pub struct TokenizerFiles {
    pub vocab: HashMap<String, u32>,
    pub merges: Vec<(String, String)>,
    pub added: Vec<AddedToken>,
    pub bos: u32,
    pub eos: u32,
    pub pad: u32,
    pub unk: Option<u32>,
    pub max_length: usize,
}

/// A special token as `tokenizer_config.json` and `special_tokens_map.json` write it: a plain
/// string or a serialized `AddedToken`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum TokenSpec {
    Plain(String),
    Full {
        content: String,
        normalized: Option<bool>,
    },
}

impl TokenSpec {
    fn content(&self) -> &str {
        match self {
            Self::Plain(content) | Self::Full { content, .. } => content,
        }
    }

    /// transformers turns a plain string into a special token (never normalised); a
    /// serialized token keeps its flag, which defaults to on for a non-special token.
    fn normalized(&self) -> bool {
        match self {
            Self::Plain(_) => false,
            Self::Full { normalized, .. } => normalized.unwrap_or(true),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct SpecialTokens {
    bos_token: Option<TokenSpec>,
    eos_token: Option<TokenSpec>,
    unk_token: Option<TokenSpec>,
    pad_token: Option<TokenSpec>,
}

#[derive(Debug, Deserialize)]
struct DecoderEntry {
    content: String,
    normalized: Option<bool>,
    #[serde(default)]
    special: bool,
}

#[derive(Debug, Deserialize)]
struct TokenizerConfig {
    #[serde(flatten)]
    special: SpecialTokens,
    model_max_length: Option<serde_json::Value>,
    #[serde(default)]
    added_tokens_decoder: BTreeMap<String, DecoderEntry>,
}

#[derive(Debug, Deserialize)]
struct TokenizerJson {
    model: JsonModel,
    #[serde(default)]
    added_tokens: Vec<JsonAddedToken>,
}

#[derive(Debug, Deserialize)]
struct JsonModel {
    #[serde(rename = "type")]
    kind: Option<String>,
    vocab: HashMap<String, u32>,
    merges: Vec<JsonMerge>,
}

/// Older `tokenizer.json` files write a merge as `"a b"`, newer ones as `["a", "b"]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum JsonMerge {
    Joined(String),
    Pair(String, String),
}

#[derive(Debug, Deserialize)]
struct JsonAddedToken {
    id: u32,
    content: String,
    #[serde(default)]
    normalized: bool,
}

/// The defaults of transformers' `CLIPTokenizer` for tokens a config leaves out.
const DEFAULT_BOS: &str = "<|startoftext|>";
const DEFAULT_EOS: &str = "<|endoftext|>";

pub fn read(dir: &Path) -> Result<TokenizerFiles> {
    let config_path = dir.join("tokenizer_config.json");
    let config: TokenizerConfig = read_json(&config_path)?;
    let max_length = max_length(&config_path, config.model_max_length.as_ref())?;

    let json_path = dir.join("tokenizer.json");
    let (vocab, merges, json_added) = if json_path.is_file() {
        read_tokenizer_json(&json_path)?
    } else {
        let vocab: HashMap<String, u32> = read_json(&dir.join("vocab.json"))?;
        (vocab, read_merges(&dir.join("merges.txt"))?, Vec::new())
    };

    // special_tokens_map.json, when present, overrides the config's named tokens.
    let map_path = dir.join("special_tokens_map.json");
    let map: SpecialTokens = if map_path.is_file() {
        read_json(&map_path)?
    } else {
        SpecialTokens::default()
    };
    let named = |from_map: Option<TokenSpec>, from_config: Option<TokenSpec>, default: &str| {
        from_map
            .or(from_config)
            .unwrap_or_else(|| TokenSpec::Plain(default.to_string()))
    };
    let special = config.special;
    let bos = named(map.bos_token, special.bos_token, DEFAULT_BOS);
    let eos = named(map.eos_token, special.eos_token, DEFAULT_EOS);
    let unk = named(map.unk_token, special.unk_token, DEFAULT_EOS);
    let pad = named(map.pad_token, special.pad_token, DEFAULT_EOS);

    let mut added: Vec<AddedToken> = Vec::new();
    for (id, entry) in &config.added_tokens_decoder {
        let declared: u32 = id.parse().map_err(|_| {
            EngineError::config(
                &config_path,
                format!("added_tokens_decoder key `{id}` is not an id"),
            )
        })?;
        let id = vocab.get(&entry.content).copied().unwrap_or(declared);
        register(
            &mut added,
            &entry.content,
            id,
            entry.normalized.unwrap_or(!entry.special),
        );
    }
    for token in json_added {
        if !added.iter().any(|t| t.content == token.content) {
            register(&mut added, &token.content, token.id, token.normalized);
        }
    }
    let registered = added.len();
    for spec in [&bos, &eos, &unk, &pad] {
        let content = spec.content();
        if added[..registered].iter().any(|t| t.content == content) {
            continue;
        }
        let id = vocab.get(content).copied().ok_or_else(|| {
            EngineError::config(
                &config_path,
                format!("special token `{content}` is not in the vocabulary"),
            )
        })?;
        // A later named token with the same text replaces the earlier one's flags.
        added.retain(|t| t.content != content);
        register(&mut added, content, id, spec.normalized());
    }

    let id_of = |spec: &TokenSpec| {
        added
            .iter()
            .find(|t| t.content == spec.content())
            .map(|t| t.id)
    };
    let (Some(bos_id), Some(eos_id), Some(pad_id)) = (id_of(&bos), id_of(&eos), id_of(&pad)) else {
        return Err(EngineError::config(
            &config_path,
            "special tokens could not be resolved",
        ));
    };
    let unk_id = id_of(&unk);
    Ok(TokenizerFiles {
        vocab,
        merges,
        added,
        bos: bos_id,
        eos: eos_id,
        pad: pad_id,
        unk: unk_id,
        max_length,
    })
}

fn register(added: &mut Vec<AddedToken>, content: &str, id: u32, normalized: bool) {
    // An empty token would match everywhere; the reference ignores it too.
    if !content.is_empty() {
        added.push(AddedToken {
            content: content.to_string(),
            id,
            normalized,
        });
    }
}

/// `model_max_length` must be a usable sequence length: transformers writes a huge
/// placeholder (1e30) when a tokenizer has none, which a CLIP pipeline cannot pad to.
fn max_length(path: &Path, value: Option<&serde_json::Value>) -> Result<usize> {
    const LIMIT: f64 = 1_000_000.0;
    let length = value.and_then(|v| v.as_u64().map(|n| n as f64).or_else(|| v.as_f64()));
    match length {
        Some(n) if (2.0..=LIMIT).contains(&n) && n.fract() == 0.0 => Ok(n as usize),
        Some(n) => Err(EngineError::config(
            path,
            format!("model_max_length {n} is not a sequence length between 2 and {LIMIT}"),
        )),
        None => Err(EngineError::config(path, "model_max_length is missing")),
    }
}

type VocabAndMerges = (
    HashMap<String, u32>,
    Vec<(String, String)>,
    Vec<JsonAddedToken>,
);

fn read_tokenizer_json(path: &Path) -> Result<VocabAndMerges> {
    let json: TokenizerJson = read_json(path)?;
    if let Some(kind) = json.model.kind.as_deref().filter(|k| *k != "BPE") {
        return Err(EngineError::config(
            path,
            format!("model type `{kind}`; a CLIP tokenizer is BPE"),
        ));
    }
    let merges = json
        .model
        .merges
        .into_iter()
        .enumerate()
        .map(|(i, merge)| match merge {
            JsonMerge::Pair(a, b) => Ok((a, b)),
            JsonMerge::Joined(line) => split_merge(&line)
                .ok_or_else(|| EngineError::config(path, format!("merge {} `{line}`", i + 1))),
        })
        .collect::<Result<_>>()?;
    Ok((json.model.vocab, merges, json.added_tokens))
}

fn split_merge(line: &str) -> Option<(String, String)> {
    let (a, b) = line.split_once(' ')?;
    (!b.contains(' ')).then(|| (a.to_string(), b.to_string()))
}

/// `merges.txt`: a `#version` header, then one `left right` pair per line in rank order.
fn read_merges(path: &Path) -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => EngineError::MissingFile {
            path: path.to_path_buf(),
        },
        _ => EngineError::Io {
            path: path.to_path_buf(),
            source,
        },
    })?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.starts_with("#version") && !line.is_empty())
        .map(|(i, line)| {
            split_merge(line).ok_or_else(|| {
                EngineError::config(path, format!("line {}: `{line}` is not a merge", i + 1))
            })
        })
        .collect()
}
