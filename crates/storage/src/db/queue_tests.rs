//! The job store's tests, each run on SQLite and on Postgres.

use std::collections::HashSet;

use super::tests::{on_both, postgres_db};
use super::*;

fn new_job(id: &str) -> NewJob {
    NewJob {
        id: id.into(),
        key_id: Some("key_a".into()),
        model: "tiny-sd".into(),
        images: 2,
        spec: "{}".into(),
        request_id: "req".into(),
        lane: Lane::Local,
    }
}

fn models() -> Vec<String> {
    vec!["tiny-sd".into()]
}

async fn claim(db: &Db, node: &str) -> Option<JobRow> {
    db.claim_next(node, i64::MAX, Lane::Local, &models())
        .await
        .unwrap()
}

async fn log(db: &Db, id: &str) -> Vec<String> {
    let events = db.events_after(id, 0).await.unwrap();
    events.into_iter().map(|(_, event)| event).collect()
}

#[tokio::test]
async fn queue_order_claims_and_positions() {
    on_both(|db| async move {
        for id in ["job_1", "job_2", "job_3"] {
            assert_eq!(db.insert_job(&new_job(id), "queued").await.unwrap(), 1);
        }
        assert_eq!(db.queue_position("job_3").await.unwrap(), Some(2));
        assert_eq!(db.queued_count().await.unwrap(), 3);
        let claimed = claim(&db, "node-a").await.unwrap();
        assert_eq!((claimed.id.as_str(), claimed.attempts), ("job_1", 1));
        assert_eq!(claimed.status, JobStatus::Running);
        let fence = claimed.fence().unwrap();
        assert_eq!(fence.node, "node-a");
        assert_eq!(db.queue_position("job_1").await.unwrap(), None);
        assert_eq!(db.queue_position("job_3").await.unwrap(), Some(1));
        let held = EndGuard::Held(&fence);
        assert!(
            db.finish_job("job_1", JobStatus::Succeeded, None, "done", held, None)
                .await
                .unwrap()
        );
        // A second finish changes nothing.
        assert!(
            !db.finish_job("job_1", JobStatus::Failed, None, "x", held, None)
                .await
                .unwrap()
        );
        let events = db.events_after("job_1", 0).await.unwrap();
        assert_eq!(events, [(1, "queued".to_string()), (2, "done".to_string())]);
        assert_eq!(db.events_after("job_1", 1).await.unwrap().len(), 1);
        let ended = db.job("job_1").await.unwrap().unwrap();
        assert_eq!(
            (ended.node, ended.ran_on.as_deref()),
            (None, Some("node-a"))
        );
        assert_eq!(db.list_jobs(Some("key_a"), 10).await.unwrap().len(), 3);
        assert!(db.list_jobs(Some("key_b"), 10).await.unwrap().is_empty());
    })
    .await;
}

#[tokio::test]
async fn a_node_claims_only_the_models_it_serves() {
    on_both(|db| async move {
        let mut other = new_job("job_other");
        other.model = "other-model".into();
        db.insert_job(&other, "queued").await.unwrap();
        db.insert_job(&new_job("job_mine"), "queued").await.unwrap();
        assert!(
            db.claim_next("n", i64::MAX, Lane::Local, &[])
                .await
                .unwrap()
                .is_none()
        );
        // The older job is another model's: it is left for a node that serves it.
        assert_eq!(claim(&db, "n").await.unwrap().id, "job_mine");
        assert!(claim(&db, "n").await.is_none());
        let both = ["tiny-sd".to_string(), "other-model".to_string()];
        let job = db.claim_next("m", i64::MAX, Lane::Local, &both).await;
        assert_eq!(job.unwrap().unwrap().id, "job_other");
        // Relayed jobs wait in their own lane.
        let mut relayed = new_job("job_relay");
        relayed.lane = Lane::Gateway;
        db.insert_job(&relayed, "queued").await.unwrap();
        assert!(claim(&db, "n").await.is_none());
        let job = db.claim_next("g", i64::MAX, Lane::Gateway, &models()).await;
        assert_eq!(job.unwrap().unwrap().id, "job_relay");
    })
    .await;
}

