use candle_core::{DType, Device};
use serde::Deserialize;

use super::*;
use crate::test_support::{assert_close, dit_case_tensors, dit_cases, dit_model_dir};

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
    let cases: Vec<Case> = dit_cases();
    let mut checked = 0;
    for case in cases.iter().filter(|c| c.model.contains("flux")) {
        let dir = dit_model_dir(&case.model).join("transformer");
        let model = FluxTransformer::load(&dir, Variant::Auto, DType::F32, &Device::Cpu).unwrap();
        let t = dit_case_tensors(&case.name);
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
        assert_close(&case.name, &ours, &t["probe_out"]);
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
