//! FLUX.1 [schnell] and [dev] (`FluxPipeline`): the rectified-flow transformer on packed 2x2
//! latent patches, conditioned on T5 states and a CLIP pooled vector. What diffusers computes is
//! written down in `fixtures/DIT.md`.

pub mod pipeline;
#[cfg(test)]
mod tests;
pub mod transformer;
