//! Single-file checkpoints: the tiny fixtures written in the original layout by
//! tools/checkpoints/sd_to_single_file.py (an independent reading of the layout) must give the
//! engine the very tensors, and so the very images, of their diffusers folders.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use seedbed_engine::candle::{DType, Device};
use seedbed_engine::checkpoint::{ModelFormat, describe};
use seedbed_engine::model::ModelSummary;
use seedbed_engine::weights::{NameScheme, Variant, WeightFiles};
use seedbed_engine::{EngineError, GenerateRequest, InitImage, LoadOptions, Pipeline};

use super::{fixtures, models};

fn checkpoint(name: &str) -> PathBuf {
    fixtures()
        .join("single-file")
        .join(format!("{name}.safetensors"))
}

/// `NAME.json` beside the model file `model`.
fn write_sidecar(model: &Path, json: &serde_json::Value) {
    std::fs::write(model.with_extension("json"), json.to_string()).unwrap();
}

/// `fixtures/single-file/FIXTURE` copied into `dir` as `name`, with tiny-flux-dev's folder as
/// its base.
fn flux_file_in(dir: &Path, fixture: &str, name: &str) -> PathBuf {
    let file = dir.join(name);
    std::fs::copy(fixtures().join("single-file").join(fixture), &file).unwrap();
    let base = super::dit_models().join("tiny-flux-dev");
    write_sidecar(&file, &serde_json::json!({ "base": base }));
    file
}

/// The largest difference between two images' pixels, out of 255.
fn most_off(a: &[u8], b: &[u8]) -> u8 {
    a.iter().zip(b).map(|(x, y)| x.abs_diff(*y)).max().unwrap()
}

fn request(init: bool) -> GenerateRequest {
    GenerateRequest {
        prompt: "a lighthouse at dusk".into(),
        negative_prompt: Some("fog".into()),
        width: 64,
        height: 48,
        steps: 3,
        guidance_scale: 5.0,
        scheduler: None,
        karras_sigmas: false,
        true_cfg_scale: None,
        seed: 5,
        count: 1,
        init_image: init.then(|| InitImage {
            image: image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(64, 48, |x, y| {
                image::Rgb([x as u8 * 4, y as u8 * 5, 90])
            })),
            strength: 0.6,
        }),
    }
}

fn generate(path: &Path, request: &GenerateRequest) -> Vec<u8> {
    paint(path, request, &[])
}

/// The pixels of the model at `path` for `request`, with `loras` (fixtures/loras, scale 0.8).
fn paint(path: &Path, request: &GenerateRequest, loras: &[&str]) -> Vec<u8> {
    let pipeline = Pipeline::load(path, LoadOptions::default()).unwrap();
    let choices: Vec<_> = loras
        .iter()
        .map(|lora| seedbed_engine::lora::LoraChoice {
            name: lora.to_string(),
            path: fixtures().join("loras").join(format!("{lora}.safetensors")),
            scale: 0.8,
        })
        .collect();
    let images = pipeline
        .generate_with_loras(request, &choices, &mut |_| {}, &AtomicBool::new(false))
        .unwrap();
    images
        .into_iter()
        .flat_map(|g| g.image.into_raw())
        .collect()
}

#[test]
fn checkpoints_give_the_images_of_their_folders() {
    for model in ["tiny-sd", "tiny-sdxl"] {
        for init in [false, true] {
            let folder = generate(&models().join(model), &request(init));
            let file = generate(&checkpoint(model), &request(init));
            assert!(folder == file, "{model} (image-to-image: {init}) differs");
        }
    }
}

/// Every tensor each component reads from the folder, read from the checkpoint instead:
/// the same names, bit for bit.
#[test]
fn checkpoints_hold_every_tensor_of_their_folders() {
    for model in ["tiny-sd", "tiny-sdxl"] {
        let described = describe(&checkpoint(model)).unwrap();
        let components: &[&str] = match model {
            "tiny-sd" => &["unet", "vae", "text_encoder"],
            _ => &["unet", "vae", "text_encoder", "text_encoder_2"],
        };
        for component in components {
            let folder = models().join(model).join(component);
            let names = NameScheme::OptionalTextModelPrefix;
            let theirs = WeightFiles::open(&folder, Variant::Auto, names).unwrap();
            let ours =
                WeightFiles::open(&described.dir().join(component), Variant::Auto, names).unwrap();
            let mut checked = 0;
            for name in theirs.names() {
                let a = theirs.tensor(&name, DType::F32, &Device::Cpu).unwrap();
                let b = ours
                    .tensor(&name, DType::F32, &Device::Cpu)
                    .unwrap_or_else(|e| panic!("{model}/{component}: {e}"));
                let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                assert!(a == b, "{model}/{component}: {name} differs");
                checked += 1;
            }
            assert!(checked > 10, "{model}/{component}: {checked} tensors");
        }
    }
}

