//! The server as an attacker or a careless caller meets it: no way in without a key, limits
//! that hold under concurrency, bounded work per request, nothing left behind.

use base64::Engine as _;

use crate::support::{TestServer, config, tiny};

const ROOT: &str = "root-key-for-hardening";

fn png(side: u32) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    image::RgbImage::from_fn(side, side, |x, y| image::Rgb([x as u8, y as u8, 50]))
        .write_to(&mut out, image::ImageFormat::Png)
        .unwrap();
    out.into_inner()
}

fn data_uri(bytes: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
    format!("data:image/png;base64,{b64}")
}

fn png_data_uri(side: u32) -> String {
    data_uri(&png(side))
}

async fn error_of(response: reqwest::Response) -> (u16, serde_json::Value) {
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.unwrap();
    (status, body["error"].clone())
}

#[tokio::test]
async fn revoking_every_key_never_opens_the_server() {
    // Started open (no key ever), on loopback.
    let server = TestServer::start().await;
    assert_eq!(
        server.generate(tiny(serde_json::json!({}))).await.status(),
        200
    );
    // The first key closes it; revoking that key leaves it closed.
    let created = server
        .post("/v1/keys")
        .json(&serde_json::json!({"scopes": ["admin"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let created: serde_json::Value = created.json().await.unwrap();
    let (secret, id) = (
        created["secret"].as_str().unwrap(),
        created["id"].as_str().unwrap(),
    );
    assert_eq!(
        server.generate(tiny(serde_json::json!({}))).await.status(),
        401
    );
    let revoked = server
        .client
        .delete(format!("{}/v1/keys/{id}", server.url))
        .bearer_auth(secret)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    for path in ["/v1/keys", "/v1/jobs", "/v1/usage"] {
        let response = server.get(path).send().await.unwrap();
        assert_eq!(response.status(), 401, "{path}");
    }
    let (status, error) = error_of(server.generate(tiny(serde_json::json!({}))).await).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (401, Some("AuthenticationError"))
    );
    // A restart does not reopen it either.
    let dir = server.stop().await;
    let path = dir.path().to_path_buf();
    let again = TestServer::start_in(dir, config(&path)).await;
    assert_eq!(
        again.generate(tiny(serde_json::json!({}))).await.status(),
        401
    );
    assert_eq!(again.get("/v1/keys").send().await.unwrap().status(), 401);
}

#[tokio::test]
async fn bootstrap_keys_follow_the_command_line_across_restarts() {
    let start = |dir: tempfile::TempDir, keys: &[&str]| {
        let mut config = config(dir.path());
        config.api_keys = keys.iter().map(|k| (*k).into()).collect();
        TestServer::start_in(dir, config)
    };
    let keyed = |server: &TestServer, key: &str| server.get("/v1/keys").bearer_auth(key).send();
    let server = start(tempfile::tempdir().unwrap(), &["first-key"]).await;
    assert_eq!(keyed(&server, "first-key").await.unwrap().status(), 200);
    // A key made through the API survives every rotation.
    let made = server
        .create_key("first-key", serde_json::json!({"name": "app"}))
        .await;
    let app = made["secret"].as_str().unwrap().to_string();
    // Rotated: a new value starts (no UNIQUE error) and the old one stops working.
    let server = start(server.stop().await, &["second-key"]).await;
    assert_eq!(keyed(&server, "second-key").await.unwrap().status(), 200);
    assert_eq!(keyed(&server, "first-key").await.unwrap().status(), 401);
    assert_eq!(
        server.generate(tiny(serde_json::json!({}))).await.status(),
        401
    );
    // Removed from the flags: revoked, and the server stays closed.
    let server = start(server.stop().await, &[]).await;
    assert_eq!(keyed(&server, "second-key").await.unwrap().status(), 401);
    assert_eq!(server.get("/v1/keys").send().await.unwrap().status(), 401);
    let generated = server.generate_as(&app, tiny(serde_json::json!({}))).await;
    assert_eq!(generated.status(), 200);
}

#[tokio::test]
async fn operations_data_needs_an_ops_key_or_the_metrics_key() {
    let server = TestServer::start_with(|config| {
        config.api_keys = vec![ROOT.into()];
        config.metrics_key = Some("scraper-token".into());
    })
    .await;
    assert_eq!(server.get("/health").send().await.unwrap().status(), 200);
    let generate_only = server.create_key(ROOT, serde_json::json!({})).await;
    let ops = server
        .create_key(ROOT, serde_json::json!({"scopes": ["ops"]}))
        .await;
    for path in ["/metrics", "/info"] {
        let get = |key: Option<&str>| {
            let mut request = server.get(path);
            if let Some(key) = key {
                request = request.bearer_auth(key);
            }
            async move { request.send().await.unwrap().status().as_u16() }
        };
        assert_eq!(get(None).await, 401, "{path}");
        assert_eq!(get(Some("wrong")).await, 401, "{path}");
        assert_eq!(get(generate_only["secret"].as_str()).await, 403, "{path}");
        assert_eq!(get(ops["secret"].as_str()).await, 200, "{path}");
        assert_eq!(get(Some(ROOT)).await, 200, "{path}");
        assert_eq!(get(Some("scraper-token")).await, 200, "{path}");
    }
    // The metrics key is good for nothing else.
    let jobs = server
        .get("/v1/jobs")
        .bearer_auth("scraper-token")
        .send()
        .await;
    assert_eq!(jobs.unwrap().status(), 401);
    // An ops key cannot generate.
    let ops_key = ops["secret"].as_str().unwrap();
    let generated = server
        .generate_as(ops_key, tiny(serde_json::json!({})))
        .await;
    assert_eq!(generated.status(), 403);
}

#[cfg(unix)]
#[tokio::test]
async fn the_data_dir_is_private_to_the_user() {
    use std::os::unix::fs::PermissionsExt;
    let server = TestServer::start_with(|config| config.api_keys = vec![ROOT.into()]).await;
    let dir = server.data_dir.path();
    let mode = |name: &str| {
        std::fs::metadata(dir.join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(""), 0o700);
    assert_eq!(mode("blobs"), 0o700);
    for file in ["seedbed.db", "key-hash.secret", "node-id"] {
        assert_eq!(mode(file), 0o600, "{file}");
    }
}

#[tokio::test]
async fn a_repeated_key_in_the_body_is_refused() {
    let server = TestServer::start().await;
    let body = r#"{"model":"seedream-4-5-251128","prompt":"x","steps":2,"n":15,"n":1}"#;
    let response = server
        .post("/api/v3/images/generations")
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let (status, error) = error_of(response).await;
    assert_eq!(status, 400);
    assert_eq!(error["code"], "InvalidParameter");
    assert_eq!(error["param"], "n");
    let jobs: serde_json::Value = server.get_json("/v1/jobs").await;
    assert!(jobs["data"].as_array().unwrap().is_empty(), "{jobs}");
}

#[tokio::test]
async fn concurrent_async_requests_cannot_beat_a_quota() {
    let server = TestServer::start_with(|config| config.api_keys = vec![ROOT.into()]).await;
    let created = server
        .create_key(ROOT, serde_json::json!({"quota_images": 1}))
        .await;
    let secret = created["secret"].as_str().unwrap().to_string();
    let requests = (0..4).map(|_| {
        server
            .post("/api/v3/images/generations")
            .bearer_auth(&secret)
            .header("Prefer", "respond-async")
            .json(&tiny(serde_json::json!({"steps": 50})))
            .send()
    });
    let mut statuses: Vec<u16> = futures::future::join_all(requests)
        .await
        .into_iter()
        .map(|r| r.unwrap().status().as_u16())
        .collect();
    statuses.sort();
    assert_eq!(statuses, [202, 429, 429, 429]);
    let jobs: serde_json::Value = server.get_json_as("/v1/jobs", ROOT).await;
    assert_eq!(jobs["data"].as_array().unwrap().len(), 1, "{jobs}");
}

#[tokio::test]
async fn submitting_and_cancelling_counts_against_the_per_minute_limit() {
    let server = TestServer::start_with(|config| config.api_keys = vec![ROOT.into()]).await;
    let created = server
        .create_key(ROOT, serde_json::json!({"images_per_minute": 2}))
        .await;
    let secret = created["secret"].as_str().unwrap().to_string();
    for _ in 0..2 {
        let job: serde_json::Value = server
            .post("/api/v3/images/generations")
            .bearer_auth(&secret)
            .header("Prefer", "respond-async")
            .json(&tiny(serde_json::json!({"steps": 200})))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = job["id"].as_str().unwrap();
        let cancelled = server
            .post(&format!("/v1/jobs/{id}/cancel"))
            .bearer_auth(&secret)
            .send()
            .await
            .unwrap();
        assert_eq!(cancelled.status(), 200);
    }
    let response = server
        .generate_as(&secret, tiny(serde_json::json!({})))
        .await;
    assert_eq!(response.status(), 429);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let (_, error) = error_of(response).await;
    assert_eq!(error["code"], "ModelAccountIpmRateLimitExceeded");
}

#[tokio::test]
async fn work_the_engine_cannot_do_is_refused_before_queueing() {
    let server = TestServer::start().await;
    let cases = [
        (
            serde_json::json!({"model": "tiny-sdxl", "size": "16384x1024"}),
            "size",
        ),
        (serde_json::json!({"prompt": "a".repeat(32_001)}), "prompt"),
        (
            serde_json::json!({"negative_prompt": "b".repeat(40_000)}),
            "negative_prompt",
        ),
    ];
    for (body, param) in cases {
        let (status, error) = error_of(server.generate(tiny(body)).await).await;
        assert_eq!(
            (status, error["param"].as_str()),
            (400, Some(param)),
            "{error}"
        );
        assert_eq!(error["code"], "InvalidParameter");
    }
    let jobs: serde_json::Value = server.get_json("/v1/jobs").await;
    assert!(jobs["data"].as_array().unwrap().is_empty(), "{jobs}");
}

#[tokio::test]
async fn a_truncated_reference_image_is_a_400_and_makes_no_job() {
    let server = TestServer::start().await;
    // Valid base64 of a PNG whose header and size are fine but whose pixels stop halfway.
    let whole = png(64);
    let cut = data_uri(&whole[..whole.len() / 2]);
    let (status, error) = error_of(
        server
            .generate(tiny(serde_json::json!({"image": cut})))
            .await,
    )
    .await;
    assert_eq!(
        (status, error["param"].as_str()),
        (400, Some("image")),
        "{error}"
    );
    assert_eq!(error["code"], "InvalidParameter");
    let jobs: serde_json::Value = server.get_json("/v1/jobs").await;
    assert!(jobs["data"].as_array().unwrap().is_empty(), "{jobs}");
}

fn inputs_left(server: &TestServer) -> Vec<String> {
    let dir = server.data_dir.path().join("blobs/inputs");
    match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[tokio::test]
async fn reference_images_go_when_a_job_ends_in_any_way() {
    let server = TestServer::start().await;
    let image = png_data_uri(64);
    // A long job holds the device, so the next one stays queued until cancelled.
    let long = server
        .submit_async(tiny(serde_json::json!({"steps": 500})))
        .await;
    let queued = server
        .submit_async(tiny(serde_json::json!({"image": image, "strength": 0.5})))
        .await;
    assert_eq!(inputs_left(&server), std::slice::from_ref(&queued));
    let cancelled = server
        .post(&format!("/v1/jobs/{queued}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), 200);
    assert!(
        inputs_left(&server).is_empty(),
        "{:?}",
        inputs_left(&server)
    );
    server
        .post(&format!("/v1/jobs/{long}/cancel"))
        .send()
        .await
        .unwrap();
    server.wait_job(&long, None).await;
    // One that runs to the end, too.
    let done = server
        .submit_async(tiny(
            serde_json::json!({"image": png_data_uri(64), "strength": 0.5}),
        ))
        .await;
    let job = server.wait_job(&done, None).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert!(inputs_left(&server).is_empty());

    // Inputs orphaned by a crash (no job, or an ended one) are swept at the next start.
    let dir = server.stop().await;
    let orphan = dir.path().join("blobs/inputs/job_gone");
    std::fs::create_dir_all(&orphan).unwrap();
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    std::fs::File::create(orphan.join("0"))
        .unwrap()
        .set_modified(hour_ago)
        .unwrap();
    // Job-less but just written: a job another node is admitting, whose row is not in yet.
    let admitting = dir.path().join("blobs/inputs/job_admitting");
    std::fs::create_dir_all(&admitting).unwrap();
    std::fs::write(admitting.join("0"), b"bytes").unwrap();
    let ended = dir.path().join(format!("blobs/inputs/{done}"));
    std::fs::create_dir_all(&ended).unwrap();
    std::fs::write(ended.join("0"), b"bytes").unwrap();
    let path = dir.path().to_path_buf();
    let again = TestServer::start_in(dir, config(&path)).await;
    let mut swept = false;
    for _ in 0..100 {
        if inputs_left(&again) == ["job_admitting"] {
            swept = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(swept, "{:?}", inputs_left(&again));
}

/// JSON values shaped like requests: the real field names (and some others) with values of
/// every type, nested a little.
fn arbitrary_json() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
    use proptest::prelude::*;
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|f| serde_json::json!(f)),
        "\\PC{0,12}".prop_map(serde_json::Value::from),
        prop_oneof![
            Just("1K"),
            Just("4K"),
            Just("64x64"),
            Just("0x0"),
            Just("99999x1")
        ]
        .prop_map(serde_json::Value::from),
    ];
    let key = prop_oneof![
        Just("model".to_string()),
        Just("prompt".to_string()),
        Just("size".to_string()),
        Just("image".to_string()),
        Just("seed".to_string()),
        Just("n".to_string()),
        Just("steps".to_string()),
        Just("strength".to_string()),
        Just("stream".to_string()),
        Just("sequential_image_generation".to_string()),
        Just("sequential_image_generation_options".to_string()),
        Just("max_images".to_string()),
        "\\PC{0,8}",
    ];
    leaf.prop_recursive(3, 24, 6, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            proptest::collection::btree_map(key.clone(), inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Status and whether the body is Seedream's error envelope.
async fn answer(response: reqwest::Response) -> (u16, bool) {
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    (status, body["error"]["code"].is_string())
}

#[test]
fn arbitrary_bodies_and_links_get_4xx_in_the_envelope_never_5xx() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // The tiny model is not served: a body that happens to be valid is refused as an unknown
    // model instead of running for real.
    let no_models = tempfile::tempdir().unwrap();
    let server = runtime.block_on(TestServer::start_with(|config| {
        config.models_dir = no_models.path().to_path_buf();
        config.aliases.clear();
    }));
    let post = |body: Vec<u8>| {
        let request = server
            .post("/api/v3/images/generations")
            .header("content-type", "application/json")
            .body(body);
        runtime.block_on(async { answer(request.send().await.unwrap()).await })
    };
    let mut runner = TestRunner::new(Config {
        cases: 256,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&proptest::collection::vec(any::<u8>(), 0..300), |bytes| {
            let (status, enveloped) = post(bytes);
            prop_assert!((400..500).contains(&status) && enveloped, "{status}");
            Ok(())
        })
        .unwrap();
    runner
        .run(&arbitrary_json(), |value| {
            let (status, enveloped) = post(serde_json::to_vec(&value).unwrap());
            prop_assert!(
                (400..500).contains(&status) && enveloped,
                "{status} for {value}"
            );
            Ok(())
        })
        .unwrap();
    // Links: any job, file and query is a 4xx in the envelope.
    let link = ("[a-z_0-9]{0,12}", "[0-9a-z.]{0,8}", "\\PC{0,40}");
    runner
        .run(&link, |(job, file, query)| {
            let url = format!("{}/v1/images/{job}/{file}?{query}", server.url);
            let request = server.client.get(url);
            let (status, enveloped) =
                runtime.block_on(async { answer(request.send().await.unwrap()).await });
            prop_assert!((400..500).contains(&status) && enveloped, "{status}");
            Ok(())
        })
        .unwrap();
}

#[tokio::test]
async fn reference_urls_are_fetched_only_after_the_limits_pass() {
    use wiremock::matchers::method;
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let host = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_bytes(png(64)))
        .mount(&host)
        .await;
    let server = TestServer::start_with(|config| {
        config.api_keys = vec![ROOT.into()];
        config.jobs.inputs.allow_private_urls = true;
    })
    .await;
    let created = server
        .create_key(ROOT, serde_json::json!({"quota_images": 1}))
        .await;
    let secret = created["secret"].as_str().unwrap().to_string();
    let send = || {
        server
            .post("/api/v3/images/generations")
            .bearer_auth(&secret)
            .json(&tiny(serde_json::json!({
                "image": format!("{}/reference.png", host.uri()),
                "strength": 0.5,
            })))
            .send()
    };
    assert_eq!(send().await.unwrap().status(), 200);
    assert_eq!(host.received_requests().await.unwrap().len(), 1);
    // Over the quota: refused before the URL is fetched again.
    let (status, error) = error_of(send().await.unwrap()).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (429, Some("QuotaExceeded"))
    );
    assert_eq!(host.received_requests().await.unwrap().len(), 1);
}
