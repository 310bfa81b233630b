//! Models served by upstream providers: a second real seedbed, and wiremock standing in for
//! Ark and an OpenAI-style API (errors, failover, timeouts, partial failures, field fidelity).

use base64::Engine as _;
use seedbed_gateway::{UpstreamConfig, UpstreamKind};
use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::{TestServer, sse_events};

fn upstream(name: &str, kind: UpstreamKind, url: &str) -> UpstreamConfig {
    UpstreamConfig::new(name, kind, url)
}

pub(crate) fn route(public: &str, upstream: &str, model: &str) -> (String, String, String) {
    (public.into(), upstream.into(), model.into())
}

fn png_b64(width: u32, height: u32) -> String {
    let mut bytes = Vec::new();
    image::RgbImage::from_pixel(width, height, image::Rgb([1, 2, 3]))
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .unwrap();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

async fn json_of(response: reqwest::Response) -> (u16, serde_json::Value) {
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn another_seedbed_serves_as_upstream_with_images_rehosted() {
    let a = TestServer::start().await;
    let a_url = a.url.clone();
    let b = TestServer::start_with(|config| {
        config.upstreams = vec![upstream("a", UpstreamKind::Seedbed, &a_url)];
        config.routes = vec![route("remote-sd", "a", "tiny-sd")];
    })
    .await;

    let (status, body) = json_of(
        b.generate(json!({"model": "remote-sd", "prompt": "a harbour", "steps": 2}))
            .await,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model"], "remote-sd");
    let url = body["data"][0]["url"].as_str().unwrap();
    assert!(url.starts_with(&b.url), "re-hosted on the gateway: {url}");
    let image = reqwest::get(url).await.unwrap();
    assert_eq!(image.status(), 200);
    assert_eq!(image.bytes().await.unwrap()[..2], [0xFF, 0xD8]);
    assert_eq!(body["usage"]["generated_images"], 1);

    let text = b
        .generate(
            json!({"model": "remote-sd", "prompt": "two boats", "steps": 2, "stream": true,
            "sequential_image_generation": "auto",
            "sequential_image_generation_options": {"max_images": 2}}),
        )
        .await
        .text()
        .await
        .unwrap();
    let names: Vec<_> = sse_events(&text)
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    assert_eq!(
        names,
        [
            Some("image_generation.partial_succeeded".into()),
            Some("image_generation.partial_succeeded".into()),
            Some("image_generation.completed".into()),
            None
        ],
        "{text}"
    );

    let jobs: serde_json::Value = b.get_json("/v1/jobs").await;
    assert_eq!(jobs["data"].as_array().unwrap().len(), 2);
    assert_eq!(jobs["data"][0]["status"], "succeeded");
    let usage: serde_json::Value = b.get_json("/v1/usage").await;
    assert_eq!(usage["totals"]["images"], 3);
    let models: serde_json::Value = b.get_json("/v1/models").await;
    let remote = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "remote-sd")
        .unwrap()
        .clone();
    assert_eq!(remote["family"], "upstream:seedbed");
}

const ARK_STREAM_OK: &str = "event: image_generation.partial_succeeded\n\
data: {\"type\":\"image_generation.partial_succeeded\",\"model\":\"seedream-4-5-251128\",\"created\":1,\"image_index\":0,\"b64_json\":\"PNG\",\"size\":\"8x4\",\"output_format\":\"png\"}\n\n\
event: image_generation.partial_failed\n\
data: {\"type\":\"image_generation.partial_failed\",\"model\":\"seedream-4-5-251128\",\"created\":1,\"image_index\":1,\"error\":{\"code\":\"OutputImageSensitiveContentDetected\",\"message\":\"filtered\"}}\n\n\
event: image_generation.completed\n\
data: {\"type\":\"image_generation.completed\",\"model\":\"seedream-4-5-251128\",\"created\":1,\"usage\":{\"generated_images\":1,\"output_tokens\":4096,\"total_tokens\":4096},\"tool_usage\":{\"web_search\":0}}\n\n\
data: [DONE]\n\n";

#[tokio::test]
async fn ark_streams_relay_every_field_and_fail_over() {
    let primary = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503).set_body_json(
            json!({"error": {"code": "ServiceUnavailable", "message": "busy", "param": "", "type": "ServiceUnavailable"}}),
        ))
        .expect(1)
        .mount(&primary)
        .await;
    let secondary = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/v3/images/generations"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(
            ARK_STREAM_OK.replace("PNG", &png_b64(8, 4)),
            "text/event-stream",
        ))
        .expect(1)
        .mount(&secondary)
        .await;
    let (p, s) = (
        format!("{}/api/v3", primary.uri()),
        format!("{}/api/v3", secondary.uri()),
    );
    let server = TestServer::start_with(|config| {
        config.upstreams = vec![
            upstream("primary", UpstreamKind::Ark, &p),
            upstream("secondary", UpstreamKind::Ark, &s),
        ];
        config.routes = vec![
            route("seedream", "primary", "seedream-4-5-251128"),
            route("seedream", "secondary", "seedream-4-5-251128"),
        ];
    })
    .await;

    let body = r#"{"model":"seedream","prompt":"two posters","stream":true,"x_future":{"b":1.50,"a":[1e3, "\u00e9"]},"size":"2K"}"#;
    let text = server
        .post("/api/v3/images/generations")
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();

    // The upstream got the client's body with only the model replaced.
    let sent = &secondary.received_requests().await.unwrap()[0];
    assert_eq!(
        String::from_utf8_lossy(&sent.body),
        r#"{"model":"seedream-4-5-251128","prompt":"two posters","stream":true,"x_future":{"b":1.50,"a":[1e3, "\u00e9"]},"size":"2K"}"#
    );

    let events: Vec<serde_json::Value> = sse_events(&text)
        .into_iter()
        .filter_map(|(_, data)| serde_json::from_str(&data).ok())
        .collect();
    assert_eq!(events.len(), 3, "{text}");
    assert_eq!(events[0]["type"], "image_generation.partial_succeeded");
    assert_eq!(events[0]["model"], "seedream", "the client's model id");
    assert_eq!(events[0]["size"], "8x4");
    assert_eq!(
        events[0]["output_format"], "png",
        "unknown event fields relayed"
    );
    assert!(events[0]["url"].as_str().unwrap().starts_with(&server.url));
    assert_eq!(
        events[1]["error"]["code"],
        "OutputImageSensitiveContentDetected"
    );
    assert_eq!(
        events[2]["usage"]["output_tokens"], 4096,
        "the upstream's usage"
    );
    assert_eq!(events[2]["tool_usage"], json!({"web_search": 0}));
    let png = reqwest::get(events[0]["url"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(png.headers()["content-type"], "image/png");

    let usage: serde_json::Value = server.get_json("/v1/usage").await;
    assert_eq!(usage["totals"]["images"], 1, "failed images are not billed");
    assert_eq!(usage["totals"]["tokens"], 4096);
}

#[tokio::test]
async fn upstream_errors_reach_the_client_with_their_status_and_code() {
    let ark = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({"error": {
            "code": "InvalidParameter.UnsupportedSize", "message": "size 9x9 is too small. Request ID: up-1",
            "param": "size", "type": "BadRequest"}})))
        .mount(&ark)
        .await;
    let base = format!("{}/api/v3", ark.uri());
    let server = TestServer::start_with(|config| {
        config.upstreams = vec![upstream("ark", UpstreamKind::Ark, &base)];
        config.routes = vec![route("seedream", "ark", "seedream-4-5-251128")];
    })
    .await;
    for stream in [false, true] {
        let response = server
            .generate(json!({"model": "seedream", "prompt": "x", "size": "9x9", "stream": stream}))
            .await;
        let request_id = response.headers()["x-client-request-id"]
            .to_str()
            .unwrap()
            .to_string();
        let (status, body) = json_of(response).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["code"], "InvalidParameter.UnsupportedSize");
        assert_eq!(body["error"]["param"], "size");
        assert_eq!(body["error"]["type"], "BadRequest");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.ends_with(&request_id), "{message}");
    }
    // A 4xx is the client's problem: no failover, one call per request.
    assert_eq!(ark.received_requests().await.unwrap().len(), 2);
}

