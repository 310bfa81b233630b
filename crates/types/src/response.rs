//! The non-streaming response and the usage rule.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `{model, created, data, usage}`; `error` only when no image was produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ImagesResponse {
    /// Absent in OpenAI-style responses.
    #[serde(default)]
    pub model: String,
    /// Unix seconds when the request was created.
    pub created: i64,
    pub data: Vec<ImageData>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ImageError>,
    /// Fields seedbed does not produce itself but relays from an upstream provider.
    #[serde(flatten, default, skip_serializing_if = "Map::is_empty")]
    pub extra: Map<String, Value>,
}

/// One entry of `data`: an image (`url` or `b64_json`, and `size`) or a per-image `error`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
pub struct ImageData {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub b64_json: Option<String>,
    /// `"<W>x<H>"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ImageError>,
    /// Relayed upstream fields (see [`ImagesResponse::extra`]).
    #[serde(flatten, default, skip_serializing_if = "Map::is_empty")]
    pub extra: Map<String, Value>,
}

/// A per-image failure: `{code, message}` only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ImageError {
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub struct Usage {
    /// Successful images only: failed ones are not billed.
    pub generated_images: u64,
    pub output_tokens: u64,
    /// Equals `output_tokens` (input tokens are not counted).
    pub total_tokens: u64,
}

impl Usage {
    /// Seedream's token rule over the delivered images' sizes: `round(sum(w * h) / 256)`.
    pub fn for_images(sizes: impl IntoIterator<Item = (u32, u32)>) -> Self {
        let (count, pixels) = sizes.into_iter().fold((0u64, 0u64), |(n, px), (w, h)| {
            (n + 1, px + u64::from(w) * u64::from(h))
        });
        // Round half up in integers: floor((px + 128) / 256).
        let tokens = (pixels + 128) / 256;
        Self {
            generated_images: count,
            output_tokens: tokens,
            total_tokens: tokens,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_rule_matches_the_documented_examples() {
        assert_eq!(Usage::for_images([(2048, 2048)]).output_tokens, 16384);
        assert_eq!(Usage::for_images([(1760, 2368)]).output_tokens, 16280);
        assert_eq!(Usage::for_images([(2848, 1600)]).output_tokens, 17800);
        assert_eq!(Usage::for_images([(1024, 1024)]).output_tokens, 4096);
        let batch = Usage::for_images([(2720, 1536); 3]);
        assert_eq!(
            (
                batch.generated_images,
                batch.output_tokens,
                batch.total_tokens
            ),
            (3, 48960, 48960)
        );
        assert_eq!(Usage::for_images([]), Usage::default());
        // Rounded, not floored: 200 px are 0.78 tokens -> 1.
        assert_eq!(Usage::for_images([(200, 1)]).output_tokens, 1);
    }

    #[test]
    fn serializes_like_the_documented_response() {
        let response = ImagesResponse {
            model: "seedream-4-0-250828".into(),
            created: 1757323224,
            data: vec![
                ImageData { url: Some("https://x/0.jpeg".into()), size: Some("2720x1536".into()), ..Default::default() },
                ImageData {
                    error: Some(ImageError {
                        code: "OutputImageSensitiveContentDetected".into(),
                        message: "The request failed because the output image may contain sensitive information.".into(),
                    }),
                    ..Default::default()
                },
            ],
            usage: Some(Usage::for_images([(2720, 1536)])),
            error: None,
            extra: Default::default(),
        };
        let json = serde_json::to_string(&response).unwrap();
        assert_eq!(
            json,
            r#"{"model":"seedream-4-0-250828","created":1757323224,"data":[{"url":"https://x/0.jpeg","size":"2720x1536"},{"error":{"code":"OutputImageSensitiveContentDetected","message":"The request failed because the output image may contain sensitive information."}}],"usage":{"generated_images":1,"output_tokens":16320,"total_tokens":16320}}"#
        );
        let back: ImagesResponse = serde_json::from_str(&json).unwrap();
        assert_eq!(back, response);
    }
}
