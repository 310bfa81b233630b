//! LoRAs through the API: listed at `/v1/loras`, applied by name per request, recorded on the
//! job, and refused with a 400 naming `loras` when the name, the model or the file is wrong.

use insta::assert_json_snapshot;
use serde_json::json;

use crate::support::{TestServer, tiny};

fn loras_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/loras")
}

async fn with_loras() -> TestServer {
    TestServer::start_with(|config| config.loras_dir = Some(loras_dir())).await
}

/// The picture of a 64x64 PNG generation, decoded.
async fn picture(server: &TestServer, extra: serde_json::Value) -> image::RgbImage {
    let mut body = tiny(json!({
        "seed": 7, "size": "64x64", "response_format": "b64_json", "output_format": "png",
        "watermark": false,
    }));
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let response = server.generate(body).await;
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(body["data"][0]["b64_json"].as_str().unwrap())
        .unwrap();
    image::load_from_memory(&bytes).unwrap().to_rgb8()
}

#[tokio::test]
async fn a_lora_named_in_the_request_changes_the_picture_and_is_recorded() {
    let server = with_loras().await;
    let list = server.get_json("/v1/loras").await;
    assert_json_snapshot!("lora_list", list);

    let plain = picture(&server, json!({})).await;
    let lora = |scale: f64| json!({"loras": [{"name": "tiny-sd-peft", "scale": scale}]});
    // Scale 0 adds nothing: the same picture, so the rest of the path is unchanged.
    assert_eq!(picture(&server, lora(0.0)).await, plain);
    let applied = picture(&server, lora(1.0)).await;
    assert_ne!(applied, plain, "the LoRA changed nothing");
    // The Kohya file of the same LoRA reads too.
    let kohya = picture(&server, json!({"loras": [{"name": "tiny-sd-kohya"}]})).await;
    assert_ne!(kohya, plain);
    // The loaded model itself was never changed: without LoRAs, the first picture again.
    assert_eq!(picture(&server, json!({})).await, plain);

    let id = server
        .submit_async(tiny(json!({
            "size": "64x64", "seed": 7, "loras": [{"name": "tiny-sd-peft", "scale": 0.5}],
        })))
        .await;
    let job = server.wait_job(&id, None).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(
        job["loras"],
        json!([{"name": "tiny-sd-peft", "scale": 0.5}])
    );
    assert_json_snapshot!("job_with_loras", job, {
        ".id" => "[id]",
        ".created_at" => "[time]",
        ".started_at" => "[time]",
        ".finished_at" => "[time]",
        ".node" => "[node]",
        ".**.created" => "[time]",
        ".**.url" => "[signed link]",
    });
    // A job without LoRAs shows none.
    let id = server.submit_async(tiny(json!({"size": "64x64"}))).await;
    assert!(server.wait_job(&id, None).await.get("loras").is_none());
}

#[tokio::test]
async fn wrong_loras_are_400s_naming_the_field() {
    let server = with_loras().await;
    let cases = [
        (
            json!([{"name": "nope"}]),
            "available: `tiny-flux-dev-kohya`, `tiny-flux-dev-peft`, `tiny-sd-kohya`, `tiny-sd-peft`, `tiny-sdxl-kohya`, `tiny-sdxl-peft`",
        ),
        (
            json!([{"name": "../loras/tiny-sd-peft"}]),
            "is not a LoRA name",
        ),
        (json!([{"name": "/etc/passwd"}]), "is not a LoRA name"),
        (
            json!([{"name": "tiny-sdxl-peft"}]),
            "does not fit model tiny-sd",
        ),
        (
            json!([{"name": "tiny-sd-peft", "scale": 10}]),
            "between -4 and 4",
        ),
    ];
    for (loras, expected) in cases {
        let response = server.generate(tiny(json!({"loras": loras}))).await;
        assert_eq!(response.status(), 400, "{loras}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["param"], "loras", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(expected), "{loras}: {message}");
    }
    let response = server
        .generate(tiny(json!({"loras": [{"name": "nope"}]})))
        .await;
    let body: serde_json::Value = response.json().await.unwrap();
    insta::with_settings!({filters => vec![(r"Request ID: \w+", "Request ID: [ID]")]}, {
        assert_json_snapshot!("error_unknown_lora", body);
    });
    // No jobs were written for refused requests.
    let jobs = server.get_json("/v1/jobs").await;
    assert_eq!(jobs["data"].as_array().unwrap().len(), 0, "{jobs}");
}

#[tokio::test]
async fn without_a_lora_folder_none_are_offered() {
    let server = TestServer::start().await;
    assert_eq!(server.get_json("/v1/loras").await["data"], json!([]));
    let response = server
        .generate(tiny(json!({"loras": [{"name": "tiny-sd-peft"}]})))
        .await;
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--loras-dir"),
        "{body}"
    );
}
