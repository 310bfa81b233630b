//! DDIM (Song et al. 2020), deterministic (eta = 0), as diffusers' `DDIMScheduler`.

use candle_core::Tensor;

use super::config::{PredictionType, SchedulerConfig};
use super::schedule::{alphas_cumprod, spaced_timesteps};
use super::{NoiseSource, Scheduler, SchedulerKind};
use crate::error::{EngineError, Result};

pub struct Ddim {
    timesteps: Vec<f64>,
    alphas_cumprod: Vec<f32>,
    /// Alpha product "before" the first training step: 1 or `alphas_cumprod[0]`.
    final_alpha_cumprod: f32,
    /// Distance to the previous timestep (`train_steps / steps`, whatever the spacing).
    stride: i64,
    prediction: PredictionType,
    clip: Option<f64>,
}

impl Ddim {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self> {
        let alphas_cumprod = alphas_cumprod(config);
        let spacing = config.spacing_for(SchedulerKind::Ddim);
        let timesteps = spaced_timesteps(config, spacing, steps, true);
        // numpy's arange can yield one timestep too many, ending at -1; the reference then
        // reads the noisiest alpha by negative indexing. Refuse rather than copy that.
        if timesteps
            .iter()
            .any(|&t| t < 0.0 || t >= alphas_cumprod.len() as f64)
        {
            return Err(EngineError::invalid(
                "steps",
                format!(
                    "{steps} steps with {spacing:?} spacing fall outside the training schedule; choose another count"
                ),
            ));
        }
        Ok(Self {
            timesteps,
            final_alpha_cumprod: if config.set_alpha_to_one {
                1.0
            } else {
                alphas_cumprod[0]
            },
            alphas_cumprod,
            stride: (config.num_train_timesteps / steps) as i64,
            prediction: config.prediction_type,
            clip: config.clip_sample.then_some(config.clip_sample_range),
        })
    }

    fn alpha_at(&self, t: i64) -> f64 {
        let index = usize::try_from(t)
            .ok()
            .filter(|&i| i < self.alphas_cumprod.len());
        f64::from(index.map_or(self.final_alpha_cumprod, |i| self.alphas_cumprod[i]))
    }
}

impl Scheduler for Ddim {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn scale_model_input(&self, sample: &Tensor, _: usize) -> candle_core::Result<Tensor> {
        Ok(sample.clone())
    }

    fn step(
        &mut self,
        output: &Tensor,
        step_index: usize,
        sample: &Tensor,
        _: &mut dyn NoiseSource,
    ) -> candle_core::Result<Tensor> {
        let t = self.timesteps[step_index] as i64;
        let alpha = self.alpha_at(t);
        let alpha_prev = if t - self.stride >= 0 {
            self.alpha_at(t - self.stride)
        } else {
            f64::from(self.final_alpha_cumprod)
        };
        let beta = 1.0 - alpha;
        let (original, epsilon) = match self.prediction {
            PredictionType::Epsilon => (
                ((sample - (output * beta.sqrt())?)? / alpha.sqrt())?,
                output.clone(),
            ),
            PredictionType::Sample => {
                let eps = ((sample - (output * alpha.sqrt())?)? / beta.sqrt())?;
                (output.clone(), eps)
            }
            PredictionType::VPrediction => (
                ((sample * alpha.sqrt())? - (output * beta.sqrt())?)?,
                ((output * alpha.sqrt())? + (sample * beta.sqrt())?)?,
            ),
        };
        let original = match self.clip {
            Some(range) => original.clamp(-range, range)?,
            None => original,
        };
        (original * alpha_prev.sqrt())? + (epsilon * (1.0 - alpha_prev).sqrt())?
    }

    fn add_noise(
        &self,
        original: &Tensor,
        noise: &Tensor,
        step_index: usize,
    ) -> candle_core::Result<Tensor> {
        let alpha = self.alpha_at(self.timesteps[step_index] as i64);
        (original * alpha.sqrt())? + (noise * (1.0 - alpha).sqrt())?
    }
}