/// Without its `.json` naming the folder, a checkpoint is read from its tensors alone, with
/// the built-in CLIP tokenizer: no folder needed.
#[test]
fn a_checkpoint_alone_loads_with_inferred_configs() {
    let dir = tempfile::tempdir().unwrap();
    for model in ["tiny-sd", "tiny-sdxl"] {
        let alone = dir.path().join(format!("{model}.safetensors"));
        std::fs::copy(checkpoint(model), &alone).unwrap();
        let summary = ModelSummary::read(&alone).unwrap();
        assert_eq!(summary.format, ModelFormat::SingleFile);
        assert_eq!(
            summary.weights_bytes,
            std::fs::metadata(&alone).unwrap().len()
        );
        let pixels = generate(&alone, &request(false));
        assert_eq!(pixels.len(), 64 * 48 * 3, "{model}");
    }
}

fn load_error(path: &Path) -> String {
    match Pipeline::load(path, LoadOptions::default()) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(error) => {
            assert!(
                matches!(
                    error,
                    EngineError::Weights { .. } | EngineError::MissingFile { .. }
                ),
                "{error:?}"
            );
            error.to_string()
        }
    }
}

#[test]
fn wrong_files_are_refused_with_what_was_expected() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(checkpoint("tiny-sd")).unwrap();
    let truncated = dir.path().join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() - 1000]).unwrap();
    let message = load_error(&truncated);
    assert!(
        message.contains("truncated.safetensors") && message.contains("truncated"),
        "{message}"
    );

    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(
        &garbage,
        b"\xff\xff\xff\xff\xff\xff\xff\x7fnot a checkpoint",
    )
    .unwrap();
    assert!(load_error(&garbage).contains("not a safetensors file"));

    let vae_only = dir.path().join("vae.safetensors");
    write_header_only(&vae_only, &[("encoder.conv_in.weight", vec![128, 3, 3, 3])]);
    let message = load_error(&vae_only);
    assert!(
        message.contains("model.diffusion_model.input_blocks"),
        "{message}"
    );

    let lora = dir.path().join("style.safetensors");
    write_header_only(
        &lora,
        &[(
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight",
            vec![4, 32],
        )],
    );
    assert!(load_error(&lora).contains("--loras-dir"));

    // A checkpoint whose `.json` names a folder that is not there.
    let orphan = dir.path().join("orphan.safetensors");
    std::fs::copy(checkpoint("tiny-sd"), &orphan).unwrap();
    std::fs::write(
        dir.path().join("orphan.json"),
        r#"{"base": "no-such-folder"}"#,
    )
    .unwrap();
    assert!(load_error(&orphan).contains("no-such-folder"));
}

/// A safetensors file with the header of `tensors` (f16) and no data: sparse, so even
/// SDXL's 5 GB take no disk.
fn write_header_only(path: &Path, tensors: &[(&str, Vec<usize>)]) {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, shape) in tensors {
        let bytes = shape.iter().product::<usize>() * 2;
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": "F16", "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let header = serde_json::to_vec(&header).unwrap();
    let mut file = std::fs::File::create(path).unwrap();
    file.write_all(&(header.len() as u64).to_le_bytes())
        .unwrap();
    file.write_all(&header).unwrap();
    file.set_len((8 + header.len() + offset) as u64).unwrap();
}

