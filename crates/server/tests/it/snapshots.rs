//! The JSON users see, pinned with insta (ids, times, links and secrets redacted): a sync
//! response, a stream, a job, a key, and the error envelope for the common mistakes.

use insta::assert_json_snapshot;
use serde_json::json;

use crate::support::{TestServer, sse_events, tiny};

/// Fields that differ on every run.
macro_rules! redacted {
    ($name:expr, $value:expr) => {
        insta::with_settings!({filters => vec![(r"Request ID: \w+", "Request ID: [ID]")]}, {
            assert_json_snapshot!($name, $value, {
                ".created" => "[time]",
                ".**.created" => "[time]",
                ".id" => "[id]",
                ".created_at" => "[time]",
                ".started_at" => "[time]",
                ".finished_at" => "[time]",
                ".node" => "[node]",
                ".secret" => "[secret]",
                ".**.url" => "[signed link]",
                ".**.b64_json" => "[base64]",
            });
        });
    };
}

#[tokio::test]
async fn responses_jobs_and_keys() {
    let server = TestServer::start().await;
    let body: serde_json::Value = server
        .generate(tiny(json!({"size": "64x64"})))
        .await
        .json()
        .await
        .unwrap();
    redacted!("sync_response", body);

    let text = server
        .generate(tiny(json!({"stream": true, "size": "64x64"})))
        .await
        .text()
        .await
        .unwrap();
    let events: Vec<serde_json::Value> = sse_events(&text)
        .into_iter()
        .map(|(event, data)| json!({"event": event, "data": serde_json::from_str::<serde_json::Value>(&data).unwrap_or(json!(data))}))
        .collect();
    redacted!("stream", events);

    let id = server
        .submit_async(tiny(json!({"size": "64x64", "seed": 11})))
        .await;
    let job = server.wait_job(&id, None).await;
    redacted!("job", job);

    let key: serde_json::Value = server
        .post("/v1/keys")
        .json(&json!({"name": "ci", "images_per_minute": 10}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    redacted!("created_key", key);
}

#[tokio::test]
async fn error_envelopes() {
    let server = TestServer::start().await;
    let cases = [
        ("bad_size", tiny(json!({"size": "3x3"}))),
        ("unknown_model", tiny(json!({"model": "nope"}))),
        ("misspelt_model", tiny(json!({"model": "tiny-sdd"}))),
        ("missing_prompt", json!({"model": "tiny-sd"})),
        ("bad_type", tiny(json!({"seed": "one"}))),
        (
            "bad_data_uri",
            tiny(json!({"image": "data:image/png;base64,!!"})),
        ),
    ];
    for (name, body) in cases {
        let response = server.generate(body).await;
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().await.unwrap();
        redacted!(name, json!({"status": status, "body": body}));
    }
    let response = server.get("/v1/jobs/job_missing").send().await.unwrap();
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.unwrap();
    redacted!("missing_job", json!({"status": status, "body": body}));
    let response = server
        .get("/api/v3/images/generations")
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let allow = response.headers()["allow"].to_str().unwrap().to_string();
    let body: serde_json::Value = response.json().await.unwrap();
    redacted!(
        "wrong_method",
        json!({"status": status, "allow": allow, "body": body})
    );
}
