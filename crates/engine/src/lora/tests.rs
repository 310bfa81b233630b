use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use super::*;
use crate::test_support::{dit_model_dir, fixtures_dir, model_dir};

fn lora(name: &str) -> PathBuf {
    fixtures_dir().join("loras").join(name)
}

/// A safetensors file of zero tensors with these names and shapes, in a temporary folder.
fn file_with(names: &[(&str, &[usize])]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("made.safetensors");
    let tensors: std::collections::HashMap<String, Tensor> = names
        .iter()
        .map(|(name, shape)| {
            (
                name.to_string(),
                Tensor::zeros(*shape, DType::F32, &Device::Cpu).unwrap(),
            )
        })
        .collect();
    candle_core::safetensors::save(&tensors, &path).unwrap();
    (dir, path)
}

fn message(error: EngineError) -> String {
    match error {
        EngineError::InvalidInput { field, message } => {
            assert_eq!(field, "loras");
            message
        }
        other => panic!("not an invalid `loras`: {other}"),
    }
}

#[test]
fn peft_and_kohya_files_bind_to_every_module_they_name() {
    let peft = check(&model_dir("tiny-sd"), &lora("tiny-sd-peft.safetensors")).unwrap();
    let kohya = check(&model_dir("tiny-sd"), &lora("tiny-sd-kohya.safetensors")).unwrap();
    assert_eq!(peft.layout, Layout::Peft);
    assert_eq!(kohya.layout, Layout::Kohya);
    // The same modules, named two ways: the UNet's attention, projections and feed-forward
    // layers and the text encoder's attention and MLP.
    assert_eq!(peft.layers, kohya.layers);
    assert!(peft.layers > 20, "{peft:?}");
    let sdxl = check(&model_dir("tiny-sdxl"), &lora("tiny-sdxl-peft.safetensors")).unwrap();
    assert_eq!(sdxl.layout, Layout::Peft);
}

#[test]
fn a_lora_for_another_model_is_refused_with_what_the_model_has() {
    let error =
        message(check(&model_dir("tiny-sd"), &lora("tiny-sdxl-peft.safetensors")).unwrap_err());
    assert!(error.starts_with("tiny-sdxl-peft.safetensors: "), "{error}");
    assert!(
        error.contains("fit no layer of this model") || error.contains("a LoRA for another model"),
        "{error}"
    );
}

#[test]
fn a_file_in_no_layout_is_refused_naming_the_layouts() {
    let (_dir, path) = file_with(&[("model.diffusion_model.weight", &[2, 2])]);
    let error = message(check(&model_dir("tiny-sd"), &path).unwrap_err());
    assert!(error.contains("fits no LoRA layout"), "{error}");
    assert!(
        error.contains("lora_unet_") && error.contains("lora_A.weight"),
        "{error}"
    );
}

/// Kohya's SDXL files name the UNet's layers as the original SGM checkpoints do; FLUX's, with
/// BFL's fused layers, are not read yet.
#[test]
fn kohya_files_with_original_module_names() {
    let sgm = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q";
    let (down, up) = (
        format!("{sgm}.lora_down.weight"),
        format!("{sgm}.lora_up.weight"),
    );
    // tiny-sdxl's second block is 64 channels wide.
    let (_dir, path) = file_with(&[(&down, &[4, 64]), (&up, &[64, 4])]);
    let summary = check(&model_dir("tiny-sdxl"), &path).unwrap();
    assert_eq!(summary.layers, 1);
    let (_dir, path) = file_with(&[(&down, &[4, 32]), (&up, &[32, 4])]);
    let error = message(check(&model_dir("tiny-sdxl"), &path).unwrap_err());
    assert!(error.contains("attn1.to_q"), "{error}");

    let bfl = "lora_unet_double_blocks_0_img_attn_qkv";
    let (down, up) = (
        format!("{bfl}.lora_down.weight"),
        format!("{bfl}.lora_up.weight"),
    );
    let (_dir, path) = file_with(&[(&down, &[4, 32]), (&up, &[32, 4])]);
    let error = message(check(&model_dir("tiny-sdxl"), &path).unwrap_err());
    assert!(error.contains("Kohya FLUX LoRA"), "{error}");
    assert!(error.contains("not yet supported"), "{error}");
}

#[test]
fn other_adapter_kinds_are_named_in_the_refusal() {
    let (_dir, path) = file_with(&[("lora_unet_x.hada_w1_a", &[2, 2])]);
    let error = message(check(&model_dir("tiny-sd"), &path).unwrap_err());
    assert!(error.contains("LoHa"), "{error}");
}

