//! FLUX behind the engine's one [`Generator`] interface: a request's fields mapped onto
//! [`FluxRun`].

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use super::pipeline::{FluxPipeline, FluxRun};
use crate::error::Result;
use crate::pipeline::{GenerateRequest, GeneratedImage, Generator, Progress, each_latent_image};

impl Generator for FluxPipeline {
    fn generate(
        &self,
        request: &GenerateRequest,
        on_progress: &mut dyn FnMut(Progress),
        cancel: &AtomicBool,
    ) -> Result<Vec<GeneratedImage>> {
        let length = self.default_max_sequence_length();
        let encoding = Instant::now();
        let prompt = self.encode(&request.prompt, length)?;
        // As diffusers: the negative prompt counts only under true CFG.
        let negative = match (&request.negative_prompt, request.true_cfg_scale) {
            (Some(text), Some(scale)) if scale > 1.0 => Some((self.encode(text, length)?, scale)),
            (Some(_), _) => {
                tracing::warn!("FLUX ignores a negative prompt unless true_cfg_scale > 1");
                None
            }
            (None, _) => None,
        };
        let text_encode = encoding.elapsed();
        each_latent_image(
            self.vae(),
            request,
            text_encode,
            on_progress,
            |noise, image, on_step| {
                let run = FluxRun {
                    prompt: &prompt,
                    negative: negative.as_ref().map(|(n, scale)| (n, *scale)),
                    noise,
                    steps: request.steps,
                    guidance: request.guidance_scale,
                    image,
                };
                self.denoise(&run, on_step, cancel)
            },
        )
    }

    fn preview(&self, latents: &candle_core::Tensor) -> Result<image::RgbImage> {
        self.vae().preview(latents)
    }
}
