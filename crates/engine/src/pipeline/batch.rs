//! What every family's `generate` shares: the reference picture read once, then one image per
//! seed with progress tagged by image, and each image's pixels turned into a picture.

use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};

use super::{GenerateRequest, GeneratedImage, OnStep, Progress, StageTimes, image_seed};
use crate::error::Result;
use crate::image_ops;
use crate::noise::SeededNoise;
use crate::vae::VaeStage;

/// One image of a batch, decoded.
pub(crate) struct Decoded {
    /// `(1, H, W, 3)` in [0, 1].
    pub pixels: Tensor,
    pub denoise: Duration,
    pub decode: Duration,
}

impl GenerateRequest {
    /// The reference picture as `(1, 3, H, W)` f32 in [-1, 1] at the requested size.
    pub(crate) fn init_pixels(&self, device: &Device) -> Result<Option<Tensor>> {
        let Some(init) = &self.init_image else {
            return Ok(None);
        };
        Ok(Some(image_ops::from_picture(
            &init.image,
            self.width,
            self.height,
            device,
            DType::F32,
        )?))
    }
}

/// Run `make(seed, on_step)` for image `i` = seed `request.seed + i`; the prompt's encoding
/// time goes on the first image only.
pub(crate) fn each_image(
    request: &GenerateRequest,
    mut text_encode: Duration,
    on_progress: &mut dyn FnMut(Progress),
    mut make: impl FnMut(u64, &mut OnStep) -> Result<Decoded>,
) -> Result<Vec<GeneratedImage>> {
    let mut images = Vec::with_capacity(request.count);
    for index in 0..request.count {
        let seed = image_seed(request.seed, index as u64);
        let started = Instant::now();
        let mut on_step = |step, steps, latents: &Tensor| {
            on_progress(Progress {
                image: index,
                images: request.count,
                step,
                steps,
                elapsed: started.elapsed(),
                latents: latents.clone(),
            })
        };
        let decoded = make(seed, &mut on_step)?;
        let picture = image_ops::to_rgb8(&decoded.pixels)?
            .into_iter()
            .next()
            .ok_or_else(|| candle_core::Error::msg("decoder returned no image"))?;
        images.push(GeneratedImage {
            seed,
            image: picture,
            times: StageTimes {
                text_encode: std::mem::take(&mut text_encode),
                denoise: decoded.denoise,
                decode: decoded.decode,
            },
        });
    }
    Ok(images)
}

/// Classifier-free guidance's negative branch as diffusers' pipelines decide it: above the
/// family's `threshold` the negative prompt (or "", when none is given) is encoded; at or below
/// it a negative prompt is ignored, with a warning naming `family`.
pub(crate) fn guidance_negative<P>(
    request: &GenerateRequest,
    family: &str,
    threshold: f64,
    encode: impl FnOnce(&str) -> Result<P>,
) -> Result<Option<P>> {
    if request.guidance_scale > threshold {
        return encode(request.negative_prompt.as_deref().unwrap_or("")).map(Some);
    }
    if request.negative_prompt.is_some() {
        tracing::warn!("{family} ignores a negative prompt unless guidance_scale > {threshold}");
    }
    Ok(None)
}

/// [`each_image`] for the transformer families: per image, seeded unit noise of `vae`'s latent
/// shape,
/// `denoise(noise, reference, on_step)` to final latents, then the decode, each timed. The
/// reference picture (image-to-image) is encoded once, its time counted in the first image's
/// denoise, and passed with the request's strength.
pub(crate) fn each_latent_image(
    vae: &VaeStage,
    request: &GenerateRequest,
    text_encode: Duration,
    on_progress: &mut dyn FnMut(Progress),
    mut denoise: impl FnMut(&Tensor, Option<(&Tensor, f64)>, &mut OnStep) -> Result<Tensor>,
) -> Result<Vec<GeneratedImage>> {
    let device = vae.device();
    let factor = vae.factor();
    let shape = [
        1,
        vae.latent_channels(),
        (request.height / factor) as usize,
        (request.width / factor) as usize,
    ];
    let encoding = Instant::now();
    let reference = match (request.init_pixels(device)?, &request.init_image) {
        (Some(pixels), Some(init)) => Some((vae.encode_image(&pixels)?, init.strength)),
        _ => None,
    };
    let mut reference_time = encoding.elapsed();
    each_image(request, text_encode, on_progress, |seed, on_step| {
        let noise = SeededNoise::new(seed).randn(&shape, device)?;
        let started = Instant::now();
        let image = reference
            .as_ref()
            .map(|(latents, strength)| (latents, *strength));
        let latents = denoise(&noise, image, on_step)?;
        device.synchronize()?;
        let denoise = started.elapsed() + std::mem::take(&mut reference_time);
        let decoding = Instant::now();
        let pixels = vae.decode(&latents)?;
        device.synchronize()?;
        Ok(Decoded {
            pixels,
            denoise,
            decode: decoding.elapsed(),
        })
    })
}
