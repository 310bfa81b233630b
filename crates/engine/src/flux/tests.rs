//! The whole FLUX pipeline against every FLUX reference case, stage by stage: token ids,
//! prompt encodings, the final latents from the reference's own noise, the decoded image.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use candle_core::{DType, Device, IndexOp, Tensor};
use serde::Deserialize;

use super::pipeline::{FluxPipeline, FluxRun, pack, unpack};
use crate::pipeline::LoadOptions;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

#[derive(Deserialize)]
struct Case {
    name: String,
    model: String,
    prompt: String,
    negative_prompt: Option<String>,
    steps: usize,
    guidance_scale: f64,
    max_sequence_length: usize,
    true_cfg_scale: Option<f64>,
}

fn max_diff(ours: &Tensor, reference: &Tensor) -> (f32, f32) {
    let scale = reference
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
        .max(1.0);
    let diff = (ours.to_dtype(DType::F32).unwrap() - reference)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    (diff, scale)
}

fn ids(t: &HashMap<String, Tensor>, name: &str) -> Vec<u32> {
    t[name]
        .to_dtype(DType::U32)
        .unwrap()
        .i(0)
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn every_flux_case_matches_stage_by_stage() {
    let cases: Vec<Case> =
        crate::config_files::read_json(&fixtures().join("cases-dit/cases.json")).unwrap();
    let mut checked = 0;
    for case in cases.iter().filter(|c| c.model.contains("flux")) {
        let dir = fixtures().join("models-dit").join(&case.model);
        let pipeline = FluxPipeline::load(&dir, LoadOptions::default()).unwrap();
        let t = candle_core::safetensors::load(
            fixtures().join(format!("cases-dit/{}.safetensors", case.name)),
            &Device::Cpu,
        )
        .unwrap();
        let name = &case.name;
        let length = case.max_sequence_length;
        assert_eq!(length, pipeline.default_max_sequence_length(), "{name}");

        let (clip_ids, t5_ids) = pipeline.token_ids(&case.prompt, length).unwrap();
        assert_eq!(clip_ids, ids(&t, "prompt_token_ids"), "{name}: CLIP ids");
        assert_eq!(t5_ids, ids(&t, "prompt_token_ids_2"), "{name}: T5 ids");

        let prompt = pipeline.encode(&case.prompt, length).unwrap();
        for (ours, reference) in [
            (&prompt.pooled, "pooled_prompt_embeds"),
            (&prompt.text, "prompt_embeds"),
        ] {
            let (diff, scale) = max_diff(ours, &t[reference]);
            assert!(
                diff <= 1e-3 * scale,
                "{name}: {reference} max |diff| {diff}"
            );
        }
        let negative = case
            .negative_prompt
            .as_deref()
            .map(|n| pipeline.encode(n, length).unwrap());
        let run = FluxRun {
            prompt: &prompt,
            negative: negative
                .as_ref()
                .zip(case.true_cfg_scale.filter(|s| *s > 1.0)),
            noise: &t["initial_latents"],
            steps: case.steps,
            guidance: case.guidance_scale,
            image: None,
        };
        let mut calls = Vec::new();
        let latents = pipeline
            .denoise(
                &run,
                &mut |step, steps| calls.push((step, steps)),
                &AtomicBool::new(false),
            )
            .unwrap();
        assert_eq!(
            calls.last(),
            Some(&(case.steps, case.steps)),
            "{name}: progress"
        );
        let (diff, scale) = max_diff(&latents, &t["final_latents"]);
        assert!(
            diff <= 1e-3 * scale,
            "{name}: final latents max |diff| {diff}"
        );

        let image = pipeline.decode(&t["final_latents"]).unwrap().i(0).unwrap();
        let (diff, _) = max_diff(&image, &t["image"]);
        assert!(diff <= 4e-3, "{name}: image max |diff| {diff}");
        checked += 1;
    }
    assert_eq!(checked, 4);
}

#[test]
fn packing_orders_features_channel_then_dy_then_dx_and_unpacks_back() {
    let x = Tensor::arange(0f32, 2.0 * 4.0 * 4.0, &Device::Cpu)
        .unwrap()
        .reshape((1, 2, 4, 4))
        .unwrap();
    let packed = pack(&x).unwrap();
    assert_eq!(packed.dims(), [1, 4, 8]);
    // Token (0, 0): channel 0's 2x2 patch (0, 1, 4, 5), then channel 1's (16, 17, 20, 21).
    let first: Vec<f32> = packed.i((0, 0)).unwrap().to_vec1().unwrap();
    assert_eq!(first, [0.0, 1.0, 4.0, 5.0, 16.0, 17.0, 20.0, 21.0]);
    let back = unpack(&packed, 2, 2, 2).unwrap();
    let (diff, _) = max_diff(&back, &x);
    assert_eq!(diff, 0.0);
}
