//! Error, retry and stream paths against a mocked upstream (wiremock), where a real server
//! cannot be made to misbehave on cue.

use std::time::{Duration, Instant};

use futures::StreamExt;
use seedbed_client::{Client, ClientError};
use seedbed_types::{GenerationRequest, JobEvent, StreamEventType};
use wiremock::matchers::{header, header_exists, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn client(server: &MockServer) -> Client {
    Client::builder(server.uri())
        .api_key("sk-test")
        .backoff(Duration::from_millis(10))
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

fn request() -> GenerationRequest {
    let mut request = GenerationRequest {
        model: Some("seedream-4-5-251128".into()),
        prompt: Some("a cat".into()),
        ..Default::default()
    };
    request
        .extra
        .insert("future_field".into(), serde_json::json!({"kept": true}));
    request
}

const GENERATIONS: &str = "/api/v3/images/generations";

fn images_body() -> serde_json::Value {
    serde_json::json!({
        "model": "seedream-4-5-251128", "created": 1757321139,
        "data": [{"url": "https://example.com/a.jpeg", "size": "2048x2048"}],
        "usage": {"generated_images": 1, "output_tokens": 16384, "total_tokens": 16384}
    })
}

fn envelope(code: &str, param: &str) -> serde_json::Value {
    serde_json::json!({"error": {"code": code, "message": format!("bad {param}. Request ID: 2026"), "param": param, "type": "BadRequest"}})
}

#[tokio::test]
async fn sends_the_sdk_headers_and_every_field() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(GENERATIONS))
        .and(header("authorization", "Bearer sk-test"))
        .and(header("content-type", "application/json"))
        .and(header_exists("x-client-request-id"))
        .respond_with(ResponseTemplate::new(200).set_body_json(images_body()))
        .expect(1)
        .mount(&server)
        .await;
    let generated = client(&server).generate(&request()).await.unwrap();
    assert_eq!(generated.response.data.len(), 1);
    let received = &server.received_requests().await.unwrap()[0];
    let id = received
        .headers
        .get("x-client-request-id")
        .unwrap()
        .to_str()
        .unwrap();
    assert_eq!(id.len(), 34, "{id}");
    assert_eq!(
        generated.request_id, id,
        "the id sent, when the server echoes none"
    );
    let body: serde_json::Value = serde_json::from_slice(&received.body).unwrap();
    assert_eq!(body["future_field"], serde_json::json!({"kept": true}));
    assert_eq!(body["stream"], false);
}

#[tokio::test]
async fn parses_a_seedream_stream() {
    let server = MockServer::start().await;
    let stream = concat!(
        "event: image_generation.partial_succeeded\n",
        "data: {\"type\":\"image_generation.partial_succeeded\",\"model\":\"m\",\"created\":1,\"image_index\":0,\"url\":\"https://x/0.jpeg\",\"size\":\"1024x1024\"}\n\n",
        ": keep-alive\n\n",
        "event: image_generation.partial_image\n",
        "data: {\"type\":\"image_generation.partial_image\",\"model\":\"m\",\"created\":1,\"partial_image_index\":0}\n\n",
        "event: image_generation.partial_failed\r\n",
        "data: {\"type\":\"image_generation.partial_failed\",\"model\":\"m\",\"created\":1,\"image_index\":1,\"error\":{\"code\":\"OutputImageSensitiveContentDetected\",\"message\":\"no\"}}\r\n\r\n",
        "event: image_generation.completed\n",
        "data: {\"type\":\"image_generation.completed\",\"model\":\"m\",\"created\":1,\"usage\":{\"generated_images\":1,\"output_tokens\":4096,\"total_tokens\":4096}}\n\n",
        "data: [DONE]\n\n",
    );
    Mock::given(method("POST"))
        .and(path(GENERATIONS))
        .respond_with(ResponseTemplate::new(200).set_body_raw(stream, "text/event-stream"))
        .mount(&server)
        .await;
    let events: Vec<_> = client(&server)
        .generate_stream(&request())
        .await
        .unwrap()
        .map(|event| event.unwrap())
        .collect()
        .await;
    let kinds: Vec<_> = events.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            StreamEventType::PartialSucceeded,
            StreamEventType::PartialFailed,
            StreamEventType::Completed
        ]
    );
    assert_eq!(events[2].usage.unwrap().generated_images, 1);
}