#[test]
fn families_without_lora_support_say_which_take_them() {
    let error = message(
        check(
            &dit_model_dir("tiny-zimage"),
            &lora("tiny-sd-peft.safetensors"),
        )
        .unwrap_err(),
    );
    assert!(error.contains("takes no LoRAs"), "{error}");
    assert!(error.contains(FAMILIES_TAKING_LORAS), "{error}");
}

#[test]
fn a_set_is_made_once_and_reused() {
    let loras = Loras::new(&model_dir("tiny-sd"), Device::Cpu);
    assert!(loras.set(&[]).unwrap().is_none());
    let choice = LoraChoice {
        name: "tiny-sd-peft".into(),
        path: lora("tiny-sd-peft.safetensors"),
        scale: 0.5,
    };
    let first = loras.set(std::slice::from_ref(&choice)).unwrap().unwrap();
    let again = loras.set(std::slice::from_ref(&choice)).unwrap().unwrap();
    assert!(Arc::ptr_eq(&first, &again));
    assert!(first.touches("unet") && first.touches("text_encoder"));
    let other_scale = LoraChoice {
        scale: 1.0,
        ..choice
    };
    let other = loras.set(&[other_scale]).unwrap().unwrap();
    assert!(!Arc::ptr_eq(&first, &other));
}

/// What the module docs' choice rests on: linear layers of SD 1.5's and SDXL's transformer
/// blocks at 512 and 1024 pixels with a rank-16 LoRA, as a low-rank add per call (what the
/// engine does) and as a merge into a copy of the weight. Run with `--ignored --nocapture`.
#[test]
#[ignore = "a measurement, not a check"]
fn cost_of_runtime_adds_and_merging() {
    let device = Device::Cpu;
    let rank = 16;
    // (tokens, in, out): SD 1.5's first level at 512 px (64x64 latents), SDXL's middle and
    // inner levels at 1024 px, and an SDXL feed-forward input (GEGLU, 4x2 wide).
    for (tokens, inner, out) in [
        (4096, 320, 320),
        (4096, 640, 640),
        (1024, 1280, 1280),
        (1024, 1280, 10240),
    ] {
        let x = Tensor::randn(0f32, 1.0, (tokens, inner), &device).unwrap();
        let w_t = Tensor::randn(0f32, 0.02, (inner, out), &device).unwrap();
        let down_t = Tensor::randn(0f32, 0.02, (inner, rank), &device).unwrap();
        let up_t = Tensor::randn(0f32, 0.02, (rank, out), &device).unwrap();
        let time = |f: &dyn Fn() -> Tensor| {
            f();
            let mut best = f64::MAX;
            for _ in 0..5 {
                let start = Instant::now();
                f();
                best = best.min(start.elapsed().as_secs_f64() * 1e3);
            }
            best
        };
        let base = time(&|| x.matmul(&w_t).unwrap());
        let add = time(&|| {
            let y = x.matmul(&w_t).unwrap();
            (y + x.matmul(&down_t).unwrap().matmul(&up_t).unwrap()).unwrap()
        });
        let merge = time(&|| (&w_t + down_t.matmul(&up_t).unwrap()).unwrap());
        println!(
            "{tokens} tokens, {inner}->{out}, rank {rank}: product {base:.2} ms, with the add \
             {add:.2} ms (+{:.0}%), merge {merge:.2} ms and {:.1} MB (f16) per merged copy",
            (add / base - 1.0) * 100.0,
            (inner * out * 2) as f64 / 1e6
        );
    }
}

/// A model's targets are read once for every request that checks LoRAs against it, and again
/// when its file is replaced.
#[test]
fn checks_keep_a_models_targets_until_its_file_changes() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.safetensors");
    let place = |name: &str| {
        let single = fixtures_dir().join("single-file");
        std::fs::copy(single.join(format!("{name}.safetensors")), &model).unwrap();
        let base = model_dir(name);
        let sidecar = serde_json::json!({ "base": base });
        std::fs::write(dir.path().join("model.json"), sidecar.to_string()).unwrap();
    };
    place("tiny-sd");
    let first = checked_targets(&model).unwrap();
    assert!(Arc::ptr_eq(&first, &checked_targets(&model).unwrap()));
    check(&model, &lora("tiny-sd-peft.safetensors")).unwrap();
    place("tiny-sdxl");
    assert!(!Arc::ptr_eq(&first, &checked_targets(&model).unwrap()));
    check(&model, &lora("tiny-sd-peft.safetensors")).unwrap_err();
    check(&model, &lora("tiny-sdxl-peft.safetensors")).unwrap();
}
