//! Usage: what each finished job delivered (successful images and Seedream tokens).

use sqlx::{AnyConnection, Row};

use super::{Billing, Db};
use crate::error::Result;
use crate::now_ms;

/// Usage rows are served as they are stored.
pub use seedbed_types::{UsageEntry as UsageRow, UsageTotals};

/// The usage ledger: what each finished job was billed. A handle that reads and writes usage
/// and nothing else, so the server can show a key its bill without holding the whole database.
#[derive(Clone, Debug)]
pub struct Ledger {
    db: Db,
}

impl Db {
    pub fn ledger(&self) -> Ledger {
        Ledger { db: self.clone() }
    }
}

impl Ledger {
    /// Record what a job delivered; a job is billed once even if recorded again.
    /// Record a job's bill whoever holds it (tests, tools; the runner bills in the
    /// transaction that ends the job). A job is billed once: a second record replaces it.
    pub async fn record(
        &self,
        job_id: &str,
        key_id: Option<&str>,
        model: &str,
        images: u64,
        tokens: u64,
    ) -> Result<()> {
        let mut conn = self.db.pool.acquire().await?;
        let bill = Billing {
            key_id,
            model,
            images,
            tokens,
        };
        record_in(&mut conn, job_id, &bill, now_ms()).await
    }

    pub async fn entries(
        &self,
        key_id: Option<&str>,
        since_ms: i64,
        limit: u32,
    ) -> Result<Vec<UsageRow>> {
        let rows = sqlx::query(
            "SELECT job_id, key_id, model, images, tokens, created_at FROM usage \
             WHERE ($1 IS NULL OR key_id = $1) AND created_at >= $2 ORDER BY created_at DESC LIMIT $3",
        )
        .bind(key_id)
        .bind(since_ms)
        .bind(i64::from(limit))
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(UsageRow {
                    job_id: row.try_get("job_id")?,
                    key_id: row.try_get("key_id")?,
                    model: row.try_get("model")?,
                    images: row.try_get::<i64, _>("images")? as u64,
                    tokens: row.try_get::<i64, _>("tokens")? as u64,
                    created_at: row.try_get("created_at")?,
                })
            })
            .collect()
    }

    pub async fn totals(&self, key_id: Option<&str>, since_ms: i64) -> Result<UsageTotals> {
        // Postgres sums integers as NUMERIC: cast back to the 64-bit integer both read.
        let row = sqlx::query(
            "SELECT COUNT(*) AS jobs, CAST(COALESCE(SUM(images), 0) AS BIGINT) AS images, \
                 CAST(COALESCE(SUM(tokens), 0) AS BIGINT) AS tokens \
             FROM usage WHERE ($1 IS NULL OR key_id = $1) AND created_at >= $2",
        )
        .bind(key_id)
        .bind(since_ms)
        .fetch_one(&self.db.pool)
        .await?;
        Ok(UsageTotals {
            jobs: row.try_get::<i64, _>("jobs")? as u64,
            images: row.try_get::<i64, _>("images")? as u64,
            tokens: row.try_get::<i64, _>("tokens")? as u64,
        })
    }
}

pub(crate) async fn record_in(
    conn: &mut AnyConnection,
    job_id: &str,
    bill: &Billing<'_>,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO usage (job_id, key_id, model, images, tokens, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (job_id) DO UPDATE SET images = excluded.images, tokens = excluded.tokens",
    )
    .bind(job_id)
    .bind(bill.key_id)
    .bind(bill.model)
    .bind(bill.images as i64)
    .bind(bill.tokens as i64)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::db::Db;
    use crate::db::tests::on_both;

    #[tokio::test]
    async fn usage_is_recorded_once_per_job() {
        on_both(usage_is_recorded_once_per_job_on).await;
    }

    async fn usage_is_recorded_once_per_job_on(db: Db) {
        db.ledger()
            .record("job_1", Some("key_a"), "m", 2, 32)
            .await
            .unwrap();
        db.ledger()
            .record("job_1", Some("key_a"), "m", 2, 32)
            .await
            .unwrap();
        db.ledger()
            .record("job_2", Some("key_b"), "m", 1, 16)
            .await
            .unwrap();
        let totals = db.ledger().totals(Some("key_a"), 0).await.unwrap();
        assert_eq!((totals.jobs, totals.images, totals.tokens), (1, 2, 32));
        assert_eq!(db.ledger().totals(None, 0).await.unwrap().images, 3);
        assert_eq!(
            db.ledger().entries(Some("key_b"), 0, 10).await.unwrap()[0].job_id,
            "job_2"
        );
    }
}
