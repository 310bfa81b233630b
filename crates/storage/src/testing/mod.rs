//! Real infrastructure for tests, never our own mocks: a throwaway PostgreSQL server and an
//! in-process S3 server. Other crates' tests take it as
//! `seedbed-storage = { workspace = true, features = ["test-support"] }` in their
//! `[dev-dependencies]`; this crate's own tests through its dev-dependency on itself.

mod postgres;
mod s3;

pub use postgres::{postgres_server_url, postgres_url};
pub use s3::{ACCESS_KEY_ID, REGION, S3Server, SECRET_ACCESS_KEY};
