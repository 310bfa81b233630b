//! The SQL store. Queries are written by hand (no compile-time database) in portable SQL.

mod images;
mod jobs;
mod keys;
mod usage;

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

pub use images::ImageRow;
pub use jobs::{Admission, JobRow, JobStatus, Lane, NewJob, RecoveredJobs, Refusal};
pub use keys::{BootstrapKeys, KeyRow, Keys, NewKey};
pub use usage::{Ledger, UsageRow, UsageTotals};

use crate::error::{Result, StorageError};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, Clone)]
pub struct Db {
    pool: SqlitePool,
}

impl Db {
    /// `sqlite:///abs/path/seedbed.db`, `sqlite://relative.db`, `sqlite::memory:` or a plain
    /// file path. The file is created if missing and migrated to the current schema.
    pub async fn open(url: &str) -> Result<Self> {
        let options = if url.starts_with("sqlite:") {
            SqliteConnectOptions::from_str(url)?
        } else if url.contains("://") {
            return Err(StorageError::UnsupportedUrl {
                what: "database",
                url: url.to_string(),
                hint: "this build supports SQLite (sqlite:///path/seedbed.db)",
            });
        } else {
            SqliteConnectOptions::new().filename(url)
        };
        let in_memory = url.contains(":memory:");
        let options = options
            .create_if_missing(true)
            // WAL lets readers (streams, job polls) run while the worker writes; NORMAL sync
            // is durable across process crashes, which is what a job queue needs.
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            // An in-memory database exists once per connection: keep exactly one.
            .max_connections(if in_memory { 1 } else { 8 })
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Self { pool })
    }

    /// A named secret that must stay the same across restarts; made by `generate` once.
    pub async fn secret(&self, name: &str, generate: impl FnOnce() -> Vec<u8>) -> Result<Vec<u8>> {
        let candidate = generate();
        sqlx::query(
            "INSERT INTO settings (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(&candidate)
        .execute(&self.pool)
        .await?;
        let row = sqlx::query("SELECT value FROM settings WHERE name = ?")
            .bind(name)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("value")?)
    }

    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

#[cfg(test)]
pub(crate) async fn test_db() -> Db {
    Db::open("sqlite::memory:").await.unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn secrets_are_made_once_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seedbed.db");
        let url = format!("sqlite://{}", path.display());
        let db = Db::open(&url).await.unwrap();
        let first = db.secret("links", || vec![1, 2, 3]).await.unwrap();
        assert_eq!(first, [1, 2, 3]);
        drop(db);
        let again = Db::open(&url).await.unwrap();
        assert_eq!(again.secret("links", || vec![9]).await.unwrap(), [1, 2, 3]);
        let error = Db::open("postgres://x/y").await.unwrap_err().to_string();
        assert!(error.contains("postgres://x/y"), "{error}");
    }
}