/// Real SD 1.5, SD 2.1 (768-v) and SDXL checkpoints' names and shapes (made on the meta device
/// by the converter script), with the diffusers configs they came from: the configs inferred
/// from the tensors must be those.
#[test]
fn configs_inferred_from_real_checkpoint_layouts_are_the_real_ones() {
    let dir = tempfile::tempdir().unwrap();
    for model in ["sd15", "sd21-v", "sdxl"] {
        let path = fixtures().join(format!("single-file/real-shapes/{model}.json"));
        let real: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        let shapes: BTreeMap<String, Vec<usize>> =
            serde_json::from_value(real["shapes"].clone()).unwrap();
        let tensors: Vec<(&str, Vec<usize>)> = shapes
            .iter()
            .map(|(n, s)| (n.as_str(), s.clone()))
            .collect();
        let file = dir.path().join(format!("{model}.safetensors"));
        write_header_only(&file, &tensors);
        if model == "sd21-v" {
            std::fs::write(
                file.with_extension("yaml"),
                "model:\n  params:\n    parameterization: \"v\"\n",
            )
            .unwrap();
        }
        let described = describe(&file).unwrap();
        for (component, keys) in [
            (
                "unet",
                &[
                    "block_out_channels",
                    "layers_per_block",
                    "attention_head_dim",
                    "cross_attention_dim",
                    "use_linear_projection",
                    "in_channels",
                    "out_channels",
                    "down_block_types",
                    "up_block_types",
                    "sample_size",
                    "addition_embed_type",
                    "addition_time_embed_dim",
                    "projection_class_embeddings_input_dim",
                ][..],
            ),
            (
                "vae",
                &[
                    "block_out_channels",
                    "layers_per_block",
                    "latent_channels",
                    "scaling_factor",
                    "sample_size",
                    "in_channels",
                    "out_channels",
                ][..],
            ),
            (
                "text_encoder",
                &[
                    "hidden_size",
                    "intermediate_size",
                    "num_attention_heads",
                    "num_hidden_layers",
                    "hidden_act",
                    "max_position_embeddings",
                    "vocab_size",
                ][..],
            ),
            (
                "text_encoder_2",
                &[
                    "hidden_size",
                    "intermediate_size",
                    "num_attention_heads",
                    "num_hidden_layers",
                    "hidden_act",
                    "projection_dim",
                ][..],
            ),
        ] {
            let Some(expected) = real["configs"].get(component) else {
                continue;
            };
            let config: serde_json::Value = serde_json::from_slice(
                &std::fs::read(described.dir().join(component).join("config.json")).unwrap(),
            )
            .unwrap();
            for key in keys {
                let want = &expected[*key];
                let per_block = |v: &serde_json::Value| match v {
                    serde_json::Value::Number(_) if key.ends_with("head_dim") => {
                        serde_json::json!(vec![
                            v.clone();
                            expected["block_out_channels"]
                                .as_array()
                                .unwrap()
                                .len()
                        ])
                    }
                    other => other.clone(),
                };
                assert_eq!(
                    per_block(&config[*key]),
                    per_block(want),
                    "{model} {component}.{key}"
                );
            }
            if component == "unet" && expected["transformer_layers_per_block"].is_array() {
                assert_eq!(
                    config["transformer_layers_per_block"],
                    expected["transformer_layers_per_block"]
                );
            }
        }
        let scheduler =
            std::fs::read_to_string(described.dir().join("scheduler/scheduler_config.json"))
                .unwrap();
        let v = model == "sd21-v";
        assert_eq!(
            scheduler.contains("v_prediction"),
            v,
            "{model}: {scheduler}"
        );
    }
}

/// The tensors of `checkpoint` under `prefix`, without it, saved as a file of their own (as
/// `vae-ft-mse-840000-ema-pruned.safetensors` is SD's VAE alone).
fn extract(checkpoint: &Path, prefix: &str, to: &Path) {
    let tensors = seedbed_engine::candle::safetensors::load(checkpoint, &Device::Cpu).unwrap();
    let part: std::collections::HashMap<String, _> = tensors
        .into_iter()
        .filter_map(|(name, t)| Some((name.strip_prefix(prefix)?.to_string(), t)))
        .collect();
    seedbed_engine::candle::safetensors::save(&part, to).unwrap();
}

