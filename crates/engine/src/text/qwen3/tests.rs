use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, IndexOp, Tensor};
use serde::Deserialize;

use super::*;
use crate::test_support::{assert_close, dit_case_tensors, dit_cases, dit_model_dir};

#[derive(Deserialize)]
struct Case {
    name: String,
    model: String,
    prompt: String,
    negative_prompt: Option<String>,
    max_sequence_length: usize,
}

/// One prompt of a Z-Image case: the text and the prefix of its reference tensors (`""` for
/// the prompt, `"negative_"` for the negative prompt, the empty string when a CFG case gives
/// none).
struct Prompt {
    case: String,
    text: String,
    prefix: &'static str,
    max_len: usize,
    tensors: HashMap<String, Tensor>,
}

fn zimage_prompts() -> Vec<Prompt> {
    let cases: Vec<Case> = dit_cases();
    let mut prompts = Vec::new();
    for case in cases.into_iter().filter(|c| c.model == "tiny-zimage") {
        let tensors = dit_case_tensors(&case.name);
        if tensors.contains_key("negative_prompt_token_ids") {
            prompts.push(Prompt {
                case: case.name.clone(),
                text: case.negative_prompt.clone().unwrap_or_default(),
                prefix: "negative_",
                max_len: case.max_sequence_length,
                tensors: tensors.clone(),
            });
        }
        prompts.push(Prompt {
            case: case.name,
            text: case.prompt,
            prefix: "",
            max_len: case.max_sequence_length,
            tensors,
        });
    }
    prompts
}

fn tiny_zimage() -> std::path::PathBuf {
    dit_model_dir("tiny-zimage")
}

fn row(tensor: &Tensor) -> Vec<u32> {
    tensor
        .to_dtype(DType::U32)
        .unwrap()
        .i(0)
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn chat_template_renders_the_user_turn_and_generation_prompt() {
    let dir = tiny_zimage().join("tokenizer");
    let config: serde_json::Value =
        crate::config_files::read_json(&dir.join("tokenizer_config.json")).unwrap();
    let template = chat_template::ChatTemplate::load(&dir, &config).unwrap();
    assert_eq!(
        template.render("a cat").unwrap(),
        "<|im_start|>user\na cat<|im_end|>\n<|im_start|>assistant\n"
    );
}

/// The reference's real (unmasked) ids of a prompt.
fn real_ids(prompt: &Prompt) -> Vec<u32> {
    let ids = row(&prompt.tensors[&format!("{}prompt_token_ids", prompt.prefix)]);
    let mask = row(&prompt.tensors[&format!("{}prompt_attention_mask", prompt.prefix)]);
    assert!(mask.windows(2).all(|w| w[0] >= w[1]), "right padding");
    let real = mask.iter().sum::<u32>() as usize;
    ids[..real].to_vec()
}

/// Special tokens are in the template's context, as transformers puts them there.
#[test]
fn chat_template_sees_the_special_tokens() {
    let config = serde_json::json!({
        "eos_token": {"content": "<|im_end|>"},
        "chat_template": "{{ messages[0].content }}{{ eos_token }}",
    });
    let template = chat_template::ChatTemplate::load(Path::new("."), &config).unwrap();
    assert_eq!(template.render("hi").unwrap(), "hi<|im_end|>");
}

#[test]
fn token_ids_and_masks_are_transformers_ones() {
    let tokenizer = Qwen3Tokenizer::load(&tiny_zimage().join("tokenizer")).unwrap();
    assert_eq!(tokenizer.pad_id(), 151643, "<|endoftext|>");
    let prompts = zimage_prompts();
    assert!(prompts.len() >= 3, "{} prompts", prompts.len());
    for prompt in prompts {
        let name = format!("{} {}prompt", prompt.case, prompt.prefix);
        let ids = row(&prompt.tensors[&format!("{}prompt_token_ids", prompt.prefix)]);
        let mask = row(&prompt.tensors[&format!("{}prompt_attention_mask", prompt.prefix)]);
        let ours = tokenizer.encode(&prompt.text, prompt.max_len).unwrap();
        assert_eq!(ours.ids, ids, "{name}: ids");
        assert_eq!(ours.attention_mask(), mask, "{name}: mask");
    }
}

/// A prompt longer than `max_len` is cut there, the template's tail with it, as transformers
/// truncates.
#[test]
fn a_long_prompt_is_cut_at_max_len() {
    let tokenizer = Qwen3Tokenizer::load(&tiny_zimage().join("tokenizer")).unwrap();
    let full = tokenizer.encode("a cat", 64).unwrap();
    let cut = tokenizer
        .encode(&"a very long prompt ".repeat(100), 16)
        .unwrap();
    assert_eq!((cut.ids.len(), cut.real), (16, 16));
    assert_eq!(cut.ids[..3], full.ids[..3], "starts with the user turn");
    assert!(!cut.ids.contains(&tokenizer.pad_id()));
    assert_eq!(
        full.ids[full.real..],
        vec![tokenizer.pad_id(); 64 - full.real]
    );
}

/// The encoder on the real tokens alone gives the reference's embeddings, which diffusers
/// computed on the whole padded, masked batch.
#[test]
fn embeddings_match_every_reference_prompt() {
    let dir = tiny_zimage().join("text_encoder");
    let model = Qwen3Encoder::load(&dir, Variant::Auto, DType::F32, &Device::Cpu).unwrap();
    for prompt in zimage_prompts() {
        let name = format!("{} {}prompt_embeds", prompt.case, prompt.prefix);
        let ours = model.embed(&real_ids(&prompt)).unwrap();
        assert_close(
            &name,
            &ours,
            &prompt.tensors[&format!("{}prompt_embeds", prompt.prefix)],
        );
    }
}

/// Half-precision weights (the real model is published in bf16) compute in f32 on CPU and
/// stay within 2e-2 of the reference (measured: bf16 1.2e-2, f16 1.6e-3, on values up to 2.5).
#[test]
fn bf16_and_f16_weights_stay_within_2e_2() {
    let dir = tiny_zimage().join("text_encoder");
    for dtype in [DType::BF16, DType::F16] {
        let model = Qwen3Encoder::load(&dir, Variant::Auto, dtype, &Device::Cpu).unwrap();
        for prompt in zimage_prompts() {
            let ours = model.embed(&real_ids(&prompt)).unwrap();
            let reference = &prompt.tensors[&format!("{}prompt_embeds", prompt.prefix)];
            let diff = (ours.to_dtype(DType::F32).unwrap() - reference)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff <= 2e-2, "{} {dtype:?}: max_abs {diff}", prompt.case);
        }
    }
}