#[tokio::test]
async fn only_jobs_whose_position_changed_are_told() {
    on_both(|db| async move {
        let admission = Admission {
            queue_size: 10,
            ..Admission::default()
        };
        let told = |p: u32| format!("at {p}");
        for id in ["job_1", "job_2", "job_3"] {
            db.admit_job(&new_job(id), &admission, told)
                .await
                .unwrap()
                .unwrap();
            // Queued in the order they came (their creation millisecond decides).
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        // Admission told each its position; nothing has moved since.
        assert_eq!(db.tell_positions(Lane::Local, told).await.unwrap(), 0);
        let first = claim(&db, "node-a").await.unwrap();
        assert_eq!(db.tell_positions(Lane::Local, told).await.unwrap(), 2);
        assert_eq!(db.tell_positions(Lane::Local, told).await.unwrap(), 0);
        assert_eq!(log(&db, "job_3").await, ["at 2", "at 1"]);
        assert_eq!(log(&db, "job_2").await, ["at 1", "at 0"]);
        // A job put back in the queue is told its place again, and those behind it move.
        assert!(db.requeue("job_1", &first.fence().unwrap()).await.unwrap());
        assert_eq!(db.tell_positions(Lane::Local, told).await.unwrap(), 3);
        assert_eq!(log(&db, "job_1").await, ["at 0", "at 0"]);
        assert_eq!(log(&db, "job_3").await, ["at 2", "at 1", "at 2"]);
        // Another lane's queue is its own.
        assert_eq!(db.tell_positions(Lane::Gateway, told).await.unwrap(), 0);
    })
    .await;
}

#[tokio::test]
async fn reaping_requeues_then_gives_up() {
    on_both(|db| async move {
        db.insert_job(&new_job("job_1"), "queued").await.unwrap();
        for attempt in 1..=3 {
            let job = claim(&db, "node-a").await.unwrap();
            assert_eq!(job.attempts, attempt);
            // node-a restarted: its own jobs come back whatever their lease.
            let recovered = db.reap(Some("node-a"), 3).await.unwrap();
            if attempt < 3 {
                assert_eq!(recovered.requeued, ["job_1"]);
            } else {
                assert_eq!(recovered.exhausted, ["job_1"]);
                let guard = EndGuard::Abandoned {
                    restarted: Some("node-a"),
                };
                let error = Some(("RetriesExhausted", "gave up"));
                assert!(
                    db.finish_job("job_1", JobStatus::Failed, error, "failed", guard, None)
                        .await
                        .unwrap()
                );
            }
        }
        assert_eq!(
            db.job("job_1").await.unwrap().unwrap().status,
            JobStatus::Failed
        );
        // Another node's live lease is left alone; an expired one is taken back.
        db.insert_job(&new_job("job_2"), "queued").await.unwrap();
        let job = claim(&db, "node-b").await.unwrap();
        let fence = job.fence().unwrap();
        assert!(
            db.reap(Some("node-a"), 3)
                .await
                .unwrap()
                .requeued
                .is_empty()
        );
        assert!(db.reap(None, 3).await.unwrap().requeued.is_empty());
        assert_eq!(db.renew("job_2", &fence, 0).await.unwrap(), Some(false));
        let stranger = Fence {
            node: "node-a".into(),
            attempt: fence.attempt,
        };
        assert_eq!(db.renew("job_2", &stranger, i64::MAX).await.unwrap(), None);
        assert_eq!(db.reap(None, 3).await.unwrap().requeued, ["job_2"]);
    })
    .await;
}

#[tokio::test]
async fn a_node_that_lost_its_lease_writes_nothing() {
    on_both(|db| async move {
        db.insert_job(&new_job("job_1"), "queued").await.unwrap();
        let first = claim(&db, "node-a").await.unwrap().fence().unwrap();
        db.renew("job_1", &first, 0).await.unwrap();
        db.reap(None, 3).await.unwrap();
        // node-b runs it now; node-a wakes up from a long pause and tries to carry on.
        let second = claim(&db, "node-b").await.unwrap().fence().unwrap();
        assert_eq!(second.attempt, 2);
        let far = i64::MAX;
        assert!(
            !db.record_event("job_1", &first, far, "stale", Some("{}"))
                .await
                .unwrap()
        );
        let image = ImageRow {
            job_id: "job_1".into(),
            index: 0,
            blob_key: "images/job_1/0.png".into(),
            width: 8,
            height: 8,
            format: "png".into(),
            bytes: 3,
            created_at: 0,
            expires_at: far,
        };
        let stale_image = db.record_image(&first, far, &image, "stale image").await;
        assert_eq!(stale_image.unwrap(), Recorded::Lost);
        let bill = Billing {
            key_id: Some("key_a"),
            model: "tiny-sd",
            images: 1,
            tokens: 16,
        };
        let stale = EndGuard::Held(&first);
        assert!(
            !db.finish_job(
                "job_1",
                JobStatus::Succeeded,
                None,
                "stale end",
                stale,
                Some(bill)
            )
            .await
            .unwrap()
        );
        assert!(!db.requeue("job_1", &first).await.unwrap());
        // The same node's earlier attempt is a stranger too.
        let same_node_old = Fence {
            node: "node-b".into(),
            attempt: 1,
        };
        assert_eq!(db.renew("job_1", &same_node_old, far).await.unwrap(), None);
        // The owner's writes land.
        assert!(
            db.record_event("job_1", &second, far, "step", Some("{\"step\":1}"))
                .await
                .unwrap()
        );
        let recorded = db
            .record_image(&second, far, &image, "image")
            .await
            .unwrap();
        assert_eq!(recorded, Recorded::Stored { replaced: None });
        let again = ImageRow {
            blob_key: "images/job_1/0-2.png".into(),
            ..image.clone()
        };
        let recorded = db
            .record_image(&second, far, &again, "image")
            .await
            .unwrap();
        let replaced = Some("images/job_1/0.png".to_string());
        assert_eq!(recorded, Recorded::Stored { replaced });
        let held = EndGuard::Held(&second);
        assert!(
            db.finish_job(
                "job_1",
                JobStatus::Succeeded,
                None,
                "done",
                held,
                Some(bill)
            )
            .await
            .unwrap()
        );
        assert_eq!(
            log(&db, "job_1").await,
            ["queued", "step", "image", "image", "done"]
        );
        assert_eq!(db.job_images("job_1").await.unwrap().len(), 1);
        let totals = db.ledger().totals(Some("key_a"), 0).await.unwrap();
        assert_eq!((totals.jobs, totals.images), (1, 1));
    })
    .await;
}

#[tokio::test]
async fn concurrent_admissions_cannot_overshoot_a_quota() {
    // A file database: several connections really do race (Postgres always has them).
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Db::open(&format!("sqlite://{}", dir.path().join("t.db").display()))
        .await
        .unwrap();
    for db in [sqlite, postgres_db().await] {
        let admission = Admission {
            queue_size: 100,
            images_per_minute: None,
            quota_images: Some(3),
        };
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let db = db.clone();
                tokio::spawn(async move {
                    let mut job = new_job(&format!("job_{i}"));
                    job.images = 1;
                    db.admit_job(&job, &admission, |_| "queued".into())
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut admitted = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(_) => admitted += 1,
                Err(refusal) => assert!(matches!(refusal, Refusal::QuotaExceeded { quota: 3, .. })),
            }
        }
        assert_eq!(admitted, 3);
        assert_eq!(db.queued_count().await.unwrap(), 3);
    }
}

/// Three nodes, each with its own connection pool, claiming from one Postgres queue as fast as
/// they can: every job is run exactly once.
#[tokio::test]
async fn concurrent_claims_never_run_one_job_twice() {
    let url = crate::testing::postgres_url().await;
    let setup = Db::open(&url).await.unwrap();
    for i in 0..120 {
        setup
            .insert_job(&new_job(&format!("job_{i:03}")), "queued")
            .await
            .unwrap();
    }
    let mut nodes = Vec::new();
    for node in ["node-a", "node-b", "node-c"] {
        let db = Db::open(&url).await.unwrap();
        for worker in 0..4 {
            let db = db.clone();
            nodes.push(tokio::spawn(async move {
                let name = node.to_string();
                let mut ran = Vec::new();
                while let Some(job) = claim(&db, &name).await {
                    let fence = job.fence().unwrap();
                    let guard = EndGuard::Held(&fence);
                    let event = format!("done by {name}/{worker}");
                    let ended = db
                        .finish_job(&job.id, JobStatus::Succeeded, None, &event, guard, None)
                        .await
                        .unwrap();
                    assert!(ended, "{} ended by someone else", job.id);
                    ran.push(job.id);
                }
                ran
            }));
        }
    }
    let mut seen = HashSet::new();
    let mut total = 0;
    for node in nodes {
        for id in node.await.unwrap() {
            total += 1;
            assert!(seen.insert(id.clone()), "{id} ran twice");
        }
    }
    assert_eq!((total, seen.len()), (120, 120));
    for i in [0, 57, 119] {
        let id = format!("job_{i:03}");
        assert_eq!(setup.job(&id).await.unwrap().unwrap().attempts, 1);
        assert_eq!(log(&setup, &id).await.len(), 2);
    }
}

#[tokio::test]
async fn open_jobs_and_cancelled_ones_count_against_limits() {
    on_both(|db| async move {
        let quota = Admission {
            queue_size: 100,
            images_per_minute: None,
            quota_images: Some(5),
        };
        // Two images queued, one billed: a third image fits, a fourth does not.
        db.admit_job(&new_job("job_1"), &quota, |_| "q".into())
            .await
            .unwrap()
            .unwrap();
        db.ledger()
            .record("job_0", Some("key_a"), "m", 1, 0)
            .await
            .unwrap();
        let mut three = new_job("job_2");
        three.images = 3;
        assert_eq!(
            db.check_admission(Some("key_a"), 3, &quota).await.unwrap(),
            Err(Refusal::QuotaExceeded { quota: 5, used: 3 })
        );
        three.images = 2;
        db.admit_job(&three, &quota, |_| "q".into())
            .await
            .unwrap()
            .unwrap();
        // Another key is not affected; no key means no key limits.
        assert!(
            db.check_admission(Some("key_b"), 5, &quota)
                .await
                .unwrap()
                .is_ok()
        );
        assert!(db.check_admission(None, 15, &quota).await.unwrap().is_ok());
        // A cancelled job's images leave the quota but stay in the per-minute window.
        db.finish_job(
            "job_2",
            JobStatus::Cancelled,
            None,
            "c",
            EndGuard::Queued,
            None,
        )
        .await
        .unwrap();
        assert!(
            db.check_admission(Some("key_a"), 2, &quota)
                .await
                .unwrap()
                .is_ok()
        );
        let per_minute = Admission {
            queue_size: 100,
            images_per_minute: Some(4),
            quota_images: None,
        };
        match db
            .check_admission(Some("key_a"), 1, &per_minute)
            .await
            .unwrap()
        {
            Err(Refusal::RateLimited {
                limit: 4,
                retry_after_s,
            }) => assert!((1..=60).contains(&retry_after_s), "{retry_after_s}"),
            other => panic!("{other:?}"),
        }
        // The queue bound holds for everyone.
        let full = Admission {
            queue_size: 1,
            ..Admission::default()
        };
        assert_eq!(
            db.check_admission(None, 1, &full).await.unwrap(),
            Err(Refusal::QueueFull { queued: 1 })
        );
    })
    .await;
}

#[tokio::test]
async fn cancel_flags_and_notices() {
    on_both(|db| async move {
        let mut notices = db.listen().await.unwrap();
        assert_eq!(notices.is_some(), db.backend() == Backend::Postgres);
        db.insert_job(&new_job("job_1"), "queued").await.unwrap();
        assert!(!db.cancel_requested("job_1").await.unwrap());
        assert_eq!(
            db.request_cancel("job_1").await.unwrap(),
            Some(JobStatus::Queued)
        );
        assert!(db.cancel_requested("job_1").await.unwrap());
        assert_eq!(db.request_cancel("nope").await.unwrap(), None);
        if let Some(notices) = &mut notices {
            // In commit order: the insert's, then the cancel's.
            assert_eq!(
                notices.next().await.unwrap(),
                Notice::Events("job_1".into())
            );
            assert_eq!(notices.next().await.unwrap(), Notice::Queued(Lane::Local));
            assert_eq!(
                notices.next().await.unwrap(),
                Notice::Cancel("job_1".into())
            );
        }
    })
    .await;
}
