//! Jobs without HTTP: admission (queue bound, per-key limits), the job record, its event
//! stream, cancel. The runner (in `runner.rs`) does the work through a backend per lane.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use rand::Rng;
use seedbed_gateway::Gateway;
use seedbed_storage::{
    Admission, Blobs, Db, EndGuard, ImageRow, JobRow, JobStatus, KeyRow, Lane, Ledger, NewJob,
    Refusal,
};
use seedbed_types::JobProgress;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::catalog::Catalog;
use crate::error::{CoreError, Result};
use crate::events::{JobEvent, SequencedEvent};
use crate::inputs::{self, InputPolicy, ReferenceSource};
use crate::spec::{GenerationSpec, RunSpec};

#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// This process's name in job leases; stable across restarts of the same data dir.
    pub node_id: String,
    /// Jobs waiting beyond this are refused with `ServerOverloaded`.
    pub queue_size: u32,
    /// How long stored images (and their links) live.
    pub image_ttl: Duration,
    /// A job interrupted this many times (crashes, kills) fails instead of running again.
    pub max_attempts: u32,
    pub lease: Duration,
    pub inputs: InputPolicy,
    /// On shutdown, how long the running job may take to finish before it is put back in
    /// the queue for the next start.
    pub shutdown_grace: Duration,
    /// Which queues this node takes jobs from; the others' jobs wait for other nodes. Every
    /// node accepts requests for every model it knows either way.
    pub runs: Runs,
}

/// The lanes a node runs: the device (local models), the gateway (relayed models), both, or
/// neither (a node that only takes requests and serves results).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Runs {
    pub local: bool,
    pub gateway: bool,
}

impl Default for Runs {
    fn default() -> Self {
        Self {
            local: true,
            gateway: true,
        }
    }
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            node_id: "local".into(),
            queue_size: 64,
            image_ttl: Duration::from_secs(24 * 3600),
            max_attempts: 3,
            lease: Duration::from_secs(30),
            inputs: InputPolicy::default(),
            shutdown_grace: Duration::from_secs(30),
            runs: Runs::default(),
        }
    }
}

#[derive(Clone)]
pub struct Jobs {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub db: Db,
    pub blobs: Blobs,
    /// The models of this node's own folders (and its upstreams' names).
    pub catalog: Catalog,
    /// The same with what other nodes announced: what requests here may name.
    pub cluster_catalog: RwLock<Arc<Catalog>>,
    /// Models served by upstream providers.
    pub gateway: Gateway,
    pub config: CoreConfig,
    /// Wakes the runner when a job is queued or cancelled.
    pub wake: Notify,
    /// Wakes the gateway runner when a relayed job is queued.
    pub wake_gateway: Notify,
    /// Bumped after every appended event; watchers re-read the log.
    pub event_tick: watch::Sender<u64>,
    /// Cancel tokens of jobs running in this process.
    pub running: Mutex<HashMap<String, CancellationToken>>,
    /// Whether other nodes' notices reach this one (lanes then poll slowly).
    pub listening: AtomicBool,
}

/// Where a job's reference images are kept until it ends.
const INPUTS: &str = "inputs";
/// How long a job's inputs may exist without its row before a sweep takes them for an
/// orphan's: far longer than any admission takes, clock skew between nodes included.
const ADMISSION_GRACE: std::time::Duration = std::time::Duration::from_secs(15 * 60);

fn inputs_folder(job_id: &str) -> String {
    format!("{INPUTS}/{job_id}")
}

fn refused(refusal: Refusal) -> CoreError {
    match refusal {
        Refusal::QueueFull { queued } => CoreError::QueueFull {
            queued,
            retry_after_s: 5,
        },
        Refusal::RateLimited {
            limit,
            retry_after_s,
        } => CoreError::RateLimited {
            limit,
            retry_after_s,
        },
        Refusal::QuotaExceeded { quota, used } => CoreError::QuotaExceeded { quota, used },
    }
}

/// A job as core hands it out: its row, and its spec parsed once, here, so no caller reads
/// the stored JSON itself.
#[derive(Debug, Clone)]
pub struct Job {
    pub row: JobRow,
    pub spec: GenerationSpec,
    /// The latest progress report of a running job.
    pub progress: Option<JobProgress>,
}

