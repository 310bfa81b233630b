//! `POST .../images/generations`: Seedream's API (also serving OpenAI's `n`).

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use seedbed_core::{GenerationSpec, JobEvent, SequencedEvent};
use seedbed_types::stream::DONE;
use seedbed_types::{ErrorCode, GenerationRequest, RawRequest, SequentialMode, SequentialOptions};

use crate::auth::Caller;
use crate::error::ApiFailure;
use crate::limits::{self, StreamSlot};
use crate::render::{Renderer, ResponseBuilder};
use crate::request_id::RequestId;
use crate::routes::jobs::job_view;
use crate::state::AppState;

pub const JOB_HEADER: &str = "x-seedbed-job-id";
/// One per field of a local model's request that no API defines (a misspelling, most often).
pub const WARNING_HEADER: &str = "x-seedbed-warning";
/// Warnings past this many are summed up in one more header, so a body of many odd keys
/// cannot make the response headers large.
const MAX_WARNINGS: usize = 8;

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Extension(request_id): Extension<RequestId>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiFailure> {
    let body = body.map_err(body_failure)?;
    // The body as it came, for a model an upstream serves: relayed byte for byte.
    let raw = RawRequest::parse(&body);
    if let Some(key) = raw.as_ref().and_then(RawRequest::duplicate_key) {
        return Err(ApiFailure::invalid(
            key,
            format!("The request body gives the key `{key}` more than once; give each key once."),
        ));
    }
    let mut request: GenerationRequest = parse_json(&body)?;
    openai_count(&mut request)?;
    submit(state, caller, request_id, &headers, request, raw).await
}

/// A body the server could not take (too large, unreadable).
pub fn body_failure(rejection: BytesRejection) -> ApiFailure {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiFailure::new(ErrorCode::PayloadTooLarge, "The request body is too large.")
    } else {
        ApiFailure::invalid(
            "",
            format!("The request body could not be read: {rejection}."),
        )
    }
}

/// JSON into the wire type; errors name the field that did not fit.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiFailure> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        // Broken JSON has no field to blame (its path is wherever the parser stopped).
        if inner.is_syntax() || inner.is_eof() {
            ApiFailure::invalid("", format!("The request body is not valid JSON: {inner}."))
        } else if path == "." {
            ApiFailure::invalid(
                "",
                format!("The request body is not a valid JSON object: {inner}."),
            )
        } else {
            ApiFailure::invalid(
                &path,
                format!("The parameter `{path}` is not valid: {inner}."),
            )
        }
    })
}

/// OpenAI clients ask for several images with `n`; Seedream's way is a sequential batch.
fn openai_count(request: &mut GenerationRequest) -> Result<(), ApiFailure> {
    let Some(n) = request.extra.remove("n") else {
        return Ok(());
    };
    let n = n
        .as_u64()
        .filter(|n| (1..=15).contains(n))
        .ok_or_else(|| ApiFailure::invalid("n", "n must be an integer between 1 and 15."))?;
    if n > 1 {
        request.sequential_image_generation = Some(SequentialMode::Auto);
        request.sequential_image_generation_options = Some(SequentialOptions {
            max_images: Some(n as u32),
        });
    }
    Ok(())
}

/// Validate, write the job, then answer as the client asked: 202 with the job
/// (`Prefer: respond-async`), an SSE stream (`stream: true`) or the JSON body.
pub async fn submit(
    state: AppState,
    caller: Caller,
    request_id: RequestId,
    headers: &HeaderMap,
    request: GenerationRequest,
    raw: Option<RawRequest>,
) -> Result<Response, ApiFailure> {
    let jobs = state.jobs();
    let relayed = request
        .model
        .as_deref()
        .is_some_and(|model| jobs.relays(model));
    let (spec, sources) = if relayed {
        let raw = match raw {
            Some(raw) => raw,
            None => RawRequest::parse(&serde_json::to_vec(&request).unwrap_or_default())
                .ok_or_else(ApiFailure::internal)?,
        };
        (
            seedbed_core::spec::validate_gateway(&request, &raw)?,
            Vec::new(),
        )
    } else {
        seedbed_core::spec::validate(&request, &jobs.catalog())?
    };
    // Relayed models are the upstream's to judge; a local model ignores what it does not
    // know, and says so.
    let warnings = if relayed {
        Vec::new()
    } else {
        unknown_field_warnings(&request)
    };
    let respond_async = headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|p| p.trim().eq_ignore_ascii_case("respond-async"))
        });
    // The stream slot is taken before the job is written, so a refused stream leaves no job
    // running for nobody.
    let stream_slot = if spec.stream && !respond_async {
        Some(state.gates().open_stream(caller.key_id())?)
    } else {
        None
    };
    let job = jobs
        .submit(spec, sources, caller.key.as_ref(), &request_id.0)
        .await?;
    let spec = job.spec.clone();
    let mut response = if respond_async {
        let view = job_view(&state, &job).await?;
        (StatusCode::ACCEPTED, Json(view)).into_response()
    } else if let Some(slot) = stream_slot {
        let created = job.created_at / 1000;
        stream(state.clone(), job.id.clone(), spec, created, slot).await?
    } else {
        let events = state.jobs().events(&job.id, 0);
        let renderer = Renderer {
            state: &state,
            job_id: &job.id,
            spec: &spec,
            created: job.created_at / 1000,
        };
        body(&renderer, events).await?
    };
    if let Ok(value) = HeaderValue::from_str(&job.id) {
        response.headers_mut().insert(JOB_HEADER, value);
    }
    for warning in warnings {
        response.headers_mut().append(WARNING_HEADER, warning);
    }
    Ok(response)
}

