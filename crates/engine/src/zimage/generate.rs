//! Z-Image behind the engine's one [`Generator`] interface: a request's fields mapped onto
//! [`ZImageRun`].

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use super::pipeline::{MAX_SEQUENCE_LENGTH, ZImagePipeline, ZImageRun};
use crate::error::Result;
use crate::pipeline::{
    GenerateRequest, GeneratedImage, Generator, Progress, each_latent_image, guidance_negative,
};

impl Generator for ZImagePipeline {
    fn generate(
        &self,
        request: &GenerateRequest,
        on_progress: &mut dyn FnMut(Progress),
        cancel: &AtomicBool,
    ) -> Result<Vec<GeneratedImage>> {
        let encoding = Instant::now();
        let prompt = self.encode(&request.prompt, MAX_SEQUENCE_LENGTH)?;
        // As diffusers: any guidance above 0 runs the negative prompt (or "") too.
        let negative = guidance_negative(request, "Z-Image", 0.0, |text| {
            self.encode(text, MAX_SEQUENCE_LENGTH)
        })?;
        let text_encode = encoding.elapsed();
        each_latent_image(
            self.vae(),
            request,
            text_encode,
            on_progress,
            |noise, image, on_step| {
                let run = ZImageRun {
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
