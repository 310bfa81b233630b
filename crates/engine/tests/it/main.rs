//! Engine integration tests on the shared tiny diffusers models.
//!
//! Built twice: as `it`, on the engine's own CPU kernels, and as `candle_ops`, on candle's own
//! ops over weights as loaded, none of our kernels or weight layouts
//! (`seedbed_engine::nn::own_kernels`): the path every device but the CPU takes. No GPU runs
//! in CI; the second binary is what shows, on the CPU, that a GPU computes the reference
//! pictures too. The switch holds for a whole process, hence a binary of its own, whose root
//! (`tests/candle_ops/main.rs`) takes this file in as a module: the tests here name what they
//! share by `super::`, the root in both.

mod broken_models;
mod generate;
mod generate_dit;
mod generate_flux;
mod parity;
mod paths;
mod shared_components;
mod single_file;

pub use paths::*;

/// Whether this binary is the one on candle's ops.
const ON_CANDLE_OPS: bool = matches!(env!("CARGO_CRATE_NAME").as_bytes(), b"candle_ops");

/// What [`paths::fixtures`] does before a test reads its models, so before any layer is built,
/// whichever test runs first: switch this process to candle's ops where it is that binary.
fn before_any_model() {
    if ON_CANDLE_OPS {
        seedbed_engine::nn::use_candle_ops_only();
    }
}

/// Each binary runs the path it says, and `seedbed bench`'s report names it.
#[test]
fn this_binary_runs_the_kernels_it_says() {
    let _ = fixtures();
    let cpu = seedbed_engine::candle::Device::Cpu;
    assert_eq!(seedbed_engine::nn::candle_ops_only(), ON_CANDLE_OPS);
    assert_eq!(seedbed_engine::nn::own_kernels(&cpu), !ON_CANDLE_OPS);
    let report = seedbed_engine::cpu::CpuReport::detect();
    let candle = report
        .lines()
        .iter()
        .any(|line| line.contains("candle's own"));
    assert_eq!(candle, ON_CANDLE_OPS, "{report:?}");
}
