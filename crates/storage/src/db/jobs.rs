//! Jobs: rows, the queue (claim under a lease) and each job's event log.

use sqlx::sqlite::SqliteRow;
use sqlx::{Row, Sqlite, SqliteConnection, Transaction};

use sqlx::AssertSqlSafe;

use super::Db;
use crate::error::{Result, StorageError};
use crate::now_ms;

/// A job's state is part of the wire contract; the database stores its `as_str`.
pub use seedbed_types::JobState as JobStatus;

fn parse_status(text: &str) -> Result<JobStatus> {
    Ok(match text {
        "queued" => JobStatus::Queued,
        "running" => JobStatus::Running,
        "succeeded" => JobStatus::Succeeded,
        "failed" => JobStatus::Failed,
        "cancelled" => JobStatus::Cancelled,
        other => {
            return Err(StorageError::Corrupt {
                what: "job status".into(),
                message: other.into(),
            });
        }
    })
}

/// What the server writes before any work starts.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: String,
    pub key_id: Option<String>,
    pub model: String,
    /// How many images the job may produce (for rate limits before it runs).
    pub images: u32,
    /// The validated generation spec as JSON: everything needed to run it again.
    pub spec: String,
    pub request_id: String,
    pub lane: Lane,
}

/// Which runner takes a job: the device (one at a time) or the gateway (concurrently).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    Local,
    Gateway,
}

impl Lane {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Gateway => "gateway",
        }
    }
}

#[derive(Debug, Clone)]
pub struct JobRow {
    pub id: String,
    pub key_id: Option<String>,
    pub model: String,
    pub images: u32,
    pub status: JobStatus,
    pub spec: String,
    pub request_id: String,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub attempts: u32,
    pub cancel_requested: bool,
    /// JSON of the latest progress report, if any.
    pub progress: Option<String>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
}

impl JobRow {
    fn from_row(row: &SqliteRow) -> Result<Self> {
        Ok(Self {
            id: row.try_get("id")?,
            key_id: row.try_get("key_id")?,
            model: row.try_get("model")?,
            images: row.try_get::<i64, _>("images")? as u32,
            status: parse_status(row.try_get("status")?)?,
            spec: row.try_get("spec")?,
            request_id: row.try_get("request_id")?,
            created_at: row.try_get("created_at")?,
            started_at: row.try_get("started_at")?,
            finished_at: row.try_get("finished_at")?,
            attempts: row.try_get::<i64, _>("attempts")? as u32,
            cancel_requested: row.try_get::<i64, _>("cancel_requested")? != 0,
            progress: row.try_get("progress")?,
            error_code: row.try_get("error_code")?,
            error_message: row.try_get("error_message")?,
        })
    }
}

/// What start-up recovery did with jobs left running by a dead process.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RecoveredJobs {
    pub requeued: Vec<String>,
    /// Jobs that had already been tried `max_attempts` times.
    pub failed: Vec<String>,
}

/// The limits a new job must fit, checked in the same transaction that inserts it so that
/// concurrent requests cannot overshoot them together.
#[derive(Debug, Clone, Copy, Default)]
pub struct Admission {
    /// Jobs waiting (every lane) before new ones are refused.
    pub queue_size: u32,
    /// Images the key may request per rolling minute: every job created in the window
    /// counts, cancelled ones too (submit-and-cancel is still work).
    pub images_per_minute: Option<u32>,
    /// Images the key may ever have: billed ones plus those of its queued and running jobs.
    pub quota_images: Option<u64>,
}

/// Why a job was not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    QueueFull { queued: u32 },
    RateLimited { limit: u32, retry_after_s: u64 },
    QuotaExceeded { quota: u64, used: u64 },
}

const WINDOW_MS: i64 = 60_000;

