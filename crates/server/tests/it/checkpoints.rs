//! Models as people download them: a checkpoint file in the models folder is served under its
//! name, beside folders, and paints what its diffusers folder paints.

use std::path::Path;

use crate::support::{TestServer, config, linked_models, tiny};

#[tokio::test]
async fn a_checkpoint_file_is_served_like_its_folder() {
    let models = linked_models(&[("models", "tiny-sd", "tiny-sd")]);
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
    std::os::unix::fs::symlink(
        fixtures.join("single-file/tiny-sd.safetensors"),
        models.path().join("tiny-sd-file.safetensors"),
    )
    .unwrap();
    let base = serde_json::json!({"base": fixtures.join("models/tiny-sd")});
    std::fs::write(models.path().join("tiny-sd-file.json"), base.to_string()).unwrap();

    let data_dir = tempfile::tempdir().unwrap();
    let mut config = config(data_dir.path());
    config.models_dir = models.path().to_path_buf();
    config.aliases = vec![("checkpoint".into(), "tiny-sd-file".into())];
    let server = TestServer::start_in(data_dir, config).await;

    let listed = server.get_json("/v1/models").await;
    let format = |id: &str| {
        listed["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .map(|m| m["format"].clone())
    };
    assert_eq!(
        format("tiny-sd"),
        Some("diffusers folder".into()),
        "{listed}"
    );
    assert_eq!(
        format("tiny-sd-file"),
        Some("single file".into()),
        "{listed}"
    );
    assert_eq!(format("checkpoint"), Some("single file".into()), "{listed}");

    let folder = picture(&server, "tiny-sd").await;
    assert!(folder == picture(&server, "tiny-sd-file").await);
    assert!(folder == picture(&server, "checkpoint").await);
}

async fn picture(server: &TestServer, model: &str) -> image::RgbImage {
    let body = tiny(serde_json::json!({
        "model": model, "seed": 3, "response_format": "b64_json",
        "output_format": "png", "watermark": false,
    }));
    let response = server.generate(body).await;
    assert_eq!(response.status(), 200, "{model}");
    let body: serde_json::Value = response.json().await.unwrap();
    use base64::Engine as _;
    let b64 = body["data"][0]["b64_json"].as_str().unwrap();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    image::load_from_memory(&bytes).unwrap().to_rgb8()
}