/// Components named as files of their own in `NAME.json`: a VAE in the original layout and
/// in diffusers', a CLIP text encoder in Hugging Face's.
#[test]
fn components_from_files_of_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let folder = models().join("tiny-sd");
    let ldm_vae = dir.path().join("vae-ldm.safetensors");
    extract(&checkpoint("tiny-sd"), "first_stage_model.", &ldm_vae);
    let file = dir.path().join("model.safetensors");
    std::fs::copy(checkpoint("tiny-sd"), &file).unwrap();
    let expected = generate(&folder, &request(true));
    for vae in [
        ldm_vae.clone(),
        folder.join("vae/diffusion_pytorch_model.safetensors"),
    ] {
        let sidecar = serde_json::json!({
            "base": folder,
            "vae": vae,
            "text_encoder": folder.join("text_encoder/model.safetensors"),
        });
        write_sidecar(&file, &sidecar);
        assert!(
            generate(&file, &request(true)) == expected,
            "{}",
            vae.display()
        );
    }

    // Without a base, their configs come from their tensors: all of a VAE's, and all of a
    // text encoder's but the head count.
    let sidecar = serde_json::json!({
        "vae": ldm_vae,
        "text_encoder": folder.join("text_encoder/model.safetensors"),
    });
    write_sidecar(&file, &sidecar);
    let described = describe(&file).unwrap();
    let read = |dir: &Path, component: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(dir.join(component).join("config.json")).unwrap())
            .unwrap()
    };
    for (component, keys) in [
        (
            "vae",
            &[
                "block_out_channels",
                "layers_per_block",
                "latent_channels",
                "in_channels",
                "out_channels",
                "use_quant_conv",
                "use_post_quant_conv",
                "scaling_factor",
            ][..],
        ),
        (
            "text_encoder",
            &[
                "hidden_size",
                "intermediate_size",
                "num_hidden_layers",
                "vocab_size",
                "max_position_embeddings",
                "hidden_act",
            ][..],
        ),
    ] {
        let (ours, theirs) = (read(described.dir(), component), read(&folder, component));
        for key in keys {
            assert_eq!(ours[*key], theirs[*key], "{component}.{key}");
        }
    }
    let bytes = |path: &Path| std::fs::metadata(path).unwrap().len();
    let text = folder.join("text_encoder/model.safetensors");
    assert_eq!(
        described.weights_bytes,
        bytes(&file) + bytes(&ldm_vae) + bytes(&text)
    );

    // A file that is no VAE, named as one.
    let wrong = serde_json::json!({"vae": folder.join("text_encoder/model.safetensors")});
    write_sidecar(&file, &wrong);
    let message = load_error(&file);
    assert!(
        message.contains("model.safetensors") && message.contains("autoencoder"),
        "{message}"
    );
}

/// T5 as ComfyUI users keep it (`t5xxl_fp16.safetensors`): every size, the head count
/// included, comes from the tensors.
#[test]
fn a_t5_files_config_is_read_from_its_tensors() {
    use seedbed_engine::checkpoint::{component_file, read_shapes};
    let folder = super::dit_models().join("tiny-flux-dev/text_encoder_2");
    let shapes = read_shapes(&folder.join("model.safetensors")).unwrap();
    let (_, ours) = component_file::read(
        &shapes,
        component_file::Role::TextEncoder { clip_act: "gelu" },
    )
    .unwrap();
    let theirs: serde_json::Value =
        serde_json::from_slice(&std::fs::read(folder.join("config.json")).unwrap()).unwrap();
    for key in [
        "vocab_size",
        "d_model",
        "d_kv",
        "d_ff",
        "num_layers",
        "num_heads",
        "relative_attention_num_buckets",
        "feed_forward_proj",
        "is_gated_act",
    ] {
        assert_eq!(ours[key], theirs[key], "{key}");
    }
}

fn flux_request() -> GenerateRequest {
    GenerateRequest {
        steps: 2,
        guidance_scale: 3.5,
        width: 64,
        height: 64,
        negative_prompt: None,
        ..request(false)
    }
}

