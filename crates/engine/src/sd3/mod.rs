//! Stable Diffusion 3.5 (`StableDiffusion3Pipeline`): the MMDiT transformer on 2x2 latent
//! patches, conditioned on CLIP-L, CLIP-G and T5. What diffusers computes is written down in
//! `fixtures/DIT.md`.

mod generate;
pub mod pipeline;
pub mod text;
pub mod transformer;

use std::path::Path;

use crate::error::Result;
use crate::model::{Family, FamilyEntry, ModelShape};

pub(crate) const SD3: FamilyEntry = FamilyEntry {
    family: Family::StableDiffusion3,
    classes: &[
        "StableDiffusion3Pipeline",
        "StableDiffusion3Img2ImgPipeline",
    ],
    shape,
    load: |dir, index, options| Ok(Box::new(pipeline::Sd3Pipeline::load(dir, index, options)?)),
    parity: crate::parity::ParityRunner::check_sd3,
};

/// The default size as diffusers' pipeline computes it: the transformer's `sample_size` latents a
/// side x the VAE's 8 (SD3.5: 128 x 8 = 1024). The defaults of
/// the model cards: Large Turbo 4 steps without guidance (told apart by its name, as the
/// configs are Large's), Medium (the MMDiT-X, with dual-attention layers) 40 steps at 4.5,
/// Large 28 steps at 3.5.
fn shape(dir: &Path) -> Result<ModelShape> {
    let transformer = transformer::Sd3Config::read(&dir.join("transformer").join("config.json"))?;
    let vae = crate::vae::VaeConfig::load(&dir.join("vae").join("config.json"))?;
    let vae_factor = vae.downscale_factor() as u32;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase());
    let (default_steps, default_guidance_scale) = if name.is_some_and(|name| name.contains("turbo"))
    {
        (4, 0.0)
    } else if !transformer.dual_attention_layers.is_empty() {
        (40, 4.5)
    } else {
        (28, 3.5)
    };
    Ok(ModelShape {
        native_size: transformer.sample_size as u32 * vae_factor,
        latent_factor: vae_factor * transformer.patch_size as u32,
        default_steps,
        default_guidance_scale,
        // The stored position table covers `pos_embed_max_size` patches a side.
        max_side: ((transformer.pos_embed_max_size * transformer.patch_size) as u32 * vae_factor)
            .min(crate::pipeline::MAX_SIDE),
    })
}
