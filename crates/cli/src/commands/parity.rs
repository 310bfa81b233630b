//! `seedbed parity`: run the diffusers reference cases through the engine.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use seedbed_engine::parity::{DEFAULT_STAGE_TOLERANCE, ParityRunner, read_cases};

use crate::device::DeviceArgs;

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  seedbed parity --cases fixtures/cases --models fixtures/models
  seedbed parity --cases fixtures/cases --models fixtures/models --only sdxl --dtype f16 --stage-tolerance 2e-2")]
pub struct ParityArgs {
    /// Folder with `cases.json` and one `<name>.safetensors` per case.
    #[arg(long, env = "SEEDBED_PARITY_CASES")]
    cases: PathBuf,

    /// Folder holding the model folders the cases name.
    #[arg(long, env = "SEEDBED_PARITY_MODELS")]
    models: PathBuf,

    /// Largest allowed absolute difference of the final image (4e-3 is one 8-bit level).
    #[arg(long, default_value_t = 4e-3)]
    tolerance: f64,

    /// Largest allowed difference of the intermediate stages (text embeddings, UNet probe,
    /// final latents), as a fraction of the reference's largest magnitude (at least 1).
    /// Half-precision weights need about 2e-2.
    #[arg(long, default_value_t = DEFAULT_STAGE_TOLERANCE)]
    stage_tolerance: f64,

    /// Run only the cases whose name contains this text.
    #[arg(long)]
    only: Option<String>,

    #[command(flatten)]
    device: DeviceArgs,
}

pub fn run(args: ParityArgs) -> Result<ExitCode> {
    let cases = read_cases(&args.cases)?;
    let mut runner = ParityRunner::new(
        &args.cases,
        &args.models,
        args.tolerance,
        args.device.load_options()?,
    )
    .with_stage_tolerance(args.stage_tolerance);
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for case in cases
        .iter()
        .filter(|c| args.only.as_ref().is_none_or(|only| c.name.contains(only)))
    {
        let report = runner.run(case);
        println!("{}", report.line());
        if report.skipped.is_some() {
            skipped += 1;
        } else if report.passed() {
            passed += 1;
        } else {
            failed += 1;
        }
    }
    if skipped > 0 {
        println!("{passed} passed, {failed} failed, {skipped} skipped");
    } else {
        println!("{passed} passed, {failed} failed");
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(crate::EXIT_FAILURE)
    })
}
