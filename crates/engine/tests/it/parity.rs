use std::path::Path;

use seedbed_engine::LoadOptions;
use seedbed_engine::parity::{Case, ParityRunner, read_cases};

use super::{fixtures, models};

/// Every shared diffusers reference case matches at every stage it carries.
#[test]
fn shared_reference_cases_pass() {
    assert_cases_pass(&fixtures().join("cases"), 5);
}

/// Our own extra cases (same format, same models): Karras, v-prediction, other spacings,
/// img2img with other schedulers, long prompts, SDXL with guidance.
#[test]
fn extra_reference_cases_pass() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/cases");
    assert_cases_pass(&dir, 15);
}

/// The transformer families' cases (FLUX.1, Z-Image, SD3.5): every one passes at every stage
/// it carries, the text, the one-call transformer probe, the loop's final latents and the image
/// among them.
#[test]
fn dit_reference_cases_pass() {
    let stages = ["text", "transformer probe", "latents", "image"];
    assert_dit_cases_pass(&fixtures().join("cases-dit"), 8, &stages, |_, _| {});
}

/// Our own FLUX, Z-Image and SD3.5 cases (`tools/dit/cases_own.json`): image-to-image for
/// each family (odd sizes, each pipeline's own start step and noising), CFG with an explicit
/// negative prompt on non-square sizes, prompts past the tokenizers' lengths (Qwen3 cut at 512
/// after the chat template), shorter T5 lengths. Image-to-image cases must also compare our
/// reading of the picture file and our VAE encoding of the picture, so that a wrong start is
/// caught where it happens.
#[test]
fn own_dit_cases_pass_every_stage() {
    let stages = ["text", "transformer probe", "latents", "image"];
    assert_dit_cases_pass(&fixtures().join("cases-dit-own"), 10, &stages, |_, _| {});
}

