//! The reference cases: schedules, single steps from diffusers' inputs, and whole loops.

use candle_core::{DType, Device, Tensor};

use super::reference_data::CASES;
use super::*;

fn check_case(case: &Case) {
    let name = case.name;
    let kind: SchedulerKind = case.kind.parse().unwrap();
    let config = config_for(case.model, case.overrides);
    let mut scheduler = build(kind, &config, case.steps, case.karras).unwrap();

    assert_values(
        &format!("{name} timesteps"),
        scheduler.timesteps(),
        case.timesteps,
        SCHEDULE_TOL,
    );
    let sigmas = sigmas_of(kind, &config, case.steps, case.karras);
    assert_values(
        &format!("{name} sigmas"),
        &sigmas,
        case.sigmas,
        SCHEDULE_TOL,
    );
    assert_values(
        &format!("{name} init_noise_sigma"),
        &[scheduler.init_noise_sigma()],
        &[case.init_noise_sigma],
        SCHEDULE_TOL,
    );
    assert_eq!(scheduler.order(), 1);
    if case.latents.is_empty() {
        return;
    }

    let (first, start) = match case.begin {
        None => (
            0,
            initial_noise()
                .affine(scheduler.init_noise_sigma(), 0.0)
                .unwrap(),
        ),
        Some(begin) => (
            begin,
            scheduler.add_noise(&clean(), &img_noise(), begin).unwrap(),
        ),
    };
    assert_values(
        &format!("{name} start"),
        &values(&start),
        case.start,
        TENSOR_TOL,
    );
    let indices = first..scheduler.timesteps().len();
    assert_eq!(indices.len(), case.latents.len(), "{name}: steps run");

    // Each step from the reference's own input, so that one float32 rounding difference is
    // not carried (and, with zero terminal SNR's sigma of 4096, amplified) into the next.
    let mut noise = RecordedNoise { index: 0, calls: 0 };
    for (n, i) in indices.clone().enumerate() {
        let input = if n == 0 {
            case.start
        } else {
            case.latents[n - 1]
        };
        let input = Tensor::new(input, &Device::Cpu)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .reshape(SHAPE)
            .unwrap();
        let scaled = scheduler.scale_model_input(&input, i).unwrap();
        assert_values(
            &format!("{name} scaled[{i}]"),
            &values(&scaled),
            case.scaled[n],
            TENSOR_TOL,
        );
        noise.index = i;
        let output = scheduler
            .step(&fake_unet(&scaled, i), i, &input, &mut noise)
            .unwrap();
        assert_eq!(output.dtype(), DType::F32);
        // A step subtracts terms as large as its input, so rounding differences scale with it.
        let input_scale = values(&input).iter().fold(1.0, |m: f64, v| m.max(v.abs()));
        let what = format!("{name} latents[{i}]");
        assert_values_scaled(
            &what,
            &values(&output),
            case.latents[n],
            TENSOR_TOL,
            input_scale,
        );
    }
    let expected_calls = if kind == SchedulerKind::EulerAncestral {
        case.latents.len()
    } else {
        0
    };
    assert_eq!(noise.calls, expected_calls, "{name}: noise draws");

    // And the whole loop on its own outputs, as the pipeline runs it.
    let mut scheduler = build(kind, &config, case.steps, case.karras).unwrap();
    let mut latents = start;
    for i in indices {
        let scaled = scheduler.scale_model_input(&latents, i).unwrap();
        noise.index = i;
        latents = scheduler
            .step(&fake_unet(&scaled, i), i, &latents, &mut noise)
            .unwrap();
    }
    let last = case.latents[case.latents.len() - 1];
    let scale = last.iter().fold(1.0, |m: f64, v| m.max(v.abs()));
    assert_values_scaled(
        &format!("{name} final"),
        &values(&latents),
        last,
        LOOP_TOL,
        scale,
    );
}

#[test]
fn every_reference_case_matches_diffusers() {
    // Continuous (EDM-style) timesteps are not implemented: refused with a config error.
    let refused = ["euler_continuous_karras_range"];
    for case in CASES.iter().filter(|c| refused.contains(&c.name)) {
        let config = config_for(case.model, case.overrides);
        let kind: SchedulerKind = case.kind.parse().unwrap();
        assert!(
            build(kind, &config, case.steps, case.karras).is_err(),
            "{}",
            case.name
        );
    }
    let failed: Vec<&str> = CASES
        .iter()
        .filter(|case| !refused.contains(&case.name))
        .filter(|case| std::panic::catch_unwind(|| check_case(case)).is_err())
        .map(|case| case.name)
        .collect();
    assert!(failed.is_empty(), "failing reference cases: {failed:?}");
}

#[test]
fn reference_covers_every_kind_and_the_fixture_cases() {
    for kind in SchedulerKind::ALL {
        assert!(
            CASES.iter().any(|c| c.kind == kind.name()),
            "{kind} has no reference case"
        );
    }
    // The shapes the pipeline fixtures use: tiny-sd DDIM leading, tiny-sdxl Euler trailing,
    // DPM++ 2M from the DDIM config.
    for name in [
        "ddim_leading",
        "euler_sdxl_trailing",
        "dpmpp2m_leading",
        "ddim_img2img",
    ] {
        assert!(CASES.iter().any(|c| c.name == name), "missing case {name}");
    }
}

#[test]
fn trailing_quirk_keeps_numpys_extra_timestep() {
    let case = CASES
        .iter()
        .find(|c| c.name == "euler_trailing_61")
        .unwrap();
    assert_eq!(case.timesteps.len(), 62);
    assert_eq!(case.timesteps[61], -1.0);
    // DDIM would index alphas_cumprod[-1] there: refused instead.
    let config = config_for("tiny-sd", r#"{"timestep_spacing": "trailing"}"#);
    let err = build(SchedulerKind::Ddim, &config, 61, false)
        .err()
        .unwrap();
    assert!(
        matches!(err, EngineError::InvalidInput { field: "steps", .. }),
        "{err}"
    );
}

#[test]
fn half_precision_steps_stay_close_and_keep_the_dtype() {
    let config = config_for("tiny-sd", "{}");
    for kind in SchedulerKind::ALL {
        let mut full = build(kind, &config, 4, false).unwrap();
        let mut half = build(kind, &config, 4, false).unwrap();
        let mut noise = RecordedNoise { index: 0, calls: 0 };
        let mut x32 = initial_noise()
            .affine(full.init_noise_sigma(), 0.0)
            .unwrap();
        let mut x16 = x32.to_dtype(DType::F16).unwrap();
        for i in 0..4 {
            let s32 = full.scale_model_input(&x32, i).unwrap();
            let s16 = half.scale_model_input(&x16, i).unwrap();
            assert_eq!(s16.dtype(), DType::F16);
            x32 = full.step(&fake_unet(&s32, i), i, &x32, &mut noise).unwrap();
            let eps16 = fake_unet(&s16.to_dtype(DType::F32).unwrap(), i)
                .to_dtype(DType::F16)
                .unwrap();
            x16 = half.step(&eps16, i, &x16, &mut noise).unwrap();
            assert_eq!(x16.dtype(), DType::F16, "{kind}");
        }
        assert_values(&format!("{kind} f16"), &values(&x16), &values(&x32), 2e-2);
    }
}
