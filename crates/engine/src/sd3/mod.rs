//! SD3.5 (`StableDiffusion3Pipeline`): the MMDiT transformer that denoises its latents. The
//! text encoders (CLIP-L, CLIP-G, T5) and the VAE are the shared ones.

pub mod transformer;
