//! seedbed's diffusion engine: loads diffusers model folders and runs them on candle.
//!
//! Synchronous and free of HTTP or async runtimes: the server drives it from one thread that
//! owns the device.

pub mod clip;
pub mod error;
pub mod image_ops;
pub mod model;
pub mod nn;
pub mod noise;
pub mod output;
pub mod parity;
pub mod pipeline;
pub mod scheduler;
pub mod shared;
pub mod text;
pub mod tokenizer;
pub mod unet;
pub mod vae;
pub mod weights;

/// candle, re-exported so that callers never depend on a different version of it.
pub use candle_core as candle;
pub use error::{EngineError, Result};
pub use pipeline::{
    GenerateRequest, GeneratedImage, InitImage, LoadOptions, Pipeline, Progress, StageTimes,
};

#[cfg(test)]
pub(crate) mod test_support;
