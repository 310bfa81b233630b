//! The server end to end: a real `seedbed serve` stack on port 0, real HTTP clients, the
//! tiny fixture models, a real SQLite database and image files.

mod support;

mod checkpoints;
mod cluster;
mod conformance;
mod dit;
mod first_contact;
mod flux;
mod gateway;
mod generations;
mod hardening;
mod jobs;
mod keys;
mod limits;
mod loras;
mod restart;
mod snapshots;
