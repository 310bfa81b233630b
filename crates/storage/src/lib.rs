//! seedbed's durable state.
//!
//! Two stores, each chosen by URL: [`Db`] keeps jobs, their events, image records, API keys
//! and usage in SQL (SQLite by default); [`Blobs`] keeps image bytes (a local folder by
//! default, or an S3 bucket, through `object_store`). Everything a job needs to run again
//! after a restart is in the database before any work starts.
//!
//! Any number of processes may share one database (SQLite on one machine, Postgres across
//! machines): a job is claimed with one conditional `UPDATE ... RETURNING` that writes the
//! node and the attempt, every later write of the runner is fenced on that pair, and a job
//! whose lease ran out (its node died) is put back in the queue by whichever node notices.

mod blobs;
mod db;
mod error;
#[cfg(feature = "test-support")]
pub mod testing;

pub use blobs::{Blobs, S3Settings};
pub use db::{
    Admission, Backend, Billing, BootstrapKeys, Db, EndGuard, Fence, ImageRow, JobRow, JobStatus,
    KeyRow, Keys, Lane, Ledger, NewJob, NewKey, NodeRow, Notice, Notices, Recorded, RecoveredJobs,
    Refusal, UsageRow, UsageTotals,
};
pub use error::{Result, StorageError};

/// Milliseconds since the Unix epoch (the one clock, from seedbed-types).
pub use seedbed_types::now_ms;
