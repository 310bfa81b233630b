//! The one job runner. Each lane (the device, the gateway) is a claim loop with its own
//! concurrency that hands claimed jobs to its [`Backend`]; everything around the work is
//! written here once for every lane:
//!
//! - **claims**: a lane claims only the models this node serves; it wakes when a job is
//!   queued here or, on Postgres, on any node (a notice), and polls slowly besides.
//! - **heartbeat**: the lease is renewed every third of its length and by every write.
//!   Every write is fenced on the claim (node, attempt): a job whose lease is lost (another
//!   node took it) is stopped and nothing more is written for it: the job is that node's now.
//! - **reaper**: every node puts back in the queue the jobs whose lease ran out (their node
//!   died), so a node killed mid-job loses nothing.
//! - **cancel**: a cancel in this process ([`Jobs::cancel`]) stops the backend at once; one
//!   asked on another node arrives as a notice (Postgres) or is read within a second.
//! - **shutdown**: the running jobs get the grace period to finish; a job still running then
//!   is stopped and put back in the queue without counting the attempt.
//! - **the end** (`record.rs`): billed once for what was delivered, then one final event.

mod nodes;
mod record;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use seedbed_storage::{EndGuard, Fence, JobRow, JobStatus, Lane};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::backend::device::DeviceBackend;
use crate::backend::gateway::GatewayBackend;
use crate::backend::{Backend, Done, Failure, Work, WorkEvent};
use crate::device::Device;
use crate::error::Result;
use crate::events::JobEvent;
use crate::jobs::{Job, Jobs};
use crate::spec::GenerationSpec;

/// Relayed jobs in flight at once on one node: they wait on the network, not the device.
const GATEWAY_CONCURRENCY: usize = 32;

/// How often an idle lane looks for work when nothing woke it: often where no notices come
/// (SQLite), slowly where they do (Postgres; the poll only covers a lost notice).
const POLL: Duration = Duration::from_secs(1);
const POLL_WITH_NOTICES: Duration = Duration::from_secs(5);

/// How often a running job's cancel flag is read (a cancel asked on another node).
const CANCEL_POLL: Duration = Duration::from_secs(1);

/// Why the runner stopped a backend before it ended by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// A client cancelled the job.
    Cancel,
    /// The shutdown grace period ran out: run it again after the restart.
    Shutdown,
    /// Another node holds the job now.
    LeaseLost,
}

/// What a job delivered so far.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    /// Sizes of the images stored.
    pub delivered: Vec<(u32, u32)>,
    pub failed: u32,
}

impl Jobs {
    /// Start the runner: recover what a previous process left running, then run queued jobs
    /// (one at a time on the device, many at once through the gateway) until `shutdown`.
    pub fn start(&self, device: Device, shutdown: CancellationToken) -> JoinHandle<()> {
        let jobs = self.clone();
        tokio::spawn(async move {
            let node = jobs.inner.config.node_id.clone();
            if let Err(error) = jobs.reap(Some(&node)).await {
                tracing::error!(%error, "recovering interrupted jobs failed");
            }
            let inner = &jobs.inner;
            let local = DeviceBackend::new(device, inner.catalog.clone(), inner.blobs.clone());
            let gateway = GatewayBackend::new(inner.gateway.clone());
            // A lane this node does not run claims nothing: its jobs wait for other nodes.
            let runs = inner.config.runs;
            let local_models = match runs.local {
                true => inner.catalog.local_names(),
                false => Vec::new(),
            };
            let relayed: Vec<String> = match runs.gateway {
                true => inner.gateway.models().into_iter().map(|m| m.0).collect(),
                false => Vec::new(),
            };
            tokio::join!(
                jobs.run_lane(
                    Lane::Local,
                    1,
                    local_models,
                    Arc::new(local),
                    shutdown.clone()
                ),
                jobs.run_lane(
                    Lane::Gateway,
                    GATEWAY_CONCURRENCY,
                    relayed,
                    Arc::new(gateway),
                    shutdown.clone()
                ),
                jobs.run_reaper(shutdown.clone()),
                jobs.listen(shutdown.clone()),
            );
        })
    }