/// ``unknown field `stepz` ignored`` for each unknown field, logged at debug too. Names are
/// shown up to 64 printable ASCII characters (anything else becomes `?`).
fn unknown_field_warnings(request: &GenerationRequest) -> Vec<HeaderValue> {
    let unknown = request.unknown_fields();
    let mut warnings: Vec<String> = unknown
        .iter()
        .take(MAX_WARNINGS)
        .map(|field| {
            let shown: String = field
                .chars()
                .take(64)
                .map(|c| {
                    if c.is_ascii_graphic() || c == ' ' {
                        c
                    } else {
                        '?'
                    }
                })
                .collect();
            format!("unknown field `{shown}` ignored")
        })
        .collect();
    if unknown.len() > MAX_WARNINGS {
        warnings.push(format!(
            "{} more unknown fields ignored",
            unknown.len() - MAX_WARNINGS
        ));
    }
    for warning in &warnings {
        tracing::debug!("{warning}");
    }
    warnings
        .iter()
        .filter_map(|warning| HeaderValue::from_str(warning).ok())
        .collect()
}

/// Wait for the job to end and answer with the whole response.
async fn body(
    renderer: &Renderer<'_>,
    events: impl Stream<Item = seedbed_core::Result<SequencedEvent>>,
) -> Result<Response, ApiFailure> {
    let mut events = std::pin::pin!(events);
    let mut builder = ResponseBuilder::default();
    while let Some(event) = events.next().await {
        if builder.push(renderer, &event?.event).await? {
            break;
        }
    }
    match builder.failure.take() {
        Some(failure) if !builder.has_data() => Err(failure),
        _ => Ok(Json(builder.response(renderer)).into_response()),
    }
}

/// Seedream's SSE. Like upstream, headers go out with the first image, so a failure before
/// any image (a model that cannot load) is still an ordinary JSON error. `slot` is the
/// caller's stream slot, held until the body is dropped.
async fn stream(
    state: AppState,
    job_id: String,
    spec: GenerationSpec,
    created: i64,
    slot: StreamSlot,
) -> Result<Response, ApiFailure> {
    let mut events = Box::pin(state.jobs().events(&job_id, 0));
    let first = loop {
        let Some(event) = events.next().await else {
            return Err(ApiFailure::internal());
        };
        let event = event?;
        match &event.event {
            JobEvent::Image { .. } | JobEvent::ImageFailed { .. } | JobEvent::Completed { .. } => {
                break event;
            }
            JobEvent::Failed { .. } => {
                return Err(
                    ApiFailure::from_job_event(&event.event).unwrap_or_else(ApiFailure::internal)
                );
            }
            JobEvent::Cancelled => {
                return Err(ApiFailure::new(
                    ErrorCode::Cancelled,
                    "The job was cancelled.",
                ));
            }
            _ => {}
        }
    };
    let shared = Arc::new((state.clone(), job_id, spec, created));
    let events = futures::stream::iter([Ok(first)]).chain(events);
    let body = events
        .take_until(state.shutdown().clone().cancelled_owned())
        .then(move |event| {
            let shared = shared.clone();
            async move {
                let (state, job_id, spec, created) = &*shared;
                let renderer = Renderer { state, job_id, spec, created: *created };
                let event = match event {
                    Ok(event) => event.event,
                    Err(error) => JobEvent::Failed {
                        code: ErrorCode::InternalServiceError.as_str().into(),
                        message: ApiFailure::from(error).message,
                        status: None,
                        param: None,
                    },
                };
                let mut text = match renderer.stream_event(&event).await {
                    Ok(Some(sse)) => sse.to_sse(),
                    Ok(None) => String::new(),
                    Err(failure) => format!(
                        "data: {}\n\n",
                        serde_json::json!({"error": {"code": failure.code_str(), "message": failure.message}})
                    ),
                };
                if event.is_final() {
                    text.push_str(DONE);
                }
                Bytes::from(text)
            }
        })
        .filter(|chunk| std::future::ready(!chunk.is_empty()));
    Ok(limits::sse_response(
        body,
        slot,
        state.limits().sse_keep_alive,
    ))
}
