use candle_core::{Device, Tensor};

use super::*;
use crate::test_support::{dit_case_tensors, dit_cases, dit_model_dir};

#[derive(Deserialize)]
struct Case {
    name: String,
    model: String,
    height: usize,
    width: usize,
    steps: usize,
}

/// Every reference case's sigmas, from its model's own scheduler config: FLUX schnell's static
/// shift 1, FLUX dev's dynamic shift from the packed token count, Z-Image's static shift 3 and
/// SD3's scheduler-spaced, twice-shifted range.
#[test]
fn sigmas_match_every_reference_case() {
    let cases: Vec<Case> = dit_cases();
    assert!(cases.len() >= 8, "{} cases", cases.len());
    for case in cases {
        let model = dit_model_dir(&case.model);
        let config =
            FlowMatchConfig::from_file(&model.join("scheduler/scheduler_config.json")).unwrap();
        let spacing = if case.model.contains("sd3") {
            Spacing::Scheduler
        } else {
            Spacing::Pipeline
        };
        let tokens = (case.height / 16) * (case.width / 16);
        let ours = FlowMatchEuler::new(&config, case.steps, spacing, tokens).unwrap();
        let tensors = dit_case_tensors(&case.name);
        let reference: Vec<f32> = tensors["sigmas"].to_vec1().unwrap();
        assert_eq!(ours.sigmas().len(), reference.len(), "{}", case.name);
        for (a, b) in ours.sigmas().iter().zip(&reference) {
            assert!(
                (a - b).abs() <= 1e-6,
                "{}: {:?} vs {reference:?}",
                case.name,
                ours.sigmas()
            );
        }
        let timesteps: Vec<f32> = reference[..case.steps].iter().map(|s| s * 1000.0).collect();
        assert_eq!(ours.timesteps().len(), timesteps.len());
    }
}

#[test]
fn sd3_sigmas_are_the_documented_ones() {
    let config: FlowMatchConfig =
        serde_json::from_value(serde_json::json!({"shift": 3.0})).unwrap();
    let sigmas = FlowMatchEuler::new(&config, 4, Spacing::Scheduler, 0).unwrap();
    let expected = [1.0, 0.8577, 0.6022, 0.0089, 0.0];
    for (a, b) in sigmas.sigmas().iter().zip(expected) {
        assert!((a - b).abs() < 1e-4, "{:?}", sigmas.sigmas());
    }
}

#[test]
fn dev_mu_is_not_clamped_below_its_base() {
    let config: FlowMatchConfig =
        serde_json::from_value(serde_json::json!({"use_dynamic_shifting": true})).unwrap();
    // A 64x64 image packs into 4x4 = 16 tokens, far below 256: mu falls under 0.5.
    let mu = config.mu(16);
    assert!((mu - (0.5 - 240.0 * 0.65 / 3840.0)).abs() < 1e-12, "{mu}");
    assert!((config.mu(4096) - 1.15).abs() < 1e-12);
}

#[test]
fn a_step_moves_along_the_velocity_and_img2img_starts_part_way() {
    let config: FlowMatchConfig = serde_json::from_value(serde_json::json!({})).unwrap();
    let sampler = FlowMatchEuler::new(&config, 4, Spacing::Pipeline, 0).unwrap();
    assert_eq!(sampler.sigmas(), [1.0, 0.75, 0.5, 0.25, 0.0]);
    assert_eq!(sampler.timesteps(), [1000.0, 750.0, 500.0, 250.0]);
    let x = Tensor::new(&[1.0f32, 2.0], &Device::Cpu).unwrap();
    let v = Tensor::new(&[4.0f32, -4.0], &Device::Cpu).unwrap();
    let next: Vec<f32> = sampler.step(&v, 1, &x).unwrap().to_vec1().unwrap();
    assert_eq!(next, [0.0, 3.0], "x + (0.5 - 0.75) * v");

    assert_eq!(sampler.start_index(1.0), 0);
    assert_eq!(sampler.start_index(0.5), 2);
    assert_eq!(sampler.start_index(0.3), 2, "int(4 - 1.2)");
    let noised: Vec<f32> = sampler.scale_noise(&x, &v, 2).unwrap().to_vec1().unwrap();
    assert_eq!(noised, [2.5, -1.0], "0.5 * noise + 0.5 * clean");
}

#[test]
fn options_it_does_not_implement_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scheduler_config.json");
    std::fs::write(&path, r#"{"shift": 3.0, "use_karras_sigmas": true}"#).unwrap();
    let error = FlowMatchConfig::from_file(&path).unwrap_err().to_string();
    assert!(error.contains("use_karras_sigmas"), "{error}");
    let schnell = dit_model_dir("tiny-flux-schnell").join("scheduler/scheduler_config.json");
    let config = FlowMatchConfig::from_file(&schnell).unwrap();
    assert!(FlowMatchEuler::new(&config, 0, Spacing::Pipeline, 16).is_err());
}
