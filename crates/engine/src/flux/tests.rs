//! FLUX's packing. The pipeline itself is checked stage by stage against every FLUX reference
//! case by `parity` (crates/engine/tests/it/parity.rs).

use std::path::Path;
use std::sync::atomic::AtomicBool;

use candle_core::quantized::GgmlDType;
use candle_core::{Device, IndexOp, Tensor};

use super::pipeline::{FluxPipeline, FluxRun, pack, unpack};
use super::transformer;
use crate::checkpoint::{Layout, Pointer};
use crate::pipeline::{GenerateRequest, LoadOptions};
use crate::test_support::{dit_model_dir, fixtures_dir};

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
    let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(flat(&back), flat(&x));
}

/// A prompt encoded a moment ago comes from the cache: the very same tensors, not equal ones.
#[test]
fn a_repeated_prompt_is_encoded_once() {
    let dir = dit_model_dir("tiny-flux-schnell");
    let pipeline = FluxPipeline::load(&dir, LoadOptions::default()).unwrap();
    let first = pipeline.encode("a red fox", 256).unwrap();
    let again = pipeline.encode("a red fox", 256).unwrap();
    assert_eq!(first.text.id(), again.text.id());
    assert_eq!(first.pooled.id(), again.pooled.id());
    let longer = pipeline.encode("a red fox", 512).unwrap();
    assert_ne!(
        first.text.id(),
        longer.text.id(),
        "another T5 length is another entry"
    );
    assert_eq!(longer.text.dim(1).unwrap(), 512);
}

/// A copy of `base`'s folder (its components linked, not copied) whose transformer is a
/// [`Pointer`] to a single-file checkpoint, with `config` as its `config.json`.
fn with_single_file_transformer(
    base: &Path,
    pointer: &Pointer,
    config: &transformer::FluxConfig,
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(base).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "transformer" {
            std::os::unix::fs::symlink(entry.path(), dir.path().join(entry.file_name())).unwrap();
        }
    }
    let transformer = dir.path().join("transformer");
    pointer.write(&transformer).unwrap();
    std::fs::write(
        transformer.join("config.json"),
        serde_json::to_vec_pretty(config).unwrap(),
    )
    .unwrap();
    dir
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// Two denoising steps of tiny-flux-dev from fixed noise: the final latents, and the image.
fn dev_run(dir: &Path) -> (Tensor, image::RgbImage) {
    let pipeline = FluxPipeline::load(dir, LoadOptions::default()).unwrap();
    let prompt = pipeline.encode("a lighthouse at dusk", 512).unwrap();
    let noise = (Tensor::arange(0f32, 384., &Device::Cpu).unwrap() * 0.7)
        .unwrap()
        .sin()
        .unwrap()
        .reshape((1, 16, 4, 6))
        .unwrap();
    let run = FluxRun {
        prompt: &prompt,
        negative: None,
        noise: &noise,
        steps: 2,
        guidance: 3.5,
        image: None,
    };
    let latents = pipeline
        .denoise(&run, &mut |_, _, _| {}, &AtomicBool::new(false))
        .unwrap();
    let request = GenerateRequest {
        prompt: "a lighthouse at dusk".into(),
        negative_prompt: None,
        width: 48,
        height: 32,
        steps: 2,
        guidance_scale: 3.5,
        scheduler: None,
        karras_sigmas: false,
        true_cfg_scale: None,
        seed: 7,
        count: 1,
        init_image: None,
    };
    let image = crate::Pipeline::load(dir, LoadOptions::default())
        .unwrap()
        .generate(&request, &mut |_| {}, &AtomicBool::new(false))
        .unwrap()
        .remove(0)
        .image;
    (latents, image)
}

/// tiny-flux-dev's transformer written in BFL's layout by tools/checkpoints/flux_to_bfl.py
/// (diffusers' own conversion run backwards, independent of ours) and read back through a
/// `flux-bfl` pointer gives the folder's latents and image: the remap only renames, cuts and
/// swaps, so every weight is the same f32 value.
#[test]
fn a_bfl_single_file_generates_what_the_folder_does() {
    let base = dit_model_dir("tiny-flux-dev");
    let file = fixtures_dir().join("single-file/tiny-flux-dev-bfl.safetensors");
    let pointer = Pointer {
        file: file.canonicalize().unwrap(),
        layout: Layout::FluxBfl,
    };
    let config = transformer::FluxConfig::read(&base.join("transformer/config.json")).unwrap();
    let single = with_single_file_transformer(&base, &pointer, &config);
    let (folder_latents, folder_image) = dev_run(&base);
    let (single_latents, single_image) = dev_run(single.path());
    let diff = max_abs_diff(&folder_latents, &single_latents);
    assert!(diff <= 1e-6, "latents differ by {diff}");
    assert_eq!(folder_image, single_image);

    // The config the file implies is the folder's, but for the RoPE axes, which no file
    // records: FLUX.1's split [d/8, 7d/16, 7d/16] where the tiny model chose [8, 12, 12].
    let shapes = crate::checkpoint::read_shapes(&file).unwrap();
    let inferred = crate::checkpoint::flux_bfl::config(&shapes).unwrap();
    assert_eq!(inferred.axes_dims_rope, [4, 14, 14]);
    assert_eq!(
        transformer::FluxConfig {
            axes_dims_rope: config.axes_dims_rope.clone(),
            ..inferred
        },
        config
    );
}

/// A GGUF transformer behind a pointer loads in the pipeline under either memory plan (the
/// sequential one only checks the file at load and reads it at the denoising stage), and
/// both give the same picture.
#[test]
fn a_gguf_transformer_runs_in_the_pipeline_under_either_memory_plan() {
    use crate::residency::MemoryPlan;
    let base = dit_model_dir("tiny-flux-dev");
    let bfl = fixtures_dir().join("single-file/tiny-flux-dev-bfl.safetensors");
    let tensors: Vec<(String, Tensor)> = candle_core::safetensors::load(&bfl, &Device::Cpu)
        .unwrap()
        .into_iter()
        .collect();
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("tiny-flux-dev-q8_0.gguf");
    crate::checkpoint::gguf::write(&file, &tensors, GgmlDType::Q8_0).unwrap();
    let pointer = Pointer {
        file,
        layout: Layout::FluxBfl,
    };
    let config = transformer::FluxConfig::read(&base.join("transformer/config.json")).unwrap();
    let single = with_single_file_transformer(&base, &pointer, &config);
    let request = GenerateRequest {
        prompt: "a lighthouse at dusk".into(),
        negative_prompt: None,
        width: 32,
        height: 32,
        steps: 2,
        guidance_scale: 3.5,
        scheduler: None,
        karras_sigmas: false,
        true_cfg_scale: None,
        seed: 3,
        count: 1,
        init_image: None,
    };
    let images: Vec<image::RgbImage> = [MemoryPlan::Resident, MemoryPlan::Sequential]
        .into_iter()
        .map(|memory_plan| {
            let options = LoadOptions {
                memory_plan,
                ..LoadOptions::default()
            };
            crate::Pipeline::load(single.path(), options)
                .unwrap()
                .generate(&request, &mut |_| {}, &AtomicBool::new(false))
                .unwrap()
                .remove(0)
                .image
        })
        .collect();
    assert_eq!(images[0], images[1]);
}
