//! A broken model folder is an error that names the file (and tensor), never a panic.

use std::fs;

use seedbed_engine::{EngineError, LoadOptions, Pipeline};

use super::copy_model;

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
        .replace("StableDiffusionPipeline", "WanPipeline");
    fs::write(&index, text).unwrap();
    let err = load_error(&dir);
    assert!(
        matches!(err, EngineError::UnsupportedPipeline { .. }),
        "{err}"
    );
    // The error names the class and what is supported instead.
    let message = err.to_string();
    for class in ["WanPipeline", "StableDiffusionXLPipeline", "FluxPipeline"] {
        assert!(message.contains(class), "{message}");
    }
}

/// A class the engine runs, over components of another family: the missing file is named.
#[test]
fn class_and_components_that_disagree() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_model("tiny-sd", tmp.path());
    let index = dir.join("model_index.json");
    let text = fs::read_to_string(&index)
        .unwrap()
        .replace("StableDiffusionPipeline", "FluxPipeline");
    fs::write(&index, text).unwrap();
    let err = load_error(&dir);
    assert!(matches!(err, EngineError::MissingFile { .. }), "{err}");
    assert!(err.to_string().contains("transformer"), "{err}");
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

/// Re-save a component's weights in `dtype` under `name`, removing the original file.
fn resave(
    dir: &std::path::Path,
    component: &str,
    from: &str,
    to: &str,
    dtype: seedbed_engine::candle::DType,
) {
    use seedbed_engine::candle::{Device, safetensors};
    let plain = dir.join(component).join(from);
    let tensors = safetensors::load(&plain, &Device::Cpu).unwrap();
    let converted: std::collections::HashMap<_, _> = tensors
        .into_iter()
        .map(|(k, v)| (k, v.to_dtype(dtype).unwrap()))
        .collect();
    fs::remove_file(&plain).unwrap();
    safetensors::save(&converted, dir.join(component).join(to)).unwrap();
}

/// fp16-only downloads ship `.fp16` variant files; bf16 checkpoints exist too. Both load into
/// an f32 pipeline and still produce a picture.
#[test]
fn fp16_variant_and_bf16_files_load() {
    use seedbed_engine::candle::DType;
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_model("tiny-sd", tmp.path());
    let unet = "diffusion_pytorch_model.safetensors";
    resave(
        &dir,
        "unet",
        unet,
        "diffusion_pytorch_model.fp16.safetensors",
        DType::F16,
    );
    resave(&dir, "vae", unet, unet, DType::BF16);
    resave(
        &dir,
        "text_encoder",
        "model.safetensors",
        "model.fp16.safetensors",
        DType::F16,
    );
    let pipeline = seedbed_engine::sd::SdPipeline::load(&dir, LoadOptions::default()).unwrap();
    let prompts = pipeline.encode_prompts("a fox", None, 0.0).unwrap();
    assert_eq!(prompts.cond.embeds.dims(), &[1, 77, 32]);
}

/// Large checkpoints are split into shards listed in an `.index.json`.
#[test]
fn sharded_weights_load() {
    use seedbed_engine::candle::{Device, safetensors};
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_model("tiny-sd", tmp.path());
    let plain = dir.join("unet/diffusion_pytorch_model.safetensors");
    let tensors = safetensors::load(&plain, &Device::Cpu).unwrap();
    let mut names: Vec<_> = tensors.keys().cloned().collect();
    names.sort();
    let (first, second) = names.split_at(names.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (shard, part) in [
        ("part-1.safetensors", first),
        ("part-2.safetensors", second),
    ] {
        let subset: std::collections::HashMap<_, _> = part
            .iter()
            .map(|n| (n.clone(), tensors[n].clone()))
            .collect();
        safetensors::save(&subset, dir.join("unet").join(shard)).unwrap();
        for name in part {
            weight_map.insert(name.clone(), shard.into());
        }
    }
    fs::remove_file(&plain).unwrap();
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    fs::write(
        dir.join("unet/diffusion_pytorch_model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    assert!(Pipeline::load(&dir, LoadOptions::default()).is_ok());

    fs::remove_file(dir.join("unet/part-2.safetensors")).unwrap();
    let err = load_error(&dir);
    assert!(err.to_string().contains("part-2.safetensors"), "{err}");
}

#[test]
fn pickle_weights_are_refused_with_advice() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_model("tiny-sd", tmp.path());
    fs::rename(
        dir.join("unet/diffusion_pytorch_model.safetensors"),
        dir.join("unet/diffusion_pytorch_model.bin"),
    )
    .unwrap();
    let msg = load_error(&dir).to_string();
    assert!(
        msg.contains("diffusion_pytorch_model.bin") && msg.contains("safetensors"),
        "{msg}"
    );
}
