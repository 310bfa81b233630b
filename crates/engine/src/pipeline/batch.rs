//! What every family's `generate` shares: the reference picture read once, then one image per
//! seed with progress tagged by image, and each image's pixels turned into a picture.

use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};

use super::{GenerateRequest, GeneratedImage, Progress, StageTimes, image_seed};
use crate::error::Result;
use crate::image_ops;

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
