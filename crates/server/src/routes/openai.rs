//! `POST /v1/images/edits` (OpenAI, multipart): the uploaded image becomes Seedream's
//! `image` data URI and the request runs as any other generation.

use axum::extract::{Extension, Multipart, State};
use axum::http::HeaderMap;
use axum::response::Response;
use base64::Engine as _;
use seedbed_types::{GenerationRequest, ImageInput, ResponseFormat};

use crate::auth::Caller;
use crate::error::ApiFailure;
use crate::request_id::RequestId;
use crate::routes::generations::submit;
use crate::state::AppState;

pub async fn edits(
    State(state): State<AppState>,
    caller: Caller,
    Extension(request_id): Extension<RequestId>,
    headers: HeaderMap,
    mut multipart: Multipart,
) -> Result<Response, ApiFailure> {
    let mut request = GenerationRequest::default();
    let mut images = Vec::new();
    let mut n = 1u32;
    while let Some(field) = multipart.next_field().await.map_err(|e| {
        ApiFailure::invalid("", format!("The multipart body could not be read: {e}."))
    })? {
        let name = field.name().unwrap_or_default().to_string();
        let content_type = field.content_type().map(str::to_string);
        let bytes = field.bytes().await.map_err(|e| {
            ApiFailure::invalid(&name, format!("The field `{name}` could not be read: {e}."))
        })?;
        let text = || String::from_utf8_lossy(&bytes).trim().to_string();
        match name.as_str() {
            "image" | "image[]" => images.push(data_uri(&bytes, content_type.as_deref())?),
            "prompt" => request.prompt = Some(text()),
            "model" => request.model = Some(text()),
            "size" if text() != "auto" => request.size = Some(text()),
            "n" => {
                n = text()
                    .parse()
                    .ok()
                    .filter(|n| (1..=15).contains(n))
                    .ok_or_else(|| {
                        ApiFailure::invalid("n", "n must be an integer between 1 and 15.")
                    })?
            }
            "response_format" => {
                request.response_format = Some(match text().as_str() {
                    "url" => ResponseFormat::Url,
                    "b64_json" => ResponseFormat::B64Json,
                    other => {
                        return Err(ApiFailure::invalid(
                            "response_format",
                            format!("response_format `{other}` must be url or b64_json."),
                        ));
                    }
                })
            }
            "output_format" => request.output_format = Some(text()),
            "negative_prompt" => request.negative_prompt = Some(text()),
            "strength" => request.strength = text().parse().ok(),
            "seed" => request.seed = text().parse().ok(),
            "stream" => request.stream = Some(text() == "true"),
            // OpenAI fields without a local meaning (mask, quality, background, ...).
            _ => {}
        }
    }
    if images.is_empty() {
        return Err(ApiFailure::new(
            seedbed_types::ErrorCode::MissingParameter,
            "An image file is required.",
        )
        .param("image"));
    }
    request.image = Some(if images.len() == 1 {
        ImageInput::One(images.remove(0))
    } else {
        ImageInput::Many(images)
    });
    if n > 1 {
        request.sequential_image_generation = Some(seedbed_types::SequentialMode::Auto);
        request.sequential_image_generation_options = Some(seedbed_types::SequentialOptions {
            max_images: Some(n),
        });
    }
    submit(state, caller, request_id, &headers, request, None).await
}

fn data_uri(bytes: &[u8], content_type: Option<&str>) -> Result<String, ApiFailure> {
    let format = match image::guess_format(bytes) {
        Ok(format) => format
            .extensions_str()
            .first()
            .copied()
            .unwrap_or("png")
            .to_string(),
        Err(_) => content_type
            .and_then(|t| t.strip_prefix("image/"))
            .map(str::to_ascii_lowercase)
            .ok_or_else(|| ApiFailure::invalid("image", "The uploaded file is not an image."))?,
    };
    let format = if format == "jpg" {
        "jpeg".to_string()
    } else {
        format
    };
    let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
    Ok(format!("data:image/{format};base64,{b64}"))
}
