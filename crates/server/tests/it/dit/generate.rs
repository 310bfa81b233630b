//! Z-Image and SD3.5 generating through the Seedream API: a sync picture at the asked size, a
//! streamed batch of two whose negative prompt reaches the model when guidance is on (above 0
//! for Z-Image, above 1 for SD3, as in diffusers), and image-to-image from a `data:` URI.

use base64::Engine;

use super::dit_server;
use crate::support::{TestServer, models_with_dit, png_data_uri, sse_events};

fn decode(b64: &serde_json::Value) -> image::DynamicImage {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.as_str().unwrap_or_default())
        .unwrap();
    image::load_from_memory(&bytes).unwrap()
}

/// One sync request's first picture, decoded; fails with the body on any other answer.
async fn generate_png(server: &TestServer, body: serde_json::Value) -> image::DynamicImage {
    let response = server.generate(body.clone()).await;
    let status = response.status();
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{body}: {answer}");
    assert_eq!(answer["model"], body["model"], "{answer}");
    assert_eq!(answer["data"][0]["size"], body["size"], "{answer}");
    decode(&answer["data"][0]["b64_json"])
}

/// A sync picture at `size`, then a streamed batch of two from the same seed, prompt and
/// guidance plus a negative prompt. Its first picture must differ from the sync one, or the
/// negative prompt never reached the model. (Three pictures, not four: each costs seconds.)
async fn generates_and_streams(model: &str, size: &str, guidance: f64) {
    let models = models_with_dit();
    let server = dit_server(&models).await;
    let request = serde_json::json!({
        "model": model, "prompt": "a lighthouse at dusk", "size": size, "seed": 3,
        "steps": 2, "guidance_scale": guidance, "response_format": "b64_json"
    });
    let plain = generate_png(&server, request.clone()).await;
    assert_eq!(format!("{}x{}", plain.width(), plain.height()), size);

    let mut streamed = request;
    let batch = serde_json::json!({
        "negative_prompt": "fog", "sequential_image_generation": "auto",
        "sequential_image_generation_options": {"max_images": 2}, "stream": true
    });
    for (field, value) in batch.as_object().into_iter().flatten() {
        streamed[field] = value.clone();
    }
    let stream = server.generate(streamed).await;
    assert_eq!(stream.status(), 200);
    let text = stream.text().await.unwrap();
    let events = sse_events(&text);
    let names: Vec<_> = events
        .iter()
        .filter_map(|(name, _)| name.as_deref())
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
    let first: serde_json::Value = serde_json::from_str(&events[0].1).unwrap();
    assert_eq!(first["image_index"], 0, "{first}");
    assert_ne!(
        plain.to_rgb8().into_raw(),
        decode(&first["b64_json"]).to_rgb8().into_raw(),
        "{model}: the negative prompt changed nothing at guidance {guidance}"
    );
}

#[tokio::test]
async fn zimage_generates_and_streams_with_guidance_above_zero() {
    generates_and_streams("tiny-zimage", "512x512", 2.0).await;
}

#[tokio::test]
async fn sd3_generates_and_streams_with_guidance_above_one() {
    generates_and_streams("tiny-sd3", "256x256", 2.0).await;
}

/// A reference picture of another size and shape is taken (resized to the asked size) by
/// both families' image-to-image path.
#[tokio::test]
async fn zimage_and_sd3_image_to_image_take_a_reference() {
    let models = models_with_dit();
    let server = dit_server(&models).await;
    for (model, size) in [("tiny-zimage", "512x512"), ("tiny-sd3", "256x256")] {
        let picture = generate_png(
            &server,
            serde_json::json!({
                "model": model, "prompt": "make it red", "image": png_data_uri(300, 250),
                "size": size, "strength": 0.5, "steps": 4, "response_format": "b64_json"
            }),
        )
        .await;
        assert_eq!(picture.width().to_string(), size.split('x').next().unwrap());
    }
}

/// `"preview": true` works for every transformer family: FLUX's packed latents come unpacked,
/// one preview pixel per latent pixel (1/8 of each side), a JPEG on each of two steps.
#[tokio::test]
async fn previews_of_the_transformer_families() {
    let links = [
        crate::support::FLUX_LINKS.as_slice(),
        crate::support::DIT_LINKS.as_slice(),
    ]
    .concat();
    let models = crate::support::linked_models(&links);
    let server = dit_server(&models).await;
    // Within each tiny model's sizes; not square, so a transposed preview would show.
    for (model, width, height) in [
        ("tiny-flux-schnell", 640, 512),
        ("tiny-zimage", 512, 576),
        ("tiny-sd3", 256, 192),
    ] {
        let id = server
            .submit_async(serde_json::json!({
                "model": model, "prompt": "a lighthouse at dusk", "size": format!("{width}x{height}"), "seed": 1,
                "steps": 2, "preview": true
            }))
            .await;
        let job = server.wait_job(&id, None).await;
        assert_eq!(job["status"], "succeeded", "{model}: {job}");
        let previews: Vec<_> = server
            .job_events(&id)
            .await
            .into_iter()
            .filter(|(name, _)| name == "progress")
            .map(|(_, data)| data["preview"].clone())
            .collect();
        assert_eq!(previews.len(), 2, "{model}: {previews:?}");
        for preview in previews {
            let picture = decode(&preview["b64_json"]);
            assert_eq!(
                (picture.width(), picture.height()),
                (width / 8, height / 8),
                "{model}"
            );
        }
    }
}