/// FLUX.1 [dev]'s transformer in BFL's layout (tools/checkpoints/flux_to_bfl.py), beside its
/// components as files of their own or a base folder, safetensors or GGUF.
#[test]
fn a_flux_transformer_file_with_its_components() {
    let dir = tempfile::tempdir().unwrap();
    let folder = super::dit_models().join("tiny-flux-dev");
    let file = dir.path().join("flux1-dev.safetensors");
    std::fs::copy(
        fixtures().join("single-file/tiny-flux-dev-bfl.safetensors"),
        &file,
    )
    .unwrap();
    let expected = generate(&folder, &flux_request());

    // Without `NAME.json` the file alone is not a pipeline: the error says what to add.
    let message = load_error(&file);
    assert!(
        message.contains("text_encoder") && message.contains("flux1-dev.json"),
        "{message}"
    );

    let components = serde_json::json!({
        "text_encoder": folder.join("text_encoder/model.safetensors"),
        "text_encoder_2": folder.join("text_encoder_2/model.safetensors"),
        "vae": folder.join("vae/diffusion_pytorch_model.safetensors"),
    });
    let mut with_base = components.clone();
    with_base["base"] = serde_json::json!(folder);
    for sidecar in [serde_json::json!({"base": folder}), with_base] {
        write_sidecar(&file, &sidecar);
        assert!(generate(&file, &flux_request()) == expected, "{sidecar}");
    }

    // The component files alone: configs from their tensors, tokenizers built in.
    write_sidecar(&file, &components);
    let summary = ModelSummary::read(&file).unwrap();
    assert_eq!(summary.family, seedbed_engine::model::Family::Flux);
    assert_eq!(generate(&file, &flux_request()).len(), 64 * 64 * 3);

    // The same transformer as a community-style GGUF file at q8_0.
    use seedbed_engine::candle::quantized::GgmlDType;
    let tensors = seedbed_engine::candle::safetensors::load(&file, &Device::Cpu).unwrap();
    let tensors: Vec<(String, _)> = tensors.into_iter().collect();
    let quantized = dir.path().join("flux1-dev-Q8_0.gguf");
    seedbed_engine::checkpoint::gguf::write(&quantized, &tensors, GgmlDType::Q8_0).unwrap();
    write_sidecar(&quantized, &serde_json::json!({"base": folder}));
    let summary = ModelSummary::read(&quantized).unwrap();
    assert_eq!(
        summary.format,
        ModelFormat::Gguf {
            quant: "q8_0".into()
        }
    );
    assert_eq!(summary.format.to_string(), "gguf q8_0");
    let pixels = generate(&quantized, &flux_request());
    let worst = most_off(&pixels, &expected);
    eprintln!("tiny FLUX transformer as gguf q8_0: at most {worst}/255 off the f32 image");
    // Measured: 1.
    assert!(worst <= 3, "q8_0 is {worst}/255 off the f32 image");
}

/// An SD UNet alone, as city96's GGUF UNets come (original names, no prefix), at each
/// community type, beside a base folder for the rest; and the same UNet as safetensors, which
/// must give the folder's very image.
#[test]
fn an_sd_unet_alone_as_safetensors_and_gguf() {
    use seedbed_engine::candle::quantized::GgmlDType;
    let dir = tempfile::tempdir().unwrap();
    let folder = models().join("tiny-sd");
    let expected = generate(&folder, &request(false));
    let unet = dir.path().join("unet.safetensors");
    extract(&checkpoint("tiny-sd"), "model.diffusion_model.", &unet);
    let base = serde_json::json!({"base": folder});
    write_sidecar(&unet, &base);
    assert!(generate(&unet, &request(false)) == expected);

    let tensors = seedbed_engine::candle::safetensors::load(&unet, &Device::Cpu).unwrap();
    let tensors: Vec<(String, _)> = tensors.into_iter().collect();
    for (dtype, name, worst_allowed) in [
        // Measured: 1, 1 and 2.
        (GgmlDType::F16, "f16", 1),
        (GgmlDType::Q8_0, "q8_0", 3),
        (GgmlDType::Q4_0, "q4_0", 8),
    ] {
        let path = dir.path().join(format!("unet-{name}.gguf"));
        seedbed_engine::checkpoint::gguf::write(&path, &tensors, dtype).unwrap();
        write_sidecar(&path, &base);
        let summary = ModelSummary::read(&path).unwrap();
        assert_eq!(summary.format.to_string(), format!("gguf {name}"));
        let pixels = generate(&path, &request(false));
        let worst = most_off(&pixels, &expected);
        eprintln!("tiny-sd UNet as gguf {name}: at most {worst}/255 off the f32 image");
        assert!(
            worst <= worst_allowed,
            "{name}: {worst}/255 off the f32 image"
        );
    }
}

