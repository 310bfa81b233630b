//! Z-Image and SD3.5 served like FLUX: the catalog describes them from their configs (and
//! their Turbo variants from the folder name), requests for them are checked against their
//! family's options, and they answer sync, streamed and image-to-image requests through the
//! same Seedream API. The tiny models: Z-Image's 1K is 1024 (smallest size 512x512); the tiny
//! SD3's transformer has a `sample_size` of 32 latents, so its 1K is 256, which is also the
//! most its 16x16 position table covers.

mod generate;

use crate::support::{TestServer, models_with_dit};

async fn dit_server(models: &tempfile::TempDir) -> TestServer {
    let path = models.path().to_path_buf();
    TestServer::start_with(|config| {
        config.models_dir = path;
        config.aliases = vec![("z-image".into(), "tiny-zimage".into())];
    })
    .await
}

/// `/v1/models`: the family as the API spells it, 1K, and the defaults a request without
/// `steps` or `guidance_scale` gets (base models: the cards' values; "-turbo" folders: few
/// steps without guidance; the tiny SD3 has dual-attention layers, so it is an SD3.5 Medium).
#[tokio::test]
async fn the_catalog_describes_zimage_and_sd3_from_their_configs() {
    let models = models_with_dit();
    let server = dit_server(&models).await;
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
    let described = |id: &str| {
        let model = find(id);
        (
            model["family"].as_str().unwrap_or_default().to_string(),
            model["native_size"].as_u64().unwrap_or_default(),
            model["default_steps"].as_u64().unwrap_or_default(),
            model["default_guidance_scale"].as_f64().unwrap_or(-1.0),
        )
    };
    let expected = [
        ("tiny-zimage", "ZImage", 1024, 50, 4.0),
        ("tiny-zimage-turbo", "ZImage", 1024, 9, 0.0),
        ("tiny-sd3", "StableDiffusion3", 256, 40, 4.5),
        ("tiny-sd3-turbo", "StableDiffusion3", 256, 4, 0.0),
    ];
    for (id, family, native, steps, guidance) in expected {
        assert_eq!(
            described(id),
            (family.to_string(), native, steps, guidance),
            "{id}"
        );
    }
    assert_eq!(find("z-image")["local_model"], "tiny-zimage");
}

/// The options of other families are refused with 400 naming the field, before anything
/// loads: UNet samplers and Karras sigmas (both families sample with flow-match Euler), true
/// CFG (FLUX's), and sizes below the model's smallest (relative to its own 1K).
#[tokio::test]
async fn options_of_other_families_are_refused_by_name() {
    let models = models_with_dit();
    let server = dit_server(&models).await;
    let mut cases = Vec::new();
    for model in ["tiny-zimage", "tiny-sd3"] {
        cases.extend([
            (
                serde_json::json!({"model": model, "scheduler": "euler"}),
                "scheduler",
            ),
            (
                serde_json::json!({"model": model, "karras_sigmas": true}),
                "karras_sigmas",
            ),
            (
                serde_json::json!({"model": model, "true_cfg_scale": 2.0}),
                "true_cfg_scale",
            ),
        ]);
    }
    cases.extend([
        (
            serde_json::json!({"model": "tiny-zimage", "size": "256x256"}),
            "size",
        ),
        (
            serde_json::json!({"model": "tiny-sd3", "size": "64x64"}),
            "size",
        ),
    ]);
    for (mut body, param) in cases {
        body["prompt"] = "x".into();
        let response = server.generate(body.clone()).await;
        assert_eq!(response.status(), 400, "{body}");
        let error: serde_json::Value = response.json().await.unwrap();
        assert_eq!(error["error"]["param"], param, "{body}: {error}");
        assert!(
            error["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(body["model"].as_str().unwrap_or_default())),
            "the message names the model: {error}"
        );
    }
}
