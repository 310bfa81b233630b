//! SD3.5 behind the engine's one [`Generator`] interface: a request's fields mapped onto
//! [`Sd3Run`].

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use super::pipeline::{MAX_SEQUENCE_LENGTH, Sd3Pipeline, Sd3Run};
use crate::error::Result;
use crate::pipeline::{
    GenerateRequest, GeneratedImage, Generator, Progress, each_latent_image, guidance_negative,
};

impl Generator for Sd3Pipeline {
    fn generate(
        &self,
        request: &GenerateRequest,
        on_progress: &mut dyn FnMut(Progress),
        cancel: &AtomicBool,
    ) -> Result<Vec<GeneratedImage>> {
        let encoding = Instant::now();
        let prompt = self.encode(&request.prompt, MAX_SEQUENCE_LENGTH)?;
        // As diffusers: guidance above 1 runs the negative prompt (or "") beside the prompt.
        let negative = guidance_negative(request, "SD3.5", 1.0, |text| {
            self.encode(text, MAX_SEQUENCE_LENGTH)
        })?;
        let text_encode = encoding.elapsed();
        each_latent_image(
            self.vae(),
            request,
            text_encode,
            on_progress,
            |noise, image, on_step| {
                let run = Sd3Run {
                    prompt: &prompt,
                    negative: negative.as_ref(),
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
