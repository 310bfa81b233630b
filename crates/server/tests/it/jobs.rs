use std::time::Duration;

use crate::support::{TestServer, tiny};

#[tokio::test]
async fn respond_async_returns_the_job_which_can_be_polled_and_replayed() {
    let server = TestServer::start().await;
    let response = server
        .post("/api/v3/images/generations")
        .header("Prefer", "respond-async")
        .json(&tiny(serde_json::json!({"seed": 3})))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let job: serde_json::Value = response.json().await.unwrap();
    let id = job["id"].as_str().unwrap().to_string();
    assert!(matches!(
        job["status"].as_str(),
        Some("queued" | "running" | "succeeded")
    ));
    let done = server.wait_job(&id, None).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["queue_position"], serde_json::Value::Null);
    assert_eq!(done["result"]["data"][0]["size"], "64x64");
    assert_eq!(done["result"]["usage"]["generated_images"], 1);
    assert_eq!(done["progress"]["step"], 2);

    assert_eq!(
        server.event_names(&id, 0).await,
        [
            "queued",
            "started",
            "progress",
            "progress",
            "image",
            "completed"
        ]
    );
    // Resume after the image event: only what follows it.
    assert_eq!(server.event_names(&id, 5).await, ["completed"]);

    let list: serde_json::Value = server.get_json("/v1/jobs").await;
    assert_eq!(list["data"][0]["id"], id.as_str());
    let missing = server.get("/v1/jobs/job_nope").send().await.unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn queued_jobs_cancel_at_once_and_running_ones_within_a_step() {
    let server = TestServer::start().await;
    let long = server
        .submit_async(tiny(serde_json::json!({"steps": 500})))
        .await;
    let queued = server.submit_async(tiny(serde_json::json!({}))).await;
    let job: serde_json::Value = server
        .post(&format!("/v1/jobs/{queued}/cancel"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(job["status"], "cancelled", "{job}");
    // Wait until the long job is running, then cancel it.
    server
        .poll_job(&long, None, 100, |job| job["progress"].is_object())
        .await;
    server
        .post(&format!("/v1/jobs/{long}/cancel"))
        .send()
        .await
        .unwrap();
    let job = server.wait_job(&long, None).await;
    assert_eq!(job["status"], "cancelled", "{job}");
    assert!(job["progress"]["step"].as_u64().unwrap() < 500);
}

#[tokio::test]
async fn a_client_that_disconnects_does_not_lose_its_images() {
    let server = TestServer::start().await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let result = impatient
        .post(format!("{}/api/v3/images/generations", server.url))
        .json(&tiny(serde_json::json!({"steps": 120})))
        .send()
        .await;
    assert!(result.is_err(), "the request should have timed out");
    let list: serde_json::Value = server.get_json("/v1/jobs").await;
    let id = list["data"][0]["id"].as_str().unwrap().to_string();
    let job = server.wait_job(&id, None).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let url = job["result"]["data"][0]["url"].as_str().unwrap();
    assert_eq!(server.client.get(url).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn a_full_queue_answers_429_with_retry_after() {
    let server = TestServer::start_with(|config| config.jobs.queue_size = 1).await;
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let response = server
            .post("/api/v3/images/generations")
            .header("Prefer", "respond-async")
            .json(&tiny(serde_json::json!({"steps": 300})))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        if status == 429 {
            assert!(response.headers().contains_key("retry-after"));
            let body: serde_json::Value = response.json().await.unwrap();
            assert_eq!(body["error"]["code"], "ServerOverloaded");
        }
        statuses.push(status);
    }
    assert_eq!(statuses[0], 202);
    assert!(statuses.contains(&429), "{statuses:?}");
}

#[tokio::test]
async fn operations_endpoints() {
    let server = TestServer::start().await;
    let health = server.get("/health").send().await.unwrap();
    assert_eq!(health.status(), 200);
    let info: serde_json::Value = server.get_json("/info").await;
    assert_eq!(info["name"], "seedbed");
    assert_eq!(info["limits"]["queue_size"], 64);
    let models: serde_json::Value = server.get_json("/v1/models").await;
    let ids: Vec<_> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["tiny-sd", "tiny-sdxl", "seedream-4-5-251128"]);
    server.generate(tiny(serde_json::json!({}))).await;
    let metrics = server
        .get("/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "seedbed_requests_total",
        "seedbed_images_total",
        "seedbed_queue_depth",
        "seedbed_request_seconds",
        "seedbed_job_seconds",
        "seedbed_tokens_total",
        "stage=\"text_encode\"",
        "stage=\"denoise\"",
        "stage=\"vae_decode\"",
        "stage=\"output_encode\"",
        "stage=\"model_load\"",
    ] {
        assert!(metrics.contains(name), "{name} missing from\n{metrics}");
    }
    let openapi: serde_json::Value = server.get_json("/openapi.json").await;
    assert_eq!(openapi, seedbed_server::openapi::document());
    let unknown = server.get("/nope").send().await.unwrap();
    assert_eq!(unknown.status(), 404);
    assert!(unknown.headers().contains_key("x-client-request-id"));
}

/// `"preview": true` puts a small JPEG of the latents on progress events (here every step of
/// two); without it the events are as before. The job view keeps the resolved settings.
#[tokio::test]
async fn progress_events_carry_previews_only_when_asked() {
    use base64::Engine as _;
    let server = TestServer::start().await;
    let progress = |id: String| {
        let server = &server;
        async move {
            server.wait_job(&id, None).await;
            let events = server.job_events(&id).await.into_iter();
            events
                .filter(|(name, _)| name == "progress")
                .map(|(_, data)| data)
                .collect::<Vec<_>>()
        }
    };

    let asked = server
        .submit_async(tiny(serde_json::json!({"seed": 5, "preview": true})))
        .await;
    let events = progress(asked.clone()).await;
    assert_eq!(events.len(), 2, "{events:?}");
    for event in &events {
        let preview = &event["preview"];
        assert_eq!(preview["format"], "jpeg", "{event}");
        // The tiny model's 64x64 image has 8x8 latents: one preview pixel each.
        assert_eq!(
            (preview["width"].as_u64(), preview["height"].as_u64()),
            (Some(8), Some(8))
        );
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(preview["b64_json"].as_str().unwrap())
            .unwrap();
        let picture =
            image::load_from_memory_with_format(&bytes, image::ImageFormat::Jpeg).unwrap();
        assert_eq!((picture.width(), picture.height()), (8, 8));
    }
    let job = server.job(&asked, None).await;
    assert_eq!(
        job["settings"],
        serde_json::json!({"size": "64x64", "seed": 5, "steps": 2, "guidance_scale": 7.5, "images": 1}),
        "{job}"
    );

    let plain = server
        .submit_async(tiny(serde_json::json!({"seed": 5})))
        .await;
    let events = progress(plain).await;
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(
        events.iter().all(|event| event.get("preview").is_none()),
        "{events:?}"
    );
}
