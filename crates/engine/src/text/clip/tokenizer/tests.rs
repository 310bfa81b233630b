//! The tokenizer against ids produced by transformers: the reference cases' prompts, the
//! fixture README's check string, and a batch of tricky prompts in several tokenizer folder
//! layouts (see `tools/reference/clip_tokenizer_ids.py`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::ClipTokenizer;
use super::reference_ids::{FOLDER_FILES, PADDED, UNPADDED};
use crate::error::EngineError;
use crate::test_support::{case_tensors, fixtures_dir, model_dir};

fn clip_dir() -> PathBuf {
    fixtures_dir().join("clip-tokenizer")
}

/// A copy of `from` with only the named files.
fn copy_of(from: &Path, files: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for file in files {
        std::fs::copy(from.join(file), dir.path().join(file)).unwrap();
    }
    dir
}

/// The same tokenizer folder loaded from tokenizer.json and from vocab.json + merges.txt.
fn both_layouts(dir: &Path) -> Vec<(String, ClipTokenizer, tempfile::TempDir)> {
    let json = copy_of(dir, &["tokenizer.json", "tokenizer_config.json"]);
    let files = copy_of(dir, &["vocab.json", "merges.txt", "tokenizer_config.json"]);
    [("tokenizer.json", json), ("vocab.json + merges.txt", files)]
        .into_iter()
        .map(|(name, tmp)| {
            let tok = ClipTokenizer::from_dir(tmp.path()).unwrap();
            (format!("{} ({name})", dir.display()), tok, tmp)
        })
        .collect()
}

#[derive(serde::Deserialize)]
struct Case {
    name: String,
    model: String,
    prompt: String,
}

#[test]
fn fixture_cases_match_prompt_token_ids() {
    let cases: Vec<Case> =
        crate::config_files::read_json(&fixtures_dir().join("cases/cases.json")).unwrap();
    assert_eq!(cases.len(), 5);
    for case in cases {
        let expected: Vec<u32> = case_tensors(&case.name)["prompt_token_ids"]
            .to_vec2::<i64>()
            .unwrap()[0]
            .iter()
            .map(|&id| u32::try_from(id).unwrap())
            .collect();
        let model = model_dir(&case.model);
        let mut folders = vec![clip_dir(), model.join("tokenizer")];
        if model.join("tokenizer_2").is_dir() {
            folders.push(model.join("tokenizer_2"));
        }
        for folder in folders {
            for (name, tok, _tmp) in both_layouts(&folder) {
                assert_eq!(tok.max_length(), 77, "{name}");
                assert_eq!(tok.encode(&case.prompt), expected, "{}: {name}", case.name);
            }
        }
    }
}

#[test]
fn readme_check_string() {
    for (name, tok, _tmp) in both_layouts(&clip_dir()) {
        let ids = tok.encode_unpadded("a photograph of an astronaut riding a horse");
        assert_eq!(
            ids,
            [49406, 320, 8853, 539, 550, 18376, 6765, 320, 4558, 49407],
            "{name}"
        );
    }
}

/// Build the reference script's tokenizer folders and load each one.
fn reference_folders() -> Vec<(&'static str, ClipTokenizer, Option<tempfile::TempDir>)> {
    let fixture = ClipTokenizer::from_dir(&clip_dir()).unwrap();
    let mut folders = vec![("fixture", fixture, None)];
    let names: BTreeSet<&str> = FOLDER_FILES.iter().map(|(name, _, _)| *name).collect();
    for name in names {
        let dir = copy_of(&clip_dir(), &["vocab.json", "merges.txt"]);
        for (_, file, content) in FOLDER_FILES.iter().filter(|(n, _, _)| *n == name) {
            std::fs::write(dir.path().join(file), content).unwrap();
        }
        let tok = ClipTokenizer::from_dir(dir.path()).unwrap();
        folders.push((name, tok, Some(dir)));
    }
    folders
}

