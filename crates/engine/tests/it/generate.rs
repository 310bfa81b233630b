use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use seedbed_engine::model::Family;
use seedbed_engine::scheduler::SchedulerKind;
use seedbed_engine::sd::SdPipeline;
use seedbed_engine::{EngineError, GenerateRequest, InitImage, LoadOptions, Pipeline};

use super::models;

fn tiny_sd() -> Pipeline {
    Pipeline::load(&models().join("tiny-sd"), LoadOptions::default()).unwrap()
}

fn request(scheduler: SchedulerKind) -> GenerateRequest {
    GenerateRequest {
        prompt: "a red barn".into(),
        negative_prompt: Some("blurry".into()),
        width: 64,
        height: 48,
        steps: 3,
        guidance_scale: 5.0,
        scheduler: Some(scheduler),
        karras_sigmas: false,
        true_cfg_scale: None,
        seed: 42,
        count: 1,
        init_image: None,
    }
}

fn run(pipeline: &Pipeline, request: &GenerateRequest) -> Vec<image::RgbImage> {
    pipeline
        .generate(request, &mut |_| {}, &AtomicBool::new(false))
        .unwrap()
        .into_iter()
        .map(|g| g.image)
        .collect()
}

#[test]
fn model_facts_come_from_its_configs() {
    let sd = tiny_sd();
    assert_eq!(sd.native_size(), 64);
    assert_eq!(sd.latent_factor(), 8);
    assert_eq!(sd.family(), Family::StableDiffusion);
    let sd = SdPipeline::load(&models().join("tiny-sd"), LoadOptions::default()).unwrap();
    assert_eq!(sd.default_scheduler(), SchedulerKind::Ddim);
    let xl = SdPipeline::load(&models().join("tiny-sdxl"), LoadOptions::default()).unwrap();
    assert_eq!(xl.default_scheduler(), SchedulerKind::Euler);
}

#[test]
fn every_scheduler_generates_deterministically() {
    let pipeline = tiny_sd();
    for kind in SchedulerKind::ALL {
        for karras in [false, true] {
            if karras && kind == SchedulerKind::Ddim {
                continue;
            }
            let req = GenerateRequest {
                karras_sigmas: karras,
                ..request(kind)
            };
            let first = run(&pipeline, &req);
            assert_eq!(first.len(), 1);
            assert_eq!(first[0].dimensions(), (64, 48));
            assert_eq!(
                first,
                run(&pipeline, &req),
                "{kind} karras={karras} not deterministic"
            );
        }
    }
}

#[test]
fn several_images_get_distinct_seeds_and_progress() {
    let pipeline = tiny_sd();
    let req = GenerateRequest {
        count: 2,
        ..request(SchedulerKind::Euler)
    };
    let steps_seen = AtomicUsize::new(0);
    let images = pipeline
        .generate(
            &req,
            &mut |p| {
                assert_eq!((p.images, p.steps), (2, 3));
                steps_seen.fetch_add(1, Ordering::Relaxed);
            },
            &AtomicBool::new(false),
        )
        .unwrap();
    assert_eq!(steps_seen.load(Ordering::Relaxed), 6);
    assert_eq!((images[0].seed, images[1].seed), (42, 43));
    assert_ne!(images[0].image, images[1].image);
    // Image 1 alone, from its own seed, is the same picture.
    let alone = run(
        &pipeline,
        &GenerateRequest {
            seed: 43,
            ..request(SchedulerKind::Euler)
        },
    );
    assert_eq!(alone[0], images[1].image);
}

#[test]
fn cancellation_stops_before_the_next_step() {
    let pipeline = tiny_sd();
    let cancel = AtomicBool::new(false);
    let mut steps = 0;
    let result = pipeline.generate(
        &request(SchedulerKind::Ddim),
        &mut |p| {
            steps = p.step;
            cancel.store(true, Ordering::Relaxed);
        },
        &cancel,
    );
    assert!(
        matches!(result, Err(EngineError::Cancelled)),
        "{:?}",
        result.err()
    );
    assert_eq!(steps, 1);
}

