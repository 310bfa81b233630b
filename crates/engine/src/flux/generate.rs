//! FLUX behind the engine's one [`Generator`] interface: a request's fields mapped onto
//! [`FluxRun`], the options FLUX does not take refused by name.

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use candle_core::DType;

use super::pipeline::{FluxPipeline, FluxRun};
use crate::error::{EngineError, Result};
use crate::image_ops;
use crate::noise::SeededNoise;
use crate::pipeline::{
    GenerateRequest, GeneratedImage, Generator, Progress, StageTimes, image_seed,
};

impl Generator for FluxPipeline {
    fn generate(
        &self,
        request: &GenerateRequest,
        on_progress: &mut dyn FnMut(Progress),
        cancel: &AtomicBool,
    ) -> Result<Vec<GeneratedImage>> {
        if let Some(kind) = request.scheduler {
            return Err(EngineError::invalid(
                "scheduler",
                format!(
                    "FLUX samples with flow-match Euler only, not {}",
                    kind.name()
                ),
            ));
        }
        if request.karras_sigmas {
            return Err(EngineError::invalid(
                "karras_sigmas",
                "FLUX's flow-match schedule takes no Karras sigmas",
            ));
        }
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
        let mut text_encode = encoding.elapsed();
        let device = self.device();
        let factor = self.vae_factor();
        let shape = [
            1,
            self.latent_channels(),
            (request.height / factor) as usize,
            (request.width / factor) as usize,
        ];
        let picture = match &request.init_image {
            Some(init) => {
                let pixels = image_ops::from_picture(
                    &init.image,
                    request.width,
                    request.height,
                    device,
                    DType::F32,
                )?;
                Some((pixels, init.strength))
            }
            None => None,
        };
        let mut images = Vec::with_capacity(request.count);
        for index in 0..request.count {
            let seed = image_seed(request.seed, index as u64);
            let noise = SeededNoise::new(seed).randn(&shape, device)?;
            let started = Instant::now();
            let latents = match &picture {
                Some((pixels, strength)) => Some((self.encode_image(pixels)?, *strength)),
                None => None,
            };
            let run = FluxRun {
                prompt: &prompt,
                negative: negative.as_ref().map(|(n, scale)| (n, *scale)),
                noise: &noise,
                steps: request.steps,
                guidance: request.guidance_scale,
                image: latents.as_ref().map(|(l, strength)| (l, *strength)),
            };
            let mut on_step = |step, steps| {
                on_progress(Progress {
                    image: index,
                    images: request.count,
                    step,
                    steps,
                    elapsed: started.elapsed(),
                })
            };
            let final_latents = self.denoise(&run, &mut on_step, cancel)?;
            device.synchronize()?;
            let denoise = started.elapsed();
            let decoding = Instant::now();
            let pixels = self.decode(&final_latents)?;
            let picture = image_ops::to_rgb8(&pixels)?
                .into_iter()
                .next()
                .ok_or_else(|| candle_core::Error::msg("decoder returned no image"))?;
            images.push(GeneratedImage {
                seed,
                image: picture,
                times: StageTimes {
                    text_encode: std::mem::take(&mut text_encode),
                    denoise,
                    decode: decoding.elapsed(),
                },
            });
        }
        Ok(images)
    }
}
