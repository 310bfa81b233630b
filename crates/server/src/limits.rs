//! Bounded work per request. Every request holds a slot in one pool of in-flight requests
//! until its handler answers; a request body must finish arriving within a deadline; event
//! streams (SSE) hold their own slots, per API key and overall, for as long as they are open,
//! and send a keep-alive comment while idle. Whatever is full answers at once in Seedream's
//! error envelope (429 with `Retry-After`, or 408 for a body that came too slowly) rather than
//! queueing without bound. The header read timeout lives in [`crate::listener`].

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use hyper::body::{Frame, SizeHint};
use seedbed_types::ErrorCode;
use tokio::sync::Semaphore;

use crate::error::ApiFailure;
use crate::state::{AppState, HttpLimits};

/// Every default of the limits, in one place (SECURITY.md lists them; the `seedbed serve` flags
/// override them).
pub mod defaults {
    use std::time::Duration;

    /// Largest request body: a JSON request with data-URI reference images, or an upload.
    pub const BODY_BYTES: usize = 64 * 1024 * 1024;
    /// Requests being handled at once, from their headers to their answer (a non-streaming
    /// generation holds its slot while it waits for its images). One more is answered
    /// 429 `ServerOverloaded` at once: the job queue (64 by default) bounds the work worth
    /// waiting for, so this only needs room for those waiters plus polls and downloads, while
    /// keeping request bodies in memory (up to [`BODY_BYTES`] each) bounded.
    pub const MAX_IN_FLIGHT: usize = 256;
    /// Time a client has to send a request's headers, and how long an idle keep-alive
    /// connection stays open. hyper's own default once a timer is set: far more than any real
    /// client needs, short enough that a slowloris cannot hold sockets for long.
    pub const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
    /// Time a request body has to arrive in full, from the end of its headers: a 64 MiB body
    /// takes under a minute at 10 Mbit/s. A slower one is answered 408 `RequestTimeout`.
    pub const BODY_TIMEOUT: Duration = Duration::from_secs(60);
    /// Event streams (`stream: true` generations, `/v1/jobs/{id}/events`) one API key may have
    /// open; an open server (no keys) counts as one key.
    pub const STREAMS_PER_KEY: usize = 16;
    /// Event streams open at once, all keys together.
    pub const STREAMS_TOTAL: usize = 256;
    /// A `: keep-alive` comment goes out on an event stream idle this long, so proxies and
    /// load balancers with idle timeouts (often 30 to 60 s) do not cut a stream that is waiting
    /// for a slow image, and a client that has gone away is noticed (the write fails).
    pub const SSE_KEEP_ALIVE: Duration = Duration::from_secs(15);
}

/// Requests to the operations endpoints have a small pool of their own, so a saturated server
/// still answers its health checks and metrics scrapes (a probe must tell "busy" from "dead").
const OPS_PATHS: [&str; 2] = ["/health", "/metrics"];
const OPS_IN_FLIGHT: usize = 16;
/// A full request pool frees up as soon as any request answers.
const IN_FLIGHT_RETRY_AFTER_S: u64 = 1;
/// A stream slot frees up only when a stream ends, which takes as long as a job.
const STREAMS_RETRY_AFTER_S: u64 = 5;

/// The SSE comment sent while a stream is idle; clients ignore lines starting with `:`.
pub const KEEP_ALIVE: &[u8] = b": keep-alive\n\n";

/// The shared counters behind the limits, made once per server.
pub struct Gates {
    requests: Arc<Semaphore>,
    ops: Arc<Semaphore>,
    max_in_flight: usize,
    streams: Arc<StreamCounts>,
}

impl Gates {
    pub fn new(limits: &HttpLimits) -> Self {
        Self {
            requests: Arc::new(Semaphore::new(limits.max_in_flight)),
            ops: Arc::new(Semaphore::new(OPS_IN_FLIGHT)),
            max_in_flight: limits.max_in_flight,
            streams: Arc::new(StreamCounts {
                per_key: limits.streams_per_key,
                total: limits.streams_total,
                open: Mutex::new(OpenStreams::default()),
            }),
        }
    }

