//! The wire contract of the Seedream (BytePlus ModelArk / Volcengine Ark) `images/generations`
//! API as seedbed serves and consumes it: requests, responses, stream events and errors.
//!
//! These are wire types: lenient on input (JSON `null` is "absent", unknown fields are kept so a
//! gateway can forward them), exact on output (field names, order and omissions as the official
//! SDKs expect). Validation into domain types happens in the server, once.

pub mod error;
pub mod job_event;
pub mod manage;
pub mod raw;
pub mod request;
pub mod request_id;
pub mod response;
pub mod secret;
pub mod stream;

pub use error::{ApiError, ErrorBody, ErrorCode};
pub use job_event::JobEvent;
pub use manage::{
    CreateKey, Health, JobList, JobProgress, JobSettings, JobState, JobView, KeyList, KeyView,
    LoraList, LoraUse, LoraView, ModelList, ModelView, ServerInfo, ServerLimits, UsageEntry,
    UsageTotals, UsageView,
};
pub use raw::RawRequest;
pub use request::{
    GenerationRequest, ImageInput, LoraRef, OptimizePromptOptions, ResponseFormat, SequentialMode,
    SequentialOptions,
};
pub use request_id::{new_request_id, now_ms, utc_parts};
pub use response::{ImageData, ImageError, ImagesResponse, Usage};
pub use secret::Secret;
pub use stream::{StreamEvent, StreamEventType};
