//! Z-Image (diffusers' `ZImagePipeline`): a single-stream diffusion transformer on 2x2 latent
//! patches, conditioned on Qwen3 hidden states of the chat-templated prompt. What diffusers
//! computes is written down in `fixtures/DIT.md`.

mod generate;
pub mod pipeline;
pub mod transformer;

use std::path::Path;

use crate::error::Result;
use crate::model::{Family, FamilyEntry, ModelShape};

pub(crate) const ZIMAGE: FamilyEntry = FamilyEntry {
    family: Family::ZImage,
    classes: &["ZImagePipeline", "ZImageImg2ImgPipeline"],
    shape,
    load: |dir, _, options| Ok(Box::new(pipeline::ZImagePipeline::load(dir, options)?)),
    parity: crate::parity::ParityRunner::check_zimage,
};

/// 1024 a side (128 latents x the VAE's 8), as the model card generates. Turbo (told apart by
/// its name: the configs are the base model's) runs the card's 9 steps without guidance; the
/// base model 50 steps at guidance 4, as its card recommends.
fn shape(dir: &Path) -> Result<ModelShape> {
    let transformer =
        transformer::ZImageConfig::read(&dir.join("transformer").join("config.json"))?;
    let vae = crate::vae::VaeConfig::load(&dir.join("vae").join("config.json"))?;
    let vae_factor = vae.downscale_factor() as u32;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase());
    let (default_steps, default_guidance_scale) = if name.is_some_and(|name| name.contains("turbo"))
    {
        (9, 0.0)
    } else {
        (50, 4.0)
    };
    Ok(ModelShape {
        native_size: 128 * vae_factor,
        latent_factor: vae_factor * transformer::PATCH as u32,
        default_steps,
        default_guidance_scale,
        max_side: max_side(&transformer, vae_factor),
    })
}

/// Image positions (rows, columns) index RoPE axes 1 and 2, which end at `axes_lens`.
fn max_side(transformer: &transformer::ZImageConfig, vae_factor: u32) -> u32 {
    let positions = transformer.axes_lens[1..]
        .iter()
        .copied()
        .min()
        .unwrap_or(0);
    let side = positions.saturating_mul(transformer::PATCH) as u32 * vae_factor;
    side.min(crate::pipeline::MAX_SIDE)
}
