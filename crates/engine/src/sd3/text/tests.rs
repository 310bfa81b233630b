use candle_core::{DType, Tensor};
use serde::Deserialize;

use super::*;
use crate::test_support::{assert_close, dit_case_tensors, dit_cases, dit_model_dir};

#[derive(Deserialize)]
struct Case {
    name: String,
    model: String,
    prompt: String,
    negative_prompt: Option<String>,
    guidance_scale: f64,
    max_sequence_length: usize,
}

fn encoders(with_t5: bool) -> Sd3TextEncoders {
    let dir = dit_model_dir("tiny-sd3");
    Sd3TextEncoders::load(&dir, with_t5, 64, false, &LoadOptions::default()).unwrap()
}

fn ids(t: &Tensor) -> Vec<u32> {
    t.squeeze(0)
        .unwrap()
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|id| id as u32)
        .collect()
}

/// Token ids, the `(1, 77 + 256, 64)` states and the pooled vector of every SD3 case's
/// prompt and, under CFG, its negative prompt ("" when none is given).
#[test]
fn every_sd3_case_is_conditioned_as_the_reference() {
    let encoders = encoders(true);
    let cases: Vec<Case> = dit_cases();
    let mut checked = 0;
    for case in cases.iter().filter(|c| c.model == "tiny-sd3") {
        let t = dit_case_tensors(&case.name);
        let negative = case.negative_prompt.clone().unwrap_or_default();
        let mut prompts = vec![("", case.prompt.as_str())];
        if case.guidance_scale > 1.0 {
            prompts.push(("negative_", negative.as_str()));
        }
        for (prefix, prompt) in prompts {
            let name = format!("{} {prefix}prompt", case.name);
            let got = encoders
                .token_ids(prompt, case.max_sequence_length)
                .unwrap();
            assert_eq!(
                got.clip_l,
                ids(&t[&format!("{prefix}prompt_token_ids")]),
                "{name}"
            );
            assert_eq!(
                got.clip_g,
                ids(&t[&format!("{prefix}prompt_token_ids_2")]),
                "{name}"
            );
            let t5 = ids(&t[&format!("{prefix}prompt_token_ids_3")]);
            assert_eq!(got.t5.as_ref(), Some(&t5), "{name}");
            let encoded = encoders.encode(prompt, case.max_sequence_length).unwrap();
            assert_close(&name, &encoded.text, &t[&format!("{prefix}prompt_embeds")]);
            assert_close(
                &name,
                &encoded.pooled,
                &t[&format!("{prefix}pooled_prompt_embeds")],
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 3);
}

/// Without T5 the sequence keeps its length, with zeros for T5's part.
#[test]
fn without_t5_its_tokens_are_zeros() {
    let (full, clip_only) = (encoders(true), encoders(false));
    let with = full.encode("a cat", 256).unwrap();
    let without = clip_only.encode("a cat", 256).unwrap();
    assert_eq!(without.text.dims(), &[1, 77 + 256, 64]);
    assert_close(
        "clip part",
        &without.text.narrow(1, 0, 77).unwrap(),
        &with.text.narrow(1, 0, 77).unwrap(),
    );
    let tail = without
        .text
        .narrow(1, 77, 256)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap();
    assert_eq!(
        tail.to_dtype(DType::F32)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap(),
        0.0
    );
    assert!(clip_only.token_ids("a cat", 256).unwrap().t5.is_none());
}

#[test]
fn a_transformer_narrower_than_the_clip_states_is_a_config_error() {
    let dir = dit_model_dir("tiny-sd3");
    let error = Sd3TextEncoders::load(&dir, true, 32, false, &LoadOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains("joint_attention_dim") && error.contains("40"),
        "{error}"
    );
}
