//! What every handler shares.

use std::sync::Arc;
use std::time::Instant;

use metrics_exporter_prometheus::PrometheusHandle;
use seedbed_core::{Device, Jobs};
use tokio_util::sync::CancellationToken;

use crate::links::LinkSigner;

#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Largest request body accepted (JSON with data URIs, multipart uploads).
    pub body_bytes: usize,
}

#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    jobs: Jobs,
    device: Device,
    signer: LinkSigner,
    limits: HttpLimits,
    metrics: Option<PrometheusHandle>,
    shutdown: CancellationToken,
    started: Instant,
}

impl AppState {
    pub fn new(
        jobs: Jobs,
        device: Device,
        signer: LinkSigner,
        limits: HttpLimits,
        metrics: Option<PrometheusHandle>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                jobs,
                device,
                signer,
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

    pub fn limits(&self) -> &HttpLimits {
        &self.inner.limits
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
