//! FLUX behind the engine's one [`Generator`] interface: a request's fields mapped onto
//! [`FluxRun`].

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use super::pipeline::{FluxPipeline, FluxRun};
use crate::error::Result;
use crate::noise::SeededNoise;
use crate::pipeline::{Decoded, GenerateRequest, GeneratedImage, Generator, Progress, each_image};

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
        let device = self.device();
        let factor = self.vae_factor();
        let shape = [
            1,
            self.latent_channels(),
            (request.height / factor) as usize,
            (request.width / factor) as usize,
        ];
        let picture = request.init_pixels(device)?;
        let strength = request
            .init_image
            .as_ref()
            .map_or(1.0, |init| init.strength);
        each_image(request, text_encode, on_progress, |seed, on_step| {
            let noise = SeededNoise::new(seed).randn(&shape, device)?;
            let started = Instant::now();
            let latents = picture
                .as_ref()
                .map(|pixels| self.encode_image(pixels))
                .transpose()?;
            let run = FluxRun {
                prompt: &prompt,
                negative: negative.as_ref().map(|(n, scale)| (n, *scale)),
                noise: &noise,
                steps: request.steps,
                guidance: request.guidance_scale,
                image: latents.as_ref().map(|latents| (latents, strength)),
            };
            let final_latents = self.denoise(&run, on_step, cancel)?;
            device.synchronize()?;
            let denoise = started.elapsed();
            let decoding = Instant::now();
            let pixels = self.decode(&final_latents)?;
            device.synchronize()?;
            Ok(Decoded {
                pixels,
                denoise,
                decode: decoding.elapsed(),
            })
        })
    }
}
