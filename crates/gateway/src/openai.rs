//! OpenAI-style images APIs: a Seedream request translated to `POST {base}/images/generations`
//! and the answer back into events.
//!
//! | Seedream | OpenAI |
//! | --- | --- |
//! | `model` | the route's model id |
//! | `prompt` | `prompt` |
//! | `size` `WxH` | `size` `WxH`; presets `1K`/`2K`/`4K` become `1024x1024`/`2048x2048`/`4096x4096`; `adaptive` is left out (the provider's default) |
//! | `sequential_image_generation: auto` + `max_images`, or `n` | `n` |
//! | `response_format` | not sent: whatever comes back is re-hosted and served as the client asked |
//! | `stream` | not sent: the images are relayed as events once the response arrives |
//! | `image` | no equivalent on `images/generations`: refused with 400 before any call |
//! | `seed`, `watermark`, `guidance_scale`, `optimize_prompt_options`, unknown fields | no equivalent: dropped |
//!
//! Usage: OpenAI's token counts are not Seedream's, so usage is computed from the delivered
//! sizes with Seedream's rule by the runner.

use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use seedbed_client::ClientError;
use seedbed_types::RawRequest;
use serde_json::{Map, Value, json};

use crate::{Upstream, UpstreamEvent, answer, seedream::image_event};

pub async fn start(
    upstream: &Upstream,
    max_answer_bytes: usize,
    model: &str,
    request: &RawRequest,
) -> Result<BoxStream<'static, UpstreamEvent>, ClientError> {
    if request.get("image").is_some_and(|v| v.get() != "null") {
        return Err(ClientError::Api {
            status: 400,
            code: "InvalidParameter".into(),
            message: format!(
                "the model is served by an OpenAI-style upstream ({}), which takes no reference image on images/generations",
                upstream.config.name
            ),
            param: Some("image".into()),
            request_id: None,
            retry_after: None,
        });
    }
    let body = translate(model, request);
    let response =
        answer::generate(upstream, Bytes::from(body.to_string()), max_answer_bytes).await?;
    let rehost = upstream.config.rehost;
    let rules = upstream.images.clone();
    let images = stream::iter(response.data.into_iter().enumerate()).then(move |(index, data)| {
        let rules = rules.clone();
        async move {
            image_event(
                &rules,
                index as u32,
                data.url.as_deref(),
                data.b64_json.as_deref(),
                data.size.as_deref(),
                rehost,
                data.extra,
            )
            .await
        }
    });
    let done = UpstreamEvent::Completed {
        usage: None,
        extra: Map::new(),
    };
    Ok(images.chain(stream::iter([done])).boxed())
}

/// The OpenAI request for a Seedream one (see the table above).
pub fn translate(model: &str, request: &RawRequest) -> Value {
    let mut body = json!({"model": model});
    if let Some(prompt) = request.value::<String>("prompt") {
        body["prompt"] = json!(prompt);
    }
    let size =
        request
            .value::<String>("size")
            .and_then(|size| match size.to_ascii_uppercase().as_str() {
                "1K" => Some("1024x1024".to_string()),
                "2K" => Some("2048x2048".to_string()),
                "4K" => Some("4096x4096".to_string()),
                "ADAPTIVE" => None,
                _ => Some(size),
            });
    if let Some(size) = size {
        body["size"] = json!(size);
    }
    let batch = request
        .value::<String>("sequential_image_generation")
        .as_deref()
        == Some("auto");
    let max_images = request
        .value::<Value>("sequential_image_generation_options")
        .and_then(|o| o.get("max_images").and_then(Value::as_u64));
    let n = request
        .value::<u64>("n")
        .or(if batch { max_images.or(Some(1)) } else { None });
    if let Some(n) = n.filter(|n| *n > 1) {
        body["n"] = json!(n);
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seedream_fields_map_onto_openai() {
        let request = RawRequest::parse(
            br#"{"model":"public","prompt":"a fox","size":"2K","seed":7,"watermark":false,
                "sequential_image_generation":"auto","sequential_image_generation_options":{"max_images":3},
                "response_format":"url","future":1}"#,
        )
        .unwrap();
        assert_eq!(
            translate("gpt-image-1", &request),
            json!({"model": "gpt-image-1", "prompt": "a fox", "size": "2048x2048", "n": 3})
        );
        let plain = RawRequest::parse(br#"{"prompt":"x","size":"1536x1024","n":2}"#).unwrap();
        assert_eq!(
            translate("m", &plain),
            json!({"model": "m", "prompt": "x", "size": "1536x1024", "n": 2})
        );
    }
}
