//! Choosing the device and compute precision, shared by the commands that run models.

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use seedbed_engine::LoadOptions;
use seedbed_engine::candle::{DType, Device};
use seedbed_engine::pipeline::VaeTiling;
use seedbed_engine::residency::MemoryPlan;
use seedbed_engine::weights::Variant;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DeviceKind {
    Cpu,
    Cuda,
    Metal,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Precision {
    F32,
    F16,
    Bf16,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Tiling {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Plan {
    Auto,
    Resident,
    Sequential,
}

#[derive(Debug, Args)]
pub struct DeviceArgs {
    /// Where to run the models. `cuda` and `metal` need a build with that cargo feature.
    #[arg(long, env = "SEEDBED_DEVICE", value_enum, default_value = "cpu")]
    pub device: DeviceKind,

    /// Precision of the models' weights (a VAE whose config asks for f32 stays in f32 for f16,
    /// and for bf16 on a CPU without AMX). f32 matches the reference most closely; f16/bf16
    /// halve the weights' memory. A GPU also computes in that precision; the CPU computes in
    /// f32, except that on a CPU with AVX512-BF16 a bf16 model's linear layers, attention and
    /// convolutions multiply in bf16 as PyTorch does (with AMX the VAE's too; without it the
    /// larger 3x3 convolutions stay f32, by Winograd), so the cost is mostly the weights'
    /// rounding (f16 is within the f32 parity budget, bf16 about 10x it; with AVX512-BF16 no
    /// further from the f32 image than PyTorch's own bf16).
    #[arg(long, env = "SEEDBED_DTYPE", value_enum, default_value = "f32")]
    pub dtype: Precision,

    /// Load the `.fp16` weight files when a model folder has both.
    #[arg(long, env = "SEEDBED_PREFER_FP16")]
    pub prefer_fp16: bool,

    /// Decode the VAE in tiles: `auto` does so above 1024x1024 to bound memory.
    #[arg(long, env = "SEEDBED_VAE_TILING", value_enum, default_value = "auto")]
    pub vae_tiling: Tiling,

    /// Keep a transformer model's components (text encoders, transformer, VAE) loaded, or
    /// load each for its stage and release it, so that memory holds the largest one, not
    /// their sum (FLUX.1 in bf16: a 24 GB transformer beside a 9.5 GB T5), at the cost of
    /// reading each again for every image. `auto` is sequential when the weight files exceed
    /// the memory available (for `serve`, --model-memory-gb).
    #[arg(long, env = "SEEDBED_MEMORY_PLAN", value_enum, default_value = "auto")]
    pub memory_plan: Plan,
}

impl DeviceArgs {
    /// The plan, `auto` deciding against `budget` bytes of weights.
    pub fn memory_plan(&self, budget: u64) -> MemoryPlan {
        match self.memory_plan {
            Plan::Auto => MemoryPlan::Auto { budget },
            Plan::Resident => MemoryPlan::Resident,
            Plan::Sequential => MemoryPlan::Sequential,
        }
    }

    pub fn load_options(&self) -> Result<LoadOptions> {
        let device = match self.device {
            DeviceKind::Cpu => Device::Cpu,
            DeviceKind::Cuda if seedbed_engine::candle::utils::cuda_is_available() => {
                Device::new_cuda(0).context("opening CUDA device 0")?
            }
            DeviceKind::Metal if seedbed_engine::candle::utils::metal_is_available() => {
                Device::new_metal(0).context("opening Metal device 0")?
            }
            other => bail!(
                "this seedbed was built without {other:?} support; rebuild with `--features {}`",
                format!("{other:?}").to_lowercase()
            ),
        };
        Ok(LoadOptions {
            device,
            dtype: match self.dtype {
                Precision::F32 => DType::F32,
                Precision::F16 => DType::F16,
                Precision::Bf16 => DType::BF16,
            },
            variant: if self.prefer_fp16 {
                Variant::PreferFp16
            } else {
                Variant::Auto
            },
            vae_tiling: match self.vae_tiling {
                Tiling::Auto => VaeTiling::Auto,
                Tiling::Always => VaeTiling::Always,
                Tiling::Never => VaeTiling::Never,
            },
            memory_plan: self.memory_plan(crate::memory::available_bytes().unwrap_or(u64::MAX)),
        })
    }
}
