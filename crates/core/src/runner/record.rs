//! Everything the runner writes about a job, the same for every backend: progress, images
//! (stored before they are announced, so a watcher never sees an image it cannot fetch), the
//! lease, and the one way a job ends ([`Jobs::conclude`]): billed once for what was
//! delivered, then its final event ([`Jobs::end`]).

use std::time::Instant;

use seedbed_storage::{ImageRow, JobRow, JobStatus, now_ms};
use seedbed_types::Usage;
use tokio_util::sync::CancellationToken;

use super::{Lease, Stop, Tally};
use crate::backend::{Done, NewImage, WorkEvent};
use crate::error::Result;
use crate::events::JobEvent;
use crate::jobs::Jobs;
use crate::spec::GenerationSpec;

impl Jobs {
    /// Write what a backend reported (anything but its `Done`).
    pub(super) async fn record(
        &self,
        job: &JobRow,
        spec: &GenerationSpec,
        event: WorkEvent,
        tally: &mut Tally,
    ) -> Result<()> {
        match event {
            WorkEvent::Progress {
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
                self.inner
                    .db
                    .set_progress(&job.id, &event.to_json())
                    .await?;
                self.append(&job.id, &event).await
            }
            WorkEvent::Image(image) => {
                tally.delivered.push((image.width, image.height));
                self.store_image(job, spec, image).await
            }
            WorkEvent::ImageFailed {
                index,
                code,
                message,
            } => {
                tally.failed += 1;
                self.append(&job.id, &image_failed(index, code, message))
                    .await
            }
            WorkEvent::Done(_) => Ok(()),
        }
    }

    /// Store an image (unless it is only an upstream's link), then announce it.
    async fn store_image(
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

    /// End a job the way its backend ended, unless it is not ours any more. A failure after
    /// images were delivered is the next image's: the job completes with what it has. A job
    /// stopped by shutdown goes back to the queue, its attempt not counted, and is not billed.
    pub(super) async fn conclude(
        &self,
        job: &JobRow,
        spec: &GenerationSpec,
        done: Done,
        tally: Tally,
        stopped: Option<Stop>,
    ) -> Result<()> {
        if stopped == Some(Stop::LeaseLost) || !self.holds(&job.id).await? {
            tracing::warn!("the job is another node's now: leaving it to that node");
            return Ok(());
        }
        if matches!(done, Done::Cancelled) && stopped == Some(Stop::Shutdown) {
            self.inner.db.requeue(&job.id).await?;
            self.tell_positions(crate::jobs::lane_of(spec)).await;
            return Ok(());
        }
        let counted = Usage::for_images(tally.delivered.iter().copied());
        let completed = |usage, extra| JobEvent::Completed {
            usage,
            created: now_ms() / 1000,
            extra,
        };
        let (status, event, usage) = match done {
            Done::Ok { usage, extra } => {
                // The provider's usage block when it sent one, else Seedream's rule.
                let usage = usage.unwrap_or(counted);
                (JobStatus::Succeeded, completed(usage, extra), usage)
            }
            Done::Failed(failure) if tally.delivered.is_empty() => {
                (JobStatus::Failed, failure.into_event(), counted)
            }
            Done::Failed(failure) => {
                let index = tally.delivered.len() as u32 + tally.failed;
                let event = image_failed(index, failure.code, failure.message);
                self.append(&job.id, &event).await?;
                let event = completed(counted, Default::default());
                (JobStatus::Succeeded, event, counted)
            }
            Done::Cancelled => (JobStatus::Cancelled, JobEvent::Cancelled, counted),
        };
        self.bill(job, spec, usage).await?;
        self.end(&job.id, status, &event).await
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
    async fn bill(&self, job: &JobRow, spec: &GenerationSpec, usage: Usage) -> Result<()> {
        self.inner
            .db
            .ledger()
            .record(
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

    /// Extend a running job's lease and read its cancel request.
    pub(super) async fn renew(&self, id: &str) -> Result<Lease> {
        if !self.holds(id).await? {
            return Ok(Lease::Lost);
        }
        let cancel = self.inner.db.cancel_requested(id).await?;
        Ok(Lease::Held { cancel })
    }

    /// Extend a running job's lease; false when this node no longer holds it.
    pub(super) async fn holds(&self, id: &str) -> Result<bool> {
        let inner = &self.inner;
        let until = now_ms() + inner.config.lease.as_millis() as i64;
        Ok(inner
            .db
            .renew_lease(id, &inner.config.node_id, until)
            .await?)
    }

    /// The cancel token of a job this process runs, where [`Jobs::cancel`] can reach it.
    pub(super) fn track(&self, job: &JobRow) -> CancellationToken {
        let cancel = CancellationToken::new();
        if job.cancel_requested {
            cancel.cancel();
        }
        if let Ok(mut running) = self.inner.running.lock() {
            running.insert(job.id.clone(), cancel.clone());
        }
        cancel
    }

    /// The job left this process: forget its token, record how long it took.
    pub(super) fn untrack(&self, id: &str, spec: &GenerationSpec, started: Instant) {
        if let Ok(mut running) = self.inner.running.lock() {
            running.remove(id);
        }
        metrics::histogram!("seedbed_job_seconds", "model" => spec.model.clone())
            .record(started.elapsed().as_secs_f64());
    }

    pub(crate) async fn append(&self, id: &str, event: &JobEvent) -> Result<()> {
        self.inner.db.append_event(id, &event.to_json()).await?;
        self.tick();
        Ok(())
    }
}

fn image_failed(index: u32, code: String, message: String) -> JobEvent {
    JobEvent::ImageFailed {
        index,
        code,
        message,
        created: now_ms() / 1000,
    }
}