#[tokio::test]
async fn a_stream_cut_before_completed_is_an_error() {
    let server = MockServer::start().await;
    let cut = "event: image_generation.partial_succeeded\ndata: {\"type\":\"image_generation.partial_succeeded\",\"model\":\"m\",\"created\":1,\"image_index\":0,\"url\":\"u\",\"size\":\"1x1\"}\n\n";
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(cut, "text/event-stream"))
        .mount(&server)
        .await;
    let items: Vec<_> = client(&server)
        .generate_stream(&request())
        .await
        .unwrap()
        .collect()
        .await;
    assert_eq!(items.len(), 2);
    assert!(
        matches!(items[1], Err(ClientError::Stream { .. })),
        "{items:?}"
    );
}

#[tokio::test]
async fn the_error_envelope_becomes_api_with_the_echoed_request_id() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(400)
                .insert_header("x-client-request-id", "20261125000000echoedEchoedEchoed12")
                .set_body_json(envelope("InvalidParameter", "size")),
        )
        .expect(1)
        .mount(&server)
        .await;
    let error = client(&server).generate(&request()).await.unwrap_err();
    match &error {
        ClientError::Api {
            status,
            code,
            param,
            request_id,
            ..
        } => {
            assert_eq!(*status, 400);
            assert_eq!(code, "InvalidParameter");
            assert_eq!(param.as_deref(), Some("size"));
            assert_eq!(
                request_id.as_deref(),
                Some("20261125000000echoedEchoedEchoed12")
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(!error.is_retryable());
}

#[tokio::test]
async fn a_plain_text_error_is_still_an_api_error() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(502).set_body_string("Bad Gateway from nginx"))
        .mount(&server)
        .await;
    let error = Client::builder(server.uri())
        .max_retries(0)
        .build()
        .unwrap()
        .info()
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(502));
    assert_eq!(error.code(), Some("HttpError"));
    assert!(
        error.to_string().contains("Bad Gateway from nginx"),
        "{error}"
    );
}

#[tokio::test]
async fn honours_retry_after_on_429() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("retry-after", "1")
                .set_body_json(envelope("ServerOverloaded", "")),
        )
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(images_body()))
        .mount(&server)
        .await;
    let started = Instant::now();
    client(&server).generate(&request()).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    let received = server.received_requests().await.unwrap();
    assert_eq!(received.len(), 2);
    let ids: Vec<_> = received
        .iter()
        .map(|r| r.headers.get("x-client-request-id").unwrap().clone())
        .collect();
    assert_eq!(ids[0], ids[1], "one request id across retries");
}

#[tokio::test]
async fn does_not_retry_when_the_server_says_so() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(500)
                .insert_header("x-should-retry", "false")
                .set_body_json(envelope("InternalServiceError", "")),
        )
        .expect(1)
        .mount(&server)
        .await;
    let error = client(&server).generate(&request()).await.unwrap_err();
    assert_eq!(error.status(), Some(500));
}

/// A used-up quota does not refill by waiting: one request, even if an older server's hint
/// says to retry.
#[tokio::test]
async fn a_used_up_quota_is_never_retried() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("x-should-retry", "true")
                .insert_header("retry-after", "0")
                .set_body_json(envelope("QuotaExceeded", "")),
        )
        .expect(1)
        .mount(&server)
        .await;
    let error = client(&server).generate(&request()).await.unwrap_err();
    assert_eq!(error.code(), Some("QuotaExceeded"));
    assert!(!error.is_retryable());
}

