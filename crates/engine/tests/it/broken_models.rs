//! A broken model folder is an error that names the file (and tensor), never a panic.

use std::fs;

use seedbed_engine::{EngineError, LoadOptions, Pipeline};

use crate::copy_model;

fn load_error(dir: &std::path::Path) -> EngineError {
    match Pipeline::load(dir, LoadOptions::default()) {
        Ok(_) => panic!("{} loaded although broken", dir.display()),
        Err(e) => e,
    }
}

#[test]
fn missing_folder_and_index() {
    let tmp = tempfile::tempdir().unwrap();
    let err = load_error(&tmp.path().join("nope"));
    assert!(matches!(err, EngineError::MissingFile { .. }), "{err}");
    assert!(err.to_string().contains("model_index.json"), "{err}");
}

#[test]
fn unknown_pipeline_class() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_model("tiny-sd", tmp.path());
    let index = dir.join("model_index.json");
    let text = fs::read_to_string(&index)
        .unwrap()
        .replace("StableDiffusionPipeline", "FluxPipeline");
    fs::write(&index, text).unwrap();
    let err = load_error(&dir);
    assert!(
        matches!(err, EngineError::UnsupportedPipeline { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("FluxPipeline"), "{err}");
}

#[test]
fn truncated_weights_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_model("tiny-sd", tmp.path());
    let weights = dir.join("unet/diffusion_pytorch_model.safetensors");
    let bytes = fs::read(&weights).unwrap();
    fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_error(&dir);
    assert!(matches!(err, EngineError::Weights { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("unet/diffusion_pytorch_model.safetensors"),
        "{err}"
    );
}

#[test]
fn wrong_shape_names_the_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_model("tiny-sd", tmp.path());
    // The weights were made for 32-channel normalisation groups; the config now claims another layout.
    let config = dir.join("vae/config.json");
    let text = fs::read_to_string(&config)
        .unwrap()
        .replace("\"latent_channels\": 4", "\"latent_channels\": 8");
    fs::write(&config, text).unwrap();
    let err = load_error(&dir);
    let msg = err.to_string();
    assert!(matches!(err, EngineError::Weights { .. }), "{msg}");
    assert!(
        msg.contains("vae/diffusion_pytorch_model.safetensors") && msg.contains("tensor `"),
        "{msg}"
    );
}

#[test]
fn missing_component_and_tokenizer() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_model("tiny-sd", tmp.path());
    fs::remove_dir_all(dir.join("unet")).unwrap();
    let err = load_error(&dir);
    assert!(err.to_string().contains("unet"), "{err}");

    let dir = copy_model("tiny-sdxl", &tmp.path().join("xl"));
    fs::remove_dir_all(dir.join("tokenizer_2")).unwrap();
    let err = load_error(&dir);
    assert!(err.to_string().contains("tokenizer_2"), "{err}");
}

#[test]
fn fp16_variant_files_load() {
    use seedbed_engine::candle::{DType, Device};
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_model("tiny-sd", tmp.path());
    // Re-save the UNet as an f16 `.fp16` variant only, as fp16-only downloads ship it.
    let plain = dir.join("unet/diffusion_pytorch_model.safetensors");
    let tensors = seedbed_engine::candle::safetensors::load(&plain, &Device::Cpu).unwrap();
    let half: std::collections::HashMap<_, _> = tensors
        .into_iter()
        .map(|(k, v)| (k, v.to_dtype(DType::F16).unwrap()))
        .collect();
    seedbed_engine::candle::safetensors::save(
        &half,
        dir.join("unet/diffusion_pytorch_model.fp16.safetensors"),
    )
    .unwrap();
    fs::remove_file(&plain).unwrap();
    let pipeline = Pipeline::load(&dir, LoadOptions::default()).unwrap();
    assert_eq!(pipeline.native_size(), 64);
}
