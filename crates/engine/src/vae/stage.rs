//! The VAE as the transformer families (FLUX.1, Z-Image, SD3.5) run it: one component under
//! the load options' memory plan, its config for the latent shape, decoding with their tiling.

use std::path::Path;

use candle_core::{Device, Tensor};

use super::{Vae, VaeConfig, VaeTiling};
use crate::error::Result;
use crate::pipeline::LoadOptions;
use crate::preview::LatentPreview;
use crate::residency::Component;

pub struct VaeStage {
    model: Component<Vae>,
    config: VaeConfig,
    tiling: VaeTiling,
    device: Device,
    preview: LatentPreview,
}

impl VaeStage {
    /// The `vae/` folder `dir`, loaded now or (sequential) for each use.
    pub(crate) fn load(dir: &Path, sequential: bool, options: &LoadOptions) -> Result<Self> {
        Ok(Self {
            model: Component::new("vae", sequential, dir, options, |dir, o| {
                Vae::load(dir, o.variant, o.dtype, &o.device)
            })?,
            config: VaeConfig::load(&dir.join("config.json"))?,
            tiling: options.vae_tiling,
            device: options.device.clone(),
            preview: LatentPreview::default(),
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Channels of the latents (16).
    pub fn latent_channels(&self) -> usize {
        self.config.latent_channels
    }

    /// Pixels per latent per side (8).
    pub fn factor(&self) -> u32 {
        self.config.downscale_factor() as u32
    }

    /// Scaled latents to `(1, H, W, 3)` pixels in [0, 1].
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        Ok(self.model.get()?.decode_scaled(latents, self.tiling)?)
    }

    /// Scaled latents as a small picture ([`crate::preview`]).
    pub fn preview(&self, latents: &Tensor) -> Result<image::RgbImage> {
        self.preview.render(&*self.model.get()?, latents)
    }

    /// A picture `(1, 3, H, W)` in [-1, 1] to scaled latents, for image-to-image.
    pub fn encode_image(&self, image: &Tensor) -> Result<Tensor> {
        Ok(self.model.get()?.encode_scaled(image)?)
    }
}
