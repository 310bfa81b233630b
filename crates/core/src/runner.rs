//! The loop that takes queued jobs from the store, runs them on the device and records every
//! outcome: images stored before they are announced, usage written for what was delivered.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use seedbed_storage::{ImageRow, JobRow, JobStatus, Lane, now_ms};
use seedbed_types::{ErrorCode, Usage};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::device::{Device, DeviceEvent, DeviceFailure, DeviceJob};
use crate::error::{CoreError, Result};
use crate::events::JobEvent;
use crate::jobs::Jobs;
use crate::spec::GenerationSpec;

impl Jobs {
    /// Start the runner: recover what a previous process left running, then run queued
    /// jobs one at a time until `shutdown`.
    pub fn start(&self, device: Device, shutdown: CancellationToken) -> JoinHandle<()> {
        let jobs = self.clone();
        tokio::spawn(async move {
            if let Err(error) = jobs.recover().await {
                tracing::error!(%error, "recovering interrupted jobs failed");
            }
            match jobs.sweep_inputs().await {
                Ok(0) => {}
                Ok(count) => tracing::info!(count, "deleted reference images of ended jobs"),
                Err(error) => tracing::error!(%error, "sweeping reference images failed"),
            }
            let relays = tokio::spawn({
                let jobs = jobs.clone();
                let shutdown = shutdown.clone();
                async move { jobs.run_gateway_queue(shutdown).await }
            });
            jobs.run_queue(device, shutdown).await;
            let _ = relays.await;
        })
    }

    async fn recover(&self) -> Result<()> {
        let config = &self.inner.config;
        let recovered = self
            .inner
            .db
            .recover(&config.node_id, config.max_attempts)
            .await?;
        for id in &recovered.requeued {
            tracing::warn!(job = %id, "requeued a job interrupted by a restart");
        }
        for id in &recovered.failed {
            let message = format!(
                "the job was interrupted {} times and will not run again.",
                config.max_attempts
            );
            tracing::error!(job = %id, "{message}");
            self.finish(
                id,
                JobStatus::Failed,
                Some((ErrorCode::RetriesExhausted, message)),
            )
            .await?;
        }
        Ok(())
    }