/// The admission rule on one connection; `Ok(queued)` (the new job's queue position) when
/// the job fits.
async fn admission_in(
    conn: &mut SqliteConnection,
    key_id: Option<&str>,
    images: u32,
    admission: &Admission,
) -> Result<std::result::Result<u32, Refusal>> {
    let queued: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE status = 'queued'")
        .fetch_one(&mut *conn)
        .await?;
    let queued = queued as u32;
    if queued >= admission.queue_size {
        return Ok(Err(Refusal::QueueFull { queued }));
    }
    let Some(key_id) = key_id else {
        return Ok(Ok(queued));
    };
    let wanted = u64::from(images);
    if let Some(limit) = admission.images_per_minute {
        let now = now_ms();
        let recent: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT created_at, images FROM jobs WHERE key_id = ? AND created_at > ? ORDER BY created_at",
        )
        .bind(key_id)
        .bind(now - WINDOW_MS)
        .fetch_all(&mut *conn)
        .await?;
        let mut in_window: u64 = recent.iter().map(|(_, n)| *n as u64).sum();
        if in_window + wanted > u64::from(limit) {
            // Retry once enough of the oldest requests have left the window (a minute when
            // the request alone is over the limit).
            let mut retry_at = now + WINDOW_MS;
            for (created, n) in &recent {
                in_window -= *n as u64;
                if in_window + wanted <= u64::from(limit) {
                    retry_at = created + WINDOW_MS;
                    break;
                }
            }
            let retry_after_s = ((retry_at - now).max(1) as u64).div_ceil(1000);
            return Ok(Err(Refusal::RateLimited {
                limit,
                retry_after_s,
            }));
        }
    }
    if let Some(quota) = admission.quota_images {
        let used: i64 = sqlx::query_scalar(
            "SELECT (SELECT COALESCE(SUM(images), 0) FROM usage WHERE key_id = ?) \
                  + (SELECT COALESCE(SUM(images), 0) FROM jobs WHERE key_id = ? \
                         AND status IN ('queued', 'running'))",
        )
        .bind(key_id)
        .bind(key_id)
        .fetch_one(&mut *conn)
        .await?;
        let used = used as u64;
        if used + wanted > quota {
            return Ok(Err(Refusal::QuotaExceeded { quota, used }));
        }
    }
    Ok(Ok(queued))
}

const COLUMNS: &str = "id, key_id, model, images, status, spec, request_id, created_at, started_at, \
     finished_at, attempts, cancel_requested, progress, error_code, error_message";

impl Db {
    /// Whether a job would be admitted now, without writing anything: a cheap refusal before
    /// slow work (fetching reference images). `admit_job` decides for real.
    pub async fn check_admission(
        &self,
        key_id: Option<&str>,
        images: u32,
        admission: &Admission,
    ) -> Result<std::result::Result<u32, Refusal>> {
        let mut conn = self.pool.acquire().await?;
        admission_in(&mut conn, key_id, images, admission).await
    }

    /// Insert a queued job and its first event (made from its position in its lane's queue)
    /// if it fits `admission`; the check and the insert are one write transaction, so
    /// concurrent requests are admitted one after the other. Returns the queue position.
    pub async fn admit_job(
        &self,
        job: &NewJob,
        admission: &Admission,
        first_event: impl FnOnce(u32) -> String,
    ) -> Result<std::result::Result<u32, Refusal>> {
        // IMMEDIATE takes the write lock before reading, so two admissions cannot both read
        // the old counts.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        if let Err(refusal) =
            admission_in(&mut tx, job.key_id.as_deref(), job.images, admission).await?
        {
            return Ok(Err(refusal));
        }
        // Its place in its own lane's queue (the limit above counts every lane): last.
        let position = lane_queued_in(&mut tx, job.lane).await?;
        insert_job_in(&mut tx, job, &first_event(position)).await?;
        sqlx::query("UPDATE jobs SET told_position = ? WHERE id = ?")
            .bind(i64::from(position))
            .bind(&job.id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Ok(position))
    }

    /// Insert a queued job and its first event with no admission limits (tests, tools);
    /// returns the event's seq.
    pub async fn insert_job(&self, job: &NewJob, first_event: &str) -> Result<i64> {
        let mut tx = self.pool.begin().await?;
        let seq = insert_job_in(&mut tx, job, first_event).await?;
        tx.commit().await?;
        Ok(seq)
    }

