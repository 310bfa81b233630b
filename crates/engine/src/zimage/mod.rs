//! Z-Image (diffusers' `ZImagePipeline`): a single-stream diffusion transformer conditioned on
//! Qwen3 hidden states. The transformer lives here; the pipeline around it comes later.

pub mod transformer;