    async fn run_queue(&self, device: Device, shutdown: CancellationToken) {
        let inner = &self.inner;
        while !shutdown.is_cancelled() {
            let lease_until = now_ms() + inner.config.lease.as_millis() as i64;
            match inner
                .db
                .claim_next(&inner.config.node_id, lease_until, Lane::Local)
                .await
            {
                Ok(Some(job)) => {
                    let id = job.id.clone();
                    if let Err(error) = self.run_job(&device, job, &shutdown).await {
                        tracing::error!(job = %id, %error, "job bookkeeping failed");
                        let _ = self
                            .finish(
                                &id,
                                JobStatus::Failed,
                                Some((ErrorCode::InternalServiceError, error.to_string())),
                            )
                            .await;
                    }
                }
                Ok(None) => {
                    tokio::select! {
                        _ = inner.wake.notified() => {}
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.cancelled() => {}
                    }
                }
                Err(error) => {
                    tracing::error!(%error, "claiming a job failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    async fn run_job(
        &self,
        device: &Device,
        job: JobRow,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        let inner = &self.inner;
        let span = tracing::info_span!("job", job = %job.id, request_id = %job.request_id);
        let _entered = span.enter();
        let spec: GenerationSpec = serde_json::from_str(&job.spec)
            .map_err(|e| CoreError::Internal(format!("stored spec: {e}")))?;
        self.append(
            &job.id,
            &JobEvent::Started {
                attempt: job.attempts,
            },
        )
        .await?;
        let model = match inner.catalog.resolve(&spec.local_model) {
            Ok(model) => model.clone(),
            Err(error) => {
                let code = match error {
                    CoreError::ModelLoad { .. } => ErrorCode::ModelLoadFailed,
                    _ => ErrorCode::ModelNotFound,
                };
                return self
                    .finish(&job.id, JobStatus::Failed, Some((code, error.to_string())))
                    .await;
            }
        };
        let mut references = Vec::new();
        for key in &spec.reference_images {
            let bytes = inner.blobs.get(key).await?.ok_or_else(|| {
                CoreError::Internal(format!(
                    "reference image {key} is missing from the blob store"
                ))
            })?;
            references.push(bytes);
        }
        let cancel = self.track(&job);
        let (events, mut receiver) = mpsc::unbounded_channel();
        let started = std::time::Instant::now();
        device.submit(DeviceJob {
            job_id: job.id.clone(),
            spec: spec.clone(),
            model_path: model.path.clone(),
            weights_bytes: model.weights_bytes,
            references,
            cancel: cancel.clone(),
            events,
        })?;
        let mut outcome = Outcome::default();
        let mut heartbeat = tokio::time::interval(inner.config.lease / 3);
        let mut grace_deadline: Option<tokio::time::Instant> = None;
        let result = loop {
            tokio::select! {
                event = receiver.recv() => match event {
                    Some(DeviceEvent::Done(result)) => break result,
                    Some(event) => self.on_device_event(&job, &spec, event, &mut outcome).await?,
                    None => break Err(DeviceFailure::Internal("the device thread stopped".into())),
                },
                _ = heartbeat.tick() => {
                    if self.renew(&job.id).await? {
                        cancel.store(true, Ordering::SeqCst);
                    }
                }
                _ = shutdown.cancelled(), if grace_deadline.is_none() => {
                    tracing::info!("shutting down: letting the running job finish");
                    grace_deadline = Some(tokio::time::Instant::now() + inner.config.shutdown_grace);
                }
                _ = until(grace_deadline) => {
                    tracing::warn!("shutdown grace period over: stopping the job to run it again later");
                    outcome.requeue = true;
                    cancel.store(true, Ordering::SeqCst);
                    grace_deadline = Some(tokio::time::Instant::now() + Duration::from_secs(3600));
                }
            }
        };
        self.untrack(&job.id, &spec, started);
        self.conclude(&job, &spec, result, outcome).await
    }

    async fn on_device_event(
        &self,
        job: &JobRow,
        spec: &GenerationSpec,
        event: DeviceEvent,
        outcome: &mut Outcome,
    ) -> Result<()> {
        let inner = &self.inner;
        match event {
            DeviceEvent::Progress {
                image,
                images,
                step,
                steps,
            } => {
                let event = JobEvent::Progress {
                    image,
                    images,
                    step,
                    steps,
                };
                inner.db.set_progress(&job.id, &event.to_json()).await?;
                self.append(&job.id, &event).await?;
            }
            DeviceEvent::Image {
                index,
                bytes,
                width,
                height,
                seed,
            } => {
                let image = NewImage {
                    index,
                    bytes: Some(Bytes::from(bytes)),
                    url: None,
                    width,
                    height,
                    format: spec.output_format.extension().to_string(),
                    seed: Some(seed),
                    extra: Default::default(),
                };
                self.store_image(job, spec, image).await?;
                outcome.delivered.push((width, height));
            }
            DeviceEvent::ImageFailed { index, message } => {
                outcome.failures += 1;
                outcome.last_failure = Some(message.clone());
                self.append(&job.id, &internal_image_failure(index, message))
                    .await?;
            }
            DeviceEvent::Done(_) => {}
        }
        Ok(())
    }

    /// Store an image (unless it is only an upstream's link), then announce it: a watcher never
    /// sees an image it cannot fetch.
    pub(crate) async fn store_image(
        &self,
        job: &JobRow,
        spec: &GenerationSpec,
        image: NewImage,
    ) -> Result<()> {
        let inner = &self.inner;
        let now = now_ms();
        if let Some(bytes) = image.bytes {
            let blob_key = format!("images/{}/{}.{}", job.id, image.index, image.format);
            let size = bytes.len() as u64;
            inner.blobs.put(&blob_key, bytes).await?;
            inner
                .db
                .put_image(&ImageRow {
                    job_id: job.id.clone(),
                    index: image.index,
                    blob_key,
                    width: image.width,
                    height: image.height,
                    format: image.format.clone(),
                    bytes: size,
                    created_at: now,
                    expires_at: now + inner.config.image_ttl.as_millis() as i64,
                })
                .await?;
        }
        metrics::counter!("seedbed_images_total", "model" => spec.model.clone()).increment(1);
        let event = JobEvent::Image {
            index: image.index,
            width: image.width,
            height: image.height,
            format: image.format,
            seed: image.seed,
            created: now / 1000,
            url: image.url,
            extra: image.extra,
        };
        self.append(&job.id, &event).await
    }

    async fn conclude(
        &self,
        job: &JobRow,
        spec: &GenerationSpec,
        result: std::result::Result<(), DeviceFailure>,
        outcome: Outcome,
    ) -> Result<()> {
        let inner = &self.inner;
        let usage = Usage::for_images(outcome.delivered.iter().copied());
        if outcome.requeue && result == Err(DeviceFailure::Cancelled) {
            inner.db.requeue(&job.id).await?;
            return Ok(());
        }
        self.bill(job, spec, usage).await?;
        let delivered = !outcome.delivered.is_empty();
        match result {
            Err(DeviceFailure::Cancelled) => {
                self.finish(&job.id, JobStatus::Cancelled, None).await?
            }
            Err(DeviceFailure::ModelLoad(message)) => {
                self.finish(
                    &job.id,
                    JobStatus::Failed,
                    Some((ErrorCode::ModelLoadFailed, message)),
                )
                .await?
            }
            Ok(()) | Err(DeviceFailure::Internal(_)) if delivered => {
                if let Err(DeviceFailure::Internal(message)) = result {
                    let index = outcome.delivered.len() as u32 + outcome.failures;
                    self.append(&job.id, &internal_image_failure(index, message))
                        .await?;
                }
                let event = JobEvent::Completed {
                    usage,
                    created: now_ms() / 1000,
                    extra: Default::default(),
                };
                self.end(&job.id, JobStatus::Succeeded, &event).await?
            }
            Ok(()) => {
                let message = outcome
                    .last_failure
                    .unwrap_or_else(|| "no image was produced".into());
                self.finish(
                    &job.id,
                    JobStatus::Failed,
                    Some((ErrorCode::InternalServiceError, message)),
                )
                .await?
            }
            Err(DeviceFailure::Internal(message)) => {
                self.finish(
                    &job.id,
                    JobStatus::Failed,
                    Some((ErrorCode::InternalServiceError, message)),
                )
                .await?
            }
        }
        Ok(())
    }

    /// End a job in `status` with its final event.
    pub(crate) async fn finish(
        &self,
        id: &str,
        status: JobStatus,
        error: Option<(ErrorCode, String)>,
    ) -> Result<()> {
        let event = match (&status, &error) {
            (JobStatus::Cancelled, _) => JobEvent::Cancelled,
            (_, Some((code, message))) => JobEvent::Failed {
                code: code.as_str().into(),
                message: message.clone(),
                status: None,
                param: None,
            },
            _ => JobEvent::Failed {
                code: ErrorCode::InternalServiceError.as_str().into(),
                message: "failed".into(),
                status: None,
                param: None,
            },
        };
        self.end(id, status, &event).await
    }

    /// End a job with its final event; a `Failed` event's code and message become the job's
    /// error and are counted.
    pub(crate) async fn end(&self, id: &str, status: JobStatus, event: &JobEvent) -> Result<()> {
        let error = match event {
            JobEvent::Failed { code, message, .. } => {
                metrics::counter!("seedbed_errors_total", "code" => code.clone()).increment(1);
                Some((code.as_str(), message.as_str()))
            }
            _ => None,
        };
        if self
            .inner
            .db
            .finish_job(id, status, error, &event.to_json())
            .await?
        {
            self.tick();
            // Every way a job ends comes through here: its reference images go with it.
            self.delete_inputs(id).await;
        }
        Ok(())
    }

    /// Record what a job delivered, once, for its key.
    pub(crate) async fn bill(
        &self,
        job: &JobRow,
        spec: &GenerationSpec,
        usage: Usage,
    ) -> Result<()> {
        self.inner
            .db
            .record_usage(
                &job.id,
                job.key_id.as_deref(),
                &spec.model,
                usage.generated_images,
                usage.total_tokens,
            )
            .await?;
        metrics::counter!("seedbed_tokens_total", "model" => spec.model.clone())
            .increment(usage.total_tokens);
        Ok(())
    }

    /// The cancel flag of a job this process runs, where `cancel` can reach it.
    pub(crate) fn track(&self, job: &JobRow) -> Arc<AtomicBool> {
        let cancel = Arc::new(AtomicBool::new(job.cancel_requested));
        if let Ok(mut running) = self.inner.running.lock() {
            running.insert(job.id.clone(), cancel.clone());
        }
        cancel
    }

    /// The job left this process: forget its flag, record how long it took.
    pub(crate) fn untrack(&self, id: &str, spec: &GenerationSpec, started: std::time::Instant) {
        if let Ok(mut running) = self.inner.running.lock() {
            running.remove(id);
        }
        metrics::histogram!("seedbed_job_seconds", "model" => spec.model.clone())
            .record(started.elapsed().as_secs_f64());
    }

    /// Extend a running job's lease; true when another node asked to cancel it.
    pub(crate) async fn renew(&self, id: &str) -> Result<bool> {
        let inner = &self.inner;
        let until = now_ms() + inner.config.lease.as_millis() as i64;
        inner
            .db
            .renew_lease(id, &inner.config.node_id, until)
            .await?;
        Ok(inner.db.cancel_requested(id).await?)
    }

    pub(crate) async fn append(&self, id: &str, event: &JobEvent) -> Result<()> {
        self.inner.db.append_event(id, &event.to_json()).await?;
        self.tick();
        Ok(())
    }

    /// Delete images whose time ran out, every minute until `shutdown`.
    pub fn start_janitor(&self, shutdown: CancellationToken) -> JoinHandle<()> {
        let jobs = self.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = every.tick() => {}
                    _ = shutdown.cancelled() => break,
                }
                match jobs.delete_expired().await {
                    Ok(0) => {}
                    Ok(count) => tracing::info!(count, "deleted expired images"),
                    Err(error) => tracing::error!(%error, "deleting expired images failed"),
                }
            }
        })
    }