    pub async fn job(&self, id: &str) -> Result<Option<JobRow>> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM jobs WHERE id = ?"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(JobRow::from_row).transpose()
    }

    /// Newest first; `key_id: None` lists every job (admin).
    pub async fn list_jobs(&self, key_id: Option<&str>, limit: u32) -> Result<Vec<JobRow>> {
        let rows = match key_id {
            Some(key) => {
                sqlx::query(AssertSqlSafe(format!(
                    "SELECT {COLUMNS} FROM jobs WHERE key_id = ? ORDER BY created_at DESC, id DESC LIMIT ?"
                )))
                .bind(key)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(AssertSqlSafe(format!(
                    "SELECT {COLUMNS} FROM jobs ORDER BY created_at DESC, id DESC LIMIT ?"
                )))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter().map(JobRow::from_row).collect()
    }

    /// 0 for the next job to run; `None` once the job has left the queue.
    pub async fn queue_position(&self, id: &str) -> Result<Option<u32>> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM jobs q WHERE q.status = 'queued' AND q.lane = j.lane \
                 AND (q.created_at < j.created_at OR (q.created_at = j.created_at AND q.id < j.id))) AS ahead, \
             j.status AS status FROM jobs j WHERE j.id = ?",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(row) if row.try_get::<String, _>("status")? == "queued" => {
                Ok(Some(row.try_get::<i64, _>("ahead")? as u32))
            }
            _ => Ok(None),
        }
    }

    pub async fn queued_count(&self) -> Result<u32> {
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE status = 'queued'")
            .fetch_one(&self.pool)
            .await?;
        Ok(count as u32)
    }

    /// Take the oldest queued job for `node`, holding it until `lease_until`.
    pub async fn claim_next(
        &self,
        node: &str,
        lease_until: i64,
        lane: Lane,
    ) -> Result<Option<JobRow>> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "UPDATE jobs SET status = 'running', node = ?, lease_until = ?, attempts = attempts + 1, \
                 started_at = ? \
             WHERE id = (SELECT id FROM jobs WHERE status = 'queued' AND lane = ? \
                 ORDER BY created_at, id LIMIT 1) \
                 AND status = 'queued' \
             RETURNING {COLUMNS}"
        )))
        .bind(node)
        .bind(lease_until)
        .bind(now_ms())
        .bind(lane.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(JobRow::from_row).transpose()
    }

    /// Extend the lease of a job this node runs; false if the job is no longer ours.
    pub async fn renew_lease(&self, id: &str, node: &str, lease_until: i64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE jobs SET lease_until = ? WHERE id = ? AND node = ? AND status = 'running'",
        )
        .bind(lease_until)
        .bind(id)
        .bind(node)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Put back in the queue the running jobs of `node` (restarted) and of any node whose
    /// lease has run out; jobs already tried `max_attempts` times fail instead.
    pub async fn recover(&self, node: &str, max_attempts: u32) -> Result<RecoveredJobs> {
        let now = now_ms();
        let rows = sqlx::query(
            "SELECT id, attempts FROM jobs WHERE status = 'running' AND (node = ? OR lease_until < ?)",
        )
        .bind(node)
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        let mut recovered = RecoveredJobs::default();
        for row in rows {
            let id: String = row.try_get("id")?;
            let attempts = row.try_get::<i64, _>("attempts")? as u32;
            if attempts >= max_attempts {
                recovered.failed.push(id);
            } else {
                sqlx::query(
                    "UPDATE jobs SET status = 'queued', node = NULL, lease_until = NULL, progress = NULL, \
                         told_position = NULL WHERE id = ? AND status = 'running'",
                )
                .bind(&id)
                .execute(&self.pool)
                .await?;
                recovered.requeued.push(id);
            }
        }
        Ok(recovered)
    }

    /// Put a running job back in the queue without counting the attempt (a graceful
    /// shutdown interrupted it; it did not crash anything).
    pub async fn requeue(&self, id: &str) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE jobs SET status = 'queued', node = NULL, lease_until = NULL, progress = NULL, \
                 told_position = NULL, attempts = MAX(attempts - 1, 0) \
             WHERE id = ? AND status = 'running'",
        )
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Tell each queued job of `lane` whose position changed since it was last told: one
    /// event (made by `event` from the new position) each, in one write transaction. Called
    /// when jobs leave the queue or come back to it, not on a timer; returns how many were
    /// told.
    pub async fn tell_positions(&self, lane: Lane, event: impl Fn(u32) -> String) -> Result<usize> {
        // IMMEDIATE: two nodes telling at once take turns instead of both reading old values.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let queued: Vec<(String, Option<i64>)> = sqlx::query_as(
            "SELECT id, told_position FROM jobs WHERE status = 'queued' AND lane = ? \
             ORDER BY created_at, id",
        )
        .bind(lane.as_str())
        .fetch_all(&mut *tx)
        .await?;
        let now = now_ms();
        let mut told = 0;
        for (position, (id, before)) in queued.iter().enumerate() {
            let position = position as u32;
            if *before == Some(i64::from(position)) {
                continue;
            }
            sqlx::query("UPDATE jobs SET told_position = ? WHERE id = ?")
                .bind(i64::from(position))
                .bind(id)
                .execute(&mut *tx)
                .await?;
            append_event_in(&mut tx, id, &event(position), now).await?;
            told += 1;
        }
        tx.commit().await?;
        Ok(told)
    }

    pub async fn set_progress(&self, id: &str, progress: &str) -> Result<()> {
        sqlx::query("UPDATE jobs SET progress = ? WHERE id = ?")
            .bind(progress)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Move a job to a final status with its last event, atomically; false (and nothing
    /// written) if it had already ended.
    pub async fn finish_job(
        &self,
        id: &str,
        status: JobStatus,
        error: Option<(&str, &str)>,
        last_event: &str,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let now = now_ms();
        let done = sqlx::query(
            "UPDATE jobs SET status = ?, finished_at = ?, error_code = ?, error_message = ?, \
                 node = NULL, lease_until = NULL \
             WHERE id = ? AND status IN ('queued', 'running')",
        )
        .bind(status.as_str())
        .bind(now)
        .bind(error.map(|e| e.0))
        .bind(error.map(|e| e.1))
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        append_event_in(&mut tx, id, last_event, now).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Ask a running job to stop (its worker checks this); returns the status now.
    pub async fn request_cancel(&self, id: &str) -> Result<Option<JobStatus>> {
        sqlx::query(
            "UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND status IN ('queued', 'running')",
        )
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(self.job(id).await?.map(|job| job.status))
    }

    pub async fn cancel_requested(&self, id: &str) -> Result<bool> {
        let flag: Option<i64> =
            sqlx::query_scalar("SELECT cancel_requested FROM jobs WHERE id = ?")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(flag.unwrap_or(0) != 0)
    }

    /// Append an event to a job's log; returns its sequence number (1, 2, ...).
    pub async fn append_event(&self, job_id: &str, event: &str) -> Result<i64> {
        let mut tx = self.pool.begin().await?;
        let seq = append_event_in(&mut tx, job_id, event, now_ms()).await?;
        tx.commit().await?;
        Ok(seq)
    }

    /// Events with a sequence number above `after`, in order.
    pub async fn events_after(&self, job_id: &str, after: i64) -> Result<Vec<(i64, String)>> {
        let rows = sqlx::query(
            "SELECT seq, event FROM job_events WHERE job_id = ? AND seq > ? ORDER BY seq",
        )
        .bind(job_id)
        .bind(after)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("seq")?, row.try_get("event")?)))
            .collect()
    }
}

