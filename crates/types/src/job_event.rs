//! What happens to a job, as stored in its event log and streamed by `GET /v1/jobs/{id}/events`
//! (the SSE `event` is the `type`, the `id` the sequence number in the job's log).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::response::Usage;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum JobEvent {
    /// Written with the job, and again each time its place in its lane's queue changes (a
    /// job ahead of it started or was cancelled; it was put back in the queue); `position`
    /// is 0 for the next job to run.
    Queued {
        position: u32,
    },
    /// A worker took the job (attempt 2+ after a restart).
    Started {
        attempt: u32,
    },
    /// After each denoising step of image `image` (0-based) of `images`.
    Progress {
        image: u32,
        images: u32,
        step: u32,
        steps: u32,
        /// With `"preview": true` in the request: the image as it forms, every few steps and
        /// at the last one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        preview: Option<Preview>,
    },
    /// Image `index` is stored and can be fetched.
    Image {
        index: u32,
        width: u32,
        height: u32,
        format: String,
        /// The seed it was drawn from; unknown for images from an upstream provider.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seed: Option<u64>,
        /// Unix seconds when it was stored.
        created: i64,
        /// The provider's own link, for gateway images that are not re-hosted.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        url: Option<String>,
        /// Fields an upstream provider sent with the image, relayed as they came.
        #[serde(default, skip_serializing_if = "Map::is_empty")]
        extra: Map<String, Value>,
    },
    /// Image `index` failed; the job may go on with the next one.
    ImageFailed {
        index: u32,
        code: String,
        message: String,
        created: i64,
    },
    /// The job ended with at least one image; `usage` counts delivered images only.
    Completed {
        usage: Usage,
        created: i64,
        /// Top-level fields of an upstream provider's response, relayed as they came.
        #[serde(default, skip_serializing_if = "Map::is_empty")]
        extra: Map<String, Value>,
    },
    /// The job ended without an image.
    Failed {
        code: String,
        message: String,
        /// The HTTP status an upstream provider answered with (else the code's own), and its
        /// `Retry-After`; flattened, so old events' `"status": 503` still reads.
        #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
        status: Option<UpstreamStatus>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        param: Option<String>,
    },
    Cancelled,
}

/// A small picture of an image as it forms: the latents projected to colours, one pixel per
/// latent pixel (1/8 of the image's sides for most models).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Preview {
    /// Always `jpeg`.
    pub format: String,
    pub width: u32,
    pub height: u32,
    /// The picture's bytes, base64 (standard alphabet, padded).
    pub b64_json: String,
}

/// How an upstream provider answered a failed job. One field of `Failed` (rather than a second
/// one for `Retry-After`) so that code building a `Failed` with `status: None` stays as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct UpstreamStatus {
    /// The HTTP status an upstream provider answered with (else the code's own).
    pub status: u16,
    /// Seconds the provider asked to wait before trying again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_s: Option<u64>,
}

impl From<u16> for UpstreamStatus {
    fn from(status: u16) -> Self {
        Self {
            status,
            retry_after_s: None,
        }
    }
}

impl JobEvent {
    /// Whether nothing follows this event.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            Self::Completed { .. } | Self::Failed { .. } | Self::Cancelled
        )
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::Queued { .. } => "queued",
            Self::Started { .. } => "started",
            Self::Progress { .. } => "progress",
            Self::Image { .. } => "image",
            Self::ImageFailed { .. } => "image_failed",
            Self::Completed { .. } => "completed",
            Self::Failed { .. } => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_tagged_json() {
        let event = JobEvent::Progress {
            image: 0,
            images: 2,
            step: 3,
            steps: 4,
            preview: None,
        };
        assert_eq!(
            event.to_json(),
            r#"{"type":"progress","image":0,"images":2,"step":3,"steps":4}"#
        );
        let back: JobEvent = serde_json::from_str(&JobEvent::Cancelled.to_json()).unwrap();
        assert!(back.is_final());
        assert_eq!(back.name(), "cancelled");
    }

    #[test]
    fn failures_carry_an_upstream_status_and_retry_after() {
        let failed = |status| JobEvent::Failed {
            code: "RateLimitExceeded".into(),
            message: "slow down".into(),
            status,
            param: None,
        };
        let event = failed(Some(UpstreamStatus {
            status: 429,
            retry_after_s: Some(7),
        }));
        let json = r#"{"type":"failed","code":"RateLimitExceeded","message":"slow down","status":429,"retry_after_s":7}"#;
        assert_eq!(event.to_json(), json);
        assert_eq!(serde_json::from_str::<JobEvent>(json).unwrap(), event);
        // Events stored before `retry_after_s`, and those without an upstream status.
        let old = r#"{"type":"failed","code":"X","message":"m","status":503,"param":"size"}"#;
        let JobEvent::Failed { status, param, .. } = serde_json::from_str(old).unwrap() else {
            panic!("not a failure");
        };
        assert_eq!((status, param.as_deref()), (Some(503.into()), Some("size")));
        let own = failed(None);
        assert_eq!(
            own.to_json(),
            r#"{"type":"failed","code":"RateLimitExceeded","message":"slow down"}"#
        );
        assert_eq!(
            serde_json::from_str::<JobEvent>(&own.to_json()).unwrap(),
            own
        );
    }
}
