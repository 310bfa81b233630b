//! What every family's `generate` shares: the reference picture read once, then one image per
//! seed with progress tagged by image, and each image's pixels turned into a picture.

use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};

use super::{GenerateRequest, GeneratedImage, Progress, StageTimes, image_seed};
use crate::error::Result;
use crate::image_ops;
use crate::noise::SeededNoise;

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
    mut make: impl FnMut(u64, &mut dyn FnMut(usize, usize)) -> Result<Decoded>,
) -> Result<Vec<GeneratedImage>> {
    let mut images = Vec::with_capacity(request.count);
    for index in 0..request.count {
        let seed = image_seed(request.seed, index as u64);
        let started = Instant::now();
        let mut on_step = |step, steps| {
            on_progress(Progress {
                image: index,
                images: request.count,
                step,
                steps,
                elapsed: started.elapsed(),
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

/// What the transformer families (FLUX, Z-Image, SD3.5) share around their denoising loops:
/// 16-channel latents at the VAE's factor, a VAE to encode a reference picture and to decode.
pub(crate) trait LatentPipeline {
    fn device(&self) -> &Device;
    fn latent_channels(&self) -> usize;
    /// Pixels per latent per side.
    fn vae_factor(&self) -> u32;
    /// A picture `(1, 3, H, W)` in [-1, 1] to scaled latents.
    fn encode_image(&self, image: &Tensor) -> Result<Tensor>;
    /// Scaled latents to `(1, H, W, 3)` pixels in [0, 1].
    fn decode(&self, latents: &Tensor) -> Result<Tensor>;
}

/// [`each_image`] for a [`LatentPipeline`]: per image, seeded unit noise of the latent shape,
/// `denoise(noise, reference, on_step)` to final latents, then the decode, each timed. The
/// reference picture (image-to-image) is encoded once, its time counted in the first image's
/// denoise, and passed with the request's strength.
pub(crate) fn each_latent_image<P: LatentPipeline + ?Sized>(
    pipeline: &P,
    request: &GenerateRequest,
    text_encode: Duration,
    on_progress: &mut dyn FnMut(Progress),
    mut denoise: impl FnMut(
        &Tensor,
        Option<(&Tensor, f64)>,
        &mut dyn FnMut(usize, usize),
    ) -> Result<Tensor>,
) -> Result<Vec<GeneratedImage>> {
    let device = pipeline.device();
    let factor = pipeline.vae_factor();
    let shape = [
        1,
        pipeline.latent_channels(),
        (request.height / factor) as usize,
        (request.width / factor) as usize,
    ];
    let encoding = Instant::now();
    let reference = match (request.init_pixels(device)?, &request.init_image) {
        (Some(pixels), Some(init)) => Some((pipeline.encode_image(&pixels)?, init.strength)),
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
        let pixels = pipeline.decode(&latents)?;
        device.synchronize()?;
        Ok(Decoded {
            pixels,
            denoise,
            decode: decoding.elapsed(),
        })
    })
}