#[test]
fn image_to_image_keeps_the_picture_at_low_strength() {
    let pipeline = tiny_sd();
    let picture = image::RgbImage::from_fn(80, 60, |x, y| {
        image::Rgb([(x * 3) as u8, (y * 4) as u8, 128])
    });
    let with_strength = |strength| GenerateRequest {
        init_image: Some(InitImage {
            image: image::DynamicImage::ImageRgb8(picture.clone()),
            strength,
        }),
        steps: 4,
        ..request(SchedulerKind::Ddim)
    };
    let low = run(&pipeline, &with_strength(0.25));
    let high = run(&pipeline, &with_strength(1.0));
    assert_eq!(low[0].dimensions(), (64, 48));
    assert_ne!(low, high);
    let err = pipeline
        .generate(&with_strength(0.1), &mut |_| {}, &AtomicBool::new(false))
        .unwrap_err();
    assert!(err.to_string().contains("strength"), "{err}");
}

#[test]
fn guidance_at_or_below_one_runs_one_branch() {
    let pipeline = tiny_sd();
    // With guidance <= 1 the negative prompt is not encoded, so it cannot change the result.
    let a = GenerateRequest {
        guidance_scale: 1.0,
        ..request(SchedulerKind::Euler)
    };
    let b = GenerateRequest {
        negative_prompt: Some("something else".into()),
        ..a.clone()
    };
    assert_eq!(run(&pipeline, &a), run(&pipeline, &b));
    let pipeline = SdPipeline::load(&models().join("tiny-sd"), LoadOptions::default()).unwrap();
    let prompts = pipeline.encode_prompts("x", None, 1.0).unwrap();
    assert!(prompts.uncond.is_none());
    let prompts = pipeline.encode_prompts("x", None, 1.5).unwrap();
    assert!(prompts.uncond.is_some());
}

#[test]
fn sdxl_generates_with_and_without_guidance() {
    let pipeline = Pipeline::load(&models().join("tiny-sdxl"), LoadOptions::default()).unwrap();
    for guidance in [0.0, 5.0] {
        let req = GenerateRequest {
            guidance_scale: guidance,
            negative_prompt: None,
            ..request(SchedulerKind::Euler)
        };
        let images = run(&pipeline, &req);
        assert_eq!(images[0].dimensions(), (64, 48));
    }
    // SDXL asks for zeros, not the encoded empty string, when no negative prompt is given.
    let pipeline = SdPipeline::load(&models().join("tiny-sdxl"), LoadOptions::default()).unwrap();
    let prompts = pipeline.encode_prompts("x", None, 5.0).unwrap();
    let uncond = prompts.uncond.unwrap();
    let max = uncond
        .embeds
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(max, 0.0);
}

#[test]
fn invalid_requests_name_the_field() {
    let pipeline = tiny_sd();
    let cases = [
        (
            GenerateRequest {
                width: 60,
                ..request(SchedulerKind::Euler)
            },
            "width",
        ),
        (
            GenerateRequest {
                steps: 0,
                ..request(SchedulerKind::Euler)
            },
            "steps",
        ),
        (
            GenerateRequest {
                count: 0,
                ..request(SchedulerKind::Euler)
            },
            "count",
        ),
        (
            GenerateRequest {
                true_cfg_scale: Some(4.0),
                ..request(SchedulerKind::Euler)
            },
            "true_cfg_scale",
        ),
    ];
    for (req, field) in cases {
        let err = pipeline
            .generate(&req, &mut |_| {}, &AtomicBool::new(false))
            .unwrap_err();
        assert!(matches!(err, EngineError::InvalidInput { .. }), "{err}");
        assert!(err.to_string().contains(field), "{err}");
    }
}
