//! How jobs end when nothing stops them: success, failures with and without images, usage.

use std::sync::Arc;
use std::time::Duration;

use seedbed_gateway::Gateway;
use seedbed_storage::{JobStatus, Lane};
use seedbed_types::Usage;
use seedbed_types::job_event::UpstreamStatus;

use super::fake::{Fake, Script, Step, failed, image, image_failed, ok, ok_with, progress};
use super::{Harness, relay, spec};
use crate::backend::gateway::GatewayBackend;
use crate::events::JobEvent;

fn one_image() -> Usage {
    Usage::for_images([(64, 64)])
}

#[tokio::test]
async fn a_job_goes_from_queued_to_running_to_succeeded() {
    let h = Harness::new().await;
    let id = h.submit(spec(1)).await;
    assert_eq!(h.job(&id).await.status, JobStatus::Queued);
    assert_eq!(h.names(&id).await, ["queued"]);

    let (fake, mut reports) = Fake::new([Script::new([progress(1), Step::Hold, image(0), ok()])]);
    let lane = h.run(fake.clone());
    assert_eq!(reports.held().await, id);
    h.log_reaches(&id, &["queued", "started", "progress"]).await;
    let job = h.job(&id).await;
    assert_eq!((job.status, job.attempts), (JobStatus::Running, 1));
    assert!(job.progress.unwrap().contains("\"step\":1"));

    fake.release();
    let job = h.ended(&id).await;
    assert_eq!(job.status, JobStatus::Succeeded);
    assert_eq!(
        h.names(&id).await,
        ["queued", "started", "progress", "image", "completed"]
    );
    let JobEvent::Completed { usage, .. } = h.last_event(&id).await else {
        panic!("not completed");
    };
    assert_eq!(usage, one_image());
    let (_, bytes) = h.jobs.image(&id, 0).await.unwrap().unwrap();
    assert_eq!(&bytes[..], b"image 0", "stored before it was announced");
    assert_eq!(h.billed(&id).await, Some((1, 16)));
    lane.stop().await;
}

#[tokio::test]
async fn a_failure_after_some_images_completes_with_the_next_image_failed() {
    let h = Harness::new().await;
    let first = h.submit(spec(3)).await;
    let second = h.submit(spec(3)).await;
    let (fake, _reports) = Fake::new([
        Script::new([image(0), failed("UpstreamStreamBroken", 502)]),
        Script::new([
            image(0),
            image_failed(1),
            failed("UpstreamStreamBroken", 502),
        ]),
    ]);
    let lane = h.run(fake);
    for (id, failed_index) in [(&first, 1), (&second, 2)] {
        assert_eq!(h.ended(id).await.status, JobStatus::Succeeded);
        let events = h.events(id).await;
        let failures: Vec<_> = events
            .iter()
            .filter_map(|event| match event {
                JobEvent::ImageFailed { index, code, .. } => Some((*index, code.as_str())),
                _ => None,
            })
            .collect();
        assert_eq!(
            failures.last(),
            Some(&(failed_index, "UpstreamStreamBroken"))
        );
        let JobEvent::Completed { usage, .. } = h.last_event(id).await else {
            panic!("not completed: {events:?}");
        };
        assert_eq!(usage, one_image(), "only delivered images are billed");
        assert_eq!(h.billed(id).await, Some((1, 16)));
    }
    lane.stop().await;
}

#[tokio::test]
async fn a_failure_without_images_keeps_its_status_and_retry_after() {
    let h = Harness::new().await;
    let id = h.submit(spec(1)).await;
    let (fake, _reports) = Fake::new([Script::new([failed("RateLimitExceeded", 429)])]);
    let lane = h.run(fake);
    let job = h.ended(&id).await;
    assert_eq!(job.status, JobStatus::Failed);
    assert_eq!(job.error_code.as_deref(), Some("RateLimitExceeded"));
    let JobEvent::Failed { status, .. } = h.last_event(&id).await else {
        panic!("not failed");
    };
    let expected = UpstreamStatus {
        status: 429,
        retry_after_s: Some(7),
    };
    assert_eq!(status, Some(expected));
    assert_eq!(h.billed(&id).await, Some((0, 0)));
    lane.stop().await;
}

#[tokio::test]
async fn a_backends_usage_block_is_billed_instead_of_counting() {
    let h = Harness::new().await;
    let id = h.submit(spec(1)).await;
    let usage = Usage {
        generated_images: 1,
        output_tokens: 4096,
        total_tokens: 4096,
    };
    let extra = serde_json::json!({"tool_usage": {"web_search": 0}});
    let extra = extra.as_object().unwrap().clone();
    let script = Script::new([image(0), ok_with(Some(usage), extra.clone())]);
    let (fake, _reports) = Fake::new([script]);
    let lane = h.run(fake);
    assert_eq!(h.ended(&id).await.status, JobStatus::Succeeded);
    let JobEvent::Completed {
        usage: billed,
        extra: relayed,
        ..
    } = h.last_event(&id).await
    else {
        panic!("not completed");
    };
    assert_eq!((billed, relayed), (usage, extra));
    assert_eq!(h.billed(&id).await, Some((1, 4096)));
    lane.stop().await;
}

#[tokio::test]
async fn a_lane_runs_at_most_its_concurrency_at_once() {
    let h = Harness::new().await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(h.submit(relay(r#"{"model":"m","prompt":"p"}"#)).await);
    }
    let script = || Script::new([Step::Hold, image(0), ok()]);
    let (fake, mut reports) = Fake::new([script(), script(), script()]);
    let lane = h.run_lane(Lane::Gateway, 2, fake.clone());
    let mut held = vec![reports.held().await, reports.held().await];
    reports.quiet(Duration::from_millis(300)).await;
    fake.release();
    held.push(reports.held().await);
    held.sort();
    ids.sort();
    assert_eq!(held, ids);
    fake.release();
    fake.release();
    for id in &ids {
        assert_eq!(h.ended(id).await.status, JobStatus::Succeeded);
    }
    lane.stop().await;
}

#[tokio::test]
async fn the_gateway_backend_passes_an_upstreams_failure_on() {
    let h = Harness::new().await;
    let id = h
        .submit(relay(r#"{"model":"nobody-serves-this","prompt":"p"}"#))
        .await;
    let lane = h.run_lane(
        Lane::Gateway,
        32,
        Arc::new(GatewayBackend::new(Gateway::default())),
    );
    let job = h.ended(&id).await;
    assert_eq!(job.status, JobStatus::Failed);
    let JobEvent::Failed {
        code,
        status,
        param,
        ..
    } = h.last_event(&id).await
    else {
        panic!("not failed");
    };
    assert_eq!(code, "InvalidEndpointOrModel.NotFound");
    assert_eq!(status, Some(404.into()));
    assert_eq!(param.as_deref(), Some("model"));
    lane.stop().await;

    // A relayed job that lost its request fails instead of hanging.
    let id = h.submit(spec(1)).await;
    let lane = h.run(Arc::new(GatewayBackend::new(Gateway::default())));
    assert_eq!(h.ended(&id).await.status, JobStatus::Failed);
    let job = h.job(&id).await;
    assert_eq!(
        job.error_message.as_deref(),
        Some("a relayed job without its request")
    );
    lane.stop().await;
}
