//! Diffusion samplers, one file each behind one trait, computing what diffusers computes.

mod config;
mod ddim;
mod dpmpp_2m;
mod euler;
mod euler_ancestral;
pub mod flow_match;
mod schedule;

use candle_core::Tensor;

pub use config::{BetaSchedule, FinalSigmas, PredictionType, SchedulerConfig, TimestepSpacing};

use crate::error::{EngineError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SchedulerKind {
    Ddim,
    Euler,
    EulerAncestral,
    DpmPlusPlus2M,
}

impl SchedulerKind {
    pub const ALL: [SchedulerKind; 4] = [
        Self::Ddim,
        Self::Euler,
        Self::EulerAncestral,
        Self::DpmPlusPlus2M,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Ddim => "ddim",
            Self::Euler => "euler",
            Self::EulerAncestral => "euler_a",
            Self::DpmPlusPlus2M => "dpmpp2m",
        }
    }
}

impl std::fmt::Display for SchedulerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for SchedulerKind {
    type Err = EngineError;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "ddim" => Ok(Self::Ddim),
            "euler" => Ok(Self::Euler),
            "euler_a" | "euler-a" | "euler_ancestral" | "euler-ancestral" => {
                Ok(Self::EulerAncestral)
            }
            "dpmpp2m" | "dpm++2m" | "dpmpp_2m" | "dpm++_2m" | "dpmpp-2m" => Ok(Self::DpmPlusPlus2M),
            _ => Err(EngineError::invalid(
                "scheduler",
                format!(
                    "`{s}` is not one of {}",
                    Self::ALL.map(Self::name).join(", ")
                ),
            )),
        }
    }
}

/// Stored by name (`euler_a`), read back with the same aliases a request may use.
impl serde::Serialize for SchedulerKind {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for SchedulerKind {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        let name = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// Source of fresh Gaussian noise for ancestral samplers (the pipeline owns the seeded RNG).
pub trait NoiseSource {
    fn randn_like(&mut self, like: &Tensor) -> candle_core::Result<Tensor>;
}

pub trait Scheduler: Send {
    /// The timesteps the UNet is called with, in order (Euler's may be fractional).
    fn timesteps(&self) -> &[f64];

    /// Noise levels, one per timestep plus the final one; empty for samplers without them (DDIM).
    fn sigmas(&self) -> &[f64] {
        &[]
    }

    /// UNet calls per entry of `timesteps()` (diffusers' `order`; 1 for all four here).
    fn order(&self) -> usize {
        1
    }

    /// The standard deviation to scale unit noise by before the first step.
    fn init_noise_sigma(&self) -> f64;

    /// Scale the latents before the UNet call at `step_index` (an index into `timesteps()`).
    fn scale_model_input(&self, sample: &Tensor, step_index: usize) -> candle_core::Result<Tensor>;

    /// One denoising step at `step_index` from the UNet's output.
    fn step(
        &mut self,
        model_output: &Tensor,
        step_index: usize,
        sample: &Tensor,
        noise: &mut dyn NoiseSource,
    ) -> candle_core::Result<Tensor>;

    /// Image-to-image: noise clean latents to the level of `timesteps()[step_index]`.
    fn add_noise(
        &self,
        original: &Tensor,
        noise: &Tensor,
        step_index: usize,
    ) -> candle_core::Result<Tensor>;
}

/// Build a sampler for `steps` inference steps. `karras` turns Karras sigmas on (the config's
/// `use_karras_sigmas` does too); DDIM has no sigmas to space and refuses it.
pub fn build(
    kind: SchedulerKind,
    config: &SchedulerConfig,
    steps: usize,
    karras: bool,
) -> Result<Box<dyn Scheduler>> {
    config.check(kind)?;
    schedule::check_steps(steps, config)?;
    let karras = karras || config.use_karras_sigmas;
    Ok(match kind {
        SchedulerKind::Ddim if karras => {
            return Err(EngineError::invalid(
                "scheduler",
                "Karras sigmas need euler, euler_a or dpmpp2m, not ddim",
            ));
        }
        SchedulerKind::Ddim => Box::new(ddim::Ddim::new(config, steps)?),
        SchedulerKind::Euler => Box::new(euler::Euler::new(config, steps, karras)),
        SchedulerKind::EulerAncestral => {
            Box::new(euler_ancestral::EulerAncestral::new(config, steps, karras))
        }
        SchedulerKind::DpmPlusPlus2M => {
            Box::new(dpmpp_2m::DpmPlusPlus2M::new(config, steps, karras))
        }
    })
}

/// The `init_noise_sigma` a freshly constructed diffusers scheduler reports, before its
/// timesteps are set (Euler's then covers the whole training schedule). The reference cases
/// pre-scale their starting noise by it; only parity checks need this.
pub fn unset_init_noise_sigma(kind: SchedulerKind, config: &SchedulerConfig) -> f64 {
    match kind {
        SchedulerKind::Ddim | SchedulerKind::DpmPlusPlus2M => 1.0,
        SchedulerKind::Euler | SchedulerKind::EulerAncestral => {
            let max = schedule::sampler_training_sigmas(config)
                .into_iter()
                .fold(0f32, f32::max);
            euler::init_noise_sigma(f64::from(max), config.spacing_for(kind))
        }
    }
}

#[cfg(test)]
mod reference_tests;
#[cfg(test)]
mod tests;
