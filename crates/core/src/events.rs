//! What happens to a job: the event type lives in the wire crate (clients read it too).

pub use seedbed_types::JobEvent;

/// A stored event with its sequence number in the job's log (the SSE `id`).
#[derive(Debug, Clone, PartialEq)]
pub struct SequencedEvent {
    pub seq: i64,
    pub event: JobEvent,
}
