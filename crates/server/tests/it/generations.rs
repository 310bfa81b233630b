use crate::support::{TestServer, sse_events, tiny};

#[tokio::test]
async fn synchronous_generation_returns_a_signed_link_to_a_marked_jpeg() {
    let server = TestServer::start().await;
    let response = server
        .post("/api/v3/images/generations")
        .header("X-Client-Request-Id", "20261124062706hp5pZqvMyT8m86Hk2onR")
        .json(&tiny(serde_json::json!({"seed": 42})))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(
        headers["x-client-request-id"],
        "20261124062706hp5pZqvMyT8m86Hk2onR"
    );
    assert!(
        headers["x-seedbed-job-id"]
            .to_str()
            .unwrap()
            .starts_with("job_")
    );
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["model"], "seedream-4-5-251128");
    assert_eq!(body["data"][0]["size"], "64x64");
    assert_eq!(
        body["usage"],
        serde_json::json!({"generated_images": 1, "output_tokens": 16, "total_tokens": 16})
    );
    let url = body["data"][0]["url"].as_str().unwrap();
    assert!(url.starts_with(&server.url), "{url}");
    let image = server.client.get(url).send().await.unwrap();
    assert_eq!(image.status(), 200);
    assert_eq!(image.headers()["content-type"], "image/jpeg");
    let bytes = image.bytes().await.unwrap();
    let decoded = image::load_from_memory(&bytes).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (64, 64));
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        text.contains("trainedAlgorithmicMedia"),
        "no provenance metadata"
    );
    assert!(text.contains("<seedbed:Seed>42</seedbed:Seed>") || text.contains("42"));

    // A tampered or expired link is refused.
    let tampered = url.replace("/0.jpeg", "/1.jpeg");
    assert_eq!(
        server.client.get(&tampered).send().await.unwrap().status(),
        403
    );
    let (base, _) = url.split_once("?expires=").unwrap();
    let expired = format!("{base}?expires=1&signature=00");
    let response = server.client.get(&expired).send().await.unwrap();
    assert_eq!(response.status(), 403);
    let error: serde_json::Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "AccessDenied");
}

#[tokio::test]
async fn the_same_seed_gives_the_same_picture_and_b64_works() {
    let server = TestServer::start().await;
    let request = tiny(
        serde_json::json!({"seed": 7, "response_format": "b64_json", "output_format": "png", "watermark": false}),
    );
    let first: serde_json::Value = server.generate(request.clone()).await.json().await.unwrap();
    let second: serde_json::Value = server.generate(request).await.json().await.unwrap();
    let decode = |body: &serde_json::Value| {
        use base64::Engine as _;
        let b64 = body["data"][0]["b64_json"].as_str().unwrap();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        image::load_from_memory(&bytes).unwrap().to_rgb8()
    };
    assert_eq!(decode(&first), decode(&second));
    assert!(first["data"][0].get("url").is_none());
}

