use crate::support::{TestServer, tiny};

const ROOT: &str = "root-key-for-tests";

#[tokio::test]
async fn keys_scopes_limits_and_usage() {
    let server = TestServer::start_with(|config| config.api_keys = vec![ROOT.into()]).await;
    // Without a key, or with a wrong one: 401 in the envelope.
    let response = server.generate(tiny(serde_json::json!({}))).await;
    assert_eq!(response.status(), 401);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "AuthenticationError");
    assert_eq!(body["error"]["type"], "Unauthorized");
    let wrong = server
        .post("/api/v3/images/generations")
        .bearer_auth("nope")
        .json(&tiny(serde_json::json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);

    // The admin makes a limited key; its secret is shown once.
    let created: serde_json::Value = server
        .create_key(
            ROOT,
            serde_json::json!({"name": "ci", "images_per_minute": 2, "quota_images": 3}),
        )
        .await;
    let secret = created["secret"].as_str().unwrap().to_string();
    let key_id = created["id"].as_str().unwrap().to_string();
    assert!(secret.starts_with("sb-"));
    let listed: serde_json::Value = server
        .get("/v1/keys")
        .bearer_auth(ROOT)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        !listed.to_string().contains(&secret),
        "a listed key shows its secret"
    );
    // A generate-only key cannot administer keys.
    let forbidden = server
        .get("/v1/keys")
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(forbidden.status(), 403);

    let generate = |body: serde_json::Value| {
        let server = &server;
        let secret = secret.clone();
        async move {
            server
                .post("/api/v3/images/generations")
                .bearer_auth(secret)
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(generate(tiny(serde_json::json!({}))).await.status(), 200);
    assert_eq!(generate(tiny(serde_json::json!({}))).await.status(), 200);
    // Third image within the minute: images-per-minute limit.
    let limited = generate(tiny(serde_json::json!({}))).await;
    assert_eq!(limited.status(), 429);
    // Retry once the oldest image of the window leaves it: at most a minute from now.
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let body: serde_json::Value = limited.json().await.unwrap();
    assert_eq!(body["error"]["code"], "ModelAccountIpmRateLimitExceeded");

    // Usage counts this key's delivered images only.
    let usage: serde_json::Value = server
        .get("/v1/usage")
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(usage["totals"]["images"], 2, "{usage}");
    assert_eq!(usage["totals"]["tokens"], 32);
    assert_eq!(usage["data"].as_array().unwrap().len(), 2);
    // The key sees only its own jobs; the admin sees all.
    let mine: serde_json::Value = server
        .get("/v1/jobs")
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(mine["data"].as_array().unwrap().len(), 2);

    let revoked = server
        .client
        .delete(format!("{}/v1/keys/{key_id}", server.url))
        .bearer_auth(ROOT)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    assert_eq!(generate(tiny(serde_json::json!({}))).await.status(), 401);
}

#[tokio::test]
async fn a_quota_is_enforced() {
    let server = TestServer::start_with(|config| config.api_keys = vec![ROOT.into()]).await;
    let created: serde_json::Value = server
        .create_key(ROOT, serde_json::json!({"quota_images": 1}))
        .await;
    let secret = created["secret"].as_str().unwrap();
    let send = || {
        server
            .post("/api/v3/images/generations")
            .bearer_auth(secret)
            .json(&tiny(serde_json::json!({})))
            .send()
    };
    assert_eq!(send().await.unwrap().status(), 200);
    let over = send().await.unwrap();
    assert_eq!(over.status(), 429);
    // Waiting does not refill a quota: SDKs must not retry it.
    assert_eq!(over.headers()["x-should-retry"], "false");
    let body: serde_json::Value = over.json().await.unwrap();
    assert_eq!(body["error"]["code"], "QuotaExceeded");
}

#[tokio::test]
async fn listening_beyond_loopback_needs_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = crate::support::config(dir.path());
    config.listen = "0.0.0.0:0".parse().unwrap();
    let error = seedbed_server::serve::start(config)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("without an API key"), "{error}");
}
