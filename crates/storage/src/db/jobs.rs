//! Jobs: rows, the queue (claim under a lease) and each job's event log.

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, AssertSqlSafe, Row};

use super::notices::Notice;
use super::{Db, Serialized};
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

    /// The lane `as_str` wrote, as the database and notices carry it.
    pub fn parse(text: &str) -> Option<Self> {
        [Self::Local, Self::Gateway]
            .into_iter()
            .find(|lane| lane.as_str() == text)
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
    /// The node holding the job's lease while it runs.
    pub node: Option<String>,
    /// The node that last claimed it (kept after it ends).
    pub ran_on: Option<String>,
}

impl JobRow {
    pub(crate) fn from_row(row: &AnyRow) -> Result<Self> {
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
            node: row.try_get("node")?,
            ran_on: row.try_get("ran_on")?,
        })
    }
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
    conn: &mut AnyConnection,
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
            "SELECT created_at, images FROM jobs WHERE key_id = $1 AND created_at > $2 ORDER BY created_at",
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
        // Postgres sums integers as NUMERIC: cast back to the 64-bit integer both read.
        let used: i64 = sqlx::query_scalar(
            "SELECT CAST((SELECT COALESCE(SUM(images), 0) FROM usage WHERE key_id = $1) \
                  + (SELECT COALESCE(SUM(images), 0) FROM jobs WHERE key_id = $1 \
                         AND status IN ('queued', 'running')) AS BIGINT)",
        )
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

pub(crate) const COLUMNS: &str = "id, key_id, model, images, status, spec, request_id, created_at, \
     started_at, finished_at, attempts, cancel_requested, progress, error_code, error_message, node, \
     ran_on";

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
    /// if it fits `admission`; the check and the insert are one serialized transaction, so
    /// concurrent requests (on any node) are admitted one after the other. Returns the queue
    /// position.
    pub async fn admit_job(
        &self,
        job: &NewJob,
        admission: &Admission,
        first_event: impl FnOnce(u32) -> String,
    ) -> Result<std::result::Result<u32, Refusal>> {
        let mut tx = self.serialized(Serialized::Admission).await?;
        if let Err(refusal) =
            admission_in(&mut tx, job.key_id.as_deref(), job.images, admission).await?
        {
            return Ok(Err(refusal));
        }
        // Its place in its own lane's queue (the limit above counts every lane): last.
        let position = lane_queued_in(&mut tx, job.lane).await?;
        self.insert_job_in(&mut tx, job, &first_event(position))
            .await?;
        sqlx::query("UPDATE jobs SET told_position = $1 WHERE id = $2")
            .bind(i64::from(position))
            .bind(&job.id)
            .execute(&mut *tx)
            .await?;
        self.notify_in(&mut tx, &Notice::Queued(job.lane)).await?;
        tx.commit().await?;
        Ok(Ok(position))
    }

    /// Insert a queued job and its first event with no admission limits (tests, tools);
    /// returns the event's seq.
    pub async fn insert_job(&self, job: &NewJob, first_event: &str) -> Result<i64> {
        let mut tx = self.pool.begin().await?;
        let seq = self.insert_job_in(&mut tx, job, first_event).await?;
        self.notify_in(&mut tx, &Notice::Queued(job.lane)).await?;
        tx.commit().await?;
        Ok(seq)
    }

    pub async fn job(&self, id: &str) -> Result<Option<JobRow>> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM jobs WHERE id = $1"
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
                    "SELECT {COLUMNS} FROM jobs WHERE key_id = $1 \
                     ORDER BY created_at DESC, id DESC LIMIT $2"
                )))
                .bind(key)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(AssertSqlSafe(format!(
                    "SELECT {COLUMNS} FROM jobs ORDER BY created_at DESC, id DESC LIMIT $1"
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
             j.status AS status FROM jobs j WHERE j.id = $1",
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

    /// Ask a job to stop; returns its status now. The node running it hears at once (Postgres)
    /// or at its next look at the flag (within a second).
    pub async fn request_cancel(&self, id: &str) -> Result<Option<JobStatus>> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE jobs SET cancel_requested = 1 WHERE id = $1 AND status IN ('queued', 'running')",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() > 0 {
            self.notify_in(&mut tx, &Notice::Cancel(id.to_string()))
                .await?;
        }
        tx.commit().await?;
        Ok(self.job(id).await?.map(|job| job.status))
    }

    pub async fn cancel_requested(&self, id: &str) -> Result<bool> {
        let flag: Option<i64> =
            sqlx::query_scalar("SELECT cancel_requested FROM jobs WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(flag.unwrap_or(0) != 0)
    }

    /// Append an event to a job's log whoever holds it (tests, tools; the runner's writes are
    /// fenced, see `worker.rs`); returns its sequence number (1, 2, ...).
    pub async fn append_event(&self, job_id: &str, event: &str) -> Result<i64> {
        let mut tx = self.pool.begin().await?;
        let seq = self
            .append_event_in(&mut tx, job_id, event, now_ms())
            .await?;
        tx.commit().await?;
        Ok(seq)
    }

    /// Events with a sequence number above `after`, in order.
    pub async fn events_after(&self, job_id: &str, after: i64) -> Result<Vec<(i64, String)>> {
        let rows = sqlx::query(
            "SELECT seq, event FROM job_events WHERE job_id = $1 AND seq > $2 ORDER BY seq",
        )
        .bind(job_id)
        .bind(after)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("seq")?, row.try_get("event")?)))
            .collect()
    }

    async fn insert_job_in(
        &self,
        conn: &mut AnyConnection,
        job: &NewJob,
        first_event: &str,
    ) -> Result<i64> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO jobs (id, key_id, model, images, status, spec, request_id, created_at, lane) \
             VALUES ($1, $2, $3, $4, 'queued', $5, $6, $7, $8)",
        )
        .bind(&job.id)
        .bind(&job.key_id)
        .bind(&job.model)
        .bind(i64::from(job.images))
        .bind(&job.spec)
        .bind(&job.request_id)
        .bind(now)
        .bind(job.lane.as_str())
        .execute(&mut *conn)
        .await?;
        self.append_event_in(conn, &job.id, first_event, now).await
    }

    /// Append within a transaction; other nodes are told the job has news.
    pub(crate) async fn append_event_in(
        &self,
        conn: &mut AnyConnection,
        job_id: &str,
        event: &str,
        now: i64,
    ) -> Result<i64> {
        // Two writers of one job's log (its runner, a node telling positions, a cancel) must
        // not pick the same next seq: on Postgres they queue on the job's row lock first.
        self.lock_job_in(conn, job_id).await?;
        let seq: i64 = sqlx::query_scalar(
            "INSERT INTO job_events (job_id, seq, event, created_at) \
             VALUES ($1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM job_events WHERE job_id = $1), $2, $3) \
             RETURNING seq",
        )
        .bind(job_id)
        .bind(event)
        .bind(now)
        .fetch_one(&mut *conn)
        .await?;
        self.notify_in(conn, &Notice::Events(job_id.to_string()))
            .await?;
        Ok(seq)
    }
}

/// Jobs waiting in `lane`'s queue.
pub(crate) async fn lane_queued_in(conn: &mut AnyConnection, lane: Lane) -> Result<u32> {
    let queued: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND lane = $1")
            .bind(lane.as_str())
            .fetch_one(&mut *conn)
            .await?;
    Ok(queued as u32)
}
