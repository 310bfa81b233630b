//! Ark and seedbed upstreams speak Seedream: the client's body goes out as it came (only
//! `model` replaced), and the answer, streamed or not, comes back as events.

use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use seedbed_client::ClientError;
use seedbed_types::{ErrorCode, RawRequest, StreamEvent, StreamEventType};

use crate::net::FetchPolicy;
use crate::{Upstream, UpstreamEvent, answer, fetch};

pub async fn start(
    upstream: &Upstream,
    max_answer_bytes: usize,
    model: &str,
    request: &RawRequest,
) -> Result<BoxStream<'static, UpstreamEvent>, ClientError> {
    let mut body = request.clone();
    body.set("model", &model);
    let body = Bytes::from(body.to_bytes());
    let rehost = upstream.config.rehost;
    let rules = upstream.images.clone();
    if request.value::<bool>("stream").unwrap_or(false) {
        let events = upstream.client.generate_stream_raw(body).await?;
        let mut next_index = 0;
        let relayed = events
            .map(move |item| {
                let index = next_index;
                next_index += 1;
                (index, item)
            })
            .then(move |(position, item)| {
                let rules = rules.clone();
                async move {
                    match item {
                        Ok(event) => from_stream_event(&rules, event, position, rehost).await,
                        Err(error) => UpstreamEvent::Failed {
                            status: ErrorCode::UpstreamStreamBroken.status(),
                            code: ErrorCode::UpstreamStreamBroken.as_str().into(),
                            message: format!("the upstream's stream broke off: {error}"),
                            param: None,
                            retry_after: None,
                        },
                    }
                }
            });
        return Ok(until_final(relayed));
    }
    let response = answer::generate(upstream, body, max_answer_bytes).await?;
    let usage = response.usage;
    let extra = response.extra;
    let images = stream::iter(response.data.into_iter().enumerate()).then(move |(index, data)| {
        let rules = rules.clone();
        async move {
            let index = index as u32;
            if let Some(error) = data.error {
                return UpstreamEvent::ImageFailed {
                    index,
                    code: error.code,
                    message: error.message,
                };
            }
            image_event(
                &rules,
                index,
                data.url.as_deref(),
                data.b64_json.as_deref(),
                data.size.as_deref(),
                rehost,
                data.extra,
            )
            .await
        }
    });
    Ok(images
        .chain(stream::iter([UpstreamEvent::Completed { usage, extra }]))
        .boxed())
}

async fn from_stream_event(
    rules: &FetchPolicy,
    event: StreamEvent,
    position: u32,
    rehost: bool,
) -> UpstreamEvent {
    let index = event.image_index.unwrap_or(position);
    match event.kind {
        StreamEventType::PartialSucceeded => {
            image_event(
                rules,
                index,
                event.url.as_deref(),
                event.b64_json.as_deref(),
                event.size.as_deref(),
                rehost,
                event.extra,
            )
            .await
        }
        StreamEventType::PartialFailed => {
            let error = event.error.unwrap_or_else(|| seedbed_types::ImageError {
                code: ErrorCode::InternalServiceError.as_str().into(),
                message: "the upstream reported a failed image".into(),
            });
            UpstreamEvent::ImageFailed {
                index,
                code: error.code,
                message: error.message,
            }
        }
        StreamEventType::Completed => match event.error {
            // A failure after the stream started comes as `completed` with an error.
            Some(error) if event.usage.is_none_or(|u| u.generated_images == 0) => {
                UpstreamEvent::Failed {
                    status: 500,
                    code: error.code,
                    message: error.message,
                    param: None,
                    retry_after: None,
                }
            }
            _ => UpstreamEvent::Completed {
                usage: event.usage,
                extra: event.extra,
            },
        },
    }
}

pub(crate) async fn image_event(
    rules: &FetchPolicy,
    index: u32,
    url: Option<&str>,
    b64: Option<&str>,
    size: Option<&str>,
    rehost: bool,
    extra: serde_json::Map<String, serde_json::Value>,
) -> UpstreamEvent {
    match fetch::deliver(rules, url, b64, size, rehost).await {
        Ok(image) => UpstreamEvent::Image {
            index,
            image,
            extra,
        },
        Err(error) => UpstreamEvent::ImageFailed {
            index,
            code: ErrorCode::InternalServiceError.as_str().into(),
            message: error.to_string(),
        },
    }
}

/// Stop after the first `Completed` or `Failed`.
fn until_final(
    events: impl futures::Stream<Item = UpstreamEvent> + Send + 'static,
) -> BoxStream<'static, UpstreamEvent> {
    events
        .scan(false, |done, event| {
            if *done {
                return futures::future::ready(None);
            }
            *done = matches!(
                event,
                UpstreamEvent::Completed { .. } | UpstreamEvent::Failed { .. }
            );
            futures::future::ready(Some(event))
        })
        .boxed()
}
