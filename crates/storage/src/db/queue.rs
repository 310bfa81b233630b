//! The queue: claiming a job under a lease, putting back jobs whose node died, and telling
//! waiting jobs their place. The job row is the only truth; no node coordinates the others.

use sqlx::{AssertSqlSafe, Row};

use super::jobs::{COLUMNS, JobRow, Lane};
use super::notices::Notice;
use super::worker::Fence;
use super::{Backend, Db, Serialized};
use crate::error::Result;
use crate::now_ms;

/// What a reaping pass did with jobs whose node is gone.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RecoveredJobs {
    /// Back in the queue, to run again on any node.
    pub requeued: Vec<String>,
    /// Tried `max_attempts` times already: the caller ends them
    /// (with [`super::EndGuard::Abandoned`]).
    pub exhausted: Vec<String>,
}

impl Db {
    /// Take the oldest queued job of `lane` for one of `models`, holding it for `node` until
    /// `lease_until`; the claim counts an attempt, and (node, attempt) fence every later write.
    /// Postgres skips rows another node is claiming at this instant instead of waiting on them.
    pub async fn claim_next(
        &self,
        node: &str,
        lease_until: i64,
        lane: Lane,
        models: &[String],
    ) -> Result<Option<JobRow>> {
        if models.is_empty() {
            return Ok(None);
        }
        // `$1`-`$4` are the fixed parameters; the models follow.
        let placeholders: Vec<String> = (0..models.len()).map(|i| format!("${}", i + 5)).collect();
        let skip_locked = match self.backend {
            Backend::Postgres => "FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let sql = format!(
            "UPDATE jobs SET status = 'running', node = $1, ran_on = $1, lease_until = $2, \
                 attempts = attempts + 1, started_at = $3 \
             WHERE id = (SELECT id FROM jobs WHERE status = 'queued' AND lane = $4 \
                 AND model IN ({}) ORDER BY created_at, id LIMIT 1 {skip_locked}) \
                 AND status = 'queued' \
             RETURNING {COLUMNS}",
            placeholders.join(", "),
        );
        let mut query = sqlx::query(AssertSqlSafe(sql))
            .bind(node)
            .bind(lease_until)
            .bind(now_ms())
            .bind(lane.as_str());
        for model in models {
            query = query.bind(model);
        }
        let row = query.fetch_optional(&self.pool).await?;
        row.as_ref().map(JobRow::from_row).transpose()
    }

    /// Put back in the queue the running jobs whose lease ran out (their node died or hung)
    /// and, after a restart, those of `restarted` (this node's own from before). Those already
    /// tried `max_attempts` times are not put back but returned as exhausted. Safe on every
    /// node at once: each job moves once.
    pub async fn reap(&self, restarted: Option<&str>, max_attempts: u32) -> Result<RecoveredJobs> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(
            "UPDATE jobs SET status = 'queued', node = NULL, lease_until = NULL, progress = NULL, \
                 told_position = NULL \
             WHERE status = 'running' AND (lease_until < $1 OR node = $2) AND attempts < $3 \
             RETURNING id, lane",
        )
        .bind(now)
        .bind(restarted)
        .bind(i64::from(max_attempts))
        .fetch_all(&mut *tx)
        .await?;
        let mut recovered = RecoveredJobs::default();
        let mut lanes = Vec::new();
        for row in rows {
            recovered.requeued.push(row.try_get("id")?);
            let lane = Lane::parse(&row.try_get::<String, _>("lane")?);
            if let Some(lane) = lane.filter(|lane| !lanes.contains(lane)) {
                lanes.push(lane);
            }
        }
        for lane in lanes {
            self.notify_in(&mut tx, &Notice::Queued(lane)).await?;
        }
        tx.commit().await?;
        recovered.exhausted = sqlx::query_scalar(
            "SELECT id FROM jobs WHERE status = 'running' AND (lease_until < $1 OR node = $2) \
                 AND attempts >= $3 ORDER BY id",
        )
        .bind(now)
        .bind(restarted)
        .bind(i64::from(max_attempts))
        .fetch_all(&self.pool)
        .await?;
        Ok(recovered)
    }

    /// Put a running job back in the queue without counting the attempt (a graceful
    /// shutdown interrupted it; it did not crash anything); false if it is not `fence`'s.
    pub async fn requeue(&self, id: &str, fence: &Fence) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE jobs SET status = 'queued', node = NULL, lease_until = NULL, progress = NULL, \
                 told_position = NULL, attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END \
             WHERE id = $1 AND node = $2 AND attempts = $3 AND status = 'running' \
             RETURNING lane",
        )
        .bind(id)
        .bind(&fence.node)
        .bind(i64::from(fence.attempt))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = done else { return Ok(false) };
        // The column's default is the local lane.
        let lane = Lane::parse(&row.try_get::<String, _>("lane")?).unwrap_or(Lane::Local);
        self.notify_in(&mut tx, &Notice::Queued(lane)).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Tell each queued job of `lane` whose position changed since it was last told: one
    /// event (made by `event` from the new position) each, in one transaction that nodes
    /// take in turn. Called when jobs leave the queue or come back to it, not on a timer;
    /// returns how many were told.
    pub async fn tell_positions(&self, lane: Lane, event: impl Fn(u32) -> String) -> Result<usize> {
        let mut tx = self.serialized(Serialized::Positions).await?;
        let queued: Vec<(String, Option<i64>)> = sqlx::query_as(
            "SELECT id, told_position FROM jobs WHERE status = 'queued' AND lane = $1 \
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
            // Only while it is still queued: a job claimed since the read keeps its log clean.
            let updated = sqlx::query(
                "UPDATE jobs SET told_position = $1 WHERE id = $2 AND status = 'queued'",
            )
            .bind(i64::from(position))
            .bind(id)
            .execute(&mut *tx)
            .await?;
            if updated.rows_affected() == 1 {
                self.append_event_in(&mut tx, id, &event(position), now)
                    .await?;
                told += 1;
            }
        }
        tx.commit().await?;
        Ok(told)
    }
}
