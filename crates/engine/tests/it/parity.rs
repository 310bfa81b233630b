use std::path::Path;

use seedbed_engine::LoadOptions;
use seedbed_engine::parity::{Case, ParityRunner, read_cases};

use crate::{fixtures, models};

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
/// On a CPU with AMX a bf16 model's convolutions and attention also round their activations
/// to bf16, as PyTorch's bf16 does: the images then differ by up to 1.37e-2 (sd-img2img;
/// sd-ddim-cfg 1.09e-2), where diffusers' own bf16 (text encoder and UNet in bf16) differs from its f32 reference
/// by 2.30e-2 on that case and 1.01e-2 on sd-dpmpp2m. There the image's budget is PyTorch's
/// worst: no further from the reference than PyTorch's bf16 itself.
#[test]
fn half_precision_weights_stay_close_on_cpu() {
    use seedbed_engine::candle::DType;
    let bf16_image = if seedbed_engine::nn::amx::available() {
        2.3e-2
    } else {
        8e-3
    };
    let sets = [
        (fixtures().join("cases"), models()),
        (fixtures().join("cases-dit"), fixtures().join("models-dit")),
        (
            fixtures().join("cases-dit-own"),
            fixtures().join("models-dit"),
        ),
    ];
    for (cases_dir, models_dir) in sets {
        let cases = read_cases(&cases_dir).unwrap();
        for (dtype, stage_tolerance, image_tolerance) in
            [(DType::F16, 2e-3, 4e-3), (DType::BF16, 2e-2, bf16_image)]
        {
            let options = LoadOptions {
                dtype,
                ..LoadOptions::default()
            };
            let mut runner = ParityRunner::new(&cases_dir, &models_dir, image_tolerance, options)
                .with_stage_tolerance(stage_tolerance);
            for case in &cases {
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