/// A tokenizer folder with only `tokenizer_config.json` is refused by name.
#[test]
fn a_missing_tokenizer_json_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        tiny_zimage().join("tokenizer/tokenizer_config.json"),
        dir.path().join("tokenizer_config.json"),
    )
    .unwrap();
    let error = Qwen3Tokenizer::load(dir.path()).err().unwrap().to_string();
    assert!(error.contains("tokenizer.json"), "{error}");
}

/// A template this renderer cannot handle is refused when the tokenizer loads.
#[test]
fn an_unrenderable_chat_template_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let source = tiny_zimage().join("tokenizer");
    std::fs::copy(
        source.join("tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .unwrap();
    let config =
        r#"{"pad_token": "<|endoftext|>", "chat_template": "{{ raise_exception('no') }}"}"#;
    std::fs::write(dir.path().join("tokenizer_config.json"), config).unwrap();
    let error = Qwen3Tokenizer::load(dir.path()).err().unwrap().to_string();
    assert!(error.contains("chat template"), "{error}");
}

fn write_config(dir: &Path, json: &str) -> crate::Result<Qwen3Config> {
    let path = dir.join("config.json");
    std::fs::write(&path, json).unwrap();
    Qwen3Config::read(&path)
}

const SIZES: &str = r#""vocab_size": 10, "hidden_size": 16, "intermediate_size": 8,
    "num_hidden_layers": 3, "num_attention_heads": 4"#;

#[test]
fn configs_read_both_rope_theta_places() {
    let dir = tempfile::tempdir().unwrap();
    let json = r#""num_key_value_heads": 2, "rope_parameters": {"rope_theta": 5.0, "rope_type": "default"}"#;
    let new = write_config(dir.path(), &format!("{{{SIZES}, {json}}}")).unwrap();
    assert_eq!((new.rope_theta(), new.head_dim()), (5.0, 4));
    let json =
        r#""num_key_value_heads": 2, "rope_theta": 7.0, "rope_scaling": null, "head_dim": 8"#;
    let old = write_config(dir.path(), &format!("{{{SIZES}, {json}}}")).unwrap();
    assert_eq!((old.rope_theta(), old.head_dim()), (7.0, 8));
}

#[test]
fn a_config_the_encoder_does_not_implement_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    for (extra, expected) in [
        (r#""num_key_value_heads": 2, "hidden_act": "gelu""#, "silu"),
        (
            r#""num_key_value_heads": 2, "use_sliding_window": true"#,
            "sliding",
        ),
        (
            r#""num_key_value_heads": 2, "rope_parameters": {"rope_theta": 1.0, "rope_type": "yarn"}"#,
            "yarn",
        ),
        (r#""num_key_value_heads": 3"#, "key/value heads"),
        (r#""num_attention_heads": 2"#, "missing field"),
    ] {
        let error = write_config(dir.path(), &format!("{{{SIZES}, {extra}}}"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains(expected), "{extra}: {error:?}");
    }
}

/// Weights saved without the `model.` prefix (a `Qwen3Model` from transformers 5) load too,
/// and the last layer and final norm are never read: here they are absent.
#[test]
fn weights_without_prefix_or_last_layer_give_the_same_embedding() {
    let dir = tiny_zimage().join("text_encoder");
    let config = Qwen3Config::read(&dir.join("config.json")).unwrap();
    let last = format!("layers.{}.", config.num_hidden_layers - 1);
    let tensors: HashMap<String, Tensor> =
        candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu)
            .unwrap()
            .into_iter()
            .filter_map(|(name, tensor)| {
                let bare = name.strip_prefix("model.").unwrap_or(&name).to_string();
                let unused = bare.starts_with(&last) || bare.starts_with("norm.");
                (!unused).then_some((bare, tensor))
            })
            .collect();
    let vb = candle_nn::VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    let bare = Qwen3Encoder::new(config, vb).unwrap();
    let prefixed = Qwen3Encoder::load(&dir, Variant::Auto, DType::F32, &Device::Cpu).unwrap();
    let ids = [151644, 872, 198, 64, 8251, 151645];
    let (ours, reference) = (bare.embed(&ids).unwrap(), prefixed.embed(&ids).unwrap());
    assert_close("bare names", &ours, &reference);
}