#[tokio::test]
async fn openai_upstreams_are_translated_and_links_can_pass_through() {
    let openai = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/images/generations"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "created": 1,
            "data": [{"b64_json": png_b64(16, 16), "revised_prompt": "a red fox, detailed"},
                     {"b64_json": png_b64(16, 16), "revised_prompt": "a red fox, detailed"}]
        })))
        .mount(&openai)
        .await;
    let ark = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "model": "seedream-4-5-251128", "created": 1,
            "data": [{"url": "https://provider.example/a.jpeg?sig=1", "size": "2048x2048"}],
            "usage": {"generated_images": 1, "output_tokens": 16384, "total_tokens": 16384},
            "service_tier": "default"
        })))
        .mount(&ark)
        .await;
    let (o, a) = (
        format!("{}/v1", openai.uri()),
        format!("{}/api/v3", ark.uri()),
    );
    let server = TestServer::start_with(|config| {
        let mut passthrough = upstream("ark", UpstreamKind::Ark, &a);
        passthrough.rehost = false;
        config.upstreams = vec![upstream("openai", UpstreamKind::Openai, &o), passthrough];
        config.routes = vec![
            route("fox", "openai", "gpt-image-1"),
            route("seedream", "ark", "seedream-4-5-251128"),
        ];
    })
    .await;

    let (status, body) = json_of(
        server
            .generate(
                json!({"model": "fox", "prompt": "a red fox", "size": "1K", "seed": 3,
                "sequential_image_generation": "auto",
                "sequential_image_generation_options": {"max_images": 2}}),
            )
            .await,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let sent: serde_json::Value =
        serde_json::from_slice(&openai.received_requests().await.unwrap()[0].body).unwrap();
    assert_eq!(
        sent,
        json!({"model": "gpt-image-1", "prompt": "a red fox", "size": "1024x1024", "n": 2})
    );
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    assert_eq!(body["data"][0]["size"], "16x16");
    assert_eq!(body["data"][0]["revised_prompt"], "a red fox, detailed");
    assert_eq!(body["usage"]["generated_images"], 2);
    assert_eq!(
        body["usage"]["output_tokens"], 2,
        "Seedream's rule: 2 x 256 px / 256"
    );

    let (status, body) = json_of(
        server
            .generate(json!({"model": "seedream", "prompt": "x"}))
            .await,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["data"][0]["url"],
        "https://provider.example/a.jpeg?sig=1"
    );
    assert_eq!(body["usage"]["output_tokens"], 16384);

    // A reference image has no place in OpenAI's images/generations.
    let (status, body) = json_of(
        server
            .generate(json!({"model": "fox", "prompt": "x", "image": "https://example.com/a.png"}))
            .await,
    )
    .await;
    assert_eq!(
        (status, body["error"]["param"].clone()),
        (400, json!("image"))
    );
}

