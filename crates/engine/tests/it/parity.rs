use seedbed_engine::LoadOptions;
use seedbed_engine::parity::{ParityRunner, read_cases};

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

fn assert_cases_pass(cases_dir: &std::path::Path, expected: usize) {
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
