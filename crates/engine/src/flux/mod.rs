//! FLUX.1 \[schnell\] and \[dev\] (`FluxPipeline`): the rectified-flow transformer on packed 2x2
//! latent patches, conditioned on T5 states and a CLIP pooled vector. What diffusers computes is
//! written down in `fixtures/DIT.md`.

mod generate;
pub mod pipeline;
#[cfg(test)]
mod tests;
pub mod transformer;

use std::path::Path;

use crate::error::Result;
use crate::model::{Family, FamilyEntry, ModelShape};

pub(crate) const FLUX: FamilyEntry = FamilyEntry {
    family: Family::Flux,
    classes: &["FluxPipeline", "FluxImg2ImgPipeline"],
    shape,
    load: |dir, _, options| Ok(Box::new(pipeline::FluxPipeline::load(dir, options)?)),
    parity: crate::parity::ParityRunner::check_flux,
};

/// diffusers' default size: 128 latents a side x the VAE's 8 = 1024. \[dev\] (guidance-distilled)
/// runs 28 steps at guidance 3.5, \[schnell\] 4 steps without guidance, as their model cards say.
fn shape(dir: &Path) -> Result<ModelShape> {
    let transformer = transformer::FluxConfig::read(&dir.join("transformer").join("config.json"))?;
    let vae = crate::vae::VaeConfig::load(&dir.join("vae").join("config.json"))?;
    let vae_factor = vae.downscale_factor() as u32;
    let (default_steps, default_guidance_scale) = if transformer.guidance_embeds {
        (28, 3.5)
    } else {
        (4, 0.0)
    };
    Ok(ModelShape {
        native_size: 128 * vae_factor,
        latent_factor: vae_factor * 2,
        default_steps,
        default_guidance_scale,
        max_side: crate::pipeline::MAX_SIDE,
    })
}