#[tokio::test]
async fn a_slow_upstream_times_out_and_the_next_one_answers() {
    let slow = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_delay(std::time::Duration::from_secs(5)))
        .mount(&slow)
        .await;
    let (s, dead) = (
        format!("{}/api/v3", slow.uri()),
        "http://127.0.0.1:9/api/v3".to_string(),
    );
    let server = TestServer::start_with(|config| {
        let mut impatient = upstream("slow", UpstreamKind::Ark, &s);
        impatient.timeout_secs = 1;
        config.upstreams = vec![impatient, upstream("dead", UpstreamKind::Ark, &dead)];
        config.routes = vec![route("m", "slow", "x"), route("m", "dead", "x")];
    })
    .await;
    let (status, body) = json_of(server.generate(json!({"model": "m", "prompt": "x"})).await).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "UpstreamUnavailable");
    let jobs: serde_json::Value = server.get_json("/v1/jobs").await;
    assert_eq!(jobs["data"][0]["status"], "failed");
}

#[tokio::test]
async fn streams_are_relayed_as_they_arrive_and_relayed_jobs_cancel() {
    use futures::StreamExt;

    let a = TestServer::start().await;
    let a_url = a.url.clone();
    let b = TestServer::start_with(|config| {
        config.upstreams = vec![upstream("a", UpstreamKind::Seedbed, &a_url)];
        config.routes = vec![route("remote-sd", "a", "tiny-sd")];
    })
    .await;
    let slow = json!({"model": "remote-sd", "prompt": "slow", "steps": 250, "stream": true,
        "sequential_image_generation": "auto",
        "sequential_image_generation_options": {"max_images": 2}});

    // The first image reaches the client while the upstream is still making the second.
    let mut body = b.generate(slow.clone()).await.bytes_stream();
    let mut seen = String::new();
    while !seen.contains("partial_succeeded") {
        let chunk = body.next().await.expect("stream ended early").unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    let upstream_jobs: serde_json::Value = a.get_json("/v1/jobs").await;
    assert_eq!(
        upstream_jobs["data"][0]["status"], "running",
        "relayed, not buffered"
    );
    while body.next().await.is_some() {}

    // A relayed job is a job: cancel it while the upstream works.
    let id = b.submit_async(slow).await;
    b.poll_job(&id, None, 400, |job| job["status"] == "running")
        .await;
    let cancelled: serde_json::Value = b
        .post(&format!("/v1/jobs/{id}/cancel"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_ne!(cancelled["status"], "succeeded");
    let job = b.wait_job(&id, None).await;
    assert_eq!(job["status"], "cancelled", "{job}");
}

#[tokio::test]
async fn a_rate_limited_upstream_falls_over_and_key_limits_apply() {
    let limited = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "30").set_body_json(
            json!({"error": {"code": "ModelAccountIpmRateLimitExceeded", "message": "slow down", "param": "", "type": "TooManyRequests"}}),
        ))
        .mount(&limited)
        .await;
    let spare = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "model": "m", "created": 1,
            "data": [{"b64_json": png_b64(8, 8), "size": "8x8"}],
            "usage": {"generated_images": 1, "output_tokens": 1, "total_tokens": 1}
        })))
        .mount(&spare)
        .await;
    let (l, s) = (
        format!("{}/api/v3", limited.uri()),
        format!("{}/api/v3", spare.uri()),
    );
    let server = TestServer::start_with(|config| {
        config.api_keys = vec!["admin".into()];
        config.upstreams = vec![
            upstream("limited", UpstreamKind::Ark, &l),
            upstream("spare", UpstreamKind::Ark, &s),
        ];
        config.routes = vec![route("m", "limited", "x"), route("m", "spare", "x")];
    })
    .await;
    let key: serde_json::Value = server
        .create_key("admin", json!({"images_per_minute": 1}))
        .await;
    let secret = key["secret"].as_str().unwrap();
    let ask = || {
        server
            .post("/api/v3/images/generations")
            .bearer_auth(secret)
            .json(&json!({"model": "m", "prompt": "x"}))
            .send()
    };
    let (status, body) = json_of(ask().await.unwrap()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(limited.received_requests().await.unwrap().len(), 1);
    let (status, body) = json_of(ask().await.unwrap()).await;
    assert_eq!(status, 429, "the key's own limit: {body}");
    assert_eq!(body["error"]["code"], "ModelAccountIpmRateLimitExceeded");
    assert_eq!(
        spare.received_requests().await.unwrap().len(),
        1,
        "refused before any call"
    );
}

