//! Bounded work per request: header and body timeouts against slow clients, the in-flight
//! request pool, the caps on open event streams, SSE keep-alives, and a job list that does not
//! inline every image.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{TestServer, sse_events, tiny};

const ROOT: &str = "root-key-for-limits";

/// Read until the server closes the connection; the bytes, and how long that took. A reset
/// counts as closed.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut received = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the server kept the connection open for {within:?}; got {:?}",
        String::from_utf8_lossy(&received)
    );
    (received, started.elapsed())
}

#[tokio::test]
async fn slowloris_connections_are_closed_after_the_header_timeout() {
    let server = TestServer::start_with(|config| {
        config.http.header_timeout = Duration::from_millis(500);
    })
    .await;
    let addr = server.server.as_ref().unwrap().addr;

    // Half a header, then nothing more.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"POST /api/v3/images/generations HTTP/1.1\r\nHost: seedbed\r\nContent-")
        .await
        .unwrap();
    // Nothing at all.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    for stream in [&mut slow, &mut silent] {
        let (_, took) = read_until_closed(stream, Duration::from_secs(10)).await;
        assert!(took < Duration::from_secs(5), "closed only after {took:?}");
    }

    // A keep-alive connection left idle after a whole request is closed too.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: seedbed\r\n\r\n")
        .await
        .unwrap();
    let (received, _) = read_until_closed(&mut idle, Duration::from_secs(10)).await;
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");

    // Ordinary requests are unaffected.
    assert_eq!(server.get("/health").send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn a_body_that_arrives_too_slowly_gets_408_in_the_error_envelope() {
    let server = TestServer::start_with(|config| {
        config.http.body_timeout = Duration::from_millis(500);
    })
    .await;
    let addr = server.server.as_ref().unwrap().addr;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            b"POST /api/v3/images/generations HTTP/1.1\r\nHost: seedbed\r\n\
              Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"model\":",
        )
        .await
        .unwrap();
    // A byte now and then: each read gets something, but the whole never arrives.
    let trickle = async {
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if stream.write_all(b" ").await.is_err() {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_millis(1500), trickle)
        .await
        .ok();
    let (received, _) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    let lower = text.to_ascii_lowercase();
    assert!(lower.contains("x-client-request-id:"), "{text}");
    assert!(lower.contains("connection: close"), "{text}");
    let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
    let envelope: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(envelope["error"]["code"], "RequestTimeout", "{envelope}");
    assert_eq!(envelope["error"]["type"], "RequestTimeout", "{envelope}");
    assert!(
        envelope["error"]["message"]
            .as_str()
            .unwrap()
            .contains("did not arrive within 0.5 seconds"),
        "{envelope}"
    );

    // A body that does arrive in time is fine.
    let response = server.generate(tiny(json!({}))).await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn a_full_server_answers_429_at_once_and_open_streams_do_not_count() {
    let server = TestServer::start_with(|config| config.http.max_in_flight = 1).await;
    // Slots come back: one at a time, any number of requests go through.
    for _ in 0..3 {
        assert_eq!(server.get("/v1/jobs").send().await.unwrap().status(), 200);
    }
    // A long job, and an event stream on it that stays open without holding the slot.
    let long = server.submit_async(tiny(json!({"steps": 500}))).await;
    let stream = server
        .get(&format!("/v1/jobs/{long}/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    assert_eq!(server.get("/v1/jobs").send().await.unwrap().status(), 200);

    // A generation waiting for its image (queued behind the long job) holds the only slot.
    let waiting = {
        let request = server
            .post("/api/v3/images/generations")
            .json(&tiny(json!({})));
        tokio::spawn(async move { request.send().await })
    };
    // Nothing else is sent meanwhile: a request racing it for the slot could take it first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let refused = server.get("/v1/jobs").send().await.unwrap();
    assert!(!waiting.is_finished(), "{:?}", waiting.await);
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_eq!(refused.headers()["x-should-retry"], "true");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "ServerOverloaded", "{body}");
    assert_eq!(body["error"]["type"], "TooManyRequests", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Request ID: "),
        "{body}"
    );
    // Health checks keep a pool of their own.
    assert_eq!(server.get("/health").send().await.unwrap().status(), 200);
    waiting.abort();
    drop(stream);
}

#[tokio::test]
async fn event_streams_are_capped_per_key_and_overall_and_slots_come_back() {
    let server = TestServer::start_with(|config| {
        config.api_keys = vec![ROOT.into()];
        config.http.streams_per_key = 2;
        config.http.streams_total = 3;
        config.http.sse_keep_alive = Duration::from_millis(100);
    })
    .await;
    let a = server.create_key(ROOT, json!({"name": "a"})).await["secret"]
        .as_str()
        .unwrap()
        .to_string();
    let b = server.create_key(ROOT, json!({"name": "b"})).await["secret"]
        .as_str()
        .unwrap()
        .to_string();
    let submit = |key: String| {
        let request = server
            .post("/api/v3/images/generations")
            .bearer_auth(key)
            .header("Prefer", "respond-async")
            .json(&tiny(json!({"steps": 500})));
        async move {
            let job: serde_json::Value = request.send().await.unwrap().json().await.unwrap();
            job["id"].as_str().unwrap().to_string()
        }
    };
    let job_a = submit(a.clone()).await;
    let job_b = submit(b.clone()).await;
    let events = |key: &str, job: &str| {
        server
            .get(&format!("/v1/jobs/{job}/events"))
            .bearer_auth(key)
            .send()
    };

    let first = events(&a, &job_a).await.unwrap();
    let second = events(&a, &job_a).await.unwrap();
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (200, 200)
    );
    let third = events(&a, &job_a).await.unwrap();
    assert_eq!(third.status(), 429);
    assert!(third.headers().contains_key("retry-after"));
    let body: serde_json::Value = third.json().await.unwrap();
    assert_eq!(
        body["error"]["code"], "ModelAccountIpmRateLimitExceeded",
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("This API key has 2 event streams open"),
        "{body}"
    );

    // A streaming generation takes a slot too, and a refused one leaves no job behind.
    let jobs_before = server
        .get("/v1/jobs")
        .bearer_auth(&a)
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap()["data"]
        .as_array()
        .unwrap()
        .len();
    let streamed = server
        .post("/api/v3/images/generations")
        .bearer_auth(&a)
        .json(&tiny(json!({"stream": true})))
        .send()
        .await
        .unwrap();
    assert_eq!(streamed.status(), 429);
    let jobs_after = server
        .get("/v1/jobs")
        .bearer_auth(&a)
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap()["data"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(jobs_before, jobs_after);

    // Another key has its own share, up to the overall cap.
    let other = events(&b, &job_b).await.unwrap();
    assert_eq!(other.status(), 200);
    let over = events(&b, &job_b).await.unwrap();
    assert_eq!(over.status(), 429);
    let body: serde_json::Value = over.json().await.unwrap();
    assert_eq!(body["error"]["code"], "ServerOverloaded", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("The server has 3 event streams open"),
        "{body}"
    );

    // A client that goes away gives its slot back.
    drop(first);
    let mut reopened = None;
    for _ in 0..100 {
        let response = events(&a, &job_a).await.unwrap();
        if response.status() == 200 {
            reopened = Some(response);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        reopened.is_some(),
        "the dropped stream's slot never came back"
    );
    drop((second, other));
}

#[tokio::test]
async fn event_streams_send_keep_alive_comments_and_turn_off_proxy_buffering() {
    let server = TestServer::start_with(|config| {
        config.http.sse_keep_alive = Duration::from_millis(50);
    })
    .await;
    // A job's event stream, idle while the job runs.
    let long = server.submit_async(tiny(json!({"steps": 500}))).await;
    let response = server
        .get(&format!("/v1/jobs/{long}/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-accel-buffering"], "no");
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.bytes_stream();
    let mut text = String::new();
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = body.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            if text.contains(": keep-alive\n\n") {
                return;
            }
        }
    })
    .await;
    assert!(found.is_ok(), "no keep-alive comment in {text:?}");
    drop(body);
    server
        .post(&format!("/v1/jobs/{long}/cancel"))
        .send()
        .await
        .unwrap();

    // Seedream's generation stream: comments between the events (as often as can be, so
    // some fall between two images), the framing intact.
    let server = TestServer::start_with(|config| {
        config.http.sse_keep_alive = Duration::from_millis(1);
    })
    .await;
    let response = server
        .generate(tiny(json!({
            "stream": true,
            "steps": 20,
            "sequential_image_generation": "auto",
            "sequential_image_generation_options": {"max_images": 2},
        })))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-accel-buffering"], "no");
    let text = response.text().await.unwrap();
    assert!(text.contains(": keep-alive\n\n"), "{text}");
    let events: Vec<_> = sse_events(&text)
        .into_iter()
        .filter(|(_, data)| !data.is_empty())
        .collect();
    let names: Vec<_> = events.iter().map(|(name, _)| name.as_deref()).collect();
    assert_eq!(
        names,
        [
            Some("image_generation.partial_succeeded"),
            Some("image_generation.partial_succeeded"),
            Some("image_generation.completed"),
            None
        ],
        "{text}"
    );
    assert_eq!(events[3].1, "[DONE]");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
}

#[tokio::test]
async fn the_job_list_links_images_instead_of_inlining_them() {
    let server = TestServer::start().await;
    let response = server
        .generate(tiny(json!({"response_format": "b64_json"})))
        .await;
    assert_eq!(response.status(), 200);
    let id = response.headers()["x-seedbed-job-id"]
        .to_str()
        .unwrap()
        .to_string();

    let list = server.get_json("/v1/jobs").await;
    let listed = &list["data"][0];
    assert_eq!(listed["id"], id.as_str());
    let image = &listed["result"]["data"][0];
    assert!(image.get("b64_json").is_none(), "{image}");
    let url = image["url"].as_str().expect("a link in the list");
    let fetched = server.client.get(url).send().await.unwrap();
    assert_eq!(fetched.status(), 200);

    // The job itself still answers as it was asked.
    let job = server.job(&id, None).await;
    assert!(job["result"]["data"][0]["b64_json"].is_string(), "{job}");
}
