//! The text transformer against transformers: the tiny fixture encoders through
//! `text.rs`'s tests, and here two configurations the fixtures lack (`testdata/`, made by
//! `tools/reference/clip_text_variants.py`), weight names with and without `text_model.`,
//! and broken weight files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::ClipTextModel;
use crate::error::EngineError;
use crate::test_support::{assert_close, model_dir};
use crate::weights::Variant;

fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("src/text/clip/testdata")
        .join(name)
}

fn check_against_reference(name: &str) {
    let dir = testdata(name);
    let expected =
        candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu).unwrap();
    let model = ClipTextModel::load(&dir, Variant::Auto, DType::F32, &Device::Cpu).unwrap();
    let ids = expected["input_ids"].to_dtype(DType::U32).unwrap();
    let out = model.forward(&ids).unwrap();
    assert_close(
        &format!("{name} last_hidden_state"),
        &out.last_hidden_state,
        &expected["last_hidden_state"],
    );
    assert_close(
        &format!("{name} penultimate_hidden_state"),
        &out.penultimate_hidden_state,
        &expected["penultimate_hidden_state"],
    );
    assert_close(&format!("{name} pooled"), &out.pooled, &expected["pooled"]);
    // The penultimate state alone, and with the pooled rows through a last layer run for those
    // rows only: the same values.
    let (penultimate, none) = model.forward_penultimate(&ids, false).unwrap();
    assert!(none.is_none());
    assert_eq!(
        max_abs_diff(&penultimate, &out.penultimate_hidden_state),
        0.0
    );
    let (penultimate, pooled) = model.forward_penultimate(&ids, true).unwrap();
    assert_eq!(
        max_abs_diff(&penultimate, &out.penultimate_hidden_state),
        0.0
    );
    assert_close(
        &format!("{name} pooled rows"),
        &pooled.unwrap(),
        &expected["pooled"],
    );
}

#[test]
fn exact_gelu_projection_and_legacy_eos_match_transformers() {
    check_against_reference("gelu-legacy-eos");
    let dir = testdata("gelu-legacy-eos");
    let model = ClipTextModel::load(&dir, Variant::Auto, DType::F32, &Device::Cpu).unwrap();
    assert!(model.has_projection());
}

#[test]
fn tanh_gelu_single_layer_without_prefix_matches_transformers() {
    check_against_reference("gelu-new-one-layer");
}

fn fixture_ids() -> Tensor {
    // bos, "a photograph of an astronaut riding a horse", eos, padded with eos.
    let mut ids = vec![49406u32, 320, 8853, 539, 550, 18376, 6765, 320, 4558, 49407];
    ids.resize(77, 49407);
    Tensor::from_vec(ids, (1, 77), &Device::Cpu).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// Copy a text encoder folder with the `text_model.` prefix taken off every tensor name, as
/// newer transformers versions save a `CLIPTextModel`.
fn without_prefix(dir: &Path) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(dir.join("config.json"), tmp.path().join("config.json")).unwrap();
    let tensors =
        candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    assert!(tensors.keys().any(|k| k.starts_with("text_model.")));
    let renamed: HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(k, v)| (k.strip_prefix("text_model.").unwrap_or(&k).to_string(), v))
        .collect();
    candle_core::safetensors::save(&renamed, tmp.path().join("model.safetensors")).unwrap();
    tmp
}