    /// Claim and run `lane`'s jobs for `models`, up to `concurrency` at once, until
    /// `shutdown`; returns when the last running job has ended or gone back to the queue.
    pub(crate) async fn run_lane(
        &self,
        lane: Lane,
        concurrency: usize,
        models: Vec<String>,
        backend: Arc<dyn Backend>,
        shutdown: CancellationToken,
    ) {
        let inner = &self.inner;
        let wake = match lane {
            Lane::Local => &inner.wake,
            Lane::Gateway => &inner.wake_gateway,
        };
        let permits = Arc::new(Semaphore::new(concurrency));
        while !shutdown.is_cancelled() {
            let permit = tokio::select! {
                permit = permits.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
                _ = shutdown.cancelled() => break,
            };
            let lease_until = self.lease_until();
            let node = &inner.config.node_id;
            match inner.db.claim_next(node, lease_until, lane, &models).await {
                Ok(Some(job)) => {
                    // Every job behind it moved up one.
                    self.tell_positions(lane).await;
                    let jobs = self.clone();
                    let backend = backend.clone();
                    let shutdown = shutdown.clone();
                    tokio::spawn(async move {
                        jobs.run_claimed(job, backend.as_ref(), &shutdown).await;
                        drop(permit);
                    });
                }
                Ok(None) => {
                    drop(permit);
                    let poll = if inner.listening.load(std::sync::atomic::Ordering::Relaxed) {
                        POLL_WITH_NOTICES
                    } else {
                        POLL
                    };
                    tokio::select! {
                        _ = wake.notified() => {}
                        _ = tokio::time::sleep(poll) => {}
                        _ = shutdown.cancelled() => {}
                    }
                }
                Err(error) => {
                    drop(permit);
                    tracing::error!(%error, lane = lane.as_str(), "claiming a job failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        let _ = permits.acquire_many(concurrency as u32).await;
    }

    /// Run a claimed job; when its bookkeeping fails, it fails.
    async fn run_claimed(&self, job: JobRow, backend: &dyn Backend, shutdown: &CancellationToken) {
        let span = tracing::info_span!("job", job = %job.id, request_id = %job.request_id);
        let id = job.id.clone();
        let Some(fence) = job.fence() else {
            tracing::error!(job = %id, "a claimed job without its claim's node");
            return;
        };
        let run = self.run_job(job, &fence, backend, shutdown);
        if let Err(error) = run.instrument(span).await {
            tracing::error!(job = %id, %error, "job bookkeeping failed");
            let failure = Failure::internal(error.to_string());
            let guard = EndGuard::Held(&fence);
            let _ = self
                .end(&id, JobStatus::Failed, &failure.into_event(), guard, None)
                .await;
        }
    }

    /// Start the job, drive it, end it.
    async fn run_job(
        &self,
        job: JobRow,
        fence: &Fence,
        backend: &dyn Backend,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        let Job { row: job, spec, .. } = Job::from_row(job)?;
        let started = JobEvent::Started {
            attempt: job.attempts,
        };
        if !self.append(&job.id, fence, &started).await? {
            return Ok(());
        }
        let cancel = self.track(&job);
        let clock = std::time::Instant::now();
        let driven = self
            .drive(&job, fence, &spec, backend, &cancel, shutdown)
            .await;
        self.untrack(&job.id, &spec, clock);
        let (done, tally, stopped) = driven?;
        self.conclude(&job, fence, &spec, done, tally, stopped)
            .await
    }

    /// Run the job on `backend` and write what it reports until it is done; how it ended,
    /// what it delivered, and why the runner stopped it, if it did.
    async fn drive(
        &self,
        job: &JobRow,
        fence: &Fence,
        spec: &GenerationSpec,
        backend: &dyn Backend,
        cancel: &CancellationToken,
        shutdown: &CancellationToken,
    ) -> Result<(Done, Tally, Option<Stop>)> {
        let config = &self.inner.config;
        let stop = CancellationToken::new();
        // However this ends (an error included), the backend is told to stop.
        let _stop_on_exit = stop.clone().drop_guard();
        let work = Work {
            id: job.id.clone(),
            spec: spec.clone(),
        };
        let mut stopped: Option<Stop> = None;
        let halt = |reason: Stop, stopped: &mut Option<Stop>| {
            // The first reason stands, except that a lost lease overrides any.
            if stopped.is_none() || reason == Stop::LeaseLost {
                *stopped = Some(reason);
                stop.cancel();
            }
        };
        // Renewed once before the work starts: this reads a cancel that came between the claim
        // and `track` (the claim itself set the lease).
        if let Some(reason) = self.renew(&job.id, fence).await?.stops() {
            halt(reason, &mut stopped);
        }
        let mut events = backend.run(work, stop.clone());
        let mut cancel_poll = tokio::time::interval(CANCEL_POLL);
        let mut tally = Tally::default();
        let beat = config.lease / 3;
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + beat, beat);
        let mut grace: Option<tokio::time::Instant> = None;
        let done = loop {
            let lost = stopped == Some(Stop::LeaseLost);
            tokio::select! {
                event = events.next() => match event {
                    Some(WorkEvent::Done(done)) => break done,
                    None => break Done::Failed(Failure::internal("the backend ended without an answer")),
                    // Not ours any more: the backend is only let finish.
                    Some(_) if lost => {}
                    Some(event) => if !self.record(job, fence, spec, event, &mut tally).await? {
                        tracing::warn!("lost the job's lease: dropping what it reported");
                        halt(Stop::LeaseLost, &mut stopped);
                    },
                },
                _ = heartbeat.tick(), if !lost => {
                    if let Some(reason) = self.renew(&job.id, fence).await?.stops() {
                        halt(reason, &mut stopped);
                    }
                }
                _ = cancel_poll.tick(), if stopped.is_none() => {
                    if self.inner.db.cancel_requested(&job.id).await? {
                        halt(Stop::Cancel, &mut stopped);
                    }
                }
                _ = cancel.cancelled(), if stopped.is_none() => halt(Stop::Cancel, &mut stopped),
                _ = shutdown.cancelled(), if grace.is_none() => {
                    tracing::info!("shutting down: letting the running job finish");
                    grace = Some(tokio::time::Instant::now() + config.shutdown_grace);
                }
                _ = until(grace), if stopped.is_none() => {
                    tracing::warn!("shutdown grace period over: stopping the job to run it again later");
                    halt(Stop::Shutdown, &mut stopped);
                }
            }
        };
        // Dropping the stream ends the backend's side (an upstream connection closes).
        drop(events);
        Ok((done, tally, stopped))
    }
}

/// Whether this node still holds a running job's lease, and whether a cancel was asked for.
pub(crate) enum Lease {
    Held { cancel: bool },
    Lost,
}

impl Lease {
    /// Why the job must stop, if it must.
    fn stops(self) -> Option<Stop> {
        match self {
            Self::Lost => {
                tracing::warn!("lost the job's lease to another node: stopping it");
                Some(Stop::LeaseLost)
            }
            Self::Held { cancel: true } => Some(Stop::Cancel),
            Self::Held { cancel: false } => None,
        }
    }
}

/// Resolves at `deadline`, never without one (the shutdown grace period in a `select!`).
async fn until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
