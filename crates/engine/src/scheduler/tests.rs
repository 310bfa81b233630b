//! Scheduler unit tests against numbers printed by diffusers
//! (`tools/reference/scheduler_reference.py` -> `tests/data/scheduler_reference.jsonl`).

use candle_core::{Device, Tensor};

use super::*;
use crate::test_support::model_dir;

#[derive(serde::Deserialize)]
struct Reference {
    kind: String,
    model: String,
    overrides: serde_json::Map<String, serde_json::Value>,
    steps: usize,
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    init_noise_sigma: f64,
    sample: Vec<f32>,
    outputs: Vec<Vec<f32>>,
    noise: Vec<f32>,
    steps_out: Vec<StepOut>,
}

#[derive(serde::Deserialize)]
struct StepOut {
    scaled: Vec<f32>,
    next: Vec<f32>,
}

/// Hands out the recorded noise, as the reference script patched diffusers to do.
struct Recorded(Tensor);

impl NoiseSource for Recorded {
    fn randn_like(&mut self, _: &Tensor) -> candle_core::Result<Tensor> {
        Ok(self.0.clone())
    }
}

fn tensor(values: &[f32]) -> Tensor {
    Tensor::from_slice(values, (1, 2, 2, 2), &Device::Cpu).unwrap()
}

fn assert_all_close(what: &str, ours: &[f64], theirs: &[f64], relative: f64) {
    assert_eq!(ours.len(), theirs.len(), "{what}: {ours:?} vs {theirs:?}");
    for (a, b) in ours.iter().zip(theirs) {
        assert!(
            (a - b).abs() <= relative * b.abs().max(1.0),
            "{what}: {ours:?} vs {theirs:?}"
        );
    }
}

fn references() -> Vec<Reference> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/scheduler_reference.jsonl");
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn config(model: &str) -> SchedulerConfig {
    SchedulerConfig::from_file(&model_dir(model).join("scheduler/scheduler_config.json")).unwrap()
}

#[test]
fn timesteps_sigmas_and_steps_match_diffusers() {
    let references = references();
    assert!(references.len() >= 10);
    for r in references {
        let what = format!("{} {:?} x{}", r.kind, r.overrides, r.steps);
        let kind: SchedulerKind = r.kind.parse().unwrap();
        let config = config(&r.model).with_overrides(&r.overrides).unwrap();
        let mut scheduler = build(kind, &config, r.steps, false).unwrap();
        assert_all_close(
            &format!("{what} timesteps"),
            scheduler.timesteps(),
            &r.timesteps,
            1e-6,
        );
        assert_all_close(
            &format!("{what} sigmas"),
            scheduler.sigmas(),
            &r.sigmas,
            1e-6,
        );
        assert_all_close(
            &format!("{what} init sigma"),
            &[scheduler.init_noise_sigma()],
            &[r.init_noise_sigma],
            1e-6,
        );
        let mut x = tensor(&r.sample);
        let mut noise = Recorded(tensor(&r.noise));
        for (i, (output, expected)) in r.outputs.iter().zip(&r.steps_out).enumerate() {
            let scaled = scheduler.scale_model_input(&x, i).unwrap();
            let scaled: Vec<f64> = scaled
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|&v| v as f64)
                .collect();
            let want: Vec<f64> = expected.scaled.iter().map(|&v| v as f64).collect();
            assert_all_close(&format!("{what} scaled input {i}"), &scaled, &want, 1e-5);
            x = scheduler.step(&tensor(output), i, &x, &mut noise).unwrap();
            let got: Vec<f64> = x
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|&v| v as f64)
                .collect();
            let want: Vec<f64> = expected.next.iter().map(|&v| v as f64).collect();
            assert_all_close(&format!("{what} step {i}"), &got, &want, 1e-5);
        }
    }
}

#[test]
fn names_parse_and_errors_list_the_choices() {
    for kind in SchedulerKind::ALL {
        assert_eq!(kind.name().parse::<SchedulerKind>().unwrap(), kind);
    }
    assert_eq!(
        "DPM++2M".parse::<SchedulerKind>().unwrap(),
        SchedulerKind::DpmPlusPlus2M
    );
    assert_eq!(
        "euler-ancestral".parse::<SchedulerKind>().unwrap(),
        SchedulerKind::EulerAncestral
    );
    let err = "plms".parse::<SchedulerKind>().unwrap_err().to_string();
    assert!(
        err.contains("scheduler") && err.contains("ddim, euler, euler_a, dpmpp2m"),
        "{err}"
    );
}

#[test]
fn invalid_settings_are_errors_not_wrong_math() {
    let config = config("tiny-sd");
    let err = |r: Result<Box<dyn Scheduler>>| match r {
        Err(e) => e.to_string(),
        Ok(_) => panic!("accepted"),
    };
    let msg = err(build(SchedulerKind::Euler, &config, 0, false));
    assert!(
        msg.contains("steps") && msg.contains("between 1 and 1000"),
        "{msg}"
    );
    let msg = err(build(SchedulerKind::Euler, &config, 1001, false));
    assert!(msg.contains("steps"), "{msg}");
    let msg = err(build(SchedulerKind::Ddim, &config, 4, true));
    assert!(msg.contains("Karras"), "{msg}");
    let thresholding = serde_json::json!({"thresholding": true});
    let with = config
        .with_overrides(thresholding.as_object().unwrap())
        .unwrap();
    let msg = err(build(SchedulerKind::Ddim, &with, 4, false));
    assert!(
        msg.contains("thresholding") && msg.contains("scheduler_config.json"),
        "{msg}"
    );
    let bad = serde_json::json!({"prediction_type": "flow"});
    let msg = config
        .with_overrides(bad.as_object().unwrap())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("scheduler_config.json"), "{msg}");
}

#[test]
fn a_missing_or_broken_config_names_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("scheduler_config.json");
    let msg = SchedulerConfig::from_file(&path).unwrap_err().to_string();
    assert!(
        msg.contains("scheduler_config.json") && msg.contains("not found"),
        "{msg}"
    );
    std::fs::write(&path, "{\"beta_schedule\": 3}").unwrap();
    let msg = SchedulerConfig::from_file(&path).unwrap_err().to_string();
    assert!(
        msg.contains("scheduler_config.json") && msg.contains("beta_schedule"),
        "{msg}"
    );
    // Python writes -Infinity for "no clipping"; it must still load.
    std::fs::write(
        &path,
        "{\"lambda_min_clipped\": -Infinity, \"_class_name\": \"DPMSolverMultistepScheduler\"}",
    )
    .unwrap();
    let config = SchedulerConfig::from_file(&path).unwrap();
    assert!(build(SchedulerKind::DpmPlusPlus2M, &config, 5, false).is_ok());
}

#[test]
fn karras_sigmas_span_the_range_in_rho_space() {
    let sigmas = schedule::karras_sigmas(0.03, 14.6, 5);
    assert!((sigmas[0] - 14.6).abs() < 1e-9 && (sigmas[4] - 0.03).abs() < 1e-9);
    assert!(sigmas.windows(2).all(|w| w[0] > w[1]));
}
