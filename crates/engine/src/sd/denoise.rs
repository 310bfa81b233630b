//! Our own denoising loop: one UNet call per step (both guidance branches batched), a
//! progress callback after each step and a cancellation check before each.

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{DType, Tensor};

use super::conditioning::Conditioning;
use crate::error::{EngineError, Result};
use crate::pipeline::OnStep;
use crate::scheduler::{NoiseSource, Scheduler};
use crate::sd::unet::UNet;

pub struct Denoise<'a> {
    pub unet: &'a UNet,
    pub conditioning: &'a Conditioning,
    /// Index into `scheduler.timesteps()` of the first step (image-to-image skips ahead).
    pub first_step: usize,
    pub cancel: &'a AtomicBool,
}

impl Denoise<'_> {
    /// Run the remaining steps on f32 `latents`; `on_step(done, total)` after each.
    pub fn run(
        &self,
        scheduler: &mut dyn Scheduler,
        mut latents: Tensor,
        noise: &mut dyn NoiseSource,
        on_step: &mut OnStep,
    ) -> Result<Tensor> {
        let timesteps = scheduler.timesteps().to_vec();
        let total = timesteps.len().saturating_sub(self.first_step);
        let unet_dtype = self.conditioning.encoder_hidden_states.dtype();
        let branches = if self.conditioning.guidance_scale.is_some() {
            2
        } else {
            1
        };
        for (index, &timestep) in timesteps.iter().enumerate().skip(self.first_step) {
            if self.cancel.load(Ordering::Relaxed) {
                return Err(EngineError::Cancelled);
            }
            let batch = if branches == 2 {
                Tensor::cat(&[&latents, &latents], 0)?
            } else {
                latents.clone()
            };
            let model_input = scheduler
                .scale_model_input(&batch, index)?
                .to_dtype(unet_dtype)?;
            let prediction = self.unet.forward(
                &model_input,
                timestep,
                &self.conditioning.encoder_hidden_states,
                self.conditioning.added.as_ref(),
            )?;
            let prediction = self.conditioning.guide(prediction.to_dtype(DType::F32)?)?;
            latents = scheduler.step(&prediction, index, &latents, noise)?;
            // Seen at the next step's input scale, where a schedule that carries sigma in the
            // latents (Euler: x + sigma n) has divided it out again.
            let seen = match index + 1 < timesteps.len() {
                true => scheduler.scale_model_input(&latents, index + 1)?,
                false => latents.clone(),
            };
            on_step(index + 1 - self.first_step, total, &seen);
        }
        Ok(latents)
    }
}