/// An Ark upstream at `server` for the public model `m`, retrying quickly.
pub(crate) fn quick_ark(server: &MockServer) -> UpstreamConfig {
    let mut ark = upstream(
        "ark",
        UpstreamKind::Ark,
        &format!("{}/api/v3", server.uri()),
    );
    ark.retry_backoff_ms = 10;
    ark
}

pub(crate) fn ark_images() -> serde_json::Value {
    json!({
        "model": "m", "created": 1,
        "data": [{"b64_json": png_b64(16, 16), "size": "16x16"}],
        "usage": {"generated_images": 1, "output_tokens": 1, "total_tokens": 1}
    })
}

#[tokio::test]
async fn a_single_upstream_is_retried_after_a_503() {
    let ark = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503).set_body_json(
            json!({"error": {"code": "ServiceUnavailable", "message": "busy", "param": ""}}),
        ))
        .up_to_n_times(1)
        .mount(&ark)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(ark_images()))
        .mount(&ark)
        .await;
    let config = quick_ark(&ark);
    let server = TestServer::start_with(|c| {
        c.upstreams = vec![config];
        c.routes = vec![route("m", "ark", "x")];
    })
    .await;
    let (status, body) = json_of(server.generate(json!({"model": "m", "prompt": "x"})).await).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"][0]["size"], "16x16");
    assert_eq!(ark.received_requests().await.unwrap().len(), 2);
}

