//! Server-sent events of a streamed generation.
//!
//! Each event is `event: <type>` then one single-line `data: <json>` with `type` first (the Go
//! SDK treats a data line starting with `{"error":` as fatal, so `type` must precede `error`),
//! then a blank line; the stream ends with `data: [DONE]`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::response::{ImageError, Usage};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum StreamEventType {
    #[serde(rename = "image_generation.partial_succeeded")]
    PartialSucceeded,
    #[serde(rename = "image_generation.partial_failed")]
    PartialFailed,
    #[serde(rename = "image_generation.completed")]
    Completed,
}

impl StreamEventType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PartialSucceeded => "image_generation.partial_succeeded",
            Self::PartialFailed => "image_generation.partial_failed",
            Self::Completed => "image_generation.completed",
        }
    }
}

/// One event; which fields are present depends on `type` (see the constructors).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StreamEvent {
    #[serde(rename = "type")]
    pub kind: StreamEventType,
    pub model: String,
    /// Unix seconds when this image (or, for `completed`, the last one) finished.
    pub created: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_index: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub b64_json: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ImageError>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Relayed upstream fields seedbed does not produce itself.
    #[serde(flatten, default, skip_serializing_if = "Map::is_empty")]
    pub extra: Map<String, Value>,
}

/// The last line of every stream.
pub const DONE: &str = "data: [DONE]\n\n";

impl StreamEvent {
    /// `event:` line, single-line `data:` line, blank line.
    pub fn to_sse(&self) -> String {
        // Serializing a struct of strings and numbers cannot fail.
        let json = serde_json::to_string(self).unwrap_or_default();
        format!("event: {}\ndata: {json}\n\n", self.kind.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_render_as_the_documented_stream() {
        let image = StreamEvent {
            kind: StreamEventType::PartialSucceeded,
            model: "seedream-4-5-251128".into(),
            created: 1768273118,
            image_index: Some(0),
            url: Some("https://x/0.jpeg".into()),
            b64_json: None,
            size: Some("2848x1600".into()),
            error: None,
            usage: None,
            extra: Default::default(),
        };
        let done = StreamEvent {
            kind: StreamEventType::Completed,
            image_index: None,
            url: None,
            size: None,
            usage: Some(Usage::for_images([(2848, 1600)])),
            ..image.clone()
        };
        let stream = format!("{}{}{DONE}", image.to_sse(), done.to_sse());
        assert_eq!(
            stream,
            "event: image_generation.partial_succeeded\n\
             data: {\"type\":\"image_generation.partial_succeeded\",\"model\":\"seedream-4-5-251128\",\"created\":1768273118,\"image_index\":0,\"url\":\"https://x/0.jpeg\",\"size\":\"2848x1600\"}\n\n\
             event: image_generation.completed\n\
             data: {\"type\":\"image_generation.completed\",\"model\":\"seedream-4-5-251128\",\"created\":1768273118,\"usage\":{\"generated_images\":1,\"output_tokens\":17800,\"total_tokens\":17800}}\n\n\
             data: [DONE]\n\n"
        );
    }

    #[test]
    fn a_failed_image_event_does_not_start_with_error() {
        let failed = StreamEvent {
            kind: StreamEventType::PartialFailed,
            model: "m".into(),
            created: 1,
            image_index: Some(1),
            url: None,
            b64_json: None,
            size: None,
            error: Some(ImageError {
                code: "InternalServiceError".into(),
                message: "boom".into(),
            }),
            usage: None,
            extra: Default::default(),
        };
        let sse = failed.to_sse();
        let data = sse.lines().nth(1).unwrap();
        assert!(
            data.starts_with("data: {\"type\":\"image_generation.partial_failed\""),
            "{data}"
        );
        let parsed: StreamEvent = serde_json::from_str(data.trim_start_matches("data: ")).unwrap();
        assert_eq!(parsed, failed);
    }
}