/// Kohya's SDXL LoRAs name the UNet's layers as the original SGM checkpoints do
/// (tools/lora/kohya_sdxl_from_peft.py renamed tiny-sdxl's PEFT LoRA, and diffusers paints the
/// same picture from both): the engine reads them as the same LoRA.
#[test]
fn a_kohya_sdxl_lora_in_original_names_is_its_peft_twin() {
    let folder = models().join("tiny-sdxl");
    let peft = generate_with(&folder, &request(false), "tiny-sdxl-peft");
    let kohya = generate_with(&folder, &request(false), "tiny-sdxl-kohya");
    assert!(peft == kohya);
    assert!(
        peft != generate(&folder, &request(false)),
        "the LoRA changed nothing"
    );
    // And on the SDXL checkpoint, whose UNet is stored under those very names: the same
    // picture to the last bit of rounding. The checkpoint's layers do not reach the kernels
    // bit for bit as the folder's with a LoRA merged (its text encoders come in OpenCLIP's
    // layout): a change in the convolutions' rounding alone moved one pixel in 9216 by one
    // level, where the LoRA moves 8291 by up to 24.
    let on_checkpoint = generate_with(&checkpoint("tiny-sdxl"), &request(false), "tiny-sdxl-kohya");
    assert!(
        most_off(&on_checkpoint, &peft) <= 1,
        "{}/255 off",
        most_off(&on_checkpoint, &peft)
    );
    assert_eq!(
        on_checkpoint,
        generate_with(&checkpoint("tiny-sdxl"), &request(false), "tiny-sdxl-peft"),
        "the two names of the LoRA differ on the checkpoint"
    );
}

/// Kohya's FLUX LoRAs name the transformer's layers as BFL's checkpoints do, with q, k and v
/// (and a single block's MLP input) fused (tools/lora/kohya_flux_from_peft.py fused tiny-flux-dev's
/// PEFT LoRA as sd-scripts saves split q/k/v, and diffusers paints the same picture from both):
/// the engine reads them as the same LoRA, on the diffusers folder, the BFL checkpoint and GGUF.
#[test]
fn a_kohya_flux_lora_in_bfl_names_is_its_peft_twin() {
    let folder = super::dit_models().join("tiny-flux-dev");
    let peft = generate_with(&folder, &flux_request(), "tiny-flux-dev-peft");
    let kohya = generate_with(&folder, &flux_request(), "tiny-flux-dev-kohya");
    assert!(peft == kohya, "{}/255 off", most_off(&peft, &kohya));
    assert!(
        peft != generate(&folder, &flux_request()),
        "the LoRA changed nothing"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = flux_file_in(
        dir.path(),
        "tiny-flux-dev-bfl.safetensors",
        "flux1-dev.safetensors",
    );
    assert!(generate_with(&file, &flux_request(), "tiny-flux-dev-kohya") == peft);
    // And on a GGUF transformer, whose quantized layers take the change merged into their
    // dequantized weights: the same picture as its PEFT twin there.
    let quantized = flux_file_in(dir.path(), "tiny-flux-dev-q8_0.gguf", "flux.gguf");
    assert!(
        generate_with(&quantized, &flux_request(), "tiny-flux-dev-kohya")
            == generate_with(&quantized, &flux_request(), "tiny-flux-dev-peft")
    );
}

fn generate_with(path: &Path, request: &GenerateRequest, lora: &str) -> Vec<u8> {
    paint(path, request, &[lora])
}

/// A LoRA changes a checkpoint as it changes its folder, and a GGUF transformer's quantized
/// layers as it changes their dense weights (merged into the dequantized ones).
#[test]
fn loras_apply_to_checkpoints_and_quantized_layers() {
    let plain = generate(&checkpoint("tiny-sd"), &request(false));
    let folder = generate_with(&models().join("tiny-sd"), &request(false), "tiny-sd-peft");
    let file = generate_with(&checkpoint("tiny-sd"), &request(false), "tiny-sd-peft");
    assert!(folder == file);
    assert!(file != plain, "the LoRA changed nothing");
    let lora = fixtures().join("loras/tiny-sd-kohya.safetensors");
    seedbed_engine::lora::check(&checkpoint("tiny-sd"), &lora).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let flux = super::dit_models().join("tiny-flux-dev");
    let quantized = flux_file_in(dir.path(), "tiny-flux-dev-q8_0.gguf", "flux.gguf");
    let dense = generate_with(&flux, &flux_request(), "tiny-flux-dev-peft");
    let with_lora = generate_with(&quantized, &flux_request(), "tiny-flux-dev-peft");
    let without = generate(&quantized, &flux_request());
    assert!(
        with_lora != without,
        "the LoRA changed nothing on quantized layers"
    );
    assert!(
        most_off(&with_lora, &dense) <= 3,
        "{}",
        most_off(&with_lora, &dense)
    );
}
