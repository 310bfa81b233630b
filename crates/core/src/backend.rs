//! The seam between the job runner and whatever makes the pictures.
//!
//! A [`Backend`] is handed a claimed job and answers with a stream of [`WorkEvent`]s ending in
//! one [`WorkEvent::Done`]. It knows nothing of leases, heartbeats, cancel requests, billing,
//! the event log or the database: the runner (`runner.rs`) does all of that once, the same
//! way for every lane, and tells a backend only "stop" (a cancelled token). Two backends
//! exist: the local device ([`device`]) and upstream providers ([`gateway`]); the runner's
//! tests drive a scripted one, and further lanes (other nodes) plug in here.

pub(crate) mod device;
pub(crate) mod gateway;

use bytes::Bytes;
use futures::stream::BoxStream;
use seedbed_types::job_event::{Preview, UpstreamStatus};
use seedbed_types::{ErrorCode, Usage};
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use crate::events::JobEvent;
use crate::spec::GenerationSpec;

/// Something that runs jobs of one lane.
pub(crate) trait Backend: Send + Sync + 'static {
    /// Run `work`. The stream ends with one [`WorkEvent::Done`] (what follows it is never
    /// read). Once `stop` is cancelled the backend should end soon, with
    /// [`Done::Cancelled`] unless it finished anyway; the runner decides what the stop meant
    /// (a cancel, a shutdown, a lost lease).
    fn run(&self, work: Work, stop: CancellationToken) -> BoxStream<'static, WorkEvent>;
}

/// A claimed job, as a backend sees it.
#[derive(Debug, Clone)]
pub(crate) struct Work {
    pub id: String,
    pub spec: GenerationSpec,
}

/// What a backend reports, in the order it happens.
#[derive(Debug, Clone)]
pub(crate) enum WorkEvent {
    /// After each denoising step of image `image` (0-based) of `images`.
    Progress {
        image: u32,
        images: u32,
        step: u32,
        steps: u32,
        /// The image as it forms, when the request asked for previews.
        preview: Option<Preview>,
    },
    /// An image ready to store and announce.
    Image(NewImage),
    /// Image `index` failed; the job may go on with the next one.
    ImageFailed {
        index: u32,
        code: String,
        message: String,
    },
    /// Always the last event.
    Done(Done),
}

/// How a backend's run ended.
#[derive(Debug, Clone)]
pub(crate) enum Done {
    /// Finished: `usage` when the backend knows better than counting delivered images (an
    /// upstream's usage block); `extra` top-level fields to relay with the result.
    Ok {
        usage: Option<Usage>,
        extra: Map<String, Value>,
    },
    Failed(Failure),
    /// Stopped before the end because the runner asked.
    Cancelled,
}

/// Why a run failed, as the client will see it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Failure {
    pub code: String,
    pub message: String,
    /// An upstream provider's HTTP status and `Retry-After`, passed on to the client.
    pub status: Option<UpstreamStatus>,
    pub param: Option<String>,
}

impl Failure {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code: code.as_str().into(),
            message: message.into(),
            status: None,
            param: None,
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InternalServiceError, message)
    }

    /// The job's final event when it ends with this failure and no image.
    pub fn into_event(self) -> JobEvent {
        JobEvent::Failed {
            code: self.code,
            message: self.message,
            status: self.status,
            param: self.param,
        }
    }
}

/// An image ready to store and announce.
#[derive(Debug, Clone)]
pub(crate) struct NewImage {
    pub index: u32,
    /// `None`: an upstream's own link is served instead (`url`).
    pub bytes: Option<Bytes>,
    pub url: Option<String>,
    pub width: u32,
    pub height: u32,
    pub format: String,
    pub seed: Option<u64>,
    pub extra: Map<String, Value>,
}