#[tokio::test]
async fn gives_up_after_max_retries_with_the_last_error() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503).set_body_json(envelope("ServiceUnavailable", "")))
        .expect(3)
        .mount(&server)
        .await;
    let error = client(&server).generate(&request()).await.unwrap_err();
    assert_eq!(error.code(), Some("ServiceUnavailable"));
}

#[tokio::test]
async fn a_slow_server_times_out() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(images_body())
                .set_delay(Duration::from_secs(3)),
        )
        .mount(&server)
        .await;
    let client = Client::builder(server.uri())
        .timeout(Duration::from_millis(200))
        .max_retries(1)
        .backoff(Duration::from_millis(10))
        .build()
        .unwrap();
    let error = client.generate(&request()).await.unwrap_err();
    assert!(matches!(error, ClientError::Timeout { .. }), "{error:?}");
    assert!(error.request_id().is_some());
    assert_eq!(server.received_requests().await.unwrap().len(), 2);
}

#[tokio::test]
async fn following_a_job_resumes_after_a_dropped_connection() {
    let server = MockServer::start().await;
    let first = "id: 1\nevent: queued\ndata: {\"type\":\"queued\",\"position\":0}\n\nid: 2\nevent: started\ndata: {\"type\":\"started\",\"attempt\":1}\n\n";
    let rest = "id: 3\nevent: progress\ndata: {\"type\":\"progress\",\"image\":0,\"images\":1,\"step\":1,\"steps\":1}\n\nid: 4\nevent: failed\ndata: {\"type\":\"failed\",\"code\":\"X\",\"message\":\"y\"}\n\n";
    Mock::given(method("GET"))
        .and(path("/v1/jobs/job_1/events"))
        .and(header("last-event-id", "2"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(rest, "text/event-stream"))
        .with_priority(1)
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1/jobs/job_1/events"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(first, "text/event-stream"))
        .with_priority(2)
        .expect(1)
        .mount(&server)
        .await;
    let items: Vec<_> = client(&server)
        .follow_job("job_1")
        .map(|item| item.unwrap())
        .collect()
        .await;
    let seqs: Vec<_> = items.iter().map(|i| i.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
    assert!(matches!(items[3].event, JobEvent::Failed { .. }));
}

#[tokio::test]
async fn an_unhealthy_server_still_answers_health() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/health"))
        .respond_with(ResponseTemplate::new(503).set_body_json(
            serde_json::json!({"status": "unavailable", "database": false, "device": true}),
        ))
        .mount(&server)
        .await;
    let health = client(&server).health().await.unwrap();
    assert_eq!(health.status, "unavailable");
    assert!(!health.database);
}

#[tokio::test]
async fn an_api_base_with_a_path_is_used_as_is() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/byteplus/v3/images/generations"))
        .respond_with(ResponseTemplate::new(200).set_body_json(images_body()))
        .expect(1)
        .mount(&server)
        .await;
    let client = Client::builder(format!("{}/byteplus/v3", server.uri()))
        .build()
        .unwrap();
    client.generate(&request()).await.unwrap();
}