    /// Delete every expired image (bytes first, then the record); returns how many.
    pub async fn delete_expired(&self) -> Result<usize> {
        let mut deleted = 0;
        loop {
            let expired = self.inner.db.expired_images(now_ms(), 100).await?;
            if expired.is_empty() {
                return Ok(deleted);
            }
            for image in expired {
                self.inner.blobs.delete(&image.blob_key).await?;
                self.inner
                    .db
                    .delete_image(&image.job_id, image.index)
                    .await?;
                deleted += 1;
            }
        }
    }
}

/// Resolves at `deadline`, never without one (the shutdown grace period in a `select!`).
pub(crate) async fn until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Image `index` failed inside the engine: upstream's per-image internal error.
fn internal_image_failure(index: u32, message: String) -> JobEvent {
    JobEvent::ImageFailed {
        index,
        code: ErrorCode::InternalServiceError.as_str().to_string(),
        message,
        created: now_ms() / 1000,
    }
}

/// An image ready to store and announce.
pub(crate) struct NewImage {
    pub index: u32,
    /// `None`: an upstream's own link is served instead (`url`).
    pub bytes: Option<Bytes>,
    pub url: Option<String>,
    pub width: u32,
    pub height: u32,
    pub format: String,
    pub seed: Option<u64>,
    pub extra: serde_json::Map<String, serde_json::Value>,
}

#[derive(Default)]
struct Outcome {
    delivered: Vec<(u32, u32)>,
    failures: u32,
    last_failure: Option<String>,
    /// Stopped by shutdown: back to the queue rather than cancelled.
    requeue: bool,
}