#[test]
fn tricky_prompts_match_transformers() {
    let folders = reference_folders();
    let mut failures = Vec::new();
    for (folder, prompt, expected) in UNPADDED {
        let tok = &folders.iter().find(|(name, ..)| name == folder).unwrap().1;
        let got = tok.encode_unpadded(prompt);
        if got != *expected {
            failures.push(format!(
                "{folder} {prompt:?}:\n  got  {got:?}\n  want {expected:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    for (folder, prompt, expected) in PADDED {
        let tok = &folders.iter().find(|(name, ..)| name == folder).unwrap().1;
        assert_eq!(tok.encode(prompt), *expected, "{folder} {prompt:?}");
    }
}

#[test]
fn sdxl_second_tokenizer_style_pads_with_exclamation_mark() {
    let folders = reference_folders();
    let tok = &folders
        .iter()
        .find(|(name, ..)| *name == "sdxl_2")
        .unwrap()
        .1;
    assert_eq!(tok.pad_id(), 0);
    let ids = tok.encode("hi");
    assert_eq!(&ids[..4], &[49406, 1883, 49407, 0]);
    assert!(ids[4..].iter().all(|&id| id == 0));
}

#[test]
fn long_prompt_is_truncated_keeping_eos() {
    let tok = ClipTokenizer::from_dir(&clip_dir()).unwrap();
    let prompt = "a photo of a cat ".repeat(30);
    let full = tok.encode_unpadded(&prompt);
    assert_eq!(full.len(), 2 + 30 * 5);
    let ids = tok.encode(&prompt);
    assert_eq!(ids.len(), 77);
    assert_eq!(&ids[..76], &full[..76]);
    assert_eq!(ids[76], 49407);
}

fn expect_missing(dir: &Path, file: &str) {
    match ClipTokenizer::from_dir(dir) {
        Err(EngineError::MissingFile { path }) => assert!(path.ends_with(file), "{path:?}"),
        Err(other) => panic!("expected missing {file}, got {other}"),
        Ok(_) => panic!("expected missing {file}, got a tokenizer"),
    }
}

#[test]
fn missing_files_are_named() {
    let clip = clip_dir();
    expect_missing(&clip.join("no-such-folder"), "no-such-folder");
    expect_missing(
        copy_of(&clip, &["vocab.json", "merges.txt"]).path(),
        "tokenizer_config.json",
    );
    expect_missing(
        copy_of(&clip, &["vocab.json", "tokenizer_config.json"]).path(),
        "merges.txt",
    );
    expect_missing(
        copy_of(&clip, &["merges.txt", "tokenizer_config.json"]).path(),
        "vocab.json",
    );
}

#[test]
fn broken_files_are_named() {
    let dir = copy_of(&clip_dir(), &["vocab.json", "tokenizer_config.json"]);
    std::fs::write(
        dir.path().join("merges.txt"),
        "#version: 0.2\ni n\nnot-a-merge\n",
    )
    .unwrap();
    let err = ClipTokenizer::from_dir(dir.path())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("merges.txt") && err.contains("line 3"),
        "{err}"
    );

    std::fs::write(dir.path().join("merges.txt"), "q\u{1f600} zz\n").unwrap();
    let err = ClipTokenizer::from_dir(dir.path())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("merges.txt") && err.contains("not in the vocabulary"),
        "{err}"
    );

    std::fs::write(dir.path().join("merges.txt"), "i n\n").unwrap();
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"pad_token": "!"}"#,
    )
    .unwrap();
    let err = ClipTokenizer::from_dir(dir.path())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("tokenizer_config.json") && err.contains("model_max_length"),
        "{err}"
    );

    let config = r#"{"model_max_length": 77, "pad_token": "<|pad|>"}"#;
    std::fs::write(dir.path().join("tokenizer_config.json"), config).unwrap();
    let err = ClipTokenizer::from_dir(dir.path())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("tokenizer_config.json") && err.contains("<|pad|>"),
        "{err}"
    );

    let dir = copy_of(&clip_dir(), &["tokenizer_config.json"]);
    std::fs::write(
        dir.path().join("tokenizer.json"),
        r#"{"model": {"vocab": []}}"#,
    )
    .unwrap();
    let err = ClipTokenizer::from_dir(dir.path())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("tokenizer.json"), "{err}");
}

/// A word of `len` pseudo-random lowercase letters: one CLIP word (a letter run) that BPE
/// cannot shortcut, like the pasted blobs the length limit guards against.
fn random_letters(len: usize, seed: u64) -> String {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..len)
        .map(|_| rng.random_range(b'a'..=b'z') as char)
        .collect()
}

