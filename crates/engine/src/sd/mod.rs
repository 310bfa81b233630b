//! Stable Diffusion 1.x / 2.x and SDXL (with their Turbo distillations): CLIP text encoders,
//! the UNet on 4-channel latents and the epsilon / v-prediction schedulers.

mod conditioning;
mod denoise;
mod pipeline;
pub(crate) mod text;
/// Public for `benches/kernels.rs`.
pub mod unet;

use std::path::Path;

pub use conditioning::{Conditioning, EncodedPrompts};
pub use denoise::Denoise;
pub use pipeline::{Run, RunOutput, SdPipeline, Start};

use crate::error::Result;
use crate::model::{FamilyEntry, ModelIndex, ModelShape};
use crate::pipeline::{Generator, LoadOptions};

/// The two UNet families, which differ in how text is encoded and what the UNet is fed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SdKind {
    /// SD 1.x / 2.x (and SD-Turbo): one CLIP text encoder, last hidden state.
    Sd,
    /// SDXL (and SDXL-Turbo): two text encoders, penultimate hidden states, pooled embeddings
    /// and size/crop time ids.
    Xl,
}

pub(crate) const SD: FamilyEntry = FamilyEntry {
    family: crate::model::Family::StableDiffusion,
    classes: &["StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline"],
    shape: |dir| shape(dir, 7.5),
    load: |dir, index, options| load(dir, index, options, SdKind::Sd),
    parity: crate::parity::ParityRunner::check_sd,
};

pub(crate) const SDXL: FamilyEntry = FamilyEntry {
    family: crate::model::Family::StableDiffusionXl,
    classes: &[
        "StableDiffusionXLPipeline",
        "StableDiffusionXLImg2ImgPipeline",
    ],
    shape: |dir| shape(dir, 5.0),
    load: |dir, index, options| load(dir, index, options, SdKind::Xl),
    parity: crate::parity::ParityRunner::check_sd,
};

fn load(
    dir: &Path,
    index: &ModelIndex,
    options: LoadOptions,
    kind: SdKind,
) -> Result<Box<dyn Generator>> {
    Ok(Box::new(SdPipeline::load_kind(dir, index, options, kind)?))
}

/// Native size from the UNet's `sample_size` and the VAE's factor; 30 steps at the guidance
/// the model cards recommend.
fn shape(dir: &Path, guidance_scale: f64) -> Result<ModelShape> {
    let unet = unet::UNetConfig::load(&dir.join("unet").join("config.json"))?;
    let vae = crate::vae::VaeConfig::load(&dir.join("vae").join("config.json"))?;
    let latent_factor = vae.downscale_factor() as u32;
    Ok(ModelShape {
        native_size: unet.sample_size as u32 * latent_factor,
        latent_factor,
        default_steps: 30,
        default_guidance_scale: guidance_scale,
        max_side: crate::pipeline::MAX_SIDE,
    })
}