/// Jobs waiting in `lane`'s queue.
async fn lane_queued_in(conn: &mut SqliteConnection, lane: Lane) -> Result<u32> {
    let queued: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND lane = ?")
            .bind(lane.as_str())
            .fetch_one(&mut *conn)
            .await?;
    Ok(queued as u32)
}

async fn insert_job_in(
    tx: &mut Transaction<'_, Sqlite>,
    job: &NewJob,
    first_event: &str,
) -> Result<i64> {
    let now = now_ms();
    sqlx::query(
        "INSERT INTO jobs (id, key_id, model, images, status, spec, request_id, created_at, lane) \
         VALUES (?, ?, ?, ?, 'queued', ?, ?, ?, ?)",
    )
    .bind(&job.id)
    .bind(&job.key_id)
    .bind(&job.model)
    .bind(i64::from(job.images))
    .bind(&job.spec)
    .bind(&job.request_id)
    .bind(now)
    .bind(job.lane.as_str())
    .execute(&mut **tx)
    .await?;
    append_event_in(tx, &job.id, first_event, now).await
}

async fn append_event_in(
    tx: &mut Transaction<'_, Sqlite>,
    job_id: &str,
    event: &str,
    now: i64,
) -> Result<i64> {
    let seq: i64 = sqlx::query_scalar(
        "INSERT INTO job_events (job_id, seq, event, created_at) \
         VALUES (?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM job_events WHERE job_id = ?), ?, ?) \
         RETURNING seq",
    )
    .bind(job_id)
    .bind(job_id)
    .bind(event)
    .bind(now)
    .fetch_one(&mut **tx)
    .await?;
    Ok(seq)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::test_db;

    fn new_job(id: &str) -> NewJob {
        NewJob {
            id: id.into(),
            key_id: Some("key_a".into()),
            model: "tiny-sd".into(),
            images: 2,
            spec: "{}".into(),
            request_id: "req".into(),
            lane: Lane::Local,
        }
    }

    #[tokio::test]
    async fn queue_order_claims_and_positions() {
        let db = test_db().await;
        for id in ["job_1", "job_2", "job_3"] {
            assert_eq!(db.insert_job(&new_job(id), "queued").await.unwrap(), 1);
        }
        assert_eq!(db.queue_position("job_3").await.unwrap(), Some(2));
        assert_eq!(db.queued_count().await.unwrap(), 3);
        let claimed = db
            .claim_next("node-a", i64::MAX, Lane::Local)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((claimed.id.as_str(), claimed.attempts), ("job_1", 1));
        assert_eq!(claimed.status, JobStatus::Running);
        assert_eq!(db.queue_position("job_1").await.unwrap(), None);
        assert_eq!(db.queue_position("job_3").await.unwrap(), Some(1));
        assert!(
            db.finish_job("job_1", JobStatus::Succeeded, None, "done")
                .await
                .unwrap()
        );
        // A second finish changes nothing.
        assert!(
            !db.finish_job("job_1", JobStatus::Failed, None, "x")
                .await
                .unwrap()
        );
        let events = db.events_after("job_1", 0).await.unwrap();
        assert_eq!(events, [(1, "queued".to_string()), (2, "done".to_string())]);
        assert_eq!(db.events_after("job_1", 1).await.unwrap().len(), 1);
        let listed = db.list_jobs(Some("key_a"), 10).await.unwrap();
        assert_eq!(listed.len(), 3);
        assert!(db.list_jobs(Some("key_b"), 10).await.unwrap().is_empty());
    }

    async fn log(db: &Db, id: &str) -> Vec<String> {
        let events = db.events_after(id, 0).await.unwrap();
        events.into_iter().map(|(_, event)| event).collect()
    }

    #[tokio::test]
    async fn only_jobs_whose_position_changed_are_told() {
        let db = test_db().await;
        let admission = Admission {
            queue_size: 10,
            ..Admission::default()
        };
        let told = |p: u32| format!("at {p}");
        for id in ["job_1", "job_2", "job_3"] {
            db.admit_job(&new_job(id), &admission, told)
                .await
                .unwrap()
                .unwrap();
            // Queued in the order they came (their creation millisecond decides).
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        // Admission told each its position; nothing has moved since.
        assert_eq!(db.tell_positions(Lane::Local, told).await.unwrap(), 0);
        db.claim_next("node-a", i64::MAX, Lane::Local)
            .await
            .unwrap();
        assert_eq!(db.tell_positions(Lane::Local, told).await.unwrap(), 2);
        assert_eq!(db.tell_positions(Lane::Local, told).await.unwrap(), 0);
        assert_eq!(log(&db, "job_3").await, ["at 2", "at 1"]);
        assert_eq!(log(&db, "job_2").await, ["at 1", "at 0"]);
        // A job put back in the queue is told its place again, and those behind it move.
        assert!(db.requeue("job_1").await.unwrap());
        assert_eq!(db.tell_positions(Lane::Local, told).await.unwrap(), 3);
        assert_eq!(log(&db, "job_1").await, ["at 0", "at 0"]);
        assert_eq!(log(&db, "job_3").await, ["at 2", "at 1", "at 2"]);
        // Another lane's queue is its own.
        assert_eq!(db.tell_positions(Lane::Gateway, told).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn recovery_requeues_then_gives_up() {
        let db = test_db().await;
        db.insert_job(&new_job("job_1"), "queued").await.unwrap();
        for attempt in 1..=3 {
            let job = db
                .claim_next("node-a", i64::MAX, Lane::Local)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(job.attempts, attempt);
            let recovered = db.recover("node-a", 3).await.unwrap();
            if attempt < 3 {
                assert_eq!(recovered.requeued, ["job_1"]);
            } else {
                assert_eq!(recovered.failed, ["job_1"]);
            }
        }
        // Another node's live lease is left alone; an expired one is taken back.
        db.insert_job(&new_job("job_2"), "queued").await.unwrap();
        db.claim_next("node-b", i64::MAX, Lane::Local)
            .await
            .unwrap()
            .unwrap();
        assert!(db.recover("node-a", 3).await.unwrap().requeued.is_empty());
        assert!(db.renew_lease("job_2", "node-b", 0).await.unwrap());
        assert!(!db.renew_lease("job_2", "node-a", 0).await.unwrap());
        assert_eq!(db.recover("node-a", 3).await.unwrap().requeued, ["job_2"]);
    }

    #[tokio::test]
    async fn concurrent_admissions_cannot_overshoot_a_quota() {
        // A file database: several connections really do race.
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&format!("sqlite://{}", dir.path().join("t.db").display()))
            .await
            .unwrap();
        let admission = Admission {
            queue_size: 100,
            images_per_minute: None,
            quota_images: Some(3),
        };
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let db = db.clone();
                tokio::spawn(async move {
                    let mut job = new_job(&format!("job_{i}"));
                    job.images = 1;
                    db.admit_job(&job, &admission, |_| "queued".into())
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut admitted = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(_) => admitted += 1,
                Err(refusal) => assert!(matches!(refusal, Refusal::QuotaExceeded { quota: 3, .. })),
            }
        }
        assert_eq!(admitted, 3);
        assert_eq!(db.queued_count().await.unwrap(), 3);
    }

    #[tokio::test]
    async fn open_jobs_and_cancelled_ones_count_against_limits() {
        let db = test_db().await;
        let quota = Admission {
            queue_size: 100,
            images_per_minute: None,
            quota_images: Some(5),
        };
        // Two images queued, one billed: a third image fits, a fourth does not.
        db.admit_job(&new_job("job_1"), &quota, |_| "q".into())
            .await
            .unwrap()
            .unwrap();
        db.ledger()
            .record("job_0", Some("key_a"), "m", 1, 0)
            .await
            .unwrap();
        let mut three = new_job("job_2");
        three.images = 3;
        assert_eq!(
            db.check_admission(Some("key_a"), 3, &quota).await.unwrap(),
            Err(Refusal::QuotaExceeded { quota: 5, used: 3 })
        );
        three.images = 2;
        db.admit_job(&three, &quota, |_| "q".into())
            .await
            .unwrap()
            .unwrap();
        // Another key is not affected; no key means no key limits.
        assert!(
            db.check_admission(Some("key_b"), 5, &quota)
                .await
                .unwrap()
                .is_ok()
        );
        assert!(db.check_admission(None, 15, &quota).await.unwrap().is_ok());
        // A cancelled job's images leave the quota but stay in the per-minute window.
        db.finish_job("job_2", JobStatus::Cancelled, None, "c")
            .await
            .unwrap();
        assert!(
            db.check_admission(Some("key_a"), 2, &quota)
                .await
                .unwrap()
                .is_ok()
        );
        let per_minute = Admission {
            queue_size: 100,
            images_per_minute: Some(4),
            quota_images: None,
        };
        match db
            .check_admission(Some("key_a"), 1, &per_minute)
            .await
            .unwrap()
        {
            Err(Refusal::RateLimited {
                limit: 4,
                retry_after_s,
            }) => {
                assert!((1..=60).contains(&retry_after_s), "{retry_after_s}")
            }
            other => panic!("{other:?}"),
        }
        // The queue bound holds for everyone.
        let full = Admission {
            queue_size: 1,
            ..Admission::default()
        };
        assert_eq!(
            db.check_admission(None, 1, &full).await.unwrap(),
            Err(Refusal::QueueFull { queued: 1 })
        );
    }

    #[tokio::test]
    async fn cancel_flags() {
        let db = test_db().await;
        db.insert_job(&new_job("job_1"), "queued").await.unwrap();
        assert!(!db.cancel_requested("job_1").await.unwrap());
        assert_eq!(
            db.request_cancel("job_1").await.unwrap(),
            Some(JobStatus::Queued)
        );
        assert!(db.cancel_requested("job_1").await.unwrap());
        assert_eq!(db.request_cancel("nope").await.unwrap(), None);
    }
}
