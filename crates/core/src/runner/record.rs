//! Everything the runner writes about a job, the same for every backend: progress, images
//! (stored before they are announced, so a watcher never sees an image it cannot fetch), the
//! lease, and the one way a job ends. Every write is fenced on the job's claim (node and
//! attempt): a node that lost the job writes nothing. The end ([`Jobs::conclude`]): billed once for what was
//! delivered, then its final event ([`Jobs::end`]).

use std::time::Instant;

use seedbed_storage::{Billing, EndGuard, Fence, ImageRow, JobRow, JobStatus, Recorded, now_ms};
use seedbed_types::Usage;
use tokio_util::sync::CancellationToken;

use super::{Lease, Stop, Tally};
use crate::backend::{Done, NewImage, WorkEvent};
use crate::error::Result;
use crate::events::JobEvent;
use crate::jobs::Jobs;
use crate::spec::GenerationSpec;

impl Jobs {
    /// Write what a backend reported (anything but its `Done`); false, with nothing written,
    /// when this node no longer holds the job.
    pub(super) async fn record(
        &self,
        job: &JobRow,
        fence: &Fence,
        spec: &GenerationSpec,
        event: WorkEvent,
        tally: &mut Tally,
    ) -> Result<bool> {
        match event {
            WorkEvent::Progress {
                image,
                images,
                step,
                steps,
                preview,
            } => {
                let event = JobEvent::Progress {
                    image,
                    images,
                    step,
                    steps,
                    preview,
                }
                .to_json();
                let until = self.lease_until();
                let db = &self.inner.db;
                let held = db
                    .record_event(&job.id, fence, until, &event, Some(&event))
                    .await?;
                self.tick();
                Ok(held)
            }
            WorkEvent::Image(image) => {
                let size = (image.width, image.height);
                let held = self.store_image(job, fence, spec, image).await?;
                if held {
                    tally.delivered.push(size);
                }
                Ok(held)
            }
            WorkEvent::ImageFailed {
                index,
                code,
                message,
            } => {
                tally.failed += 1;
                self.append(&job.id, fence, &image_failed(index, code, message))
                    .await
            }
            WorkEvent::Done(_) => Ok(true),
        }
    }

    /// Store an image (unless it is only an upstream's link), then record and announce it in
    /// one fenced write; false when this node no longer holds the job (the bytes go again).
    async fn store_image(
        &self,
        job: &JobRow,
        fence: &Fence,
        spec: &GenerationSpec,
        image: NewImage,
    ) -> Result<bool> {
        let inner = &self.inner;
        let now = now_ms();
        let event = JobEvent::Image {
            index: image.index,
            width: image.width,
            height: image.height,
            format: image.format.clone(),
            seed: image.seed,
            created: now / 1000,
            url: image.url,
            extra: image.extra,
        }
        .to_json();
        let held = match image.bytes {
            Some(bytes) => {
                // Keyed by attempt: a stale node's late upload never replaces the owner's.
                let blob_key = format!(
                    "images/{}/{}-{}.{}",
                    job.id, image.index, fence.attempt, image.format
                );
                let size = bytes.len() as u64;
                inner.blobs.put(&blob_key, bytes).await?;
                let row = ImageRow {
                    job_id: job.id.clone(),
                    index: image.index,
                    blob_key: blob_key.clone(),
                    width: image.width,
                    height: image.height,
                    format: image.format,
                    bytes: size,
                    created_at: now,
                    expires_at: now + inner.config.image_ttl.as_millis() as i64,
                };
                let until = self.lease_until();
                match inner.db.record_image(fence, until, &row, &event).await? {
                    Recorded::Lost => {
                        inner.blobs.delete(&blob_key).await?;
                        false
                    }
                    Recorded::Stored { replaced } => {
                        if let Some(old) = replaced {
                            inner.blobs.delete(&old).await?;
                        }
                        true
                    }
                }
            }
            None => {
                let until = self.lease_until();
                let db = &inner.db;
                db.record_event(&job.id, fence, until, &event, None).await?
            }
        };
        if held {
            metrics::counter!("seedbed_images_total", "model" => spec.model.clone()).increment(1);
            self.tick();
        }
        Ok(held)
    }

    /// End a job the way its backend ended, unless it is not ours any more. A failure after
    /// images were delivered is the next image's: the job completes with what it has. A job
    /// stopped by shutdown goes back to the queue, its attempt not counted, and is not billed.
    pub(super) async fn conclude(
        &self,
        job: &JobRow,
        fence: &Fence,
        spec: &GenerationSpec,
        done: Done,
        tally: Tally,
        stopped: Option<Stop>,
    ) -> Result<()> {
        if stopped == Some(Stop::LeaseLost) {
            tracing::warn!("the job is another node's now: leaving it to that node");
            return Ok(());
        }
        if matches!(done, Done::Cancelled) && stopped == Some(Stop::Shutdown) {
            if self.inner.db.requeue(&job.id, fence).await? {
                self.tell_positions(crate::jobs::lane_of(spec)).await;
            }
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
                if !self.append(&job.id, fence, &event).await? {
                    return Ok(());
                }
                let event = completed(counted, Default::default());
                (JobStatus::Succeeded, event, counted)
            }
            Done::Cancelled => (JobStatus::Cancelled, JobEvent::Cancelled, counted),
        };
        let billing = Billing {
            key_id: job.key_id.as_deref(),
            model: &spec.model,
            images: usage.generated_images,
            tokens: usage.total_tokens,
        };
        let ended = self
            .end(
                &job.id,
                status,
                &event,
                EndGuard::Held(fence),
                Some(billing),
            )
            .await?;
        if ended {
            metrics::counter!("seedbed_tokens_total", "model" => spec.model.clone())
                .increment(usage.total_tokens);
        } else {
            tracing::warn!("the job is another node's now: leaving it to that node");
        }
        Ok(())
    }

    /// End a job with its final event (and its bill) if `guard` allows; a `Failed` event's
    /// code and message become the job's error and are counted. True if this ended it.
    pub(crate) async fn end(
        &self,
        id: &str,
        status: JobStatus,
        event: &JobEvent,
        guard: EndGuard<'_>,
        billing: Option<Billing<'_>>,
    ) -> Result<bool> {
        let error = match event {
            JobEvent::Failed { code, message, .. } => {
                metrics::counter!("seedbed_errors_total", "code" => code.clone()).increment(1);
                Some((code.as_str(), message.as_str()))
            }
            _ => None,
        };
        let db = &self.inner.db;
        let ended = db
            .finish_job(id, status, error, &event.to_json(), guard, billing)
            .await?;
        if ended {
            self.tick();
            // Every way a job ends comes through here: its reference images go with it.
            self.delete_inputs(id).await;
        }
        Ok(ended)
    }

    /// Extend a running job's lease and read its cancel request.
    pub(super) async fn renew(&self, id: &str, fence: &Fence) -> Result<Lease> {
        let until = self.lease_until();
        Ok(match self.inner.db.renew(id, fence, until).await? {
            Some(cancel) => Lease::Held { cancel },
            None => Lease::Lost,
        })
    }

    /// When a lease taken or renewed now runs out.
    pub(super) fn lease_until(&self) -> i64 {
        now_ms() + self.inner.config.lease.as_millis() as i64
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

    /// Append an event to a job this node runs; false when it no longer holds it.
    pub(crate) async fn append(&self, id: &str, fence: &Fence, event: &JobEvent) -> Result<bool> {
        let until = self.lease_until();
        let db = &self.inner.db;
        let held = db
            .record_event(id, fence, until, &event.to_json(), None)
            .await?;
        self.tick();
        Ok(held)
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
