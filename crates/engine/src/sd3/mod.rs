//! Stable Diffusion 3.5 (`StableDiffusion3Pipeline`): the MMDiT transformer on 2x2 latent
//! patches, conditioned on CLIP-L, CLIP-G and T5. What diffusers computes is written down in
//! `fixtures/DIT.md`.

pub mod text;
pub mod transformer;
