pub mod bench;
pub mod completions;
pub mod generate;
pub mod jobs;
pub mod keys;
pub mod models;
pub mod parity;
pub mod pull;

pub mod serve;
pub mod usage;
