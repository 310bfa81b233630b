//! The SQL store, on SQLite (one machine) or Postgres (any number of nodes). Queries are
//! written by hand (no compile-time database) in SQL both understand, with `$n` parameters,
//! and run through sqlx's `Any` driver; the few statements that must differ (taking the write
//! lock, skipping locked rows, notifying other nodes) come from [`Backend`].

mod images;
mod jobs;
mod keys;
mod nodes;
mod notices;
mod queue;
#[cfg(test)]
mod queue_tests;
mod usage;
mod worker;

use std::time::Duration;

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{Any, AnyConnection, AnyPool, Executor, Row, Transaction};

pub use images::ImageRow;
pub use jobs::{Admission, JobRow, JobStatus, Lane, NewJob, Refusal};
pub use keys::{BootstrapKeys, KeyRow, Keys, NewKey};
pub use nodes::NodeRow;
pub use notices::{Notice, Notices};
pub use queue::RecoveredJobs;
pub use usage::{Ledger, UsageRow, UsageTotals};
pub use worker::{Billing, EndGuard, Fence, Recorded};

use crate::error::{Result, StorageError};

static SQLITE: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Which database a [`Db`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Transactions that must not interleave across connections and nodes, each under its own
/// lock on Postgres (SQLite has one write lock for everything).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Serialized {
    /// Admission: the limit checks and the insert of a new job.
    Admission = 1,
    /// Telling queued jobs their new positions.
    Positions = 2,
}

#[derive(Debug, Clone)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
    /// The Postgres URL, for the connection that listens to other nodes' notices.
    url: String,
}

impl Db {
    /// `postgres://user:pass@host/db` (also `postgresql://`), or SQLite:
    /// `sqlite:///abs/path/seedbed.db`, `sqlite://relative.db`, `sqlite::memory:` or a plain file
    /// path. A SQLite file is created if missing. Either is migrated to the current schema;
    /// on Postgres several nodes starting at once take turns (the migrator's advisory lock).
    pub async fn open(url: &str) -> Result<Self> {
        install_default_drivers();
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Self::open_postgres(url).await
        } else if url.starts_with("sqlite:") {
            Self::open_sqlite(url).await
        } else if url.contains("://") {
            Err(StorageError::UnsupportedUrl {
                what: "database",
                url: url.to_string(),
                hint: "use sqlite:///path/seedbed.db or postgres://user@host/database",
            })
        } else {
            let path = std::path::absolute(url)?;
            Self::open_sqlite(&format!("sqlite://{}", encode_path(&path))).await
        }
    }

    async fn open_postgres(url: &str) -> Result<Self> {
        let pool = AnyPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await?;
        POSTGRES.run(&pool).await?;
        Ok(Self {
            pool,
            backend: Backend::Postgres,
            url: url.to_string(),
        })
    }

    async fn open_sqlite(url: &str) -> Result<Self> {
        let in_memory = url.contains(":memory:");
        let url = if in_memory || url.contains("mode=") {
            url.to_string()
        } else {
            let joiner = if url.contains('?') { '&' } else { '?' };
            format!("{url}{joiner}mode=rwc")
        };
        let pool = AnyPoolOptions::new()
            // An in-memory database exists once per connection: keep exactly one, forever.
            .max_connections(if in_memory { 1 } else { 8 })
            .idle_timeout(if in_memory {
                None
            } else {
                Some(Duration::from_secs(600))
            })
            .max_lifetime(if in_memory {
                None
            } else {
                Some(Duration::from_secs(1800))
            })
            .after_connect(|conn, _| Box::pin(async move { sqlite_pragmas(conn).await }))
            .connect(&url)
            .await?;
        SQLITE.run(&pool).await?;
        Ok(Self {
            pool,
            backend: Backend::Sqlite,
            url,
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// A named secret that must stay the same across restarts; made by `generate` once.
    pub async fn secret(&self, name: &str, generate: impl FnOnce() -> Vec<u8>) -> Result<Vec<u8>> {
        let candidate = generate();
        sqlx::query(
            "INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(&candidate)
        .execute(&self.pool)
        .await?;
        let row = sqlx::query("SELECT value FROM settings WHERE name = $1")
            .bind(name)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("value")?)
    }

    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// A transaction that runs alone among those of the same kind, on every node: SQLite's
    /// `BEGIN IMMEDIATE` takes the write lock before the first read; Postgres takes an
    /// advisory lock held until commit.
    pub(crate) async fn serialized(&self, what: Serialized) -> Result<Transaction<'static, Any>> {
        match self.backend {
            Backend::Sqlite => Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?),
            Backend::Postgres => {
                let mut tx = self.pool.begin().await?;
                sqlx::query("SELECT 1 FROM pg_advisory_xact_lock($1)")
                    .bind(ADVISORY_BASE + what as i64)
                    .execute(&mut *tx)
                    .await?;
                Ok(tx)
            }
        }
    }
}

/// Our advisory lock ids, clear of small numbers other software on the same database may use.
const ADVISORY_BASE: i64 = 0x5eed_0000;

/// SQLite's per-connection settings.
async fn sqlite_pragmas(conn: &mut AnyConnection) -> std::result::Result<(), sqlx::Error> {
    // WAL lets readers (streams, job polls) run while the worker writes; NORMAL sync is
    // durable across process crashes, which is what a job queue needs.
    conn.execute(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
         PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON;",
    )
    .await?;
    Ok(())
}

/// A file path as the path of a `sqlite://` URL (`?`, `#`, `%` and spaces escaped).
fn encode_path(path: &std::path::Path) -> String {
    let mut out = String::new();
    for c in path.to_string_lossy().chars() {
        match c {
            '%' | '?' | '#' | ' ' => out.push_str(&format!("%{:02X}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Runs `body` once on a fresh SQLite database and once on a fresh Postgres database: one
    /// test suite, two backends.
    pub(crate) async fn on_both<F, Fut>(body: F)
    where
        F: Fn(Db) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        body(Db::open("sqlite::memory:").await.unwrap()).await;
        body(postgres_db().await).await;
    }

    pub(crate) async fn postgres_db() -> Db {
        let url = crate::testing::postgres_url().await;
        Db::open(&url).await.unwrap()
    }

    #[tokio::test]
    async fn secrets_are_made_once_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seed bed?.db");
        let db = Db::open(path.to_str().unwrap()).await.unwrap();
        let first = db.secret("links", || vec![1, 2, 3]).await.unwrap();
        assert_eq!(first, [1, 2, 3]);
        drop(db);
        let again = Db::open(path.to_str().unwrap()).await.unwrap();
        assert_eq!(again.secret("links", || vec![9]).await.unwrap(), [1, 2, 3]);
        assert!(path.is_file());
        let pg = postgres_db().await;
        assert_eq!(pg.backend(), Backend::Postgres);
        assert_eq!(pg.secret("links", || vec![4]).await.unwrap(), [4]);
        assert_eq!(pg.secret("links", || vec![5]).await.unwrap(), [4]);
        let error = Db::open("mysql://x/y").await.unwrap_err().to_string();
        assert!(error.contains("mysql://x/y"), "{error}");
    }

    #[tokio::test]
    async fn nodes_starting_at_once_migrate_one_schema() {
        let url = crate::testing::postgres_url().await;
        let opens: Vec<_> = (0..4)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move { Db::open(&url).await })
            })
            .collect();
        for open in opens {
            open.await.unwrap().unwrap().ping().await.unwrap();
        }
    }
}
