//! Event streams: a streamed generation (Seedream SSE) and a job's event log (seedbed SSE).

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::stream::{BoxStream, Stream, StreamExt};
use reqwest::Method;
use seedbed_types::{JobEvent, StreamEvent};

use crate::ClientError;
use crate::client::{Answer, Client};
use crate::sse::{SseEvent, SseParser};

/// One event of a job's log; `seq` is its SSE id, for resuming with `Last-Event-ID`.
#[derive(Debug, Clone, PartialEq)]
pub struct JobEventItem {
    pub seq: i64,
    pub event: JobEvent,
}

/// The events of a streamed generation, up to `data: [DONE]`.
pub struct GenerationStream {
    pub request_id: String,
    /// seedbed's job id (`X-Seedbed-Job-Id`), when the server is a seedbed.
    pub job_id: Option<String>,
    inner: BoxStream<'static, Result<StreamEvent, ClientError>>,
}

impl GenerationStream {
    pub(crate) fn new(answer: Answer) -> Self {
        let request_id = answer.request_id.clone();
        let job_id = answer.job_id();
        let id = request_id.clone();
        let inner = sse_events(answer)
            // Event types newer than this client (providers add them) are skipped, not fatal.
            .filter(|event| {
                futures::future::ready(!matches!(event, Ok(e) if is_unknown_type(&e.data)))
            })
            .map(move |event| {
                let event = event?;
                if event.data == "[DONE]" {
                    return Ok(None);
                }
                serde_json::from_str::<StreamEvent>(&event.data)
                    .map(Some)
                    .map_err(|e| ClientError::Decode {
                        request_id: Some(id.clone()),
                        message: format!("stream event: {e}"),
                    })
            })
            .scan(false, |done, item| {
                // Stop after [DONE]; a stream that just ends before it is an error below.
                if *done {
                    return futures::future::ready(None);
                }
                *done = matches!(item, Ok(None));
                futures::future::ready(Some(item))
            })
            .filter_map(|item| futures::future::ready(item.transpose()));
        let id = request_id.clone();
        let inner = ends_with_done(inner, id);
        Self {
            request_id,
            job_id,
            inner,
        }
    }
}

/// A JSON event whose `type` this client does not know.
fn is_unknown_type(data: &str) -> bool {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(data) else {
        return false;
    };
    value.get("type").is_some_and(|kind| {
        serde_json::from_value::<seedbed_types::StreamEventType>(kind.clone()).is_err()
    })
}

/// Turn a silent end before `[DONE]` into an error, so a cut connection is not mistaken for a
/// finished batch. Ending is known by seeing `completed`, which comes right before `[DONE]`.
fn ends_with_done(
    inner: impl Stream<Item = Result<StreamEvent, ClientError>> + Send + 'static,
    request_id: String,
) -> BoxStream<'static, Result<StreamEvent, ClientError>> {
    use seedbed_types::StreamEventType;
    let completed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = completed.clone();
    inner
        .inspect(move |item| {
            if let Ok(event) = item
                && event.kind == StreamEventType::Completed
            {
                seen.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        })
        .chain(
            futures::stream::once(async move {
                if completed.load(std::sync::atomic::Ordering::SeqCst) {
                    None
                } else {
                    Some(Err(ClientError::Stream {
                        request_id: Some(request_id),
                        message: "the stream ended before image_generation.completed".into(),
                    }))
                }
            })
            .filter_map(futures::future::ready),
        )
        .boxed()
}

impl Stream for GenerationStream {
    type Item = Result<StreamEvent, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.poll_next_unpin(cx)
    }
}

pub type JobEventStream = BoxStream<'static, Result<JobEventItem, ClientError>>;

