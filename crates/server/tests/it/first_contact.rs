//! What a person meets first: the page at `/`, a wrong method, a body that is not JSON, a
//! misspelt field, and times that read the same (Unix seconds) in every answer.

use serde_json::{Value, json};

use crate::support::{TestServer, sse_events, tiny};

#[tokio::test]
async fn the_root_is_a_page_that_says_where_to_go() {
    let server = TestServer::start().await;
    let response = server.get("/").send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let page = response.text().await.unwrap();
    assert!(page.contains("<title>seedbed</title>"), "{page}");
    assert!(page.contains(env!("CARGO_PKG_VERSION")), "{page}");
    for link in ["/openapi.json", "/health", "/api/v3/images/generations"] {
        assert!(page.contains(&format!("href=\"{link}\"")), "{link}: {page}");
    }
    // The playground's own files come from the binary, with a policy that keeps the page
    // to its own origin.
    assert!(
        response_csp(&server, "/")
            .await
            .contains("default-src 'self'"),
        "the page has a content security policy"
    );
    for (asset, media_type) in [("app.js", "text/javascript"), ("style.css", "text/css")] {
        assert!(
            page.contains(&format!("/assets/{asset}")),
            "{asset}: {page}"
        );
        let response = server
            .get(&format!("/assets/{asset}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{asset}");
        let served = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(served.starts_with(media_type), "{asset}: {served}");
        assert!(!response.text().await.unwrap().is_empty(), "{asset}");
    }
    let missing = server.get("/assets/app.js.map").send().await.unwrap();
    assert_eq!(missing.status(), 404);
}

async fn response_csp(server: &TestServer, path: &str) -> String {
    let response = server.get(path).send().await.unwrap();
    response.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn a_wrong_method_is_a_json_405_naming_the_right_one() {
    let server = TestServer::start().await;
    for path in ["/api/v3/images/generations", "/v1/images/generations"] {
        let response = server.get(path).send().await.unwrap();
        assert_eq!(response.status(), 405, "{path}");
        assert_eq!(response.headers()["allow"], "POST", "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "MethodNotAllowed", "{body}");
        assert_eq!(body["error"]["type"], "MethodNotAllowed", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("This endpoint does not answer GET"),
            "{message}"
        );
    }
    let response = server
        .client
        .delete(format!("{}/v1/jobs", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "GET,HEAD");
}

#[tokio::test]
async fn a_body_that_is_not_json_says_so() {
    let server = TestServer::start().await;
    for body in [
        r#"{"model": "tiny-sd", "prompt": "a fox",}"#,
        r#"{"model": "#,
    ] {
        let response = server
            .post("/api/v3/images/generations")
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "InvalidParameter");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("The request body is not valid JSON: "),
            "{message}"
        );
        assert!(message.contains("line 1 column"), "{message}");
    }
}

#[tokio::test]
async fn unknown_fields_of_a_local_request_are_named_in_warnings() {
    let server = TestServer::start().await;
    // `stepz` is a typo; `user` and `quality` are OpenAI's, `tools` Seedream's: no warning.
    let body = tiny(json!({
        "size": "64x64", "stepz": 4, "user": "me", "quality": "high", "tools": [], "Seed": 1,
    }));
    let response = server.generate(body).await;
    assert_eq!(response.status(), 200);
    let warnings: Vec<&str> = response
        .headers()
        .get_all("x-seedbed-warning")
        .iter()
        .map(|value| value.to_str().unwrap())
        .collect();
    assert_eq!(
        warnings,
        [
            "unknown field `Seed` ignored",
            "unknown field `stepz` ignored"
        ]
    );
    let clean = server.generate(tiny(json!({"size": "64x64"}))).await;
    assert!(clean.headers().get("x-seedbed-warning").is_none());
}

/// Every field that holds a time, anywhere in `value`.
fn times(value: &Value, out: &mut Vec<(String, i64)>) {
    match value {
        Value::Object(map) => {
            for (key, field) in map {
                let is_time = matches!(
                    key.as_str(),
                    "created" | "created_at" | "started_at" | "finished_at" | "revoked_at"
                );
                match field.as_i64() {
                    Some(time) if is_time => out.push((key.clone(), time)),
                    _ => times(field, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| times(item, out)),
        _ => {}
    }
}

#[tokio::test]
async fn every_time_in_every_answer_is_in_unix_seconds() {
    let server = TestServer::start().await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut answers: Vec<(&str, Value)> = Vec::new();
    let sync: Value = server
        .generate(tiny(json!({"size": "64x64"})))
        .await
        .json()
        .await
        .unwrap();
    answers.push(("sync response", sync));
    let streamed = server
        .generate(tiny(json!({"size": "64x64", "stream": true})))
        .await
        .text()
        .await
        .unwrap();
    for (_, data) in sse_events(&streamed) {
        if let Ok(event) = serde_json::from_str(&data) {
            answers.push(("stream event", event));
        }
    }
    let id = server.submit_async(tiny(json!({"size": "64x64"}))).await;
    answers.push(("job", server.wait_job(&id, None).await));
    for (_, data) in server.job_events(&id).await {
        answers.push(("job event", data));
    }
    answers.push(("jobs", server.get_json("/v1/jobs").await));
    answers.push(("usage", server.get_json("/v1/usage").await));
    // Last: once a key exists the server wants one.
    let key: Value = server
        .post("/v1/keys")
        .json(&json!({"name": "clock"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    answers.push(("key", key));

    let mut seen = 0;
    for (what, answer) in &answers {
        let mut found = Vec::new();
        times(answer, &mut found);
        for (field, time) in found {
            assert!(
                (now - 600..now + 600).contains(&time),
                "{what}: `{field}` is {time}, not Unix seconds near {now}"
            );
            seen += 1;
        }
    }
    assert!(seen >= 10, "only {seen} times checked");
}
