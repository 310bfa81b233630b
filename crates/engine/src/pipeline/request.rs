//! What one generation call asks for, validated before any work starts.

use std::time::Duration;

use candle_core::Tensor;
use image::DynamicImage;

use crate::error::{EngineError, Result};
use crate::scheduler::SchedulerKind;

/// Largest side we accept; beyond it even tiled decoding becomes impractical on one device.
pub const MAX_SIDE: u32 = 4096;
pub const MAX_STEPS: usize = 500;
pub const MAX_IMAGES: usize = 16;
/// Classifier-free guidance above this only burns the picture.
pub const MAX_GUIDANCE: f64 = 30.0;

/// The seed of image `index` of a batch that starts at `seed`: each image can be made again
/// alone, locally or on a server, from its own seed.
pub fn image_seed(seed: u64, index: u64) -> u64 {
    seed.wrapping_add(index)
}

#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt: String,
    pub negative_prompt: Option<String>,
    pub width: u32,
    pub height: u32,
    pub steps: usize,
    /// Classifier-free guidance; values <= 1 run the conditional branch alone.
    pub guidance_scale: f64,
    /// `None`: the model's own sampler. Only the UNet families offer a choice.
    pub scheduler: Option<SchedulerKind>,
    pub karras_sigmas: bool,
    /// FLUX's true classifier-free guidance: with a negative prompt and a value above 1, each
    /// step runs the transformer on both prompts. `None` is off; the UNet families refuse it.
    pub true_cfg_scale: Option<f64>,
    /// Image `i` uses seed `seed + i`, so each image can be reproduced alone.
    pub seed: u64,
    pub count: usize,
    pub init_image: Option<InitImage>,
}

/// Image-to-image: the starting picture and how much of the schedule to run over it.
#[derive(Debug, Clone)]
pub struct InitImage {
    pub image: DynamicImage,
    /// In (0, 1]: 1 ignores the picture's content entirely, small values keep it.
    pub strength: f64,
}

impl GenerateRequest {
    /// Check every field against the model's constraints; errors name the field and bound.
    pub fn validate(&self, latent_factor: u32) -> Result<()> {
        for (field, value) in [("width", self.width), ("height", self.height)] {
            if value == 0 || value > MAX_SIDE || value % latent_factor != 0 {
                return Err(EngineError::invalid(
                    field,
                    format!(
                        "{value} must be a multiple of {latent_factor} between {latent_factor} and {MAX_SIDE}"
                    ),
                ));
            }
        }
        if self.steps == 0 || self.steps > MAX_STEPS {
            return Err(EngineError::invalid(
                "steps",
                format!("{} must be between 1 and {MAX_STEPS}", self.steps),
            ));
        }
        if !self.guidance_scale.is_finite() || !(0.0..=MAX_GUIDANCE).contains(&self.guidance_scale)
        {
            return Err(EngineError::invalid(
                "guidance_scale",
                format!(
                    "{} must be between 0 and {MAX_GUIDANCE}",
                    self.guidance_scale
                ),
            ));
        }
        if let Some(scale) = self.true_cfg_scale
            && !(scale.is_finite() && (1.0..=MAX_GUIDANCE).contains(&scale))
        {
            return Err(EngineError::invalid(
                "true_cfg_scale",
                format!("{scale} must be between 1 and {MAX_GUIDANCE}"),
            ));
        }
        if self.count == 0 || self.count > MAX_IMAGES {
            return Err(EngineError::invalid(
                "count",
                format!("{} must be between 1 and {MAX_IMAGES}", self.count),
            ));
        }
        if let Some(init) = &self.init_image {
            if !(init.strength > 0.0 && init.strength <= 1.0) {
                return Err(EngineError::invalid(
                    "strength",
                    format!("{} must be in (0, 1]", init.strength),
                ));
            }
            img2img_start(self.steps, init.strength)?;
        }
        Ok(())
    }
}

/// Image-to-image runs the last `min(int(steps * strength), steps)` steps of the schedule
/// (as diffusers does); returns the index of the first step to run.
pub fn img2img_start(steps: usize, strength: f64) -> Result<usize> {
    let run = ((steps as f64 * strength) as usize).min(steps);
    if run == 0 {
        return Err(EngineError::invalid(
            "strength",
            format!("steps {steps} x strength {strength} leaves no step to run; raise either"),
        ));
    }
    Ok(steps - run)
}

/// Reported after every denoising step.
#[derive(Debug, Clone)]
pub struct Progress {
    /// Which image of the call (0-based) and how many there are.
    pub image: usize,
    pub images: usize,
    /// Steps done for this image (1-based) out of `steps`.
    pub step: usize,
    pub steps: usize,
    /// Since this image started.
    pub elapsed: Duration,
    /// The latents after this step, `(1, C, h, w)` in the VAE's scaled space, for a preview
    /// ([`crate::Pipeline::preview`]); a handle, not a copy.
    pub latents: Tensor,
}

/// Called after each denoising step with (steps done, steps, the latents as [`Progress`]
/// carries them).
pub type OnStep<'a> = dyn FnMut(usize, usize, &Tensor) + 'a;

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> GenerateRequest {
        GenerateRequest {
            prompt: "a fox".into(),
            negative_prompt: None,
            width: 512,
            height: 512,
            steps: 4,
            guidance_scale: 7.5,
            scheduler: Some(SchedulerKind::Euler),
            true_cfg_scale: None,
            karras_sigmas: false,
            seed: 1,
            count: 1,
            init_image: None,
        }
    }

    fn error_of(r: GenerateRequest) -> String {
        r.validate(8).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_field_and_bound() {
        assert!(request().validate(8).is_ok());
        let msg = error_of(GenerateRequest {
            width: 500,
            ..request()
        });
        assert!(
            msg.contains("width") && msg.contains("multiple of 8"),
            "{msg}"
        );
        let msg = error_of(GenerateRequest {
            height: 8192,
            ..request()
        });
        assert!(msg.contains("height") && msg.contains("4096"), "{msg}");
        let msg = error_of(GenerateRequest {
            steps: 0,
            ..request()
        });
        assert!(
            msg.contains("steps") && msg.contains("between 1 and 500"),
            "{msg}"
        );
        let msg = error_of(GenerateRequest {
            guidance_scale: f64::NAN,
            ..request()
        });
        assert!(msg.contains("guidance_scale"), "{msg}");
        let msg = error_of(GenerateRequest {
            count: 17,
            ..request()
        });
        assert!(msg.contains("count"), "{msg}");
    }

    #[test]
    fn img2img_start_follows_diffusers() {
        assert_eq!(img2img_start(5, 0.6).unwrap(), 2);
        assert_eq!(img2img_start(10, 1.0).unwrap(), 0);
        assert_eq!(img2img_start(4, 0.3).unwrap(), 3);
        let msg = img2img_start(2, 0.2).unwrap_err().to_string();
        assert!(msg.contains("strength"), "{msg}");
    }
}
