//! FLUX.1 served like the SD models: the same API, jobs, streaming and errors.

use base64::Engine;

use crate::support::{TestServer, models_with_flux, png_data_uri, sse_events};

async fn flux_server(models: &tempfile::TempDir) -> TestServer {
    let path = models.path().to_path_buf();
    TestServer::start_with(|config| {
        config.models_dir = path;
        config.aliases = vec![("flux-schnell".into(), "tiny-flux-schnell".into())];
    })
    .await
}

#[tokio::test]
async fn the_catalog_describes_flux_from_its_configs() {
    let models = models_with_flux();
    let server = flux_server(&models).await;
    let list = server.get_json("/v1/models").await;
    let find = |id: &str| {
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} not in {list}"))
    };
    let schnell = find("tiny-flux-schnell");
    assert_eq!(schnell["family"], "Flux");
    assert_eq!(schnell["native_size"], 1024);
    assert_eq!(schnell["default_steps"], 4);
    assert_eq!(schnell["default_guidance_scale"], 0.0);
    let dev = find("tiny-flux-dev");
    assert_eq!(dev["default_steps"], 28);
    assert_eq!(dev["default_guidance_scale"], 3.5);
    assert_eq!(find("flux-schnell")["local_model"], "tiny-flux-schnell");
}

#[tokio::test]
async fn flux_generates_and_streams_through_the_seedream_api() {
    let models = models_with_flux();
    let server = flux_server(&models).await;
    let response = server
        .generate(serde_json::json!({
            "model": "flux-schnell", "prompt": "a lighthouse at dusk", "size": "512x512",
            "seed": 3, "response_format": "b64_json", "watermark": false
        }))
        .await;
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["model"], "flux-schnell");
    assert_eq!(body["data"][0]["size"], "512x512");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(body["data"][0]["b64_json"].as_str().unwrap())
        .unwrap();
    let picture = image::load_from_memory(&bytes).unwrap();
    assert_eq!((picture.width(), picture.height()), (512, 512));

    let stream = server
        .generate(serde_json::json!({
            "model": "tiny-flux-dev", "prompt": "two foxes", "size": "512x512", "steps": 2,
            "sequential_image_generation": "auto",
            "sequential_image_generation_options": {"max_images": 2}, "stream": true,
            "negative_prompt": "fog", "true_cfg_scale": 2.0
        }))
        .await;
    assert_eq!(stream.status(), 200);
    let text = stream.text().await.unwrap();
    let names: Vec<_> = sse_events(&text)
        .into_iter()
        .filter_map(|(name, _)| name)
        .collect();
    assert_eq!(
        names,
        [
            "image_generation.partial_succeeded",
            "image_generation.partial_succeeded",
            "image_generation.completed"
        ],
        "{text}"
    );
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
}

#[tokio::test]
async fn flux_image_to_image_takes_a_reference() {
    let models = models_with_flux();
    let server = flux_server(&models).await;
    let response = server
        .generate(serde_json::json!({
            "model": "tiny-flux-schnell", "prompt": "make it red", "image": png_data_uri(600, 500),
            "size": "512x512", "strength": 0.5, "response_format": "b64_json"
        }))
        .await;
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"][0]["size"], "512x512");
}

#[tokio::test]
async fn options_of_other_families_are_refused_by_name() {
    let models = models_with_flux();
    let server = flux_server(&models).await;
    let cases = [
        (
            serde_json::json!({"model": "tiny-flux-schnell", "scheduler": "ddim"}),
            "scheduler",
        ),
        (
            serde_json::json!({"model": "tiny-flux-schnell", "karras_sigmas": true}),
            "karras_sigmas",
        ),
        (
            serde_json::json!({"model": "tiny-flux-schnell", "true_cfg_scale": 0.5}),
            "true_cfg_scale",
        ),
        (
            serde_json::json!({"model": "tiny-sd", "true_cfg_scale": 4.0}),
            "true_cfg_scale",
        ),
        // Presets and bounds are relative to FLUX's 1024: 256x256 is below its smallest.
        (
            serde_json::json!({"model": "tiny-flux-schnell", "size": "256x256"}),
            "size",
        ),
    ];
    for (mut body, param) in cases {
        body["prompt"] = "x".into();
        let response = server.generate(body.clone()).await;
        assert_eq!(response.status(), 400, "{body}");
        let error: serde_json::Value = response.json().await.unwrap();
        assert_eq!(error["error"]["param"], param, "{body}: {error}");
    }
}
