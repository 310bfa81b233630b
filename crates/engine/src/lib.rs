//! seedbed's diffusion engine: loads diffusers model folders and runs them on candle.
//!
//! Synchronous and free of HTTP or async runtimes: the server drives it from one thread that
//! owns the device.

pub mod error;
pub mod model;
pub mod nn;
pub mod weights;

pub use error::{EngineError, Result};

#[cfg(test)]
pub(crate) mod test_support;
