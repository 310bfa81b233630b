//! Several nodes on one Postgres database and one image store, as `docs/cluster.md` runs
//! them: a node that only takes requests and a node that runs them. What a client sees on the
//! first of a job running on the second: its progress, its result, its images, its cancel.

use std::time::{Duration, Instant};

use serde_json::json;

use seedbed_server::serve::ServeConfig;
use seedbed_storage::testing::S3Server;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::gateway::{ark_images, quick_ark, route};
use crate::support::{TestServer, config, tiny};

/// What the nodes share besides the database; lives as long as the test.
struct Shared {
    _dir: tempfile::TempDir,
    s3: S3Server,
}

/// Two nodes sharing a fresh Postgres database, one S3 bucket (a real S3 server in this
/// process) and one key-hash secret:
/// `worker` runs every job; `front` has no model of its own and runs nothing (`runs: none`),
/// so it knows the worker's models only from the worker's announcement.
async fn cluster(api_key: Option<&str>) -> (TestServer, TestServer, Shared) {
    cluster_with(api_key, |_| {}).await
}

/// [`cluster`] with the worker's configuration adjusted.
async fn cluster_with(
    api_key: Option<&str>,
    worker: impl FnOnce(&mut ServeConfig),
) -> (TestServer, TestServer, Shared) {
    let mut worker = Some(worker);
    let database = seedbed_storage::testing::postgres_url().await;
    let s3 = S3Server::start(&["images"]).await;
    let shared = tempfile::tempdir().unwrap();
    let no_models = shared.path().join("no-models");
    std::fs::create_dir(&no_models).unwrap();
    let mut nodes = Vec::new();
    // The worker first: the front reads the announcements when it starts.
    for (name, runs) in [("worker", true), ("front", false)] {
        let data_dir = tempfile::tempdir().unwrap();
        let mut config = config(data_dir.path());
        if !runs {
            config.models_dir = no_models.clone();
            config.aliases.clear();
        } else if let Some(adjust) = worker.take() {
            adjust(&mut config);
        }
        config.database_url = Some(database.clone());
        config.blob_url = Some("s3://images/cluster".into());
        config.s3 = Some(s3.settings());
        config.key_secret_file = Some(shared.path().join("key-hash.secret"));
        config.node_id = Some(name.into());
        config.jobs.runs.local = runs;
        config.jobs.runs.gateway = runs;
        config.api_keys = api_key.iter().map(|key| (*key).into()).collect();
        nodes.push(TestServer::start_in(data_dir, config).await);
    }
    let front = nodes.pop().unwrap();
    let worker = nodes.pop().unwrap();
    (front, worker, Shared { _dir: shared, s3 })
}

#[tokio::test]
async fn a_job_sent_to_one_node_runs_on_another_and_is_seen_from_both() {
    let (front, worker, shared) = cluster(None).await;
    // The front offers the worker's models (under the worker's alias too) as its own.
    let models = front.get_json("/v1/models").await;
    let ids: Vec<_> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert!(
        ids.contains(&"seedream-4-5-251128") && ids.contains(&"tiny-sd"),
        "{models}"
    );
    let unknown = front
        .generate(json!({"model": "nowhere", "prompt": "x"}))
        .await;
    assert_eq!(unknown.status(), 404);
    let id = front.submit_async(tiny(json!({"steps": 6}))).await;
    let names = front.event_names(&id, 0).await;
    let progress = names.iter().filter(|n| *n == "progress").count();
    assert_eq!(
        progress, 6,
        "every step of the worker's run, seen on the front: {names:?}"
    );
    assert_eq!(
        names.last().map(String::as_str),
        Some("completed"),
        "{names:?}"
    );
    let job = front.wait_job(&id, None).await;
    assert_eq!(
        (job["status"].as_str(), job["node"].as_str()),
        (Some("succeeded"), Some("worker"))
    );
    // The link the worker signs opens on the front too: one signing secret in the database.
    let url = worker.job(&id, None).await["result"]["data"][0]["url"]
        .as_str()
        .unwrap()
        .to_string();
    let path = url.strip_prefix(&worker.url).unwrap();
    let image = front.get(path).send().await.unwrap();
    assert_eq!(image.status(), 200, "{url}");
    assert_eq!(image.bytes().await.unwrap()[..3], [0xff, 0xd8, 0xff]);
    // Stored in the bucket, under the prefix the nodes were given.
    let stored = shared.s3.root().join("images/cluster/images").join(&id);
    let files = std::fs::read_dir(&stored).map(|d| d.count());
    assert_eq!(files.ok(), Some(1), "{}", stored.display());
    // Billed once, whichever node is asked.
    for node in [&front, &worker] {
        let usage = node.get_json("/v1/usage").await;
        assert_eq!(usage["totals"]["images"], 1, "{usage}");
        assert_eq!(usage["totals"]["jobs"], 1, "{usage}");
    }
}

