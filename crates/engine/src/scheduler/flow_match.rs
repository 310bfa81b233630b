//! Flow-matching Euler: diffusers' `FlowMatchEulerDiscreteScheduler`, the sampler of the
//! transformer families (FLUX.1, Z-Image, SD3.5). The model predicts a velocity `v` and each step
//! moves `x += (sigma_next - sigma) * v`; everything model-specific is in how the sigmas are
//! spaced and shifted:
//!
//! - a **static shift** `s' = shift * s / (1 + (shift - 1) * s)` (FLUX.1 schnell: 1, Z-Image and
//!   SD3.5: 3);
//! - a **dynamic shift** (FLUX.1 dev): `s' = e^mu / (e^mu + (1/s - 1))`, `mu` interpolated from the
//!   image's packed token count between `base_shift` at `base_image_seq_len` and `max_shift` at
//!   `max_image_seq_len`, not clamped (diffusers does not clamp it either).
//!
//! Where the sigmas start also differs: the FLUX and Z-Image pipelines pass
//! `linspace(1, 1/n, n)` ([`Spacing::Pipeline`]), SD3's lets the scheduler space its own shifted
//! training range and then shifts again ([`Spacing::Scheduler`]). Sigmas and timesteps are
//! float32, as diffusers keeps them.

use std::path::Path;

use candle_core::Tensor;
use serde::Deserialize;

use crate::error::{EngineError, Result};

/// The keys of `scheduler_config.json` this sampler reads, with diffusers' defaults.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct FlowMatchConfig {
    #[serde(default = "thousand")]
    pub num_train_timesteps: usize,
    #[serde(default = "one")]
    pub shift: f64,
    #[serde(default)]
    pub use_dynamic_shifting: bool,
    #[serde(default = "half")]
    pub base_shift: f64,
    #[serde(default = "max_shift")]
    pub max_shift: f64,
    #[serde(default = "base_len")]
    pub base_image_seq_len: usize,
    #[serde(default = "max_len")]
    pub max_image_seq_len: usize,
    #[serde(default)]
    pub shift_terminal: Option<f64>,
    #[serde(default = "exponential")]
    pub time_shift_type: String,
    #[serde(default)]
    pub use_karras_sigmas: bool,
    #[serde(default)]
    pub use_exponential_sigmas: bool,
    #[serde(default)]
    pub use_beta_sigmas: bool,
    #[serde(default)]
    pub invert_sigmas: bool,
    #[serde(default)]
    pub stochastic_sampling: bool,
}

fn thousand() -> usize {
    1000
}
fn one() -> f64 {
    1.0
}
fn half() -> f64 {
    0.5
}
fn max_shift() -> f64 {
    1.15
}
fn base_len() -> usize {
    256
}
fn max_len() -> usize {
    4096
}
fn exponential() -> String {
    "exponential".into()
}

impl FlowMatchConfig {
    /// Read `scheduler_config.json`, refusing the options this sampler does not implement
    /// (rather than silently computing something else).
    pub fn from_file(path: &Path) -> Result<Self> {
        let config: Self = crate::config_files::read_json(path)?;
        let unsupported = [
            ("use_karras_sigmas", config.use_karras_sigmas),
            ("use_exponential_sigmas", config.use_exponential_sigmas),
            ("use_beta_sigmas", config.use_beta_sigmas),
            ("invert_sigmas", config.invert_sigmas),
            ("stochastic_sampling", config.stochastic_sampling),
            ("shift_terminal", config.shift_terminal.is_some()),
            (
                "time_shift_type other than exponential",
                config.time_shift_type != "exponential",
            ),
        ];
        if let Some((name, _)) = unsupported.iter().find(|(_, on)| *on) {
            return Err(EngineError::config(
                path,
                format!("`{name}` is not supported by seedbed's flow-match Euler sampler"),
            ));
        }
        if config.num_train_timesteps == 0 || !(config.shift.is_finite() && config.shift > 0.0) {
            return Err(EngineError::config(
                path,
                "`num_train_timesteps` and `shift` must be positive",
            ));
        }
        Ok(config)
    }

    /// FLUX dev's `mu` for an image of `tokens` packed tokens (h/2 * w/2 latents), unclamped.
    pub fn mu(&self, tokens: usize) -> f64 {
        let (base, max) = (
            self.base_image_seq_len as f64,
            self.max_image_seq_len as f64,
        );
        let slope = (self.max_shift - self.base_shift) / (max - base);
        self.base_shift + (tokens as f64 - base) * slope
    }
}

/// Where the unshifted sigmas come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spacing {
    /// The pipeline passes `linspace(1, 1/n, n)` (FLUX.1, Z-Image).
    Pipeline,
    /// The scheduler spaces its own (already shifted) training range from sigma_max to
    /// sigma_min, which is shifted again (SD3.5).
    Scheduler,
}

/// The sampler for one run: `steps` sigmas plus the final 0.
#[derive(Debug, Clone)]
pub struct FlowMatchEuler {
    sigmas: Vec<f32>,
    timesteps: Vec<f32>,
}