impl Job {
    pub(crate) fn from_row(row: JobRow) -> Result<Self> {
        let spec = serde_json::from_str(&row.spec)
            .map_err(|e| CoreError::Internal(format!("the stored spec of {}: {e}", row.id)))?;
        // Progress is a hint: one that does not read is left out, the job still shows.
        let progress = row
            .progress
            .as_deref()
            .and_then(|p| serde_json::from_str(p).ok());
        Ok(Self {
            row,
            spec,
            progress,
        })
    }
}

/// The row's fields (`job.id`, `job.status`, ...) read through the job.
impl std::ops::Deref for Job {
    type Target = JobRow;
    fn deref(&self) -> &JobRow {
        &self.row
    }
}

/// Every id we hand out: a prefix and 24 random hex digits.
pub fn new_id(prefix: &str) -> String {
    let mut rng = rand::rng();
    let digits: String = (0..24)
        .map(|_| char::from_digit(rng.random_range(0..16), 16).unwrap_or('0'))
        .collect();
    format!("{prefix}_{digits}")
}

impl Jobs {
    pub fn new(
        db: Db,
        blobs: Blobs,
        catalog: Catalog,
        gateway: Gateway,
        config: CoreConfig,
    ) -> Self {
        let (event_tick, _) = watch::channel(0);
        let relayed = gateway.models().into_iter().map(|(public, ..)| public);
        let catalog = catalog.with_relayed(relayed);
        Self {
            inner: Arc::new(Inner {
                db,
                blobs,
                cluster_catalog: RwLock::new(Arc::new(catalog.clone())),
                catalog,
                gateway,
                config,
                wake: Notify::new(),
                wake_gateway: Notify::new(),
                event_tick,
                running: Mutex::new(HashMap::new()),
                listening: AtomicBool::new(false),
            }),
        }
    }

    /// The database itself, for the runner's tests; everything outside core goes through a
    /// handle ([`Jobs::ledger`]) or a method here.
    #[cfg(test)]
    pub(crate) fn db(&self) -> &Db {
        &self.inner.db
    }

    /// What finished jobs were billed.
    pub fn ledger(&self) -> Ledger {
        self.inner.db.ledger()
    }

    /// Whether the database answers.
    pub async fn database_ok(&self) -> bool {
        self.inner.db.ping().await.is_ok()
    }

    /// Jobs waiting in the queue, every lane and node together.
    pub async fn queued_count(&self) -> Result<u32> {
        Ok(self.inner.db.queued_count().await?)
    }

    pub fn blobs(&self) -> &Blobs {
        &self.inner.blobs
    }

