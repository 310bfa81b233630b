use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use serde::Deserialize;

use super::*;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

#[derive(Deserialize)]
struct Case {
    name: String,
    model: String,
    height: usize,
    width: usize,
}

/// One transformer call on the reference's own inputs (its packed probe latents, T5 states,
/// pooled vector, sigma 0.625 and, for dev, the guidance) gives the reference's output.
#[test]
fn the_probe_matches_every_flux_case() {
    let cases: Vec<Case> =
        crate::config_files::read_json(&fixtures().join("cases-dit/cases.json")).unwrap();
    let mut checked = 0;
    for case in cases.iter().filter(|c| c.model.contains("flux")) {
        let dir = fixtures()
            .join("models-dit")
            .join(&case.model)
            .join("transformer");
        let model = FluxTransformer::load(&dir, Variant::Auto, DType::F32, &Device::Cpu).unwrap();
        let t = candle_core::safetensors::load(
            fixtures().join(format!("cases-dit/{}.safetensors", case.name)),
            &Device::Cpu,
        )
        .unwrap();
        let scalar = |name: &str| t[name].to_vec1::<f32>().unwrap()[0];
        let guidance = t
            .contains_key("probe_guidance")
            .then(|| scalar("probe_guidance"));
        assert_eq!(
            guidance.is_some(),
            model.config().guidance_embeds,
            "{}",
            case.name
        );
        let inputs = FluxInputs {
            text: &t["prompt_embeds"],
            pooled: &t["pooled_prompt_embeds"],
            timestep: scalar("probe_timestep"),
            guidance,
            rows: case.height / 16,
            cols: case.width / 16,
        };
        let ours = model.forward(&t["probe_latents"], &inputs).unwrap();
        let reference = &t["probe_out"];
        assert_eq!(ours.dims(), reference.dims(), "{}", case.name);
        let scale = reference
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .max(1.0);
        let diff = (ours - reference)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            diff <= 1e-3 * scale,
            "{}: max |diff| {diff} (scale {scale})",
            case.name
        );
        checked += 1;
    }
    assert_eq!(checked, 4);
}

#[test]
fn rope_ids_put_text_first_then_image_rows() {
    let ids = rope::ids(2, 2, 3);
    assert_eq!(ids.len(), 8);
    assert_eq!(ids[0], [0.0; 3]);
    assert_eq!(ids[2], [0.0, 0.0, 0.0]);
    assert_eq!(
        ids[3],
        [0.0, 0.0, 1.0],
        "(0, row, col): columns vary fastest"
    );
    assert_eq!(ids[5], [0.0, 1.0, 0.0]);
}