impl FlowMatchEuler {
    /// `tokens`: the image's packed token count, for the dynamic shift (ignored without it).
    pub fn new(
        config: &FlowMatchConfig,
        steps: usize,
        spacing: Spacing,
        tokens: usize,
    ) -> Result<Self> {
        if steps == 0 {
            return Err(EngineError::invalid("steps", "at least one step is needed"));
        }
        let mu = config.mu(tokens);
        let mut sigmas: Vec<f32> = match spacing {
            // The pipeline's list is float32 and numpy shifts it in float32.
            Spacing::Pipeline => linspace(1.0, 1.0 / steps as f64, steps)
                .into_iter()
                .map(|sigma| {
                    let sigma = sigma as f32;
                    if config.use_dynamic_shifting {
                        dynamic_shift32(mu as f32, sigma)
                    } else {
                        static_shift32(config.shift as f32, sigma)
                    }
                })
                .collect(),
            // The scheduler's own range: its training sigmas (float32, shifted once unless the
            // shift is dynamic) from sigma_max = 1 to sigma_min = sigma(1/N), spaced as
            // timesteps in float64 and shifted again in float64.
            Spacing::Scheduler => {
                let n = config.num_train_timesteps as f64;
                let first = 1.0f32 / n as f32;
                let (max, min) = if config.use_dynamic_shifting {
                    (1.0, f64::from(first))
                } else {
                    let shift = config.shift as f32;
                    (
                        f64::from(static_shift32(shift, 1.0)),
                        f64::from(static_shift32(shift, first)),
                    )
                };
                linspace(max * n, min * n, steps)
                    .into_iter()
                    .map(|t| {
                        let sigma = t / n;
                        let shifted = if config.use_dynamic_shifting {
                            dynamic_shift64(mu, sigma)
                        } else {
                            static_shift64(config.shift, sigma)
                        };
                        shifted as f32
                    })
                    .collect()
            }
        };
        let n = config.num_train_timesteps as f32;
        let timesteps = sigmas.iter().map(|s| s * n).collect();
        sigmas.push(0.0);
        Ok(Self { sigmas, timesteps })
    }

    /// The noise levels, one per step and the final 0.
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    /// `sigma * num_train_timesteps` per step: what the pipelines derive the model's time input
    /// from.
    pub fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    pub fn steps(&self) -> usize {
        self.timesteps.len()
    }

    /// One Euler step at `index` from the model's velocity: `x + (sigma_next - sigma) * v`, in
    /// float32 as diffusers computes it.
    pub fn step(
        &self,
        velocity: &Tensor,
        index: usize,
        sample: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let dt = self.sigmas[index + 1] - self.sigmas[index];
        sample.add(&(velocity.to_dtype(sample.dtype())? * f64::from(dt))?)
    }

    /// Image-to-image: the first step to run for `strength` in (0, 1], as diffusers'
    /// img2img pipelines cut the schedule (`int(steps - min(steps * strength, steps))`).
    pub fn start_index(&self, strength: f64) -> usize {
        let steps = self.steps() as f64;
        (steps - (steps * strength).min(steps)).max(0.0) as usize
    }

    /// Where the loop starts: step 0 from `noise`, or for image-to-image (`image`'s clean
    /// latents and the strength) the [`Self::start_index`] step from the latents noised to its
    /// level; a strength that leaves no step is an error naming `strength`.
    pub fn start(
        &self,
        noise: &Tensor,
        image: Option<(&Tensor, f64)>,
    ) -> crate::error::Result<(usize, Tensor)> {
        let Some((clean, strength)) = image else {
            return Ok((0, noise.clone()));
        };
        let start = self.start_index(strength);
        if start >= self.steps() {
            return Err(EngineError::invalid("strength", "leaves no step to run"));
        }
        Ok((start, self.scale_noise(clean, noise, start)?))
    }

    /// Image-to-image: clean latents noised to the level of step `index`:
    /// `sigma * noise + (1 - sigma) * clean`.
    pub fn scale_noise(
        &self,
        clean: &Tensor,
        noise: &Tensor,
        index: usize,
    ) -> candle_core::Result<Tensor> {
        let sigma = f64::from(self.sigmas[index]);
        (noise * sigma)?.add(&(clean * (1.0 - sigma))?)
    }
}

/// `numpy.linspace(start, end, n)` (float64).
fn linspace(start: f64, end: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f64;
    // numpy sets the last sample to `end` exactly.
    (0..n)
        .map(|i| {
            if i == n - 1 {
                end
            } else {
                start + i as f64 * step
            }
        })
        .collect()
}

/// The two shifts, in float32 (the pipeline's sigmas, shifted by numpy in float32) and in
/// float64 (the scheduler's own spacing): `shift * s / (1 + (shift - 1) * s)` and
/// `e^mu / (e^mu + (1/s - 1))`.
macro_rules! shifts {
    ($float:ty, $static_shift:ident, $dynamic_shift:ident) => {
        fn $static_shift(shift: $float, sigma: $float) -> $float {
            shift * sigma / (1.0 + (shift - 1.0) * sigma)
        }

        fn $dynamic_shift(mu: $float, sigma: $float) -> $float {
            let e = mu.exp();
            e / (e + (1.0 / sigma - 1.0))
        }
    };
}

shifts!(f32, static_shift32, dynamic_shift32);
shifts!(f64, static_shift64, dynamic_shift64);

#[cfg(test)]
mod tests;
