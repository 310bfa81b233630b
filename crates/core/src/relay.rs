//! Gateway jobs: relayed to an upstream provider instead of run on the device. Many run at
//! once (they wait on the network, not the device); each is a job like any other: persisted,
//! leased, cancellable, its images stored and announced, its usage recorded.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use seedbed_gateway::UpstreamEvent;
use seedbed_storage::{JobRow, JobStatus, Lane, now_ms};
use seedbed_types::job_event::UpstreamStatus;
use seedbed_types::{ErrorCode, RawRequest, Usage};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::error::{CoreError, Result};
use crate::events::JobEvent;
use crate::jobs::Jobs;
use crate::runner::{NewImage, until};
use crate::spec::GenerationSpec;

/// Relayed jobs in flight at once on one node.
const MAX_RELAYS: usize = 32;

/// How a relayed job ended.
enum End {
    Completed {
        usage: Option<Usage>,
        extra: serde_json::Map<String, serde_json::Value>,
    },
    Failed(JobEvent),
    Cancelled,
    /// Stopped by shutdown: back to the queue.
    Requeue,
}

impl Jobs {
    pub(crate) async fn run_gateway_queue(&self, shutdown: CancellationToken) {
        let permits = Arc::new(Semaphore::new(MAX_RELAYS));
        let inner = &self.inner;
        while !shutdown.is_cancelled() {
            let permit = tokio::select! {
                permit = permits.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
                _ = shutdown.cancelled() => break,
            };
            let lease_until = now_ms() + inner.config.lease.as_millis() as i64;
            match inner
                .db
                .claim_next(&inner.config.node_id, lease_until, Lane::Gateway)
                .await
            {
                Ok(Some(job)) => {
                    let jobs = self.clone();
                    let shutdown = shutdown.clone();
                    tokio::spawn(async move {
                        let id = job.id.clone();
                        if let Err(error) = jobs.run_relay(job, &shutdown).await {
                            tracing::error!(job = %id, %error, "relayed job bookkeeping failed");
                            let failure =
                                Some((ErrorCode::InternalServiceError, error.to_string()));
                            let _ = jobs.finish(&id, JobStatus::Failed, failure).await;
                        }
                        drop(permit);
                    });
                }
                Ok(None) => {
                    drop(permit);
                    tokio::select! {
                        _ = inner.wake_gateway.notified() => {}
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.cancelled() => {}
                    }
                }
                Err(error) => {
                    drop(permit);
                    tracing::error!(%error, "claiming a relayed job failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        // Let running relays finish (or requeue themselves) before the process ends.
        let _ = permits.acquire_many(MAX_RELAYS as u32).await;
    }

    async fn run_relay(&self, job: JobRow, shutdown: &CancellationToken) -> Result<()> {
        let inner = &self.inner;
        let spec: GenerationSpec = serde_json::from_str(&job.spec)
            .map_err(|e| CoreError::Internal(format!("stored spec: {e}")))?;
        let raw = spec
            .gateway
            .as_deref()
            .and_then(|body| RawRequest::parse(body.as_bytes()))
            .ok_or_else(|| CoreError::Internal("a relayed job without its request".into()))?;
        self.append(
            &job.id,
            &JobEvent::Started {
                attempt: job.attempts,
            },
        )
        .await?;
        let cancel = self.track(&job);
        let started = std::time::Instant::now();
        let mut events = inner.gateway.run(&spec.model, raw);
        let mut delivered = Vec::new();
        let mut heartbeat = tokio::time::interval(inner.config.lease / 3);
        // A cancel in this process flips the flag; notice it quickly.
        let mut cancel_check = tokio::time::interval(Duration::from_millis(200));
        let mut grace: Option<tokio::time::Instant> = None;
        let end = loop {
            tokio::select! {
                event = events.next() => match event {
                    Some(UpstreamEvent::Image { index, image, extra }) => {
                        delivered.push((image.width, image.height));
                        let image = NewImage {
                            index,
                            bytes: image.bytes,
                            url: image.url,
                            width: image.width,
                            height: image.height,
                            format: image.format,
                            seed: None,
                            extra,
                        };
                        self.store_image(&job, &spec, image).await?;
                    }
                    Some(UpstreamEvent::ImageFailed { index, code, message }) => {
                        let event = JobEvent::ImageFailed {
                            index,
                            code,
                            message,
                            created: now_ms() / 1000,
                        };
                        self.append(&job.id, &event).await?;
                    }
                    Some(UpstreamEvent::Completed { usage, extra }) => break End::Completed { usage, extra },
                    Some(UpstreamEvent::Failed { status, code, message, param, retry_after }) => {
                        // Whole seconds, rounded up: waiting less than asked is no use.
                        let retry_after_s = retry_after.map(|d| d.as_secs_f64().ceil() as u64);
                        let status = UpstreamStatus { status, retry_after_s };
                        break End::Failed(JobEvent::Failed { code, message, status: Some(status), param });
                    }
                    None => break End::Failed(JobEvent::Failed {
                        code: ErrorCode::InternalServiceError.as_str().into(),
                        message: "the upstream relay ended without an answer".into(),
                        status: Some(502.into()),
                        param: None,
                    }),
                },
                _ = heartbeat.tick() => {
                    if self.renew(&job.id).await? {
                        break End::Cancelled;
                    }
                }
                _ = cancel_check.tick() => {
                    if cancel.load(Ordering::SeqCst) {
                        break End::Cancelled;
                    }
                }
                _ = shutdown.cancelled(), if grace.is_none() => {
                    grace = Some(tokio::time::Instant::now() + inner.config.shutdown_grace);
                }
                _ = until(grace) => break End::Requeue,
            }
        };
        // Dropping the stream closes the upstream connection (a cancel reaches the provider).
        drop(events);
        self.untrack(&job.id, &spec, started);
        self.conclude_relay(&job, &spec, end, &delivered).await
    }

    async fn conclude_relay(
        &self,
        job: &JobRow,
        spec: &GenerationSpec,
        end: End,
        delivered: &[(u32, u32)],
    ) -> Result<()> {
        let db = &self.inner.db;
        if matches!(end, End::Requeue) {
            db.requeue(&job.id).await?;
            return Ok(());
        }
        // The provider's usage block when it sent one, else Seedream's rule on what arrived.
        let counted = Usage::for_images(delivered.iter().copied());
        let (status, event, usage) = match end {
            End::Completed { usage, extra } => {
                let usage = usage.unwrap_or(counted);
                let event = JobEvent::Completed {
                    usage,
                    created: now_ms() / 1000,
                    extra,
                };
                (JobStatus::Succeeded, event, usage)
            }
            End::Failed(event) if !delivered.is_empty() => {
                // Images already relayed stand; the failure is the next image's.
                if let JobEvent::Failed { code, message, .. } = event {
                    let failure = JobEvent::ImageFailed {
                        index: delivered.len() as u32,
                        code,
                        message,
                        created: now_ms() / 1000,
                    };
                    self.append(&job.id, &failure).await?;
                }
                let event = JobEvent::Completed {
                    usage: counted,
                    created: now_ms() / 1000,
                    extra: Default::default(),
                };
                (JobStatus::Succeeded, event, counted)
            }
            End::Failed(event) => (JobStatus::Failed, event, counted),
            End::Cancelled | End::Requeue => (JobStatus::Cancelled, JobEvent::Cancelled, counted),
        };
        self.bill(job, spec, usage).await?;
        self.end(&job.id, status, &event).await
    }
}