    /// A slot for one event stream of `key` (`None`: an open server's anonymous caller), held
    /// until the returned guard is dropped with the stream's body.
    pub fn open_stream(&self, key: Option<&str>) -> Result<StreamSlot, ApiFailure> {
        let key = key.unwrap_or_default().to_string();
        let counts = &self.streams;
        let mut open = counts.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.total >= counts.total {
            return Err(ApiFailure {
                retry_after_s: Some(STREAMS_RETRY_AFTER_S),
                ..ApiFailure::new(
                    ErrorCode::ServerOverloaded,
                    format!(
                        "The server has {} event streams open, the most it allows. Retry later, \
                         or poll GET /v1/jobs/{{id}} instead of streaming.",
                        counts.total
                    ),
                )
            });
        }
        let mine = open.by_key.entry(key.clone()).or_default();
        if *mine >= counts.per_key {
            return Err(ApiFailure {
                retry_after_s: Some(STREAMS_RETRY_AFTER_S),
                ..ApiFailure::new(
                    ErrorCode::RateLimitExceeded,
                    format!(
                        "This API key has {} event streams open, the most one key may. Close \
                         one and retry, or poll GET /v1/jobs/{{id}} instead of streaming.",
                        counts.per_key
                    ),
                )
            });
        }
        *mine += 1;
        open.total += 1;
        metrics::gauge!("seedbed_open_streams").set(open.total as f64);
        Ok(StreamSlot {
            counts: counts.clone(),
            key,
        })
    }

    /// Event streams open now, all keys together.
    pub fn open_streams(&self) -> usize {
        self.streams
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .total
    }
}

struct StreamCounts {
    per_key: usize,
    total: usize,
    open: Mutex<OpenStreams>,
}

#[derive(Default)]
struct OpenStreams {
    total: usize,
    by_key: HashMap<String, usize>,
}

/// One open event stream's slot; dropping it (the stream ended, or hyper dropped the body
/// because the client went away) gives the slot back.
pub struct StreamSlot {
    counts: Arc<StreamCounts>,
    key: String,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.counts.open.lock().unwrap_or_else(|e| e.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(mine) = open.by_key.get_mut(&self.key) {
            *mine = mine.saturating_sub(1);
            if *mine == 0 {
                // Keys come and go; an empty entry per key ever seen would grow forever.
                open.by_key.remove(&self.key);
            }
        }
        metrics::gauge!("seedbed_open_streams").set(open.total as f64);
    }
}

/// Middleware: a slot in the in-flight pool from the request's arrival until its handler has
/// answered, or 429 `ServerOverloaded` at once when the pool is full. A streaming response
/// gives its slot back once its headers are out: event streams are bounded by their own
/// slots, so long-lived streams cannot starve ordinary requests.
pub async fn admit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let gates = state.gates();
    let ops = request
        .extensions()
        .get::<MatchedPath>()
        .is_some_and(|path| OPS_PATHS.contains(&path.as_str()));
    let pool = if ops { &gates.ops } else { &gates.requests };
    let Ok(permit) = pool.clone().try_acquire_owned() else {
        return ApiFailure {
            retry_after_s: Some(IN_FLIGHT_RETRY_AFTER_S),
            ..ApiFailure::new(
                ErrorCode::ServerOverloaded,
                "The server is handling as many requests as it takes at once. Retry shortly.",
            )
        }
        .into_response();
    };
    let in_flight =
        |gates: &Gates| (gates.max_in_flight - gates.requests.available_permits()) as f64;
    metrics::gauge!("seedbed_requests_in_flight").set(in_flight(gates));
    let response = next.run(request).await;
    drop(permit);
    metrics::gauge!("seedbed_requests_in_flight").set(in_flight(gates));
    response
}

