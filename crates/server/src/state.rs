//! What every handler shares.

use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::PrometheusHandle;
use seedbed_core::{Device, Jobs};
use tokio_util::sync::CancellationToken;

use crate::auth::Access;
use crate::limits::{Gates, defaults};
use crate::links::LinkSigner;

/// The per-request bounds of [`crate::limits`]; each default is documented in
/// [`crate::limits::defaults`].
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Largest request body accepted (JSON with data URIs, multipart uploads).
    pub body_bytes: usize,
    /// Requests handled at once; more are answered 429 `ServerOverloaded`. At least 1.
    pub max_in_flight: usize,
    /// Time a client has to send its request headers (the listener's), and how long an idle
    /// keep-alive connection stays open.
    pub header_timeout: Duration,
    /// Time a request body has to arrive in full; a slower one is answered 408.
    pub body_timeout: Duration,
    /// Event streams one API key may have open; more are answered 429.
    pub streams_per_key: usize,
    /// Event streams open at once, all keys together; more are answered 429.
    pub streams_total: usize,
    /// How long an event stream may be idle before a `: keep-alive` comment goes out.
    pub sse_keep_alive: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            body_bytes: defaults::BODY_BYTES,
            max_in_flight: defaults::MAX_IN_FLIGHT,
            header_timeout: defaults::HEADER_TIMEOUT,
            body_timeout: defaults::BODY_TIMEOUT,
            streams_per_key: defaults::STREAMS_PER_KEY,
            streams_total: defaults::STREAMS_TOTAL,
            sse_keep_alive: defaults::SSE_KEEP_ALIVE,
        }
    }
}

#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    jobs: Jobs,
    device: Device,
    signer: LinkSigner,
    access: Access,
    limits: HttpLimits,
    gates: Gates,
    metrics: Option<PrometheusHandle>,
    shutdown: CancellationToken,
    started: Instant,
}

impl AppState {
    pub fn new(
        jobs: Jobs,
        device: Device,
        signer: LinkSigner,
        access: Access,
        limits: HttpLimits,
        metrics: Option<PrometheusHandle>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                jobs,
                device,
                signer,
                access,
                gates: Gates::new(&limits),
                limits,
                metrics,
                shutdown,
                started: Instant::now(),
            }),
        }
    }

    pub fn jobs(&self) -> &Jobs {
        &self.inner.jobs
    }

    pub fn device(&self) -> &Device {
        &self.inner.device
    }

    pub fn signer(&self) -> &LinkSigner {
        &self.inner.signer
    }

    pub fn access(&self) -> &Access {
        &self.inner.access
    }

    pub fn limits(&self) -> &HttpLimits {
        &self.inner.limits
    }

    /// The counters behind the limits: in-flight requests, open event streams.
    pub fn gates(&self) -> &Gates {
        &self.inner.gates
    }

    pub fn metrics(&self) -> Option<&PrometheusHandle> {
        self.inner.metrics.as_ref()
    }

    pub fn shutdown(&self) -> &CancellationToken {
        &self.inner.shutdown
    }

    pub fn uptime_s(&self) -> u64 {
        self.inner.started.elapsed().as_secs()
    }
}
