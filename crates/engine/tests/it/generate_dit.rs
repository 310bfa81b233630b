//! Z-Image and SD3.5 through the engine's one `Pipeline`, as core and the CLI drive them: the
//! family from `model_index.json`, sizes, determinism and progress, guidance and the negative
//! prompt, image-to-image, refusals, cancel, the sequential memory plan, a folder without T5.

use std::sync::atomic::{AtomicBool, Ordering};

use seedbed_engine::model::Family;
use seedbed_engine::residency::MemoryPlan;
use seedbed_engine::scheduler::SchedulerKind;
use seedbed_engine::{EngineError, GenerateRequest, InitImage, LoadOptions, Pipeline};

use super::dit_models;

/// The two families with the guidance that turns their classifier-free guidance on.
const MODELS: [(&str, Family, f64); 2] = [
    ("tiny-zimage", Family::ZImage, 2.0),
    ("tiny-sd3", Family::StableDiffusion3, 4.0),
];

/// The default size as diffusers' pipelines have it: Z-Image's 1024, SD3's transformer
/// `sample_size` (32 in the tiny fixture, 128 in SD3.5) times the VAE's 8.
const NATIVE_SIZES: [u32; 2] = [1024, 256];

fn load(name: &str, memory_plan: MemoryPlan) -> Pipeline {
    let options = LoadOptions {
        memory_plan,
        ..LoadOptions::default()
    };
    Pipeline::load(&dit_models().join(name), options).unwrap()
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

fn with_picture(strength: f64) -> GenerateRequest {
    let picture =
        image::RgbImage::from_fn(48, 32, |x, y| image::Rgb([x as u8 * 5, y as u8 * 7, 90]));
    GenerateRequest {
        init_image: Some(InitImage {
            image: image::DynamicImage::ImageRgb8(picture),
            strength,
        }),
        steps: 4,
        ..request()
    }
}

#[test]
fn folders_load_as_their_family_with_16_pixel_latents() {
    for ((name, family, _), native) in MODELS.into_iter().zip(NATIVE_SIZES) {
        let pipeline = load(name, MemoryPlan::Resident);
        assert_eq!(pipeline.family(), family, "{name}");
        assert_eq!(
            (pipeline.latent_factor(), pipeline.native_size()),
            (16, native)
        );
        let odd = GenerateRequest {
            width: 40,
            ..request()
        };
        let err = pipeline
            .generate(&odd, &mut |_| {}, &AtomicBool::new(false))
            .unwrap_err();
        assert!(err.to_string().contains("multiple of 16"), "{name}: {err}");
    }
}

#[test]
fn batches_are_deterministic_per_seed_with_progress() {
    for (name, _, _) in MODELS {
        let pipeline = load(name, MemoryPlan::Resident);
        let mut steps = Vec::new();
        let batch = GenerateRequest {
            count: 2,
            ..request()
        };
        let images = pipeline
            .generate(
                &batch,
                &mut |p| steps.push((p.image, p.step, p.steps)),
                &AtomicBool::new(false),
            )
            .unwrap();
        assert_eq!(images[0].image.dimensions(), (48, 32));
        assert_eq!(
            steps,
            [(0, 1, 2), (0, 2, 2), (1, 1, 2), (1, 2, 2)],
            "{name}"
        );
        let second = GenerateRequest {
            seed: 8,
            ..request()
        };
        assert_eq!(images[1].image, run(&pipeline, &second)[0], "{name}");
        assert_ne!(images[0].image, images[1].image, "{name}");
        // The repeated prompt came from the encoder cache.
        assert!(images[1].times.text_encode.is_zero(), "{name}");
    }
}

/// Below its guidance threshold a family ignores the negative prompt; above it the
/// negative prompt (or "", when none is given) steers the picture.
#[test]
fn the_negative_prompt_counts_only_under_guidance() {
    for (name, _, guidance) in MODELS {
        let pipeline = load(name, MemoryPlan::Resident);
        let plain = run(&pipeline, &request());
        let negative = GenerateRequest {
            negative_prompt: Some("fog".into()),
            ..request()
        };
        assert_eq!(run(&pipeline, &negative), plain, "{name}");
        let guided = GenerateRequest {
            guidance_scale: guidance,
            ..request()
        };
        let guided_negative = GenerateRequest {
            guidance_scale: guidance,
            ..negative
        };
        let (empty, fog) = (run(&pipeline, &guided), run(&pipeline, &guided_negative));
        assert_ne!(empty, plain, "{name}");
        assert_ne!(fog, empty, "{name}");
    }
}

#[test]
fn image_to_image_runs_the_tail_of_the_schedule() {
    for (name, _, _) in MODELS {
        let pipeline = load(name, MemoryPlan::Resident);
        let mut progress = Vec::new();
        pipeline
            .generate(
                &with_picture(0.5),
                &mut |p| progress.push(p.steps),
                &AtomicBool::new(false),
            )
            .unwrap();
        assert_eq!(progress, [2, 2], "{name}: half of 4 steps");
        assert_ne!(
            run(&pipeline, &with_picture(0.5)),
            run(&pipeline, &with_picture(1.0)),
            "{name}"
        );
    }
}

#[test]
fn options_of_other_families_are_refused_by_name() {
    for (name, _, _) in MODELS {
        let pipeline = load(name, MemoryPlan::Resident);
        let refused = |request: GenerateRequest| match pipeline.generate(
            &request,
            &mut |_| {},
            &AtomicBool::new(false),
        ) {
            Err(EngineError::InvalidInput { field, .. }) => field,
            other => panic!(
                "{name}: expected an invalid field, got {:?}",
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
        let true_cfg = GenerateRequest {
            true_cfg_scale: Some(3.0),
            ..request()
        };
        assert_eq!(refused(true_cfg), "true_cfg_scale");
    }
}

#[test]
fn cancel_stops_between_steps() {
    for (name, _, _) in MODELS {
        let pipeline = load(name, MemoryPlan::Resident);
        let cancel = AtomicBool::new(false);
        let err = pipeline
            .generate(
                &request(),
                &mut |_| cancel.store(true, Ordering::SeqCst),
                &cancel,
            )
            .unwrap_err();
        assert!(matches!(err, EngineError::Cancelled), "{name}: {err}");
    }
}

/// Loading each component for its stage changes where the weights live, not the picture.
#[test]
fn the_sequential_memory_plan_makes_the_same_pictures() {
    for (name, _, guidance) in MODELS {
        let resident = load(name, MemoryPlan::Resident);
        let sequential = load(name, MemoryPlan::Sequential);
        let guided = GenerateRequest {
            guidance_scale: guidance,
            ..request()
        };
        for request in [guided, with_picture(0.6)] {
            assert_eq!(
                run(&sequential, &request),
                run(&resident, &request),
                "{name}"
            );
        }
    }
}

/// An SD3.5 folder saved without T5 (`text_encoder_3: [null, null]`, no `tokenizer_3/` or
/// `text_encoder_3/`) still generates, with zeros in T5's place, as diffusers does.
#[test]
fn sd3_without_t5_generates() {
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("sd3-no-t5");
    super::copy_dir(&dit_models().join("tiny-sd3"), &copy);
    std::fs::remove_dir_all(copy.join("text_encoder_3")).unwrap();
    std::fs::remove_dir_all(copy.join("tokenizer_3")).unwrap();
    let index_path = copy.join("model_index.json");
    let mut index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&index_path).unwrap()).unwrap();
    index["text_encoder_3"] = serde_json::json!([null, null]);
    index["tokenizer_3"] = serde_json::json!([null, null]);
    std::fs::write(&index_path, index.to_string()).unwrap();
    let pipeline = Pipeline::load(&copy, LoadOptions::default()).unwrap();
    let without = run(&pipeline, &request());
    assert_eq!(without[0].dimensions(), (48, 32));
    assert_ne!(
        without,
        run(&load("tiny-sd3", MemoryPlan::Resident), &request())
    );
}
