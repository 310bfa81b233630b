//! The runner driven by a scripted backend ([`fake`]) on a real SQLite database and blob
//! folder: what the job row, its event log and its usage say after each way a job can go.
//! Timing is real but short (a 300 ms lease, so a heartbeat every 100 ms).

mod ends;
mod fake;
mod queue;
mod stops;

use std::sync::Arc;
use std::time::Duration;

use seedbed_gateway::Gateway;
use seedbed_storage::{Blobs, Db, JobRow, Lane, now_ms};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::backend::Backend;
use crate::catalog::Catalog;
use crate::events::JobEvent;
use crate::jobs::{CoreConfig, Jobs};
use crate::spec::{GenerationSpec, RelaySpec, RunSpec};

struct Harness {
    jobs: Jobs,
    _dir: tempfile::TempDir,
}

/// A lane running until [`Running::stop`].
struct Running {
    handle: JoinHandle<()>,
    shutdown: CancellationToken,
}

impl Running {
    /// Shut the lane down and wait until its jobs have ended or gone back to the queue.
    async fn stop(self) {
        self.shutdown.cancel();
        self.finished().await;
    }

    async fn finished(self) {
        tokio::time::timeout(Duration::from_secs(10), self.handle)
            .await
            .expect("the lane did not stop within 10 s")
            .unwrap();
    }
}

/// A spec as a job row stores it (from JSON, as the runner reads it, so fields added later
/// with their defaults need no change here).
fn spec(images: u32) -> GenerationSpec {
    serde_json::from_value(serde_json::json!({
        "model": "seedream-test", "local_model": "tiny", "prompt": "a lighthouse",
        "negative_prompt": null, "width": 64, "height": 64, "compute_width": 64,
        "compute_height": 64, "images": images, "seed": 1, "steps": 4, "guidance_scale": 0.0,
        "scheduler": null, "strength": 0.8, "reference_images": [], "response_format": "url",
        "output_format": "png", "watermark": false, "stream": false
    }))
    .unwrap()
}

/// The models the test node serves: the one its specs name.
fn served() -> Vec<String> {
    vec!["seedream-test".to_string()]
}

/// A relayed job's spec carrying `body`.
fn relay(body: &str) -> GenerationSpec {
    GenerationSpec {
        run: RunSpec::Relay(RelaySpec { body: body.into() }),
        ..spec(1)
    }
}

impl Harness {
    async fn new() -> Self {
        Self::with(|_| {}).await
    }

    async fn with(adjust: impl FnOnce(&mut CoreConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("seedbed.db").display());
        let db = Db::open(&url).await.unwrap();
        let blobs = Blobs::local(&dir.path().join("blobs")).unwrap();
        let mut config = CoreConfig {
            node_id: "node-a".into(),
            lease: Duration::from_millis(300),
            shutdown_grace: Duration::from_secs(10),
            ..CoreConfig::default()
        };
        adjust(&mut config);
        let jobs = Jobs::new(db, blobs, Catalog::default(), Gateway::default(), config);
        Self { jobs, _dir: dir }
    }

    fn db(&self) -> &Db {
        self.jobs.db()
    }

    async fn submit(&self, spec: GenerationSpec) -> String {
        let id = self
            .jobs
            .submit(spec, Vec::new(), None, "req")
            .await
            .unwrap()
            .row
            .id;
        // Jobs are claimed oldest first by their millisecond: keep the order they came in.
        tokio::time::sleep(Duration::from_millis(2)).await;
        id
    }

    /// The local lane (one job at a time) on `backend`.
    fn run(&self, backend: Arc<dyn Backend>) -> Running {
        self.run_lane(Lane::Local, 1, backend)
    }

    fn run_lane(&self, lane: Lane, concurrency: usize, backend: Arc<dyn Backend>) -> Running {
        let shutdown = CancellationToken::new();
        let jobs = self.jobs.clone();
        let token = shutdown.clone();
        let handle = tokio::spawn(async move {
            jobs.run_lane(lane, concurrency, served(), backend, token)
                .await
        });
        Running { handle, shutdown }
    }

    async fn job(&self, id: &str) -> JobRow {
        self.db().job(id).await.unwrap().unwrap()
    }

    /// The job once it has ended.
    async fn ended(&self, id: &str) -> JobRow {
        for _ in 0..500 {
            let job = self.job(id).await;
            if job.status.is_final() {
                return job;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("job {id} did not end within 10 s");
    }

    async fn events(&self, id: &str) -> Vec<JobEvent> {
        let rows = self.db().events_after(id, 0).await.unwrap();
        rows.iter()
            .map(|(_, json)| serde_json::from_str(json).unwrap())
            .collect()
    }

    async fn names(&self, id: &str) -> Vec<&'static str> {
        self.events(id).await.iter().map(JobEvent::name).collect()
    }

    /// Wait until the job's log holds exactly `expected` (what a backend sent before a hold
    /// may still be on its way to the log when the hold is reported).
    async fn log_reaches(&self, id: &str, expected: &[&str]) {
        for _ in 0..500 {
            if self.names(id).await == expected {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(self.names(id).await, expected);
    }

    async fn last_event(&self, id: &str) -> JobEvent {
        self.events(id).await.pop().unwrap()
    }

    /// `(images, tokens)` of the job's one usage record, if it has one.
    async fn billed(&self, id: &str) -> Option<(u64, u64)> {
        let rows = self.db().ledger().entries(None, 0, 1000).await.unwrap();
        let mine: Vec<_> = rows.iter().filter(|row| row.job_id == id).collect();
        assert!(mine.len() <= 1, "billed more than once: {mine:?}");
        mine.first().map(|row| (row.images, row.tokens))
    }

    /// Another node takes the job: its lease ran out, it was reaped and claimed again.
    async fn take_over(&self, id: &str) {
        let fence = self.job(id).await.fence().unwrap();
        assert!(self.db().renew(id, &fence, 0).await.unwrap().is_some());
        assert_eq!(self.db().reap(None, 10).await.unwrap().requeued, [id]);
        let taken = self
            .db()
            .claim_next("node-b", now_ms() + 60_000, Lane::Local, &served())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(taken.id, id);
    }
}
