//! Typed async client for seedbed and any Seedream-compatible `images/generations` API
//! (BytePlus ModelArk, Volcengine Ark): generations plain and streamed, and seedbed's jobs, keys,
//! usage, models, health and info.
//!
//! ```no_run
//! # async fn demo() -> Result<(), seedbed_client::ClientError> {
//! let client = seedbed_client::Client::builder("http://127.0.0.1:8080").api_key("KEY").build()?;
//! let request = seedbed_types::GenerationRequest {
//!     model: Some("seedream-4-5-251128".into()),
//!     prompt: Some("a lighthouse at dusk".into()),
//!     ..Default::default()
//! };
//! let generated = client.generate(&request).await?;
//! println!("{:?}", generated.response.data[0].url);
//! # Ok(()) }
//! ```

mod api;
mod builder;
mod client;
mod error;
mod scope;
mod sse;
mod stream;

pub use builder::ClientBuilder;
pub use client::{Client, error_from_answer};
pub use error::ClientError;
pub use seedbed_types as types;
pub use seedbed_types::{new_request_id, utc_parts};
pub use sse::{SseEvent, SseParser};
pub use stream::{GenerationStream, JobEventItem, JobEventStream};

/// A finished non-streamed generation.
#[derive(Debug, Clone)]
pub struct Generated {
    pub response: seedbed_types::ImagesResponse,
    /// The `X-Client-Request-Id` the server answered with.
    pub request_id: String,
    /// seedbed's job id (`X-Seedbed-Job-Id`), when the server is a seedbed.
    pub job_id: Option<String>,
}
