//! seedbed's diffusion engine: loads diffusers model folders and runs them on candle.
//!
//! Synchronous and free of HTTP or async runtimes: the server drives it from one thread that
//! owns the device.

// What callers use (core, the CLI, the engine's benches and tests) is `pub`; the rest is the
// engine's own.
// Single-file checkpoints, read as diffusers folders.
pub mod checkpoint;
pub mod config_files;
pub mod cpu;
pub mod error;
pub mod flux;
pub(crate) mod image_ops;
// LoRA adapters per request (Kohya and diffusers/PEFT files).
pub mod lora;
pub(crate) mod lru;
pub mod model;
// Kernels, public for `benches/kernels.rs`.
pub mod nn;
pub mod noise;
pub mod output;
pub mod parity;
pub mod pipeline;
// Live previews of the latents while an image forms.
pub mod preview;
// Whether a pipeline keeps its components loaded (`LoadOptions::memory_plan`).
pub mod residency;
pub mod scheduler;
// SD 1.x/2.x and SDXL; public for the tests and `benches/kernels.rs` (the UNet).
pub mod sd;
pub mod sd3;
pub(crate) mod shared;
// The text encoders (CLIP, T5) and their tokenizers; public for `benches/kernels.rs`.
pub mod text;
pub(crate) mod vae;
pub mod weights;
pub mod zimage;

/// candle, re-exported so that callers never depend on a different version of it.
pub use candle_core as candle;
pub use error::{EngineError, Result};
pub use pipeline::{
    GenerateRequest, GeneratedImage, InitImage, LoadOptions, Pipeline, Progress, StageTimes,
};

#[cfg(test)]
pub(crate) mod test_support;