#[tokio::test]
async fn a_cancel_on_one_node_stops_the_job_on_another_within_a_second() {
    let (front, worker, _shared) = cluster(None).await;
    let id = front.submit_async(tiny(json!({"steps": 250}))).await;
    let (job, running) = front
        .poll_job(&id, None, 400, |job| {
            job["progress"]["step"].as_u64() > Some(1)
        })
        .await;
    assert!(running, "never ran: {job}");
    let asked = Instant::now();
    let cancel = front
        .post(&format!("/v1/jobs/{id}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), 200);
    let (job, cancelled) = worker
        .poll_job(&id, None, 100, |job| job["status"] == "cancelled")
        .await;
    assert!(cancelled, "{job}");
    let took = asked.elapsed();
    assert!(
        took < Duration::from_millis(1500),
        "cancelled after {took:?}"
    );
    let step = job["progress"]["step"].as_u64().unwrap_or(0);
    assert!(step < 250, "stopped early, at step {step}");
}

#[tokio::test]
async fn keys_and_quotas_hold_across_nodes() {
    let admin = "sb-cluster-admin";
    let (front, worker, _shared) = cluster(Some(admin)).await;
    // A key made on one node works on the other, and its quota counts jobs on both.
    let key = front
        .create_key(admin, json!({"name": "team", "quota_images": 1}))
        .await;
    let secret = key["secret"].as_str().unwrap().to_string();
    let first = worker.generate_as(&secret, tiny(json!({}))).await;
    assert_eq!(first.status(), 200);
    let second = front.generate_as(&secret, tiny(json!({}))).await;
    assert_eq!(second.status(), 429);
    let body: serde_json::Value = second.json().await.unwrap();
    assert_eq!(body["error"]["code"], "QuotaExceeded", "{body}");
    // Revoked on one node, refused on the other at once.
    let id = key["id"].as_str().unwrap();
    let revoked = worker
        .client
        .delete(format!("{}/v1/keys/{id}", worker.url))
        .bearer_auth(admin)
        .send()
        .await
        .unwrap();
    assert!(revoked.status().is_success());
    let after = front.generate_as(&secret, tiny(json!({}))).await;
    assert_eq!(after.status(), 401);
}

#[tokio::test]
async fn a_relayed_model_only_one_node_knows_is_taken_by_any_and_relayed_there() {
    let ark = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(ark_images()))
        .mount(&ark)
        .await;
    let upstream = quick_ark(&ark);
    let (front, _worker, shared) = cluster_with(None, |config| {
        config.upstreams = vec![upstream];
        config.routes = vec![route("m", "ark", "x")];
    })
    .await;
    // The front has no upstream: it queues the request, the worker relays it.
    let response = front.generate(json!({"model": "m", "prompt": "x"})).await;
    assert_eq!(response.status(), 200);
    let id = response.headers()["x-seedbed-job-id"]
        .to_str()
        .unwrap()
        .to_string();
    let body: serde_json::Value = response.json().await.unwrap();
    let url = body["data"][0]["url"].as_str().unwrap();
    assert!(
        url.starts_with(&front.url),
        "re-hosted, linked through the front: {url}"
    );
    let job = front.job(&id, None).await;
    assert_eq!(job["node"], "worker", "{job}");
    assert_eq!(ark.received_requests().await.unwrap().len(), 1);
    let stored = shared.s3.root().join("images/cluster/images").join(&id);
    assert!(stored.is_dir(), "the re-hosted image is in the bucket");
}