#[tokio::test]
async fn a_rate_limited_last_upstream_is_retried_and_its_retry_after_reaches_the_client() {
    let limited = |retry_after: &str| {
        ResponseTemplate::new(429)
            .insert_header("retry-after", retry_after)
            .set_body_json(json!({"error": {"code": "ModelAccountIpmRateLimitExceeded",
                "message": "slow down", "param": ""}}))
    };
    // Within the cap: waited out, tried again (twice), then the 429 goes to the client with
    // the upstream's Retry-After.
    let ark = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(limited("1"))
        .mount(&ark)
        .await;
    let config = quick_ark(&ark);
    let server = TestServer::start_with(|c| {
        c.upstreams = vec![config];
        c.routes = vec![route("m", "ark", "x")];
    })
    .await;
    let response = server.generate(json!({"model": "m", "prompt": "x"})).await;
    assert_eq!(response.headers()["retry-after"], "1");
    let (status, body) = json_of(response).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "ModelAccountIpmRateLimitExceeded");
    assert_eq!(ark.received_requests().await.unwrap().len(), 3, "2 retries");

    // Beyond the cap: not waited out here; the client gets it at once and decides.
    let ark = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(limited("7"))
        .mount(&ark)
        .await;
    let mut config = quick_ark(&ark);
    config.max_retry_after_secs = 5;
    let server = TestServer::start_with(|c| {
        c.upstreams = vec![config];
        c.routes = vec![route("m", "ark", "x")];
    })
    .await;
    for stream in [false, true] {
        let response = server
            .generate(json!({"model": "m", "prompt": "x", "stream": stream}))
            .await;
        assert_eq!(response.headers()["retry-after"], "7", "stream: {stream}");
        let (status, body) = json_of(response).await;
        assert_eq!(status, 429, "{body}");
    }
    assert_eq!(
        ark.received_requests().await.unwrap().len(),
        2,
        "no retries"
    );
}

#[tokio::test]
async fn an_upstreams_links_to_private_addresses_are_not_fetched() {
    // `localhost` is not the upstream's configured origin (127.0.0.1:port), so the link is
    // held to the public-address rule, like a client's reference image.
    let images = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_bytes(vec![0u8; 10]))
        .mount(&images)
        .await;
    let link = format!("http://localhost:{}/a.png", images.address().port());
    let ark = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "model": "m", "created": 1, "data": [{"url": link, "size": "16x16"}],
            "usage": {"generated_images": 1, "output_tokens": 1, "total_tokens": 1}
        })))
        .mount(&ark)
        .await;
    let config = quick_ark(&ark);
    let server = TestServer::start_with(|c| {
        c.upstreams = vec![config];
        c.routes = vec![route("m", "ark", "x")];
    })
    .await;
    let (status, body) = json_of(server.generate(json!({"model": "m", "prompt": "x"})).await).await;
    let message = body.to_string();
    assert!(message.contains("private or loopback"), "{status} {body}");
    assert!(body["data"][0]["url"].is_null(), "{body}");
    assert!(
        images.received_requests().await.unwrap().is_empty(),
        "never fetched"
    );
}
