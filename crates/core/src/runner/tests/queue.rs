//! Queue positions as a queued job's event log tells them: a new `queued` event each time a
//! job ahead of it leaves the queue (claimed or cancelled), agreeing with `queue_position`.

use seedbed_storage::JobStatus;

use super::fake::{Fake, Script, Step, image, ok};
use super::{Harness, spec};
use crate::events::JobEvent;

impl Harness {
    /// The positions the job's `queued` events told it, in order.
    async fn positions(&self, id: &str) -> Vec<u32> {
        let events = self.events(id).await;
        events
            .iter()
            .filter_map(|event| match event {
                JobEvent::Queued { position } => Some(*position),
                _ => None,
            })
            .collect()
    }

    /// Wait until the job has been told `expected`, then check the job agrees.
    async fn told(&self, id: &str, expected: &[u32]) {
        for _ in 0..500 {
            if self.positions(id).await == expected {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(self.positions(id).await, expected);
        let now = self.jobs.queue_position(id).await.unwrap();
        assert_eq!(now, expected.last().copied());
    }
}

#[tokio::test]
async fn a_job_queued_third_is_told_each_step_forward() {
    let h = Harness::new().await;
    let first = h.submit(spec(1)).await;
    let second = h.submit(spec(1)).await;
    let third = h.submit(spec(1)).await;
    h.told(&third, &[2]).await;

    let (fake, mut reports) = Fake::new([
        Script::new([Step::Hold, image(0), ok()]),
        Script::new([image(0), ok()]),
    ]);
    let lane = h.run(fake.clone());
    // The first job was claimed: both behind it moved up, the running one is told nothing.
    assert_eq!(reports.held().await, first);
    h.told(&second, &[1, 0]).await;
    h.told(&third, &[2, 1]).await;
    assert_eq!(h.positions(&first).await, [0]);

    // The job ahead is cancelled while it waits.
    h.jobs.cancel(&second, None).await.unwrap();
    h.told(&third, &[2, 1, 0]).await;

    fake.release();
    assert_eq!(h.ended(&third).await.status, JobStatus::Succeeded);
    assert_eq!(
        h.names(&third).await,
        [
            "queued",
            "queued",
            "queued",
            "started",
            "image",
            "completed"
        ]
    );
    lane.stop().await;
}