#[tokio::test]
async fn streams_one_event_per_image_then_usage_then_done() {
    let server = TestServer::start().await;
    let response = server
        .generate(tiny(serde_json::json!({
            "stream": true,
            "size": "2K",
            "sequential_image_generation": "auto",
            "sequential_image_generation_options": {"max_images": 2},
        })))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = response.text().await.unwrap();
    let events = sse_events(&text);
    assert_eq!(events.len(), 4, "{text}");
    for (index, (name, data)) in events[..2].iter().enumerate() {
        assert_eq!(name.as_deref(), Some("image_generation.partial_succeeded"));
        assert!(
            data.starts_with(r#"{"type":"image_generation.partial_succeeded""#),
            "{data}"
        );
        let event: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(event["image_index"], index);
        assert_eq!(event["size"], "128x128");
        assert!(event["url"].as_str().unwrap().contains("/v1/images/job_"));
    }
    let (name, data) = &events[2];
    assert_eq!(name.as_deref(), Some("image_generation.completed"));
    let completed: serde_json::Value = serde_json::from_str(data).unwrap();
    assert_eq!(
        completed["usage"],
        serde_json::json!({"generated_images": 2, "output_tokens": 128, "total_tokens": 128})
    );
    assert_eq!(events[3], (None, "[DONE]".to_string()));
}

#[tokio::test]
async fn bad_requests_get_the_error_envelope_before_any_stream() {
    let server = TestServer::start().await;
    let check = |status: u16, code: &'static str, param: &'static str| {
        move |response: (u16, serde_json::Value)| {
            assert_eq!(response.0, status, "{}", response.1);
            assert_eq!(response.1["error"]["code"], code, "{}", response.1);
            assert_eq!(response.1["error"]["param"], param, "{}", response.1);
            let message = response.1["error"]["message"].as_str().unwrap();
            assert!(message.contains("Request ID: "), "{message}");
        }
    };
    let send = |body: serde_json::Value| {
        let server = &server;
        async move {
            let response = server.generate(body).await;
            let status = response.status().as_u16();
            (status, response.json::<serde_json::Value>().await.unwrap())
        }
    };
    check(400, "MissingParameter", "prompt")(
        send(serde_json::json!({"model": "tiny-sd", "stream": true})).await,
    );
    check(400, "MissingParameter", "model")(send(serde_json::json!({"prompt": "x"})).await);
    check(404, "InvalidEndpointOrModel.NotFound", "model")(
        send(serde_json::json!({"model": "nope", "prompt": "x"})).await,
    );
    check(400, "InvalidParameter", "size")(send(tiny(serde_json::json!({"size": "1x1"}))).await);
    check(400, "InvalidParameter", "image")(
        send(tiny(
            serde_json::json!({"image": "data:image/PNG;base64,AAAA"}),
        ))
        .await,
    );
    check(400, "InvalidParameter", "image")(
        send(tiny(
            serde_json::json!({"image": "data:image/png;base64,bm90IGFuIGltYWdl"}),
        ))
        .await,
    );
    check(400, "InvalidParameter", "image")(
        send(tiny(
            serde_json::json!({"image": "http://127.0.0.1:1/x.png"}),
        ))
        .await,
    );
    check(400, "InvalidParameter", "response_format")(
        send(tiny(serde_json::json!({"response_format": "jpeg"}))).await,
    );
    // Not JSON at all.
    let response = server
        .post("/api/v3/images/generations")
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    // Too large.
    let response = server
        .post("/api/v3/images/generations")
        .body(vec![b' '; 65 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let error: serde_json::Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "RequestEntityTooLarge");
    // The server still serves.
    assert_eq!(
        server.generate(tiny(serde_json::json!({}))).await.status(),
        200
    );
}

#[tokio::test]
async fn every_documented_path_and_openai_n() {
    let server = TestServer::start().await;
    for path in seedbed_server::GENERATION_PATHS {
        let response = server
            .post(path)
            .json(&tiny(serde_json::json!({})))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
    let body: serde_json::Value = server
        .post("/v1/images/generations")
        .json(&tiny(serde_json::json!({"n": 2, "response_format": "url"})))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn image_to_image_takes_a_data_uri_and_an_upload() {
    use base64::Engine as _;
    let server = TestServer::start().await;
    let mut png = std::io::Cursor::new(Vec::new());
    image::RgbImage::from_pixel(64, 64, image::Rgb([200, 30, 30]))
        .write_to(&mut png, image::ImageFormat::Png)
        .unwrap();
    let png = png.into_inner();
    let uri = format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(&png)
    );
    let response = server
        .generate(tiny(
            serde_json::json!({"image": uri, "strength": 0.5, "steps": 4}),
        ))
        .await;
    let status = response.status();
    let text = response.text().await.unwrap();
    assert_eq!(status, 200, "{text}");
    let form = reqwest::multipart::Form::new()
        .text("model", "tiny-sd")
        .text("prompt", "a red square")
        .text("response_format", "b64_json")
        .part(
            "image",
            reqwest::multipart::Part::bytes(png)
                .file_name("in.png")
                .mime_str("image/png")
                .unwrap(),
        );
    let response = server
        .post("/v1/images/edits")
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(body["data"][0]["b64_json"].as_str().unwrap().len() > 100);
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A model whose weights are truncated fails its jobs with a clear code; the server keeps
/// serving the other models.
#[tokio::test]
async fn a_model_that_cannot_load_fails_its_jobs_only() {
    let models = tempfile::tempdir().unwrap();
    copy_dir(
        &crate::support::models_dir().join("tiny-sd"),
        &models.path().join("tiny-sd"),
    );
    copy_dir(
        &crate::support::models_dir().join("tiny-sd"),
        &models.path().join("broken"),
    );
    let weights = models
        .path()
        .join("broken/unet/diffusion_pytorch_model.safetensors");
    let length = std::fs::metadata(&weights).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&weights)
        .unwrap()
        .set_len(length / 2)
        .unwrap();
    let server = TestServer::start_with(|config| {
        config.models_dir = models.path().to_path_buf();
        config.aliases.clear();
    })
    .await;
    for stream in [false, true] {
        let response = server
            .generate(
                serde_json::json!({"model": "broken", "prompt": "x", "steps": 1, "stream": stream}),
            )
            .await;
        assert_eq!(response.status(), 500);
        assert_eq!(response.headers()["x-should-retry"], "false");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "ModelLoadFailed", "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("diffusion_pytorch_model"),
            "{body}"
        );
    }
    let ok = server
        .generate(serde_json::json!({"model": "tiny-sd", "prompt": "x", "steps": 1}))
        .await;
    assert_eq!(ok.status(), 200);
}
