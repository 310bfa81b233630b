//! seedbed's jobs without HTTP.
//!
//! A wire request is validated once into a [`GenerationSpec`] ([`spec::validate`]); a job row
//! holding it is written before any work starts ([`Jobs::submit`]); the runner claims jobs
//! from the store and hands them to its lane's backend (the one thread that owns the device,
//! [`Device`], or an upstream provider); every image is stored before its event is written,
//! and usage is recorded for what was delivered.

mod backend;
pub mod catalog;
pub mod device;
pub mod error;
pub mod events;
pub mod inputs;
mod janitor;
pub mod jobs;
pub mod local;
pub mod loras;
mod runner;
pub mod sizes;
pub mod spec;

pub use catalog::{Catalog, ModelEntry};
pub use device::{Device, DeviceOptions};
pub use error::{CoreError, Result};
pub use events::{JobEvent, SequencedEvent};
pub use inputs::InputPolicy;
pub use jobs::{CoreConfig, Job, Jobs, Runs, new_id};
pub use spec::{GenerationSpec, ImageFormat};
