//! Jobs stopped from outside: cancels at each stage, a lease another node took, shutdown
//! within and beyond the grace period, and retries used up by crashes.

use std::time::Duration;

use seedbed_storage::{JobStatus, Lane, now_ms};

use super::fake::{Fake, Script, Step, image, ok, progress};
use super::{Harness, spec};
use crate::events::JobEvent;

#[tokio::test]
async fn a_queued_job_cancels_at_once_and_never_runs() {
    let h = Harness::new().await;
    let id = h.submit(spec(1)).await;
    let job = h.jobs.cancel(&id, None).await.unwrap();
    assert_eq!(job.status, JobStatus::Cancelled);
    assert_eq!(h.names(&id).await, ["queued", "cancelled"]);

    let next = h.submit(spec(1)).await;
    let (fake, _reports) = Fake::new([Script::new([image(0), ok()])]);
    let lane = h.run(fake.clone());
    assert_eq!(h.ended(&next).await.status, JobStatus::Succeeded);
    assert_eq!(fake.runs(), 1, "only the job that was not cancelled ran");
    assert_eq!(h.billed(&id).await, None);
    lane.stop().await;
}

#[tokio::test]
async fn a_running_job_cancels_between_events() {
    let h = Harness::new().await;
    let id = h.submit(spec(1)).await;
    let (fake, mut reports) = Fake::new([Script::new([progress(1), Step::Hold, image(0), ok()])]);
    let lane = h.run(fake);
    reports.held().await;
    h.jobs.cancel(&id, None).await.unwrap();
    assert_eq!(reports.stopped().await, id);
    assert_eq!(h.ended(&id).await.status, JobStatus::Cancelled);
    assert_eq!(
        h.names(&id).await,
        ["queued", "started", "progress", "cancelled"]
    );
    assert_eq!(h.billed(&id).await, Some((0, 0)));
    lane.stop().await;
}

#[tokio::test]
async fn a_cancel_after_the_last_image_bills_it_and_a_backend_may_finish_anyway() {
    let h = Harness::new().await;
    let relay = h.submit(spec(1)).await;
    let device = h.submit(spec(1)).await;
    let (fake, mut reports) = Fake::new([
        Script::new([image(0), Step::Hold, ok()]),
        Script::new([image(0), Step::Hold, ok()]).finishing(),
    ]);
    let lane = h.run(fake);
    for id in [&relay, &device] {
        assert_eq!(&reports.held().await, id);
        h.jobs.cancel(id, None).await.unwrap();
        assert_eq!(&reports.stopped().await, id);
        h.ended(id).await;
        assert_eq!(h.billed(id).await, Some((1, 16)), "the delivered image");
    }
    // Stopped before its end: cancelled. Finished anyway: the result stands.
    assert_eq!(h.job(&relay).await.status, JobStatus::Cancelled);
    assert_eq!(h.job(&device).await.status, JobStatus::Succeeded);
    lane.stop().await;
}

#[tokio::test]
async fn a_cancel_on_another_node_is_seen_at_the_next_heartbeat() {
    let h = Harness::new().await;
    let id = h.submit(spec(1)).await;
    let (fake, mut reports) = Fake::new([Script::new([Step::Hold, image(0), ok()])]);
    let lane = h.run(fake);
    reports.held().await;
    // Only the row changes: no token in this process is touched.
    h.db().request_cancel(&id).await.unwrap();
    assert_eq!(reports.stopped().await, id);
    assert_eq!(h.ended(&id).await.status, JobStatus::Cancelled);
    lane.stop().await;
}

#[tokio::test]
async fn a_job_another_node_took_is_stopped_and_left_alone() {
    let h = Harness::new().await;
    let id = h.submit(spec(1)).await;
    let (fake, mut reports) = Fake::new([Script::new([progress(1), Step::Hold, image(0), ok()])]);
    let lane = h.run(fake);
    reports.held().await;
    h.log_reaches(&id, &["queued", "started", "progress"]).await;
    h.take_over(&id).await;
    // The next heartbeat finds the lease gone and stops the backend.
    assert_eq!(reports.stopped().await, id);
    lane.stop().await;
    let job = h.job(&id).await;
    assert_eq!(job.status, JobStatus::Running, "node-b's job now");
    assert_eq!(
        h.names(&id).await,
        ["queued", "started", "progress"],
        "nothing written after the loss"
    );
    assert_eq!(h.billed(&id).await, None);
    let until = now_ms() + 60_000;
    let node_b = h.job(&id).await.fence().unwrap();
    assert_eq!(node_b.node, "node-b");
    assert!(h.db().renew(&id, &node_b, until).await.unwrap().is_some());
}