#[test]
fn weights_load_with_and_without_text_model_prefix() {
    for component in ["text_encoder", "text_encoder_2"] {
        let dir = model_dir("tiny-sdxl").join(component);
        let stripped = without_prefix(&dir);
        let ids = fixture_ids();
        let a = ClipTextModel::load(&dir, Variant::Auto, DType::F32, &Device::Cpu).unwrap();
        let b =
            ClipTextModel::load(stripped.path(), Variant::Auto, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(a.has_projection(), component == "text_encoder_2");
        assert_eq!(b.has_projection(), a.has_projection());
        let (a, b) = (a.forward(&ids).unwrap(), b.forward(&ids).unwrap());
        assert_eq!(a.pooled.dims(), b.pooled.dims());
        assert_eq!(
            max_abs_diff(&a.last_hidden_state, &b.last_hidden_state),
            0.0
        );
        assert_eq!(max_abs_diff(&a.pooled, &b.pooled), 0.0);
    }
}

#[test]
fn half_precision_stays_close_to_f32() {
    let dir = model_dir("tiny-sdxl").join("text_encoder_2");
    let ids = fixture_ids();
    let full = ClipTextModel::load(&dir, Variant::Auto, DType::F32, &Device::Cpu).unwrap();
    let half = ClipTextModel::load(&dir, Variant::Auto, DType::BF16, &Device::Cpu).unwrap();
    let (full, half) = (full.forward(&ids).unwrap(), half.forward(&ids).unwrap());
    let half = half.last_hidden_state.to_dtype(DType::F32).unwrap();
    let diff = max_abs_diff(&full.last_hidden_state, &half);
    assert!(diff < 0.1, "bf16 differs by {diff}");
}

#[test]
fn too_many_tokens_is_an_error_not_a_panic() {
    let dir = model_dir("tiny-sd").join("text_encoder");
    let model = ClipTextModel::load(&dir, Variant::Auto, DType::F32, &Device::Cpu).unwrap();
    let ids = Tensor::zeros((1, 78), DType::U32, &Device::Cpu).unwrap();
    let err = model.forward(&ids).err().unwrap().to_string();
    assert!(err.contains("78 tokens"), "{err}");
}

fn weights_error(dir: &Path) -> (PathBuf, String) {
    match ClipTextModel::load(dir, Variant::Auto, DType::F32, &Device::Cpu) {
        Err(EngineError::Weights { path, message }) => (path, message),
        Err(other) => panic!("expected a weights error, got {other}"),
        Ok(_) => panic!("expected a weights error, got a model"),
    }
}

#[test]
fn broken_weights_name_the_file_and_tensor() {
    let dir = model_dir("tiny-sd").join("text_encoder");

    let truncated = tempfile::tempdir().unwrap();
    std::fs::copy(
        dir.join("config.json"),
        truncated.path().join("config.json"),
    )
    .unwrap();
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let file = truncated.path().join("model.safetensors");
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let (path, _) = weights_error(truncated.path());
    assert_eq!(path, file);

    let reshaped = tempfile::tempdir().unwrap();
    std::fs::copy(dir.join("config.json"), reshaped.path().join("config.json")).unwrap();
    let mut tensors =
        candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let name = "text_model.encoder.layers.1.mlp.fc1.weight";
    tensors.insert(
        name.into(),
        Tensor::zeros((36, 32), DType::F32, &Device::Cpu).unwrap(),
    );
    let file = reshaped.path().join("model.safetensors");
    candle_core::safetensors::save(&tensors, &file).unwrap();
    let (path, message) = weights_error(reshaped.path());
    assert_eq!(path, file);
    assert!(
        message.contains(name) && message.contains("[36, 32]"),
        "{message}"
    );

    tensors.remove(name);
    candle_core::safetensors::save(&tensors, &file).unwrap();
    let (_, message) = weights_error(reshaped.path());
    assert!(
        message.contains("missing tensor") && message.contains(name),
        "{message}"
    );
}

#[test]
fn bad_config_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    for (json, needle) in [
        (
            r#"{"hidden_size": 30, "num_attention_heads": 4}"#,
            "divisible",
        ),
        (r#"{"hidden_act": "mystery"}"#, "mystery"),
        (r#"{"eos_token_id": [1, 2]}"#, "eos_token_id"),
    ] {
        std::fs::write(&config, json).unwrap();
        let err = ClipTextModel::load(dir.path(), Variant::Auto, DType::F32, &Device::Cpu)
            .err()
            .unwrap();
        assert!(matches!(err, EngineError::Config { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("config.json") && text.contains(needle),
            "{text}"
        );
    }
}

#[test]
fn activations_match_transformers_act2fn() {
    use super::Activation;
    let x = Tensor::new(&[-3.0f32, -1.0, -0.25, 0.0, 0.5, 1.0, 2.5], &Device::Cpu).unwrap();
    // transformers.activations.ACT2FN[name](x), rounded to 7 digits.
    let cases: [(Activation, [f32; 7]); 5] = [
        (
            Activation::QuickGelu,
            [
                -0.0180713, -0.1542042, -0.0988003, 0.0, 0.3503884, 0.8457958, 2.465014,
            ],
        ),
        (
            Activation::GeluErf,
            [
                -0.0040502, -0.1586553, -0.1003234, 0.0, 0.3457312, 0.8413447, 2.4844759,
            ],
        ),
        (
            Activation::GeluTanh,
            [
                -0.0036374, -0.158808, -0.1003246, 0.0, 0.345714, 0.841192, 2.4849157,
            ],
        ),
        (Activation::Relu, [0.0, 0.0, 0.0, 0.0, 0.5, 1.0, 2.5]),
        (
            Activation::Silu,
            [
                -0.1422776, -0.2689414, -0.1094559, 0.0, 0.3112297, 0.7310586, 2.3103545,
            ],
        ),
    ];
    for (activation, expected) in cases {
        let got = activation.apply_as(&x, false).unwrap().to_tensor().unwrap();
        let got = got.to_vec1::<f32>().unwrap();
        for (g, e) in got.iter().zip(expected) {
            assert!(
                (g - e).abs() < 2e-6,
                "{activation:?}: {got:?} vs {expected:?}"
            );
        }
    }
}
