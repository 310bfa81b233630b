//! Helpers for tests that need real infrastructure rather than mocks; compiled for this crate's
//! own tests and, with the `test-support` feature, for other crates' tests, which take it as
//! `seedbed-storage = { workspace = true, features = ["test-support"] }` in their
//! `[dev-dependencies]`.

mod postgres;

pub use postgres::{postgres_server_url, postgres_url};
