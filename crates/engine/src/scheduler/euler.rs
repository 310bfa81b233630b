//! Euler and Euler ancestral (Karras et al. 2022 / k-diffusion), as diffusers'
//! `EulerDiscreteScheduler` and `EulerAncestralDiscreteScheduler`.

use candle_core::Tensor;

use super::config::{FinalSigmas, PredictionType, SchedulerConfig, TimestepSpacing};
use super::schedule::{
    alphas_cumprod, interpolate, karras_sigmas, log_f32, sigma_to_t, spaced_timesteps,
    training_sigmas,
};
use super::{NoiseSource, Scheduler, SchedulerKind};

pub struct Euler {
    timesteps: Vec<f64>,
    /// One per timestep plus the final one (0, or the smallest training sigma).
    sigmas: Vec<f64>,
    init_noise_sigma: f64,
    prediction: PredictionType,
    ancestral: bool,
}

/// Unit noise is scaled to the largest sigma; "leading" schedules also add the unit
/// variance of the signal.
pub fn init_noise_sigma(max_sigma: f64, spacing: TimestepSpacing) -> f64 {
    match spacing {
        TimestepSpacing::Linspace | TimestepSpacing::Trailing => max_sigma,
        TimestepSpacing::Leading => (max_sigma * max_sigma + 1.0).sqrt(),
    }
}

impl Euler {
    pub fn new(
        config: &SchedulerConfig,
        kind: SchedulerKind,
        steps: usize,
        karras: bool,
        ancestral: bool,
    ) -> Self {
        let mut cumprod = alphas_cumprod(config);
        if config.rescale_betas_zero_snr {
            // Keeps the last sigma finite, as the reference does.
            if let Some(last) = cumprod.last_mut() {
                *last = 2f32.powi(-24);
            }
        }
        let train_sigmas = training_sigmas(&cumprod);
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
        // Ancestral sampling always ends at zero noise.
        let last = match (
            ancestral,
            config.final_sigmas_type.unwrap_or(FinalSigmas::Zero),
        ) {
            (false, FinalSigmas::SigmaMin) => f64::from(train_sigmas[0]),
            _ => 0.0,
        };
        sigmas.push(last);
        // The reference hands both to torch as f32.
        let sigmas: Vec<f64> = sigmas.into_iter().map(|s| f64::from(s as f32)).collect();
        let timesteps = timesteps.into_iter().map(|t| f64::from(t as f32)).collect();
        let max = sigmas.iter().copied().fold(0.0, f64::max);
        Self {
            timesteps,
            init_noise_sigma: init_noise_sigma(max, spacing),
            sigmas,
            prediction: config.prediction_type,
            ancestral,
        }
    }

    /// The denoised estimate from the UNet's output at noise level `sigma`.
    fn predict_original(
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
}

impl Scheduler for Euler {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }

    fn init_noise_sigma(&self) -> f64 {
        self.init_noise_sigma
    }

    fn scale_model_input(&self, sample: &Tensor, step_index: usize) -> candle_core::Result<Tensor> {
        let sigma = self.sigmas[step_index];
        sample / (sigma * sigma + 1.0).sqrt()
    }

    fn step(
        &mut self,
        output: &Tensor,
        step_index: usize,
        sample: &Tensor,
        noise: &mut dyn NoiseSource,
    ) -> candle_core::Result<Tensor> {
        let (sigma, next) = (self.sigmas[step_index], self.sigmas[step_index + 1]);
        let original = self.predict_original(output, sample, sigma)?;
        let derivative = ((sample - original)? / sigma)?;
        if !self.ancestral {
            return sample + (derivative * (next - sigma))?;
        }
        // Step down to sigma_down deterministically, then add fresh noise of sigma_up.
        let up = (next * next * (sigma * sigma - next * next) / (sigma * sigma)).sqrt();
        let down = (next * next - up * up).sqrt();
        let stepped = (sample + (derivative * (down - sigma))?)?;
        if up == 0.0 {
            return Ok(stepped);
        }
        stepped + (noise.randn_like(output)? * up)?
    }

    fn add_noise(
        &self,
        original: &Tensor,
        noise: &Tensor,
        step_index: usize,
    ) -> candle_core::Result<Tensor> {
        original + (noise * self.sigmas[step_index])?
    }
}
