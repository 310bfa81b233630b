pub mod generations;
pub mod home;
pub mod images;
pub mod jobs;
pub mod keys;
pub mod openai;
pub mod ops;
pub mod usage;
