//! Euler (Karras et al. 2022 / k-diffusion), as diffusers' `EulerDiscreteScheduler`, and the
//! sigma schedule it shares with Euler ancestral.

use candle_core::Tensor;

use super::config::{FinalSigmas, PredictionType, SchedulerConfig, TimestepSpacing};
use super::schedule::{
    interpolate, karras_sigmas, log_f32, sampler_training_sigmas, sigma_to_t, spaced_timesteps,
};
use super::{NoiseSource, Scheduler, SchedulerKind};

/// Timesteps and noise levels of the k-diffusion style samplers.
pub struct SigmaSchedule {
    pub timesteps: Vec<f64>,
    /// One per timestep plus the final one (0, or the smallest training sigma).
    pub sigmas: Vec<f64>,
    pub init_noise_sigma: f64,
    pub prediction: PredictionType,
}

/// Unit noise is scaled to the largest sigma; "leading" schedules also add the unit
/// variance of the signal.
pub fn init_noise_sigma(max_sigma: f64, spacing: TimestepSpacing) -> f64 {
    match spacing {
        TimestepSpacing::Linspace | TimestepSpacing::Trailing => max_sigma,
        TimestepSpacing::Leading => (max_sigma * max_sigma + 1.0).sqrt(),
    }
}

impl SigmaSchedule {
    pub fn new(
        config: &SchedulerConfig,
        kind: SchedulerKind,
        steps: usize,
        karras: bool,
        final_sigma: FinalSigmas,
    ) -> Self {
        let train_sigmas = sampler_training_sigmas(config);
        let spacing = config.spacing_for(kind);
        let mut timesteps = spaced_timesteps(config, spacing, steps, false);
        let mut sigmas: Vec<f64> = timesteps
            .iter()
            .map(|&t| interpolate(&train_sigmas, t))
            .collect();
        if karras {
            let min = config.sigma_min.unwrap_or(sigmas[sigmas.len() - 1]);
            let max = config.sigma_max.unwrap_or(sigmas[0]);
            sigmas = karras_sigmas(min, max, steps);
            let log_sigmas = log_f32(&train_sigmas);
            timesteps = sigmas.iter().map(|&s| sigma_to_t(s, &log_sigmas)).collect();
        }
        sigmas.push(match final_sigma {
            FinalSigmas::Zero => 0.0,
            FinalSigmas::SigmaMin => f64::from(train_sigmas[0]),
        });
        // The reference hands both to torch as f32.
        let sigmas: Vec<f64> = sigmas.into_iter().map(|s| f64::from(s as f32)).collect();
        let timesteps = timesteps.into_iter().map(|t| f64::from(t as f32)).collect();
        let max = sigmas.iter().copied().fold(0.0, f64::max);
        Self {
            timesteps,
            init_noise_sigma: init_noise_sigma(max, spacing),
            sigmas,
            prediction: config.prediction_type,
        }
    }

    /// The denoised estimate from the UNet's output at noise level `sigma`.
    pub fn predict_original(
        &self,
        output: &Tensor,
        sample: &Tensor,
        sigma: f64,
    ) -> candle_core::Result<Tensor> {
        match self.prediction {
            PredictionType::Epsilon => sample - (output * sigma)?,
            PredictionType::Sample => Ok(output.clone()),
            PredictionType::VPrediction => {
                let scale = sigma * sigma + 1.0;
                (output * (-sigma / scale.sqrt()))? + (sample / scale)?
            }
        }
    }

    /// The UNet sees latents of unit variance: `x / sqrt(sigma^2 + 1)`.
    pub fn scale_model_input(
        &self,
        sample: &Tensor,
        step_index: usize,
    ) -> candle_core::Result<Tensor> {
        let sigma = self.sigmas[step_index];
        sample / (sigma * sigma + 1.0).sqrt()
    }

    pub fn add_noise(
        &self,
        original: &Tensor,
        noise: &Tensor,
        step_index: usize,
    ) -> candle_core::Result<Tensor> {
        original + (noise * self.sigmas[step_index])?
    }
}

pub struct Euler(SigmaSchedule);

impl Euler {
    pub fn new(config: &SchedulerConfig, steps: usize, karras: bool) -> Self {
        let final_sigma = config.final_sigmas_type.unwrap_or(FinalSigmas::Zero);
        Self(SigmaSchedule::new(
            config,
            SchedulerKind::Euler,
            steps,
            karras,
            final_sigma,
        ))
    }
}

impl Scheduler for Euler {
    fn timesteps(&self) -> &[f64] {
        &self.0.timesteps
    }

    fn sigmas(&self) -> &[f64] {
        &self.0.sigmas
    }

    fn init_noise_sigma(&self) -> f64 {
        self.0.init_noise_sigma
    }

    fn scale_model_input(&self, sample: &Tensor, step_index: usize) -> candle_core::Result<Tensor> {
        self.0.scale_model_input(sample, step_index)
    }

    fn step(
        &mut self,
        output: &Tensor,
        step_index: usize,
        sample: &Tensor,
        _: &mut dyn NoiseSource,
    ) -> candle_core::Result<Tensor> {
        let (sigma, next) = (self.0.sigmas[step_index], self.0.sigmas[step_index + 1]);
        let original = self.0.predict_original(output, sample, sigma)?;
        let derivative = ((sample - original)? / sigma)?;
        sample + (derivative * (next - sigma))?
    }

    fn add_noise(
        &self,
        original: &Tensor,
        noise: &Tensor,
        step_index: usize,
    ) -> candle_core::Result<Tensor> {
        self.0.add_noise(original, noise, step_index)
    }
}