/// Middleware: the request body must arrive in full within the body timeout, counted from the
/// end of the headers; otherwise the handler's read fails and the answer is 408
/// `RequestTimeout`. A total deadline rather than one between reads, so a client trickling a
/// byte at a time cannot hold a request slot for ever.
pub async fn body_deadline(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if request.body().is_end_stream() {
        return next.run(request).await;
    }
    let timeout = state.limits().body_timeout;
    let expired = Arc::new(AtomicBool::new(false));
    let deadline = tokio::time::Instant::now() + timeout;
    let request = request.map(|body| {
        Body::new(DeadlineBody {
            inner: body,
            deadline,
            sleep: None,
            expired: expired.clone(),
        })
    });
    let response = next.run(request).await;
    if !expired.load(Ordering::Acquire) {
        return response;
    }
    let mut response = ApiFailure::new(
        ErrorCode::RequestTimeout,
        format!(
            "The request body did not arrive within {} seconds.",
            timeout.as_secs_f64()
        ),
    )
    .into_response();
    // The rest of the body is still on its way: the connection cannot carry another request.
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// A request body that fails once its deadline passes, noting that it did.
struct DeadlineBody {
    inner: Body,
    deadline: tokio::time::Instant,
    /// Made on the first read that has to wait, so a body that is there at once costs no timer.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    expired: Arc<AtomicBool>,
}

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        let deadline = this.deadline;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        this.expired.store(true, Ordering::Release);
        Poll::Ready(Some(Err(axum::Error::new("the request body timed out"))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// An event stream's response: the events with a keep-alive comment whenever none has gone
/// out for `keep_alive`, holding `slot` until the body is dropped (the stream ended, or the
/// client went away and hyper dropped it).
pub fn sse_response<S>(events: S, slot: StreamSlot, keep_alive: Duration) -> Response
where
    S: Stream<Item = Bytes> + Send + 'static,
{
    // `interval` ticks at once on its first poll; the first comment is due only after a
    // whole idle period.
    let mut idle = tokio::time::interval_at(tokio::time::Instant::now() + keep_alive, keep_alive);
    idle.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let body = tokio_stream::StreamExt::timeout_repeating(events, idle).map(move |item| {
        let _held = &slot;
        Ok::<_, Infallible>(item.unwrap_or_else(|_idle| Bytes::from_static(KEEP_ALIVE)))
    });
    let mut response = Response::new(Body::from_stream(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // nginx buffers proxied responses by default, which would hold events back until a
    // buffer fills; this header turns that off for this response only.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gates(per_key: usize, total: usize) -> Gates {
        Gates::new(&HttpLimits {
            streams_per_key: per_key,
            streams_total: total,
            ..HttpLimits::default()
        })
    }

    #[test]
    fn stream_slots_count_per_key_and_overall_and_come_back_on_drop() {
        let gates = gates(2, 3);
        let a1 = gates.open_stream(Some("a")).unwrap();
        let _a2 = gates.open_stream(Some("a")).unwrap();
        let full = gates.open_stream(Some("a")).err().unwrap();
        assert_eq!(full.code, ErrorCode::RateLimitExceeded);
        assert_eq!(full.retry_after_s, Some(STREAMS_RETRY_AFTER_S));
        let _b = gates.open_stream(Some("b")).unwrap();
        let overall = gates.open_stream(None).err().unwrap();
        assert_eq!(overall.code, ErrorCode::ServerOverloaded);
        assert_eq!(gates.open_streams(), 3);
        drop(a1);
        assert_eq!(gates.open_streams(), 2);
        let _a3 = gates.open_stream(Some("a")).unwrap();
    }

    #[test]
    fn keys_without_open_streams_are_forgotten() {
        let gates = gates(1, 10);
        for key in ["a", "b", "c"] {
            drop(gates.open_stream(Some(key)).unwrap());
        }
        assert!(gates.streams.open.lock().unwrap().by_key.is_empty());
    }

    #[tokio::test]
    async fn idle_streams_get_keep_alive_comments_and_hold_their_slot() {
        let gates = gates(1, 1);
        let slot = gates.open_stream(None).unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
        let events = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
        let keep_alive = Duration::from_millis(100);
        let response = sse_response(events, slot, keep_alive);
        assert_eq!(response.headers()["x-accel-buffering"], "no");
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        let mut body = response.into_body().into_data_stream();
        tx.send(Bytes::from_static(b"data: 1\n\n")).unwrap();
        assert_eq!(body.next().await.unwrap().unwrap(), "data: 1\n\n");
        let started = std::time::Instant::now();
        assert_eq!(body.next().await.unwrap().unwrap(), KEEP_ALIVE);
        assert!(started.elapsed() >= keep_alive, "{:?}", started.elapsed());
        assert_eq!(body.next().await.unwrap().unwrap(), KEEP_ALIVE);
        assert!(
            started.elapsed() >= 2 * keep_alive,
            "{:?}",
            started.elapsed()
        );
        tx.send(Bytes::from_static(b"data: 2\n\n")).unwrap();
        assert_eq!(body.next().await.unwrap().unwrap(), "data: 2\n\n");
        assert_eq!(gates.open_streams(), 1);
        drop(tx);
        assert!(body.next().await.is_none());
        drop(body);
        assert_eq!(gates.open_streams(), 0);
    }
}
