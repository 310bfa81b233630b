//! `/v1/jobs`: the job object, its list, cancel, and its event stream.

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use futures::StreamExt;
use seedbed_core::{GenerationSpec, JobEvent};
use seedbed_storage::JobRow;
use seedbed_types::{ImageError, JobList, JobView};
use serde::Deserialize;

use crate::auth::Caller;
use crate::error::ApiFailure;
use crate::render::{Renderer, ResponseBuilder};
use crate::state::AppState;

pub async fn job_view(state: &AppState, job: &JobRow) -> Result<JobView, ApiFailure> {
    let spec: GenerationSpec =
        serde_json::from_str(&job.spec).map_err(|_| ApiFailure::internal())?;
    let renderer = Renderer {
        state,
        job_id: &job.id,
        spec: &spec,
        created: job.created_at / 1000,
    };
    let mut builder = ResponseBuilder::default();
    let events = state
        .jobs()
        .db()
        .events_after(&job.id, 0)
        .await
        .map_err(seedbed_core::CoreError::from)?;
    for (_, json) in events {
        if let Ok(event) = serde_json::from_str::<JobEvent>(&json) {
            // Expired images are simply left out.
            let _ = builder.push(&renderer, &event).await;
        }
    }
    builder.failure = None;
    let result =
        (builder.has_data() || builder.usage.is_some()).then(|| builder.response(&renderer));
    Ok(JobView {
        id: job.id.clone(),
        object: "job".into(),
        model: job.model.clone(),
        status: job.status,
        created_at: job.created_at / 1000,
        started_at: job.started_at.map(|t| t / 1000),
        finished_at: job.finished_at.map(|t| t / 1000),
        queue_position: state.jobs().queue_position(&job.id).await?,
        progress: job
            .progress
            .as_deref()
            .and_then(|p| serde_json::from_str(p).ok()),
        attempts: job.attempts,
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

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<ListQuery>,
) -> Result<Json<JobList>, ApiFailure> {
    let limit = query.limit.unwrap_or(20).clamp(1, 100);
    let rows = state.jobs().list(caller.job_owner(), limit).await?;
    let mut data = Vec::with_capacity(rows.len());
    for row in &rows {
        data.push(job_view(&state, row).await?);
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
/// `Last-Event-ID`; image events carry their link.
pub async fn events(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiFailure> {
    let job = state.jobs().job(&id, caller.job_owner()).await?;
    let spec: GenerationSpec =
        serde_json::from_str(&job.spec).map_err(|_| ApiFailure::internal())?;
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok())
        .unwrap_or(0);
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
                Ok::<_, std::convert::Infallible>(Bytes::from(text))
            }
        });
    let mut response = Response::new(Body::from_stream(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}
