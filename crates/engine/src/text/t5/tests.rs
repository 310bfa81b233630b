use std::collections::HashMap;

use candle_core::{DType, Device, IndexOp, Tensor};
use serde::Deserialize;

use super::*;
use crate::test_support::{assert_close, dit_case_tensors, dit_cases, dit_model_dir};

#[derive(Deserialize)]
struct Case {
    name: String,
    model: String,
    prompt: String,
    max_sequence_length: Option<usize>,
}

/// A reference case with a T5 encoder: its tensors, and where its T5 parts are (tokenizer
/// folder, encoder folder, name of the ids tensor).
type T5Case = (
    Case,
    HashMap<String, Tensor>,
    &'static str,
    &'static str,
    &'static str,
);

fn t5_cases() -> Vec<T5Case> {
    let cases: Vec<Case> = dit_cases();
    cases
        .into_iter()
        .filter_map(|case| {
            // FLUX: tokenizer_2/text_encoder_2, ids in `prompt_token_ids_2`; SD3: the third.
            let (tokenizer, encoder, ids) = if case.model.contains("flux") {
                ("tokenizer_2", "text_encoder_2", "prompt_token_ids_2")
            } else if case.model.contains("sd3") {
                ("tokenizer_3", "text_encoder_3", "prompt_token_ids_3")
            } else {
                return None;
            };
            let tensors = dit_case_tensors(&case.name);
            Some((case, tensors, tokenizer, encoder, ids))
        })
        .collect()
}

#[test]
fn token_ids_are_transformers_ids() {
    let cases = t5_cases();
    assert!(cases.len() >= 6, "{} cases", cases.len());
    for (case, tensors, tokenizer, _, ids) in cases {
        let dir = dit_model_dir(&case.model).join(tokenizer);
        let reference: Vec<u32> = tensors[ids]
            .to_dtype(DType::U32)
            .unwrap()
            .i(0)
            .unwrap()
            .to_vec1()
            .unwrap();
        let length = case.max_sequence_length.unwrap_or(256).min(reference.len());
        let ours = T5Tokenizer::load(&dir)
            .unwrap()
            .encode(&case.prompt, length)
            .unwrap();
        assert_eq!(ours, reference, "{}", case.name);
    }
}

/// Long prompts are cut to the length with `</s>` kept last, short ones padded.
#[test]
fn truncation_keeps_the_end_token() {
    let dir = dit_model_dir("tiny-flux-schnell").join("tokenizer_2");
    let tokenizer = T5Tokenizer::load(&dir).unwrap();
    let ids = tokenizer
        .encode(&"a very long prompt ".repeat(100), 16)
        .unwrap();
    assert_eq!(ids.len(), 16);
    assert_eq!(ids[15], 1, "</s>");
    let ids = tokenizer.encode("a cat", 8).unwrap();
    assert_eq!(&ids[ids.len() - 3..], [0, 0, 0], "padded with <pad>");
}

/// The encoder on the reference's own ids gives the reference's T5 states: FLUX's whole
/// `prompt_embeds`, the last 256 rows of SD3's.
#[test]
fn hidden_states_match_every_reference_case() {
    for (case, tensors, _, encoder, ids) in t5_cases() {
        let dir = dit_model_dir(&case.model).join(encoder);
        let model = T5Encoder::load(&dir, Variant::Auto, DType::F32, &Device::Cpu).unwrap();
        let input = tensors[ids].to_dtype(DType::U32).unwrap();
        let ours = model.forward(&input).unwrap();
        let embeds = &tensors["prompt_embeds"];
        let tokens = input.dim(1).unwrap();
        let rows = embeds.dim(1).unwrap();
        let reference = embeds.narrow(1, rows - tokens, tokens).unwrap();
        assert_close(&case.name, &ours, &reference);
    }
}

#[test]
fn buckets_follow_transformers() {
    // Bidirectional, 32 buckets, max distance 128: 16 per direction, 8 exact.
    let b = |relative| bucket(relative, 32, 128);
    assert_eq!((b(0), b(-1), b(-7), b(1), b(7)), (0, 1, 7, 17, 23));
    assert_eq!(b(-8), 8, "log buckets start at max_exact");
    assert_eq!(b(-127), 15);
    assert_eq!(b(-1000), 15, "clamped to the last bucket");
    assert_eq!(b(1000), 31);
}

#[test]
fn a_relu_t5_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(
        &path,
        r#"{"vocab_size": 10, "d_model": 4, "d_kv": 2, "d_ff": 8, "num_layers": 1, "num_heads": 2}"#,
    )
    .unwrap();
    let error = T5Config::read(&path).unwrap_err().to_string();
    assert!(error.contains("gated-gelu"), "{error}");
}
