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
    // FLUX's in BFL's names, q, k and v fused: each fused module binds to its split layers.
    let flux = dit_model_dir("tiny-flux-dev");
    let peft = check(&flux, &lora("tiny-flux-dev-peft.safetensors")).unwrap();
    let kohya = check(&flux, &lora("tiny-flux-dev-kohya.safetensors")).unwrap();
    assert_eq!(kohya.layout, Layout::Kohya);
    assert_eq!(peft.layers, kohya.layers);
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

/// Kohya's SDXL files name the UNet's layers as the original SGM checkpoints do, and FLUX's
/// name the transformer's as BFL's checkpoints do, q, k and v fused.
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

    // tiny-flux-dev is 96 wide: its fused qkv maps 96 to 3 x 96 and binds to three layers.
    let bfl = "lora_unet_double_blocks_0_img_attn_qkv";
    let (down, up) = (
        format!("{bfl}.lora_down.weight"),
        format!("{bfl}.lora_up.weight"),
    );
    let (_dir, path) = file_with(&[(&down, &[4, 96]), (&up, &[288, 4])]);
    let summary = check(&dit_model_dir("tiny-flux-dev"), &path).unwrap();
    assert_eq!((summary.layout, summary.layers), (Layout::Kohya, 3));
    let (_dir, path) = file_with(&[(&down, &[4, 96]), (&up, &[96, 4])]);
    let error = message(check(&dit_model_dir("tiny-flux-dev"), &path).unwrap_err());
    assert!(
        error.contains("maps 96 to 96 features")
            && error.contains("attn.to_q + transformer.transformer_blocks.0.attn.to_k")
            && error.contains("(fused) maps 96 to 288"),
        "{error}"
    );
    // Kohya's FLUX files name CLIP-L as SD's first text encoder (tiny-flux-dev's is 32 wide).
    let clip = "lora_te1_text_model_encoder_layers_0_self_attn_q_proj";
    let (_dir, path) = file_with(&[
        (&format!("{clip}.lora_down.weight"), &[4, 32]),
        (&format!("{clip}.lora_up.weight"), &[32, 4]),
        (&down, &[4, 96]),
        (&up, &[288, 4]),
    ]);
    assert_eq!(
        check(&dit_model_dir("tiny-flux-dev"), &path)
            .unwrap()
            .layers,
        4
    );
    // Not a layer of an SDXL UNet.
    let (_dir, path) = file_with(&[(&down, &[4, 96]), (&up, &[288, 4])]);
    let error = message(check(&model_dir("tiny-sdxl"), &path).unwrap_err());
    assert!(error.contains("fit no layer of this model"), "{error}");
}

/// A safetensors file of these tensors, in a temporary folder.
fn file_of(tensors: &[(&str, Tensor)]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("made.safetensors");
    let tensors: std::collections::HashMap<String, Tensor> = tensors
        .iter()
        .map(|(name, t)| (name.to_string(), t.clone()))
        .collect();
    candle_core::safetensors::save(&tensors, &path).unwrap();
    (dir, path)
}

/// Each layer's change `scale * up @ down` that the file at `path` makes to tiny-flux-dev, by
/// layer.
fn changes(path: &Path) -> std::collections::BTreeMap<String, Tensor> {
    let targets = Targets::read(&dit_model_dir("tiny-flux-dev")).unwrap();
    let file = LoraFile::open(path).unwrap();
    let bindings = file.bind(&targets).unwrap();
    file.load(&bindings, 0.7, &Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(tag, term)| {
            let change = term.down_t.matmul(&term.up_t).unwrap().t().unwrap();
            (tag.module.to_string(), change)
        })
        .collect()
}

/// A Kohya module on a fused BFL layer changes diffusers' split layers by its rows: one LoRA
/// trained on the fused `qkv` (a dense `up`, one `down`) is the PEFT file whose q, k and v
/// share that `down` and take a third of `up` each; the final norm's modulation, stored
/// (shift, scale) by BFL, takes `up`'s halves swapped. Kohya's `alpha` over its rank applies.
#[test]
fn a_kohya_flux_module_on_a_fused_layer_changes_the_split_layers_by_rows() {
    let random = |shape: (usize, usize)| Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap();
    let (qkv_down, qkv_up) = (random((4, 96)), random((288, 4)));
    let (norm_down, norm_up) = (random((2, 96)), random((192, 2)));
    let alpha = |a: f32| Tensor::new(a, &Device::Cpu).unwrap();
    let (_kohya_dir, kohya) = file_of(&[
        (
            "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight",
            qkv_down.clone(),
        ),
        (
            "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight",
            qkv_up.clone(),
        ),
        ("lora_unet_double_blocks_0_img_attn_qkv.alpha", alpha(2.0)),
        (
            "lora_unet_final_layer_adaLN_modulation_1.lora_down.weight",
            norm_down.clone(),
        ),
        (
            "lora_unet_final_layer_adaLN_modulation_1.lora_up.weight",
            norm_up.clone(),
        ),
        ("lora_unet_final_layer_adaLN_modulation_1.alpha", alpha(2.0)),
    ]);
    // PEFT without metadata: alpha is the rank. Kohya's qkv has alpha 2 over rank 4.
    let half = |t: &Tensor| (t * 0.5).unwrap();
    let rows = |t: &Tensor, start, len| t.narrow(0, start, len).unwrap();
    let (_peft_dir, peft) = file_of(&[
        (
            "transformer.transformer_blocks.0.attn.to_q.lora_A.weight",
            qkv_down.clone(),
        ),
        (
            "transformer.transformer_blocks.0.attn.to_q.lora_B.weight",
            half(&rows(&qkv_up, 0, 96)),
        ),
        (
            "transformer.transformer_blocks.0.attn.to_k.lora_A.weight",
            qkv_down.clone(),
        ),
        (
            "transformer.transformer_blocks.0.attn.to_k.lora_B.weight",
            half(&rows(&qkv_up, 96, 96)),
        ),
        (
            "transformer.transformer_blocks.0.attn.to_v.lora_A.weight",
            qkv_down,
        ),
        (
            "transformer.transformer_blocks.0.attn.to_v.lora_B.weight",
            half(&rows(&qkv_up, 192, 96)),
        ),
        ("transformer.norm_out.linear.lora_A.weight", norm_down),
        (
            "transformer.norm_out.linear.lora_B.weight",
            Tensor::cat(&[rows(&norm_up, 96, 96), rows(&norm_up, 0, 96)], 0).unwrap(),
        ),
    ]);
    let (from_kohya, from_peft) = (changes(&kohya), changes(&peft));
    assert_eq!(
        from_kohya.keys().collect::<Vec<_>>(),
        [
            "norm_out.linear",
            "transformer_blocks.0.attn.to_k",
            "transformer_blocks.0.attn.to_q",
            "transformer_blocks.0.attn.to_v"
        ]
    );
    assert_eq!(
        from_kohya.keys().collect::<Vec<_>>(),
        from_peft.keys().collect::<Vec<_>>()
    );
    for (layer, change) in &from_kohya {
        let off = crate::test_support::max_abs(&(change - &from_peft[layer]).unwrap());
        assert!(off < 1e-5, "{layer}: {off}");
    }
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
