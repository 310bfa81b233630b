//! The writes of the node running a job. Each is fenced on the (node, attempt) its claim wrote:
//! one transaction that first extends the lease on exactly that claim and writes nothing if
//! the claim is gone, so a node that lost its lease (paused, partitioned, reaped) cannot
//! overwrite what the job's new owner records.

use sqlx::AnyConnection;

use super::images::ImageRow;
use super::jobs::{JobRow, JobStatus};
use super::{Db, usage};
use crate::error::Result;
use crate::now_ms;

/// Who holds a running job: the node that claimed it and which attempt that claim was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub node: String,
    pub attempt: u32,
}

impl JobRow {
    /// The fence of a running job (its claim's node and attempt).
    pub fn fence(&self) -> Option<Fence> {
        Some(Fence {
            node: self.node.clone()?,
            attempt: self.attempts,
        })
    }
}

/// Which jobs a final write may end.
#[derive(Debug, Clone, Copy)]
pub enum EndGuard<'a> {
    /// Only a job still waiting (a cancel before any node took it).
    Queued,
    /// Only this claim's job.
    Held(&'a Fence),
    /// Only a running job whose lease ran out, or that `restarted` (this node, before a
    /// restart) held: a reaped job out of attempts.
    Abandoned { restarted: Option<&'a str> },
}

/// What a finished job is billed, recorded in the transaction that ends it (so once).
#[derive(Debug, Clone, Copy)]
pub struct Billing<'a> {
    pub key_id: Option<&'a str>,
    pub model: &'a str,
    pub images: u64,
    pub tokens: u64,
}

/// What became of an image a runner recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// The claim is gone: nothing was written.
    Lost,
    /// Recorded; `replaced` is the blob of an earlier attempt's image at the same index, no
    /// longer referenced.
    Stored { replaced: Option<String> },
}

const FENCE: &str = "id = $1 AND node = $2 AND attempts = $3 AND status = 'running'";

impl Db {
    /// Extend the lease; `None` when the claim is gone, else whether a cancel was asked for.
    pub async fn renew(&self, id: &str, fence: &Fence, lease_until: i64) -> Result<Option<bool>> {
        let flag: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "UPDATE jobs SET lease_until = $4 WHERE {FENCE} RETURNING cancel_requested"
        )))
        .bind(id)
        .bind(&fence.node)
        .bind(i64::from(fence.attempt))
        .bind(lease_until)
        .fetch_optional(&self.pool)
        .await?;
        Ok(flag.map(|flag| flag != 0))
    }

    /// Append an event (and, for a progress report, make it the job's latest progress);
    /// false and nothing written when the claim is gone.
    pub async fn record_event(
        &self,
        id: &str,
        fence: &Fence,
        lease_until: i64,
        event: &str,
        progress: Option<&str>,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        if !hold_in(&mut tx, id, fence, lease_until, progress).await? {
            return Ok(false);
        }
        self.append_event_in(&mut tx, id, event, now_ms()).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Record a stored image and announce it, together; `Lost` and nothing written when the
    /// claim is gone.
    pub async fn record_image(
        &self,
        fence: &Fence,
        lease_until: i64,
        image: &ImageRow,
        event: &str,
    ) -> Result<Recorded> {
        let mut tx = self.pool.begin().await?;
        if !hold_in(&mut tx, &image.job_id, fence, lease_until, None).await? {
            return Ok(Recorded::Lost);
        }
        let before: Option<String> =
            sqlx::query_scalar("SELECT blob_key FROM images WHERE job_id = $1 AND idx = $2")
                .bind(&image.job_id)
                .bind(i64::from(image.index))
                .fetch_optional(&mut *tx)
                .await?;
        super::images::put_image_in(&mut tx, image).await?;
        self.append_event_in(&mut tx, &image.job_id, event, now_ms())
            .await?;
        tx.commit().await?;
        let replaced = before.filter(|key| *key != image.blob_key);
        Ok(Recorded::Stored { replaced })
    }

    /// Move a job to a final status with its last event and its bill, atomically, if `guard`
    /// allows; false (and nothing written) otherwise: it had already ended, or it is not
    /// this claim's any more.
    pub async fn finish_job(
        &self,
        id: &str,
        status: JobStatus,
        error: Option<(&str, &str)>,
        last_event: &str,
        guard: EndGuard<'_>,
        billing: Option<Billing<'_>>,
    ) -> Result<bool> {
        let now = now_ms();
        let (condition, node, attempt) = match guard {
            EndGuard::Queued => ("id = $5 AND status = 'queued'", None, None),
            EndGuard::Held(fence) => (
                "id = $5 AND node = $6 AND attempts = $7 AND status = 'running'",
                Some(fence.node.as_str()),
                Some(i64::from(fence.attempt)),
            ),
            EndGuard::Abandoned { restarted } => (
                "id = $5 AND status = 'running' AND (lease_until < $2 OR node = $6)",
                restarted,
                None,
            ),
        };
        let mut tx = self.pool.begin().await?;
        let mut update = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE jobs SET status = $1, finished_at = $2, error_code = $3, error_message = $4, \
                 node = NULL, lease_until = NULL WHERE {condition}"
        )))
        .bind(status.as_str())
        .bind(now)
        .bind(error.map(|e| e.0))
        .bind(error.map(|e| e.1))
        .bind(id);
        if matches!(guard, EndGuard::Held(_) | EndGuard::Abandoned { .. }) {
            update = update.bind(node);
        }
        if let Some(attempt) = attempt {
            update = update.bind(attempt);
        }
        if update.execute(&mut *tx).await?.rows_affected() == 0 {
            return Ok(false);
        }
        if let Some(bill) = billing {
            usage::record_in(&mut tx, id, &bill, now).await?;
        }
        self.append_event_in(&mut tx, id, last_event, now).await?;
        tx.commit().await?;
        Ok(true)
    }
}

/// The fence itself: extend the claim's lease (and set its progress), true if it still holds.
async fn hold_in(
    conn: &mut AnyConnection,
    id: &str,
    fence: &Fence,
    lease_until: i64,
    progress: Option<&str>,
) -> Result<bool> {
    let done = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE jobs SET lease_until = $4, progress = COALESCE($5, progress) WHERE {FENCE}"
    )))
    .bind(id)
    .bind(&fence.node)
    .bind(i64::from(fence.attempt))
    .bind(lease_until)
    .bind(progress)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}
