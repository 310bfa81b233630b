use candle_core::{DType, Device};
use serde::Deserialize;

use super::*;
use crate::test_support::{assert_close, dit_case_tensors, dit_cases, dit_model_dir};

#[derive(Deserialize)]
struct Case {
    name: String,
    model: String,
}

fn load(dtype: DType) -> ZImageTransformer {
    let dir = dit_model_dir("tiny-zimage").join("transformer");
    ZImageTransformer::load(&dir, Variant::Auto, dtype, &Device::Cpu).unwrap()
}

/// `(case name, our probe output, the reference's)` for every Z-Image case.
fn probes(model: &ZImageTransformer) -> Vec<(String, Tensor, Tensor)> {
    let cases: Vec<Case> = dit_cases();
    cases
        .iter()
        .filter(|c| c.model == "tiny-zimage")
        .map(|case| {
            let t = dit_case_tensors(&case.name);
            // Already the model's argument, 1 - sigma.
            let timestep = t["probe_timestep"].to_vec1::<f32>().unwrap()[0];
            let ours = model
                .forward(&t["probe_latents"], &t["prompt_embeds"], timestep)
                .unwrap();
            (case.name.clone(), ours, t["probe_out"].clone())
        })
        .collect()
}

/// One transformer call on the reference's own inputs (probe latents, the unmasked Qwen3
/// states, 1 - sigma = 0.375) gives the reference's raw output.
#[test]
fn the_probe_matches_every_zimage_case() {
    let probes = probes(&load(DType::F32));
    for (name, ours, reference) in &probes {
        assert_close(name, ours, reference);
    }
    assert_eq!(probes.len(), 2);
}

/// bf16 and f16 weights (computed in f32 on CPU) stay within 2e-2 of the f32 reference.
#[test]
fn half_precision_weights_stay_close_to_the_reference() {
    for dtype in [DType::BF16, DType::F16] {
        for (name, ours, reference) in probes(&load(dtype)) {
            let diff = (ours.to_dtype(DType::F32).unwrap() - &reference)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff <= 2e-2, "{name} {dtype:?}: max_abs {diff}");
        }
    }
}

#[test]
fn caption_ids_count_every_padded_slot_from_one() {
    let ids = rope::caption_ids(5);
    assert_eq!(ids.len(), 32);
    assert_eq!(ids[0], [1, 0, 0]);
    assert_eq!(ids[4], [5, 0, 0]);
    assert_eq!(ids[31], [32, 0, 0], "pad slots keep counting");
    assert_eq!(
        rope::caption_ids(32).len(),
        32,
        "32 tokens need no pad slot"
    );
    assert_eq!(rope::caption_ids(33).len(), 64);
}

#[test]
fn image_ids_follow_the_padded_caption_and_zero_the_pad_slots() {
    let ids = rope::image_ids(5, 2, 3);
    assert_eq!(ids.len(), 32);
    assert_eq!(ids[0], [33, 0, 0], "frame = padded caption + 1");
    assert_eq!(ids[1], [33, 0, 1], "columns vary fastest");
    assert_eq!(ids[3], [33, 1, 0]);
    assert_eq!(ids[5], [33, 1, 2]);
    assert!(ids[6..].iter().all(|id| *id == [0; 3]));
    assert_eq!(
        rope::image_ids(32, 4, 8).len(),
        32,
        "32 patches need no pad slot"
    );
    assert_eq!(rope::image_ids(32, 4, 8)[0], [33, 0, 0]);
}

#[test]
fn pad_slots_take_the_pad_token() {
    let tokens = Tensor::ones((3, 4), DType::F32, &Device::Cpu).unwrap();
    let pad = Tensor::new(&[[7f32, 8., 9., 10.]], &Device::Cpu).unwrap();
    let padded = with_pad_slots(&tokens, &pad).unwrap();
    assert_eq!(padded.dims(), &[32, 4]);
    assert_eq!(padded.get(2).unwrap().to_vec1::<f32>().unwrap(), [1.0; 4]);
    assert_eq!(
        padded.get(31).unwrap().to_vec1::<f32>().unwrap(),
        [7., 8., 9., 10.]
    );
    let full = Tensor::ones((32, 4), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(with_pad_slots(&full, &pad).unwrap().dims(), &[32, 4]);
}

#[test]
fn patches_order_features_row_column_channel_and_round_trip() {
    let latents = Tensor::arange(0f32, 2. * 4. * 4., &Device::Cpu)
        .unwrap()
        .reshape((1, 2, 4, 4))
        .unwrap();
    let patches = patchify(&latents).unwrap();
    assert_eq!(patches.dims(), &[4, 8]);
    // Patch (0, 1): rows 0-1, columns 2-3; features (dy, dx, channel).
    assert_eq!(
        patches.get(1).unwrap().to_vec1::<f32>().unwrap(),
        [2., 18., 3., 19., 6., 22., 7., 23.]
    );
    let back = unpatchify(&patches, 2, 2, 2).unwrap();
    assert_eq!(
        back.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        latents.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );
}

#[test]
fn other_patch_sizes_and_batches_are_refused() {
    let dir = dit_model_dir("tiny-zimage").join("transformer");
    let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&text).unwrap();
    config["all_patch_size"] = serde_json::json!([4]);
    let path = std::env::temp_dir().join(format!("zimage-patch4-{}.json", std::process::id()));
    std::fs::write(&path, config.to_string()).unwrap();
    let err = ZImageConfig::read(&path).unwrap_err().to_string();
    std::fs::remove_file(&path).unwrap();
    assert!(err.contains("only patch 2"), "{err}");

    let model = load(DType::F32);
    let latents = Tensor::zeros((2, 16, 4, 4), DType::F32, &Device::Cpu).unwrap();
    let caption = Tensor::zeros((2, 3, 16), DType::F32, &Device::Cpu).unwrap();
    let err = model
        .forward(&latents, &caption, 0.5)
        .unwrap_err()
        .to_string();
    assert!(err.contains("one image per call"), "{err}");
}
