//! FLUX through the engine's one `Pipeline`, as core and the CLI drive it.

use std::sync::atomic::{AtomicBool, Ordering};

use seedbed_engine::model::Family;
use seedbed_engine::scheduler::SchedulerKind;
use seedbed_engine::{EngineError, GenerateRequest, InitImage, LoadOptions, Pipeline};

use super::dit_models;

fn load(name: &str) -> Pipeline {
    Pipeline::load(&dit_models().join(name), LoadOptions::default()).unwrap()
}

fn request() -> GenerateRequest {
    GenerateRequest {
        prompt: "a lighthouse at dusk".into(),
        negative_prompt: None,
        width: 48,
        height: 32,
        steps: 2,
        guidance_scale: 0.0,
        scheduler: None,
        karras_sigmas: false,
        true_cfg_scale: None,
        seed: 7,
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
fn flux_folders_load_as_the_flux_family() {
    let schnell = load("tiny-flux-schnell");
    assert_eq!(schnell.family(), Family::Flux);
    // 2x2 packing of the VAE's 8x latents: sizes are multiples of 16; trained at 1024.
    assert_eq!((schnell.latent_factor(), schnell.native_size()), (16, 1024));
    let err = schnell
        .generate(
            &GenerateRequest {
                width: 40,
                ..request()
            },
            &mut |_| {},
            &AtomicBool::new(false),
        )
        .unwrap_err();
    assert!(err.to_string().contains("multiple of 16"), "{err}");
}

#[test]
fn schnell_generates_deterministically_with_progress() {
    let pipeline = load("tiny-flux-schnell");
    let mut steps = Vec::new();
    let images = pipeline
        .generate(
            &GenerateRequest {
                count: 2,
                ..request()
            },
            &mut |p| steps.push((p.image, p.step, p.steps)),
            &AtomicBool::new(false),
        )
        .unwrap();
    assert_eq!(images.len(), 2);
    assert_eq!(images[0].image.dimensions(), (48, 32));
    assert_eq!(steps, [(0, 1, 2), (0, 2, 2), (1, 1, 2), (1, 2, 2)]);
    // Image i is seed + i, so the second image alone from seed 8 is the same picture.
    let second = run(
        &pipeline,
        &GenerateRequest {
            seed: 8,
            ..request()
        },
    );
    assert_eq!(images[1].image, second[0]);
    assert_ne!(images[0].image, images[1].image);
    // The first image carries the prompt's encoding time; a repeat comes from the cache.
    assert!(images[1].times.text_encode.is_zero());
}

#[test]
fn negative_prompts_count_only_under_true_cfg() {
    let pipeline = load("tiny-flux-schnell");
    let plain = run(&pipeline, &request());
    let negative = GenerateRequest {
        negative_prompt: Some("fog".into()),
        ..request()
    };
    assert_eq!(run(&pipeline, &negative), plain);
    let true_cfg = GenerateRequest {
        true_cfg_scale: Some(4.0),
        ..negative
    };
    assert_ne!(run(&pipeline, &true_cfg), plain);
}

#[test]
fn dev_is_steered_by_its_distilled_guidance() {
    let pipeline = load("tiny-flux-dev");
    let low = run(
        &pipeline,
        &GenerateRequest {
            guidance_scale: 1.0,
            ..request()
        },
    );
    let high = run(
        &pipeline,
        &GenerateRequest {
            guidance_scale: 3.5,
            ..request()
        },
    );
    assert_ne!(low, high);
}

#[test]
fn image_to_image_starts_from_the_picture() {
    let pipeline = load("tiny-flux-schnell");
    let picture =
        image::RgbImage::from_fn(48, 32, |x, y| image::Rgb([x as u8 * 5, y as u8 * 7, 90]));
    let with_strength = |strength| GenerateRequest {
        init_image: Some(InitImage {
            image: image::DynamicImage::ImageRgb8(picture.clone()),
            strength,
        }),
        steps: 4,
        ..request()
    };
    let mut progress = Vec::new();
    pipeline
        .generate(
            &with_strength(0.5),
            &mut |p| progress.push(p.steps),
            &AtomicBool::new(false),
        )
        .unwrap();
    // Half the schedule: 2 of 4 steps run.
    assert_eq!(progress, [2, 2]);
    assert_ne!(
        run(&pipeline, &with_strength(0.5)),
        run(&pipeline, &with_strength(1.0))
    );
}

#[test]
fn options_flux_does_not_take_are_refused_by_name() {
    let pipeline = load("tiny-flux-schnell");
    let refused = |request: GenerateRequest| match pipeline.generate(
        &request,
        &mut |_| {},
        &AtomicBool::new(false),
    ) {
        Err(EngineError::InvalidInput { field, .. }) => field,
        other => panic!(
            "expected an invalid field, got {:?}",
            other.map(|i| i.len())
        ),
    };
    let scheduler = GenerateRequest {
        scheduler: Some(SchedulerKind::Ddim),
        ..request()
    };
    assert_eq!(refused(scheduler), "scheduler");
    let karras = GenerateRequest {
        karras_sigmas: true,
        ..request()
    };
    assert_eq!(refused(karras), "karras_sigmas");
    let scale = GenerateRequest {
        true_cfg_scale: Some(0.5),
        ..request()
    };
    assert_eq!(refused(scale), "true_cfg_scale");
}

#[test]
fn cancel_stops_between_steps() {
    let pipeline = load("tiny-flux-schnell");
    let cancel = AtomicBool::new(false);
    let err = pipeline
        .generate(
            &request(),
            &mut |_| cancel.store(true, Ordering::SeqCst),
            &cancel,
        )
        .unwrap_err();
    assert!(matches!(err, EngineError::Cancelled), "{err}");
}

/// Loading each component for its stage changes where the weights live, not the picture;
/// a broken weight file is still found when the model loads.
#[test]
fn the_sequential_memory_plan_makes_the_same_pictures() {
    use seedbed_engine::residency::MemoryPlan;
    let dir = dit_models().join("tiny-flux-schnell");
    let with = |memory_plan| LoadOptions {
        memory_plan,
        ..LoadOptions::default()
    };
    let resident = Pipeline::load(&dir, with(MemoryPlan::Resident)).unwrap();
    let sequential = Pipeline::load(&dir, with(MemoryPlan::Sequential)).unwrap();
    let picture = image::RgbImage::from_fn(48, 32, |x, y| image::Rgb([x as u8, y as u8, 9]));
    let img2img = GenerateRequest {
        init_image: Some(InitImage {
            image: image::DynamicImage::ImageRgb8(picture),
            strength: 0.6,
        }),
        ..request()
    };
    for request in [request(), img2img] {
        assert_eq!(run(&sequential, &request), run(&resident, &request));
    }
    // Auto: sequential only above the budget; the tiny model is far below 1 GB.
    let auto = seedbed_engine::flux::pipeline::FluxPipeline::load(
        &dir,
        with(MemoryPlan::Auto { budget: 1 << 30 }),
    )
    .unwrap();
    assert!(auto.is_resident());

    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("flux");
    super::copy_dir(&dir, &copy);
    let weights = copy.join("transformer/diffusion_pytorch_model.safetensors");
    let length = std::fs::metadata(&weights).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&weights)
        .unwrap()
        .set_len(length / 2)
        .unwrap();
    let err = match Pipeline::load(&copy, with(MemoryPlan::Sequential)) {
        Ok(_) => panic!("a truncated transformer loaded"),
        Err(err) => err,
    };
    assert!(matches!(err, EngineError::Weights { .. }), "{err}");
    assert!(err.to_string().contains("diffusion_pytorch_model"), "{err}");
}