/// Runs the `count` DiT cases of `cases_dir` on fixtures/models-dit: each passes, with each of
/// `stages` compared (and, for image-to-image, our reading of the picture and its encoding);
/// `then` checks more of a case with the same runner.
fn assert_dit_cases_pass(
    cases_dir: &Path,
    count: usize,
    stages: &[&'static str],
    mut then: impl FnMut(&mut ParityRunner, &Case),
) {
    let cases = read_cases(cases_dir).unwrap();
    assert_eq!(cases.len(), count);
    let models = fixtures().join("models-dit");
    let mut runner = ParityRunner::new(cases_dir, &models, 4e-3, LoadOptions::default());
    for case in &cases {
        let report = runner.run(case);
        println!("{}", report.line());
        for c in &report.comparisons {
            println!("  {} {}: max |diff| {:.2e}", c.stage, c.tensor, c.max_abs);
        }
        assert!(report.passed(), "{}", report.line());
        let compared: Vec<_> = report.comparisons.iter().map(|c| c.stage).collect();
        let mut expected = stages.to_vec();
        if case.init_image == Some(true) {
            expected.extend(["init image", "image latents"]);
        }
        for stage in expected {
            assert!(
                compared.contains(&stage),
                "{}: {stage} not compared",
                case.name
            );
        }
        then(&mut runner, case);
    }
}

fn assert_cases_pass(cases_dir: &Path, expected: usize) {
    let cases = read_cases(cases_dir).unwrap();
    assert_eq!(cases.len(), expected);
    let mut runner = ParityRunner::new(cases_dir, &models(), 4e-3, LoadOptions::default());
    let mut failures = Vec::new();
    for case in &cases {
        let report = runner.run(case);
        println!("{}", report.line());
        // Every case carries its text, latents and image stages; all must have been compared.
        let stages: Vec<_> = report.comparisons.iter().map(|c| c.stage).collect();
        if report.passed() {
            for stage in ["text", "unet probe", "latents", "image"] {
                assert!(
                    stages.contains(&stage),
                    "{}: stage {stage} not compared",
                    case.name
                );
            }
        } else {
            failures.push(report.line());
        }
    }
    assert!(
        failures.is_empty(),
        "failing cases:\n{}",
        failures.join("\n")
    );
}

/// A tighter tolerance than the engine can meet must fail, so the check is not vacuous.
#[test]
fn impossible_tolerance_fails() {
    let cases_dir = fixtures().join("cases");
    let cases = read_cases(&cases_dir).unwrap();
    let mut runner = ParityRunner::new(&cases_dir, &models(), -1.0, LoadOptions::default());
    let report = runner.run(&cases[0]);
    assert!(!report.passed());
    assert!(
        report.line().ends_with(')') && report.line().contains("FAIL"),
        "{}",
        report.line()
    );
}

/// On CPU a half-precision model keeps its weights in f16/bf16 and computes in f32, so every
/// case runs end to end and differs from the reference by the weights' rounding only. Measured
/// worst cases on these fixtures (bench/RESULTS.md): f16 stages 9.0e-4 of the reference's
/// magnitude, image 4.1e-4; bf16 (8 significant bits to f16's 11) stages 9.4e-3, image 3.9e-3.
/// The budgets below leave about 2x headroom.
///
/// On a CPU with AVX512-BF16 a bf16 model's linear layers, attention and convolutions (with
/// AMX every one, the VAE's too; without it the smaller ones) also round their activations to
/// bf16, as PyTorch's bf16 does: there each case's image may be no further from the reference
/// than diffusers' own bf16 lands ([`PYTORCH_BF16_IMAGE`]). Measured with AMX: up to 2.6e-2
/// (sd3-img2img, where PyTorch is 4.7e-2 off), at most 0.85 of PyTorch's on every case
/// (zimage-turbo); in AVX-512 registers (Zen 4), the VAE in f32: up to 1.4e-2 (sd-img2img,
/// where PyTorch is 3.7e-2 off), at most 0.42 of PyTorch's on every case.
///
/// On candle's ops (the `candle_ops` binary) an f16 model computes in f16, as on a GPU
/// ([`seedbed_engine::nn::layers::compute_dtype`]): there each image may be up to 1.5x as far
/// from the reference as diffusers' own f16 lands ([`PYTORCH_F16_IMAGE`]), each stage 1e-2 of
/// the reference's magnitude. Measured (Zen 5): images at most 1.14x PyTorch's (sd-img2img,
/// 5.5e-3), stages up to 4.2e-3 (the final latents).
#[test]
fn half_precision_weights_stay_close_on_cpu() {
    use seedbed_engine::candle::{DType, Device};
    let sets = [
        (fixtures().join("cases"), models()),
        (fixtures().join("cases-dit"), fixtures().join("models-dit")),
        (
            fixtures().join("cases-dit-own"),
            fixtures().join("models-dit"),
        ),
    ];
    // Asked once the sets are made: `fixtures()` has switched the candle_ops binary by then.
    let bf16_kernels = seedbed_engine::nn::tiles::available();
    let f16_computed =
        seedbed_engine::nn::layers::compute_dtype(DType::F16, &Device::Cpu) == DType::F16;
    let f16_stages = if f16_computed { 1e-2 } else { 2e-3 };
    for (cases_dir, models_dir) in sets {
        let cases = read_cases(&cases_dir).unwrap();
        for (dtype, stage_tolerance, image_tolerance) in
            [(DType::F16, f16_stages, 4e-3), (DType::BF16, 2e-2, 8e-3)]
        {
            let options = LoadOptions {
                dtype,
                ..LoadOptions::default()
            };
            let mut runner = ParityRunner::new(&cases_dir, &models_dir, image_tolerance, options)
                .with_stage_tolerance(stage_tolerance);
            for case in &cases {
                if dtype == DType::BF16 && bf16_kernels {
                    runner.set_image_tolerance(pytorch_image(PYTORCH_BF16_IMAGE, &case.name));
                }
                if dtype == DType::F16 && f16_computed {
                    let pytorch = pytorch_image(PYTORCH_F16_IMAGE, &case.name);
                    runner.set_image_tolerance(1.5 * pytorch);
                }
                let report = runner.run(case);
                println!("{dtype:?} {}", report.line());
                if report.skipped.is_some() {
                    continue;
                }
                for c in &report.comparisons {
                    println!(
                        "  {} {}: {:.2e} of the budget",
                        c.stage,
                        c.tensor,
                        c.max_abs / c.bound
                    );
                }
                assert!(report.passed(), "{dtype:?}: {}", report.line());
                assert!(report.comparisons.len() >= 4, "{}", report.line());
            }
        }
    }
}

/// How far diffusers' own bf16 image lands from its f32 reference on each case: the whole
/// pipeline cast to bf16, its VAE too, as `torch_dtype=torch.bfloat16` loads it
/// (`python tools/reference/pytorch_bf16_error.py`, diffusers 0.42.1, torch 2.15.0).
const PYTORCH_BF16_IMAGE: &[(&str, f64)] = &[
    ("sd-ddim-cfg", 3.14e-02),
    ("sd-euler-turbo", 7.78e-03),
    ("sd-dpmpp2m", 1.43e-02),
    ("sd-img2img", 3.71e-02),
    ("sdxl-euler-turbo", 7.43e-03),
    ("flux-schnell-4step", 2.29e-02),
    ("flux-schnell-wide", 1.79e-02),
    ("flux-dev-guidance", 4.54e-02),
    ("flux-dev-true-cfg", 2.04e-02),
    ("zimage-turbo", 2.00e-02),
    ("zimage-cfg", 2.66e-02),
    ("sd3-cfg", 6.29e-02),
    ("sd3-turbo", 3.31e-02),
    ("flux-schnell-img2img", 2.29e-02),
    ("flux-dev-img2img-wide", 4.96e-02),
    ("flux-schnell-long-prompt", 2.00e-02),
    ("flux-dev-tall-t5-128", 4.94e-02),
    ("zimage-img2img", 1.88e-02),
    ("zimage-cfg-negative-wide", 2.47e-02),
    ("zimage-long-prompt", 1.94e-02),
    ("sd3-img2img", 4.69e-02),
    ("sd3-cfg-negative-tall", 6.90e-02),
    ("sd3-t5-128", 3.94e-02),
];

/// The same in f16 (`python tools/reference/pytorch_bf16_error.py float16`, diffusers 0.42.1,
/// torch 2.15.0, on the CPU; SDXL's pipeline keeps its VAE in f32 there, as the engine does).
const PYTORCH_F16_IMAGE: &[(&str, f64)] = &[
    ("sd-ddim-cfg", 3.29e-03),
    ("sd-euler-turbo", 1.16e-03),
    ("sd-dpmpp2m", 2.14e-03),
    ("sd-img2img", 4.81e-03),
    ("sdxl-euler-turbo", 4.95e-04),
    ("flux-schnell-4step", 2.52e-03),
    ("flux-schnell-wide", 2.84e-03),
    ("flux-dev-guidance", 2.40e-03),
    ("flux-dev-true-cfg", 3.03e-03),
    ("zimage-turbo", 3.06e-03),
    ("zimage-cfg", 2.91e-03),
    ("sd3-cfg", 8.14e-03),
    ("sd3-turbo", 4.43e-03),
    ("flux-schnell-img2img", 2.55e-03),
    ("flux-dev-img2img-wide", 3.03e-03),
    ("flux-schnell-long-prompt", 3.28e-03),
    ("flux-dev-tall-t5-128", 2.96e-03),
    ("zimage-img2img", 3.03e-03),
    ("zimage-cfg-negative-wide", 3.22e-03),
    ("zimage-long-prompt", 2.68e-03),
    ("sd3-img2img", 7.05e-03),
    ("sd3-cfg-negative-tall", 6.24e-03),
    ("sd3-t5-128", 4.59e-03),
];

/// `case`'s figure in one of the tables above.
fn pytorch_image(table: &[(&str, f64)], case: &str) -> f64 {
    match table.iter().find(|(name, _)| *name == case) {
        Some((_, error)) => *error,
        None => panic!("no PyTorch figure for {case}: run tools/reference/pytorch_bf16_error.py"),
    }
}

/// LoRAs against diffusers' `load_lora_weights` + `fuse_lora` (`tools/lora/make_lora_cases.py`):
/// PEFT files for SD and SDXL at two scales each, and a Kohya-named one with its own alpha; every
/// stage within the base cases' tolerances, so the text encoders' and the UNet's adapters are
/// each checked where they act.
#[test]
fn lora_reference_cases_pass() {
    assert_cases_pass(&fixtures().join("cases-lora"), 5);
}

/// The LoRA cases are not passed by the base model: without their LoRAs every one fails, so
/// the check above sees the adapters' effect.
#[test]
fn lora_cases_fail_without_their_loras() {
    let cases_dir = fixtures().join("cases-lora");
    let mut runner = ParityRunner::new(&cases_dir, &models(), 4e-3, LoadOptions::default());
    for mut case in read_cases(&cases_dir).unwrap() {
        case.loras.clear();
        let report = runner.run(&case);
        assert!(!report.passed(), "{} passes without its LoRAs", case.name);
    }
}

/// A PEFT LoRA on tiny FLUX.1 [dev]'s transformer (`transformer.<module>.lora_A/B`) at two
/// scales, against diffusers' fused pipeline in the DiT case format: the transformer probe, the
/// latents and the image within the DiT cases' tolerances.
#[test]
fn flux_lora_reference_cases_pass() {
    let cases_dir = fixtures().join("cases-lora-dit");
    assert_dit_cases_pass(&cases_dir, 2, &["transformer probe"], |runner, case| {
        let mut without = case.clone();
        without.loras.clear();
        assert!(
            !runner.run(&without).passed(),
            "{} passes without its LoRA",
            case.name
        );
    });
}
