//! Choosing the device and compute precision, shared by the commands that run models.

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use seedbed_engine::LoadOptions;
use seedbed_engine::candle::{DType, Device};
use seedbed_engine::pipeline::VaeTiling;
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

#[derive(Debug, Args)]
pub struct DeviceArgs {
    /// Where to run the models. `cuda` and `metal` need a build with that cargo feature.
    #[arg(long, env = "SEEDBED_DEVICE", value_enum, default_value = "cpu")]
    pub device: DeviceKind,

    /// Precision of the text encoders' and UNet's weights (the VAE stays in f32 when its
    /// config asks to). f32 matches the reference most closely; f16/bf16 halve the weights'
    /// memory. A GPU also computes in that precision; the CPU computes in f32, so there the
    /// only cost is the weights' rounding (f16 is within the f32 parity budget, bf16 about
    /// 10x it).
    #[arg(long, env = "SEEDBED_DTYPE", value_enum, default_value = "f32")]
    pub dtype: Precision,

    /// Load the `.fp16` weight files when a model folder has both.
    #[arg(long, env = "SEEDBED_PREFER_FP16")]
    pub prefer_fp16: bool,

    /// Decode the VAE in tiles: `auto` does so above 1024x1024 to bound memory.
    #[arg(long, env = "SEEDBED_VAE_TILING", value_enum, default_value = "auto")]
    pub vae_tiling: Tiling,
}

impl DeviceArgs {
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
        })
    }
}