/// Not a check: prints how long long prompts take, for comparing implementations
/// (`cargo test -p seedbed-engine --lib single_word_timing -- --ignored --nocapture`). The
/// single words are what the merge's complexity shows on; the others are one word each of
/// punctuation and of accented letters (2 bytes each, NFC to compose), and many short words.
#[test]
#[ignore = "timing report"]
fn single_word_timing() {
    let tok = ClipTokenizer::from_dir(&clip_dir()).unwrap();
    for len in [1_000, 10_000, 30_000, 100_000, 1_000_000] {
        for (kind, prompt) in [
            ("random", random_letters(len, 7)),
            ("aaaa", "a".repeat(len)),
            ("!?", "!?".repeat(len / 2)),
            ("e\u{301}", "e\u{301}".repeat(len / 3)),
            ("a1 b", "a1 b".repeat(len / 4)),
        ] {
            let start = std::time::Instant::now();
            let all = tok.encode_unpadded(&prompt).len();
            let unpadded = start.elapsed();
            let start = std::time::Instant::now();
            tok.encode(&prompt);
            let padded = start.elapsed();
            let start = std::time::Instant::now();
            super::normalize(&prompt);
            let normalize = start.elapsed();
            eprintln!(
                "{:>7} bytes {kind:<8} encode_unpadded {unpadded:>10.3?} ({all:>6} ids)  \
                 encode {padded:>10.3?}  of which normalize {normalize:.3?}",
                prompt.len()
            );
        }
    }
}

/// A prompt that is one word of a million letters is as cheap as any other: `encode` gives
/// 77 ids, bos + 75 content ids + eos (no room left for padding), and they are the first ids
/// of the word's first 1000 letters, which already make far more than 75 tokens. (The old
/// quadratic merge would take hours on this word.)
#[test]
fn million_letter_word_fills_max_length() {
    let tok = ClipTokenizer::from_dir(&clip_dir()).unwrap();
    let word = random_letters(1_000_000, 8);
    let ids = tok.encode(&word);
    assert_eq!(ids.len(), 77);
    assert_eq!(ids[0], 49406);
    assert_eq!(ids[76], 49407);
    assert!(ids[1..76].iter().all(|&id| id != 49407));
    assert_eq!(ids, tok.encode(&word[..1000]));
    assert!(tok.encode_unpadded(&word[..1000]).len() > 77);
    assert!(tok.is_truncated(&word));
}

/// `encode` and `is_truncated` stop tokenizing once the model's length is reached: their
/// ids must be exactly the full encoding's, cut and padded, at every length around the limit
/// and with special tokens (raw and normalised) on either side of the cut.
#[test]
fn early_stop_gives_the_full_encodings_ids() {
    let mut prompts: Vec<String> = UNPADDED.iter().map(|(_, p, _)| p.to_string()).collect();
    for words in [1, 30, 37, 38, 39, 74, 75, 76, 77, 150] {
        prompts.push("cat ".repeat(words));
        prompts.push(format!("{}<|endoftext|> dog", "cat ".repeat(words)));
        prompts.push(format!(
            "{}!!! <|startoftext|>dog",
            "cat, ".repeat(words / 2)
        ));
        prompts.push(format!("{} photographphotograph", "x".repeat(words)));
    }
    for (folder, tok, _tmp) in reference_folders() {
        for prompt in &prompts {
            let full = tok.encode_unpadded(prompt);
            let mut expected: Vec<u32> = full[..full.len() - 1].iter().copied().take(76).collect();
            expected.push(49407);
            expected.resize(77, tok.pad_id());
            assert_eq!(tok.encode(prompt), expected, "{folder} {prompt:?}");
            assert_eq!(
                tok.is_truncated(prompt),
                full.len() > 77,
                "{folder} {prompt:?}"
            );
        }
    }
}

/// The words past the limit are never tokenized: with one id per word, a prompt of a million
/// words yields exactly the limit (the old code produced all million ids, then cut).
#[test]
fn content_ids_stop_at_the_limit() {
    let tok = ClipTokenizer::from_dir(&clip_dir()).unwrap();
    let prompt = "a photo of a cat ".repeat(200_000);
    assert_eq!(tok.content_ids(&prompt, 75).len(), 75);
    assert_eq!(tok.content_ids(&prompt, 76).len(), 76);
    assert_eq!(tok.encode(&prompt)[1..76], tok.content_ids(&prompt, 75)[..]);
}