/// One connection to `GET /v1/jobs/{id}/events`.
pub(crate) async fn job_event_stream(
    client: &Client,
    id: &str,
    last_event_id: Option<i64>,
) -> Result<JobEventStream, ClientError> {
    let url = client.url(&format!("/v1/jobs/{id}/events"));
    let answer = client
        .send(|| {
            let request = client
                .request(Method::GET, &url)
                .header("accept", "text/event-stream");
            match last_event_id {
                Some(seq) => request.header("last-event-id", seq.to_string()),
                None => request,
            }
        })
        .await?;
    let request_id = answer.request_id.clone();
    let events = sse_events(answer).map(move |event| {
        let event = event?;
        let seq = event
            .id
            .as_deref()
            .and_then(|id| id.parse().ok())
            .unwrap_or(0);
        let event =
            serde_json::from_str::<JobEvent>(&event.data).map_err(|e| ClientError::Decode {
                request_id: Some(request_id.clone()),
                message: format!("job event: {e}"),
            })?;
        Ok(JobEventItem { seq, event })
    });
    Ok(events.boxed())
}

/// Reconnecting follower: resumes after the last seen event until a final one.
pub(crate) fn follow(client: Client, id: String) -> JobEventStream {
    struct State {
        client: Client,
        id: String,
        last_seq: Option<i64>,
        current: Option<JobEventStream>,
        failures: u32,
        done: bool,
    }
    let state = State {
        client,
        id,
        last_seq: None,
        current: None,
        failures: 0,
        done: false,
    };
    futures::stream::unfold(state, |mut state| async move {
        loop {
            if state.done {
                return None;
            }
            let limit = state.client.inner.max_retries + 1;
            let Some(current) = state.current.as_mut() else {
                match job_event_stream(&state.client, &state.id, state.last_seq).await {
                    Ok(stream) => state.current = Some(stream),
                    Err(error) => {
                        state.done = true;
                        return Some((Err(error), state));
                    }
                }
                continue;
            };
            match current.next().await {
                Some(Ok(item)) => {
                    state.last_seq = Some(item.seq);
                    state.failures = 0;
                    state.done = item.event.is_final();
                    return Some((Ok(item), state));
                }
                broken => {
                    // Dropped connection (error or an end without a final event): resume.
                    state.current = None;
                    state.failures += 1;
                    if state.failures > limit {
                        state.done = true;
                        let error = match broken {
                            Some(Err(error)) => error,
                            _ => ClientError::Stream {
                                request_id: None,
                                message: format!("job {} events kept breaking off", state.id),
                            },
                        };
                        return Some((Err(error), state));
                    }
                    let delay = state.client.inner.backoff * state.failures;
                    tracing::debug!(job = %state.id, after = ?state.last_seq, "reconnecting to job events");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    })
    .boxed()
}

/// The SSE events of a response body, chunk by chunk.
fn sse_events(answer: Answer) -> BoxStream<'static, Result<SseEvent, ClientError>> {
    let request_id = answer.request_id;
    let bytes = answer.response.bytes_stream().boxed();
    let state = (bytes, SseParser::default(), VecDeque::new(), false);
    futures::stream::unfold(
        state,
        move |(mut bytes, mut parser, mut ready, mut ended)| {
            let request_id = request_id.clone();
            async move {
                loop {
                    if let Some(event) = ready.pop_front() {
                        return Some((Ok(event), (bytes, parser, ready, ended)));
                    }
                    if ended {
                        return None;
                    }
                    match bytes.next().await {
                        Some(Ok(chunk)) => ready.extend(parser.push(&chunk)),
                        Some(Err(error)) => {
                            ended = true;
                            let error = ClientError::from_transport(error, &request_id);
                            let error = match error {
                                ClientError::Connect { request_id, source } => {
                                    ClientError::Stream {
                                        request_id,
                                        message: source.to_string(),
                                    }
                                }
                                other => other,
                            };
                            return Some((Err(error), (bytes, parser, ready, ended)));
                        }
                        None => {
                            ended = true;
                            ready.extend(parser.finish());
                        }
                    }
                }
            }
        },
    )
    .boxed()
}
