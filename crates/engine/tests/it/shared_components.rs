//! A second pipeline built from the same files shares those components instead of holding
//! a second copy of their weights.

use std::ptr;
use std::sync::atomic::AtomicBool;

use candle_core::DType;
use seedbed_engine::scheduler::SchedulerKind;
use seedbed_engine::sd::SdPipeline;
use seedbed_engine::{GenerateRequest, LoadOptions};

use super::{copy_model, models};

#[test]
fn identical_files_are_loaded_once_and_copies_are_not_confused() {
    let tmp = tempfile::tempdir().unwrap();
    // Another folder whose UNet and VAE are symlinks to the fixture's (as in a Hugging Face
    // cache, where revisions point at the same blobs) and whose text encoder is a copy.
    let copy = copy_model("tiny-sd", tmp.path());
    for component in ["unet", "vae"] {
        std::fs::remove_dir_all(copy.join(component)).unwrap();
        std::os::unix::fs::symlink(
            models().join("tiny-sd").join(component),
            copy.join(component),
        )
        .unwrap();
    }
    let original = SdPipeline::load(&models().join("tiny-sd"), LoadOptions::default()).unwrap();
    let second = SdPipeline::load(&copy, LoadOptions::default()).unwrap();
    assert!(ptr::eq(original.unet(), second.unet()));
    assert!(ptr::eq(original.vae(), second.vae()));
    // A copied file is a different file: keys are files, not contents.
    assert!(!ptr::eq(
        original.text().first_model(),
        second.text().first_model()
    ));

    // Another dtype is another component.
    let options = LoadOptions {
        dtype: DType::BF16,
        ..LoadOptions::default()
    };
    let bf16 = SdPipeline::load(&copy, options).unwrap();
    assert!(!ptr::eq(original.unet(), bf16.unet()));

    // The second pipeline keeps working after the first one is dropped.
    drop(original);
    let request = GenerateRequest {
        prompt: "a red barn".into(),
        negative_prompt: None,
        width: 64,
        height: 64,
        steps: 2,
        guidance_scale: 1.0,
        scheduler: Some(SchedulerKind::Euler),
        true_cfg_scale: None,
        karras_sigmas: false,
        seed: 1,
        count: 1,
        init_image: None,
    };
    let images = second
        .generate(&request, &mut |_| {}, &AtomicBool::new(false))
        .unwrap();
    assert_eq!(images[0].image.dimensions(), (64, 64));
}