/// The `Authorization` values a mock server received, in order.
async fn authorizations(server: &MockServer) -> Vec<String> {
    server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .flat_map(|r| r.headers.get_all("authorization").iter())
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

async fn serve_png(server: &MockServer) {
    Mock::given(method("GET"))
        .and(path("/img.png"))
        .respond_with(ResponseTemplate::new(200).set_body_bytes(b"png".to_vec()))
        .mount(server)
        .await;
}

/// Two servers where the second's port begins with the first's digits (`:5000`, `:50001`), so
/// the second's URLs start, as text, with the first's.
async fn servers_with_prefixed_ports() -> (MockServer, MockServer) {
    let seed = std::process::id() as usize;
    for i in 0..500 {
        let port = 2000 + (seed + i * 7919) % 4500;
        let Ok(home) = std::net::TcpListener::bind(("127.0.0.1", port as u16)) else {
            continue;
        };
        let Ok(lookalike) = std::net::TcpListener::bind(("127.0.0.1", (port * 10 + 1) as u16))
        else {
            continue;
        };
        return (
            MockServer::builder().listener(home).start().await,
            MockServer::builder().listener(lookalike).start().await,
        );
    }
    panic!("no free pair of ports like 5000 and 50001");
}

#[tokio::test]
async fn downloads_send_the_key_only_to_the_configured_origin() {
    let home = MockServer::start().await;
    let other = MockServer::start().await;
    serve_png(&home).await;
    serve_png(&other).await;
    let client = client(&home);
    client
        .download(&format!("{}/img.png", home.uri()))
        .await
        .unwrap();
    // Same host, another port: another origin.
    let bytes = client
        .download(&format!("{}/img.png", other.uri()))
        .await
        .unwrap();
    assert_eq!(&bytes[..], b"png");
    assert_eq!(authorizations(&home).await, ["Bearer sk-test"]);
    assert_eq!(authorizations(&other).await, Vec::<String>::new());
}

#[tokio::test]
async fn a_link_that_merely_starts_with_the_base_gets_no_key() {
    let (home, lookalike) = servers_with_prefixed_ports().await;
    serve_png(&lookalike).await;
    let client = client(&home);
    let base = home.uri();
    let port = lookalike.address().port();
    // `http://127.0.0.1:5000` + `1/img.png`: the look-alike's port.
    let longer_port = format!("{base}1/img.png");
    assert_eq!(longer_port, format!("http://127.0.0.1:{port}/img.png"));
    // `http://127.0.0.1:5000@127.0.0.1:50001/img.png`: the base as userinfo.
    let userinfo = format!("{base}@127.0.0.1:{port}/img.png");
    for url in [longer_port, userinfo] {
        assert!(url.starts_with(&base));
        client.download(&url).await.unwrap();
    }
    let received = authorizations(&lookalike).await;
    assert!(
        !received.iter().any(|v| v.contains("sk-test")),
        "the key leaked: {received:?}"
    );
    assert!(home.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_redirect_to_another_origin_drops_the_key() {
    let home = MockServer::start().await;
    let other = MockServer::start().await;
    serve_png(&home).await;
    serve_png(&other).await;
    Mock::given(method("GET"))
        .and(path("/away.png"))
        .respond_with(
            ResponseTemplate::new(302)
                .insert_header("location", format!("{}/img.png", other.uri()).as_str()),
        )
        .mount(&home)
        .await;
    Mock::given(method("GET"))
        .and(path("/here.png"))
        .respond_with(ResponseTemplate::new(302).insert_header("location", "/img.png"))
        .mount(&home)
        .await;
    let client = client(&home);
    client
        .download(&format!("{}/away.png", home.uri()))
        .await
        .unwrap();
    // reqwest strips `Authorization` on a cross-origin redirect (checked for the locked version).
    assert_eq!(authorizations(&other).await, Vec::<String>::new());
    // Within the origin the key follows the redirect.
    client
        .download(&format!("{}/here.png", home.uri()))
        .await
        .unwrap();
    assert_eq!(authorizations(&home).await, ["Bearer sk-test"; 3]);
}

#[tokio::test]
async fn a_redirect_that_only_changes_the_scheme_is_refused() {
    let home = MockServer::start().await;
    let secure = home.uri().replace("http://", "https://");
    Mock::given(method("GET"))
        .and(path("/img.png"))
        .respond_with(
            ResponseTemplate::new(302)
                .insert_header("location", format!("{secure}/img.png").as_str()),
        )
        .mount(&home)
        .await;
    let error = client(&home)
        .download(&format!("{}/img.png", home.uri()))
        .await
        .unwrap_err();
    // Same host and port: reqwest would keep the header, so the client refuses, at once.
    assert!(matches!(error, ClientError::Decode { .. }), "{error:?}");
    assert!(error.to_string().contains("refused a redirect"), "{error}");
    assert_eq!(home.received_requests().await.unwrap().len(), 1);
}