#[tokio::test]
async fn an_image_or_an_end_after_the_lease_was_lost_is_not_written() {
    // A long lease: no heartbeat comes between the take-over and what the backend sends.
    let h = Harness::with(|config| config.lease = Duration::from_secs(60)).await;
    let with_image = h.submit(spec(1)).await;
    let without = h.submit(spec(1)).await;
    let (fake, mut reports) = Fake::new([
        Script::new([Step::Hold, image(0), ok()]),
        Script::new([Step::Hold, ok()]),
    ]);
    let lane = h.run(fake.clone());
    for id in [&with_image, &without] {
        assert_eq!(&reports.held().await, id);
        h.take_over(id).await;
        fake.release();
        // The lane takes the next job only once this one is done with.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    lane.stop().await;
    for id in [&with_image, &without] {
        assert_eq!(h.job(id).await.status, JobStatus::Running);
        assert_eq!(h.billed(id).await, None);
    }
    assert_eq!(h.names(&with_image).await, ["queued", "started"]);
    // The second was told it moved up when the first was claimed.
    assert_eq!(h.names(&without).await, ["queued", "queued", "started"]);
    assert!(h.jobs.image(&with_image, 0).await.unwrap().is_none());
}

#[tokio::test]
async fn shutdown_lets_a_running_job_finish_within_the_grace_period() {
    let h = Harness::new().await;
    let id = h.submit(spec(1)).await;
    let (fake, mut reports) = Fake::new([Script::new([Step::Hold, image(0), ok()])]);
    let lane = h.run(fake.clone());
    reports.held().await;
    let waiting = h.submit(spec(1)).await;
    lane.shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;
    fake.release();
    lane.finished().await;
    let job = h.job(&id).await;
    assert_eq!((job.status, job.attempts), (JobStatus::Succeeded, 1));
    assert_eq!(h.billed(&id).await, Some((1, 16)));
    assert_eq!(
        h.job(&waiting).await.status,
        JobStatus::Queued,
        "not started"
    );
}

#[tokio::test]
async fn a_job_running_past_the_grace_period_is_requeued_and_billed_once_when_it_reruns() {
    let h = Harness::with(|config| config.shutdown_grace = Duration::from_millis(200)).await;
    let id = h.submit(spec(2)).await;
    let (fake, mut reports) = Fake::new([
        Script::new([image(0), Step::Hold, image(1), ok()]),
        Script::new([image(0), image(1), ok()]),
    ]);
    let lane = h.run(fake.clone());
    reports.held().await;
    lane.shutdown.cancel();
    assert_eq!(reports.stopped().await, id);
    lane.finished().await;
    let job = h.job(&id).await;
    assert_eq!(job.status, JobStatus::Queued);
    assert_eq!(job.attempts, 0, "an interrupted attempt is not counted");
    // Back in the queue, and told so.
    assert_eq!(h.names(&id).await, ["queued", "started", "image", "queued"]);
    assert_eq!(h.billed(&id).await, None, "not billed until it ends");

    let lane = h.run(fake);
    assert_eq!(h.ended(&id).await.status, JobStatus::Succeeded);
    let starts: Vec<_> = h
        .events(&id)
        .await
        .into_iter()
        .filter(|event| matches!(event, JobEvent::Started { .. }))
        .collect();
    assert_eq!(starts.last(), Some(&JobEvent::Started { attempt: 1 }));
    assert_eq!(h.billed(&id).await, Some((2, 32)));
    lane.stop().await;
}

#[tokio::test]
async fn a_job_interrupted_too_often_fails_and_one_interrupted_once_runs_again() {
    let h = Harness::new().await;
    let doomed = h.submit(spec(1)).await;
    for attempts in 1..=2 {
        crash(&h).await;
        let job = h.job(&doomed).await;
        assert_eq!((job.status, job.attempts), (JobStatus::Queued, attempts));
    }
    crash(&h).await;
    let job = h.job(&doomed).await;
    assert_eq!(job.status, JobStatus::Failed);
    assert_eq!(
        job.error_code.as_deref(),
        Some("InternalServiceError.RetriesExhausted")
    );
    // Each recovery put it back in the queue and told it its place again.
    assert_eq!(
        h.names(&doomed).await,
        ["queued", "queued", "queued", "failed"]
    );

    let survivor = h.submit(spec(1)).await;
    crash(&h).await;
    let (fake, _reports) = Fake::new([Script::new([image(0), ok()])]);
    let lane = h.run(fake);
    assert_eq!(h.ended(&survivor).await.status, JobStatus::Succeeded);
    assert!(
        h.events(&survivor)
            .await
            .contains(&JobEvent::Started { attempt: 2 })
    );
    lane.stop().await;
}

/// A process claims the next job and dies; the next start recovers it.
async fn crash(h: &Harness) {
    let node = &h.jobs.config().node_id;
    let until = now_ms() + 60_000;
    let claimed = h
        .db()
        .claim_next(node, until, Lane::Local, &super::served())
        .await;
    assert!(claimed.unwrap().is_some());
    h.jobs.reap(Some(node)).await.unwrap();
}
