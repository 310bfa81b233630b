use std::time::Duration;

use seedbed_storage::{Db, NewJob};

use crate::support::{TestServer, config, tiny};

/// Jobs queued or running when the server stops, or left running by a process that died,
/// run after it starts again; a job that keeps dying fails with a clear code; links handed
/// out before the restart keep working.
#[tokio::test]
async fn jobs_and_links_survive_a_restart() {
    let data_dir = tempfile::tempdir().unwrap();
    let path = data_dir.path().to_path_buf();
    let first = TestServer::start_in(data_dir, config(&path)).await;
    let done: serde_json::Value = first
        .generate(tiny(serde_json::json!({})))
        .await
        .json()
        .await
        .unwrap();
    let old_link = done["data"][0]["url"].as_str().unwrap().to_string();
    let old_url = first.url.clone();
    let spec_job = first
        .get("/v1/jobs")
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap()["data"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let data_dir = first.stop().await;

    // What a killed process leaves behind: jobs marked running by this node, one of them
    // already tried as often as allowed.
    let db = Db::open(&format!("sqlite://{}", path.join("seedbed.db").display()))
        .await
        .unwrap();
    let node = std::fs::read_to_string(path.join("node-id")).unwrap();
    let spec = db.job(&spec_job).await.unwrap().unwrap().spec;
    let new_job = |id: &str| NewJob {
        id: id.into(),
        key_id: None,
        model: "seedream-4-5-251128".into(),
        images: 1,
        spec: spec.clone(),
        request_id: "crashed".into(),
        lane: seedbed_storage::Lane::Local,
    };
    let queued = r#"{"type":"queued","position":0}"#;
    let served = ["seedream-4-5-251128".to_string()];
    db.insert_job(&new_job("job_crashes_always"), queued)
        .await
        .unwrap();
    for _ in 0..2 {
        db.claim_next(&node, i64::MAX, seedbed_storage::Lane::Local, &served)
            .await
            .unwrap()
            .unwrap();
        db.reap(Some(&node), 99).await.unwrap();
    }
    db.claim_next(&node, i64::MAX, seedbed_storage::Lane::Local, &served)
        .await
        .unwrap()
        .unwrap();
    db.insert_job(&new_job("job_crashed_once"), queued)
        .await
        .unwrap();
    db.claim_next(&node, i64::MAX, seedbed_storage::Lane::Local, &served)
        .await
        .unwrap()
        .unwrap();
    drop(db);

    // A graceful stop with no grace: the running job goes back to the queue.
    let mut second_config = config(&path);
    second_config.jobs.shutdown_grace = Duration::ZERO;
    let second = TestServer::start_in(data_dir, second_config).await;
    let long = second
        .submit_async(tiny(serde_json::json!({"steps": 400})))
        .await;
    let waiting = second.submit_async(tiny(serde_json::json!({}))).await;
    second
        .poll_job(&long, None, 200, |job| job["status"] == "running")
        .await;
    let data_dir = second.stop().await;

    let third = TestServer::start_in(data_dir, config(&path)).await;
    for id in [long.as_str(), waiting.as_str(), "job_crashed_once"] {
        let job = third.wait_job(id, None).await;
        assert_eq!(job["status"], "succeeded", "{job}");
    }
    let job = third.wait_job("job_crashes_always", None).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(
        job["error"]["code"],
        "InternalServiceError.RetriesExhausted"
    );
    let link = old_link.replacen(&old_url, &third.url, 1);
    let image = third.client.get(&link).send().await.unwrap();
    assert_eq!(image.status(), 200, "{link}");
}
