//! The engine's integration tests (`tests/it`) built a second time, on candle's own ops: see
//! there. A crate root of its own that takes them in as a module, where two test targets on
//! one file would have cargo warn on every build.

#[path = "../it/main.rs"]
mod it;
