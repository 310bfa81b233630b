//! seedbed's durable state.
//!
//! Two stores, each chosen by URL: [`Db`] keeps jobs, their events, image records, API keys
//! and usage in SQL (SQLite by default); [`Blobs`] keeps image bytes (a local folder by
//! default, or an S3 bucket, through `object_store`). Everything a job needs to run again
//! after a restart is in the database before any work starts.
//!
//! Several processes may share one database: jobs are claimed with a single conditional
//! `UPDATE ... RETURNING` and held under a lease that the owner renews; a job whose lease ran
//! out (its node died) is put back in the queue. The SQL is kept portable so a Postgres
//! backend is another `Db` constructor, not a rewrite.

mod blobs;
mod db;
mod error;
#[cfg(feature = "test-support")]
pub mod testing;

pub use blobs::{Blobs, S3Settings};
pub use db::{
    Admission, BootstrapKeys, Db, ImageRow, JobRow, JobStatus, KeyRow, Keys, Lane, Ledger, NewJob,
    NewKey, RecoveredJobs, Refusal, UsageRow, UsageTotals,
};
pub use error::{Result, StorageError};

/// Milliseconds since the Unix epoch (the one clock, from seedbed-types).
pub use seedbed_types::now_ms;
