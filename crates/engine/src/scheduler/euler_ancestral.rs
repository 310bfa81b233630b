//! Euler ancestral (k-diffusion's `sample_euler_ancestral`), as diffusers'
//! `EulerAncestralDiscreteScheduler`: each step lands below the next noise level and adds
//! fresh noise back up to it. Karras sigmas are offered here too (diffusers ignores them for
//! this sampler; k-diffusion and most UIs allow them).

use candle_core::Tensor;

use super::config::{FinalSigmas, SchedulerConfig};
use super::euler::SigmaSchedule;
use super::{NoiseSource, Scheduler, SchedulerKind};

pub struct EulerAncestral(SigmaSchedule);

impl EulerAncestral {
    pub fn new(config: &SchedulerConfig, steps: usize, karras: bool) -> Self {
        // Ancestral sampling always ends at zero noise.
        let kind = SchedulerKind::EulerAncestral;
        Self(SigmaSchedule::new(
            config,
            kind,
            steps,
            karras,
            FinalSigmas::Zero,
        ))
    }
}

impl Scheduler for EulerAncestral {
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
        noise: &mut dyn NoiseSource,
    ) -> candle_core::Result<Tensor> {
        let (sigma, next) = (self.0.sigmas[step_index], self.0.sigmas[step_index + 1]);
        let original = self.0.predict_original(output, sample, sigma)?;
        let derivative = ((sample - original)? / sigma)?;
        let up = (next * next * (sigma * sigma - next * next) / (sigma * sigma)).sqrt();
        let down = (next * next - up * up).sqrt();
        let stepped = (sample + (derivative * (down - sigma))?)?;
        // Drawn even on the last step (where up is 0) so the noise stream stays aligned with
        // the reference's.
        stepped + (noise.randn_like(output)? * up)?
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