    /// What requests may name: this node's models and upstreams, and what the other nodes
    /// sharing the database announced (refreshed every half lease).
    pub fn catalog(&self) -> Arc<Catalog> {
        match self.inner.cluster_catalog.read() {
            Ok(catalog) => catalog.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Whether a request for `model` is relayed to an upstream (this node's or another's).
    pub fn relays(&self, model: &str) -> bool {
        self.inner.gateway.serves(model) || self.catalog().relayed_elsewhere(model)
    }

    pub fn gateway(&self) -> &Gateway {
        &self.inner.gateway
    }

    pub fn config(&self) -> &CoreConfig {
        &self.inner.config
    }

    /// Admit a job: a cheap check of the queue bound and the key's limits first, then the
    /// reference images loaded (URLs fetched only now, so a refused request costs nothing),
    /// stored, and the job written in the same transaction as the final limit check.
    pub async fn submit(
        &self,
        mut spec: GenerationSpec,
        sources: Vec<ReferenceSource>,
        key: Option<&KeyRow>,
        request_id: &str,
    ) -> Result<Job> {
        let db = &self.inner.db;
        let admission = Admission {
            queue_size: self.inner.config.queue_size,
            images_per_minute: key.and_then(|k| k.images_per_minute),
            quota_images: key.and_then(|k| k.quota_images),
        };
        let key_id = key.map(|k| k.id.clone());
        db.check_admission(key_id.as_deref(), spec.images, &admission)
            .await?
            .map_err(refused)?;
        let references = inputs::load(sources, &self.inner.config.inputs).await?;
        let id = new_id("job");
        for (index, bytes) in references.into_iter().enumerate() {
            let blob_key = format!("{}/{index}", inputs_folder(&id));
            if let Err(error) = self.inner.blobs.put(&blob_key, bytes).await {
                self.delete_inputs(&id).await;
                return Err(error.into());
            }
            if let RunSpec::Local(local) = &mut spec.run {
                local.reference_images.push(blob_key);
            }
        }
        let new = NewJob {
            id: id.clone(),
            key_id,
            model: spec.model.clone(),
            images: spec.images,
            spec: serde_json::to_string(&spec)
                .map_err(|e| CoreError::Internal(format!("spec: {e}")))?,
            request_id: request_id.to_string(),
            lane: lane_of(&spec),
        };
        let admitted = db
            .admit_job(&new, &admission, |position| {
                JobEvent::Queued { position }.to_json()
            })
            .await;
        if !matches!(admitted, Ok(Ok(_))) {
            self.delete_inputs(&id).await;
        }
        admitted?.map_err(refused)?;
        metrics::counter!("seedbed_jobs_total", "model" => spec.model.clone()).increment(1);
        self.tick();
        if new.lane == Lane::Gateway {
            self.inner.wake_gateway.notify_one();
        } else {
            self.inner.wake.notify_one();
        }
        let row = db
            .job(&id)
            .await?
            .ok_or_else(|| CoreError::Internal(format!("job {id} vanished after insert")))?;
        Job::from_row(row)
    }

    /// Delete a job's stored reference images. Failures are logged, not returned: the
    /// start-up sweep takes whatever is left.
    pub(crate) async fn delete_inputs(&self, id: &str) {
        if let Err(error) = self.inner.blobs.delete_prefix(&inputs_folder(id)).await {
            tracing::warn!(job = %id, %error, "deleting the job's reference images failed");
        }
    }

    /// Delete the reference images of jobs that have ended or no longer exist (left by a
    /// crash between a job's end and the deletion); returns how many jobs' inputs went. Call
    /// it before taking requests; job-less folders written recently stay, since a job being
    /// admitted on another node has its inputs stored before its row.
    pub async fn sweep_inputs(&self) -> Result<usize> {
        let mut swept = 0;
        for id in self.inner.blobs.folders(INPUTS).await? {
            let folder = inputs_folder(&id);
            let orphaned = match self.inner.db.job(&id).await? {
                Some(job) => job.status.is_final(),
                // A job being admitted (here or on another node) stores its inputs before
                // its row: only a folder nobody wrote to for a while is an orphan.
                None => match self.inner.blobs.last_written(&folder).await? {
                    Some(written) => written.elapsed().is_ok_and(|age| age > ADMISSION_GRACE),
                    None => true,
                },
            };
            if orphaned {
                self.inner.blobs.delete_prefix(&folder).await?;
                swept += 1;
            }
        }
        Ok(swept)
    }

    /// The job, if it exists and `key` may see it (`None` = admin or no auth).
    pub async fn job(&self, id: &str, key: Option<&str>) -> Result<Job> {
        match self.inner.db.job(id).await? {
            Some(row) if key.is_none() || row.key_id.as_deref() == key => Job::from_row(row),
            _ => Err(CoreError::JobNotFound { id: id.to_string() }),
        }
    }

    pub async fn list(&self, key: Option<&str>, limit: u32) -> Result<Vec<Job>> {
        self.inner
            .db
            .list_jobs(key, limit)
            .await?
            .into_iter()
            .map(Job::from_row)
            .collect()
    }

    pub async fn queue_position(&self, id: &str) -> Result<Option<u32>> {
        Ok(self.inner.db.queue_position(id).await?)
    }

    /// Cancel a job: a queued one ends at once, a running one at its next step.
    pub async fn cancel(&self, id: &str, key: Option<&str>) -> Result<Job> {
        let job = self.job(id, key).await?;
        if job.status.is_final() {
            return Ok(job);
        }
        let status = self.inner.db.request_cancel(id).await?;
        if status == Some(JobStatus::Queued) {
            self.end(
                id,
                JobStatus::Cancelled,
                &JobEvent::Cancelled,
                EndGuard::Queued,
                None,
            )
            .await?;
            self.tell_positions(lane_of(&job.spec)).await;
        }
        if let Some(cancel) = self.running_token(id) {
            cancel.cancel();
        }
        self.inner.wake.notify_one();
        self.job(id, key).await
    }

    pub(crate) fn running_token(&self, id: &str) -> Option<CancellationToken> {
        self.inner.running.lock().ok()?.get(id).cloned()
    }

    /// The job's events after `after` (0 = from the start), then live ones until a final
    /// event. Other nodes' writes are seen within a second.
    pub fn events(
        &self,
        id: &str,
        after: i64,
    ) -> impl Stream<Item = Result<SequencedEvent>> + Send + 'static + use<> {
        let state = EventCursor {
            inner: self.inner.clone(),
            id: id.to_string(),
            tick: self.inner.event_tick.subscribe(),
            pending: Vec::new().into_iter(),
            last: after,
            done: false,
        };
        futures::stream::unfold(state, |mut cursor| async move {
            loop {
                if let Some(event) = cursor.pending.next() {
                    cursor.last = event.seq;
                    cursor.done = event.event.is_final();
                    return Some((Ok(event), cursor));
                }
                if cursor.done {
                    return None;
                }
                // Mark the tick seen before reading, so an event written after the read
                // still wakes us.
                cursor.tick.borrow_and_update();
                match read_events(&cursor.inner.db, &cursor.id, cursor.last).await {
                    Ok(events) if !events.is_empty() => cursor.pending = events.into_iter(),
                    Ok(_) => {
                        let _ = tokio::time::timeout(Duration::from_secs(1), cursor.tick.changed())
                            .await;
                    }
                    Err(error) => {
                        cursor.done = true;
                        return Some((Err(error), cursor));
                    }
                }
            }
        })
    }

    /// Every event the job has recorded so far, in order.
    pub async fn recorded_events(&self, id: &str) -> Result<Vec<SequencedEvent>> {
        read_events(&self.inner.db, id, 0).await
    }

    /// A stored image's record, unless it has expired.
    pub async fn image_row(&self, job_id: &str, index: u32) -> Result<Option<ImageRow>> {
        let row = self.inner.db.image(job_id, index).await?;
        Ok(row.filter(|row| row.expires_at > seedbed_storage::now_ms()))
    }

    /// A stored image and its bytes.
    pub async fn image(&self, job_id: &str, index: u32) -> Result<Option<(ImageRow, Bytes)>> {
        let Some(row) = self.image_row(job_id, index).await? else {
            return Ok(None);
        };
        Ok(self
            .inner
            .blobs
            .get(&row.blob_key)
            .await?
            .map(|bytes| (row, bytes)))
    }

    /// Give each queued job of `lane` whose place changed (a job ahead of it left the queue
    /// or came back to it) a `queued` event with its new position. A failure is only logged:
    /// positions are a hint, and the next change tells every job again.
    pub(crate) async fn tell_positions(&self, lane: Lane) {
        let told = self
            .inner
            .db
            .tell_positions(lane, |position| JobEvent::Queued { position }.to_json())
            .await;
        match told {
            Ok(0) => {}
            Ok(_) => self.tick(),
            Err(error) => {
                tracing::warn!(%error, lane = lane.as_str(), "telling queued jobs their position failed")
            }
        }
    }

    pub(crate) fn tick(&self) {
        self.inner.event_tick.send_modify(|n| *n += 1);
    }
}

/// The lane whose runner takes a job: the gateway's for a relay, else the device's.
pub(crate) fn lane_of(spec: &GenerationSpec) -> Lane {
    if spec.is_relay() {
        Lane::Gateway
    } else {
        Lane::Local
    }
}

struct EventCursor {
    inner: Arc<Inner>,
    id: String,
    tick: watch::Receiver<u64>,
    pending: std::vec::IntoIter<SequencedEvent>,
    last: i64,
    done: bool,
}

async fn read_events(db: &Db, id: &str, after: i64) -> Result<Vec<SequencedEvent>> {
    db.events_after(id, after)
        .await?
        .into_iter()
        .map(|(seq, json)| {
            let event = serde_json::from_str(&json)
                .map_err(|e| CoreError::Internal(format!("event {seq} of {id}: {e}")))?;
            Ok(SequencedEvent { seq, event })
        })
        .collect()
}
