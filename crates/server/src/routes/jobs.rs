//! `/v1/jobs`: the job object, its list, cancel, and its event stream.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use futures::StreamExt;
use seedbed_core::{Job, JobEvent};
use seedbed_types::{ImageError, JobList, JobSettings, JobView, ResponseFormat};
use serde::Deserialize;

use crate::auth::Caller;
use crate::error::ApiFailure;
use crate::limits;
use crate::render::{Renderer, ResponseBuilder};
use crate::state::AppState;

pub async fn job_view(state: &AppState, job: &Job) -> Result<JobView, ApiFailure> {
    view(state, job, Images::AsRequested).await
}

/// How a job object carries its images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Images {
    /// As the job asked (`url` or `b64_json`): the single job's object.
    AsRequested,
    /// Always as signed links: a list of up to 100 jobs with every image inlined in base64
    /// would be a response of hundreds of megabytes built in memory per request.
    Links,
}

async fn view(state: &AppState, job: &Job, images: Images) -> Result<JobView, ApiFailure> {
    let mut spec = job.spec.clone();
    if images == Images::Links {
        spec.response_format = ResponseFormat::Url;
    }
    let renderer = Renderer {
        state,
        job_id: &job.id,
        spec: &spec,
        created: job.created_at / 1000,
    };
    let mut builder = ResponseBuilder::default();
    for recorded in state.jobs().recorded_events(&job.id).await? {
        // Expired images are simply left out.
        let _ = builder.push(&renderer, &recorded.event).await;
    }
    builder.failure = None;
    let result =
        (builder.has_data() || builder.usage.is_some()).then(|| builder.response(&renderer));
    Ok(JobView {
        id: job.id.clone(),
        object: "job".into(),
        model: job.model.clone(),
        prompt: job.spec.prompt(),
        status: job.status,
        created_at: job.created_at / 1000,
        started_at: job.started_at.map(|t| t / 1000),
        finished_at: job.finished_at.map(|t| t / 1000),
        queue_position: state.jobs().queue_position(&job.id).await?,
        progress: job.progress,
        attempts: job.attempts,
        node: job.ran_on.clone(),
        loras: job
            .spec
            .local()
            .map(|local| local.loras.clone())
            .unwrap_or_default(),
        settings: job.spec.local().map(|local| JobSettings {
            size: format!("{}x{}", local.width, local.height),
            seed: local.seed,
            steps: local.steps,
            guidance_scale: local.guidance_scale,
            negative_prompt: local.negative_prompt.clone(),
            images: job.spec.images,
            strength: (!local.reference_images.is_empty()).then_some(local.strength),
        }),
        result,
        error: job.error_code.clone().map(|code| ImageError {
            code,
            message: job.error_message.clone().unwrap_or_default(),
        }),
    })
}

pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiFailure> {
    let job = state.jobs().job(&id, caller.job_owner()).await?;
    Ok(Json(job_view(&state, &job).await?))
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    pub limit: Option<u32>,
}

/// The caller's latest jobs, newest first; images as links whatever the job asked for
/// (`GET /v1/jobs/{id}` gives a `b64_json` job's images inline).
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<ListQuery>,
) -> Result<Json<JobList>, ApiFailure> {
    let limit = query.limit.unwrap_or(20).clamp(1, 100);
    let rows = state.jobs().list(caller.job_owner(), limit).await?;
    let mut data = Vec::with_capacity(rows.len());
    for row in &rows {
        data.push(view(&state, row, Images::Links).await?);
    }
    Ok(Json(JobList {
        object: "list".into(),
        data,
    }))
}

pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiFailure> {
    let job = state.jobs().cancel(&id, caller.job_owner()).await?;
    Ok(Json(job_view(&state, &job).await?))
}

/// SSE of the job's events (`id:` = sequence number, `event:` = type), resumable with
/// `Last-Event-ID`; image events carry their link. Holds one of the caller's stream slots
/// while open.
pub async fn events(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiFailure> {
    let job = state.jobs().job(&id, caller.job_owner()).await?;
    let spec = job.spec.clone();
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok())
        .unwrap_or(0);
    let slot = state.gates().open_stream(caller.key_id())?;
    let created = job.created_at / 1000;
    let owned = std::sync::Arc::new((state.clone(), spec, id.clone()));
    let body = state
        .jobs()
        .events(&id, after)
        .take_until(state.shutdown().clone().cancelled_owned())
        .then(move |event| {
            let owned = owned.clone();
            async move {
                let (state, spec, id) = &*owned;
                let renderer = Renderer {
                    state,
                    job_id: id,
                    spec,
                    created,
                };
                let text = match event {
                    Ok(event) => {
                        let mut data = serde_json::to_value(&event.event).unwrap_or_default();
                        if let JobEvent::Image { index, .. } = &event.event
                            && let Ok(link) = renderer.link(*index).await
                        {
                            data["url"] = link.into();
                        }
                        format!(
                            "id: {}\nevent: {}\ndata: {data}\n\n",
                            event.seq,
                            event.event.name()
                        )
                    }
                    Err(error) => format!(
                        "event: error\ndata: {}\n\n",
                        serde_json::json!({"message": ApiFailure::from(error).message})
                    ),
                };
                Bytes::from(text)
            }
        });
    Ok(limits::sse_response(
        body,
        slot,
        state.limits().sse_keep_alive,
    ))
}
