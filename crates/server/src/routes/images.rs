//! `GET /v1/images/{job}/{index}.{ext}`: stored images behind signed, expiring links.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use seedbed_types::ErrorCode;
use serde::Deserialize;

use crate::error::ApiFailure;
use crate::links::LinkSigner;
use crate::render::now_s;
use crate::state::AppState;

#[derive(Debug, Deserialize)]
pub struct Signature {
    pub expires: Option<i64>,
    pub signature: Option<String>,
}

pub async fn get(
    State(state): State<AppState>,
    Path((job_id, file)): Path<(String, String)>,
    query: Result<Query<Signature>, QueryRejection>,
) -> Result<Response, ApiFailure> {
    let denied = || {
        ApiFailure::new(
            ErrorCode::AccessDenied,
            "The link is invalid or has expired.",
        )
    };
    // A mangled query (`expires=abc`) is a bad link like any other, answered in the envelope.
    let Ok(Query(query)) = query else {
        return Err(denied());
    };
    let (Some(expires), Some(signature)) = (query.expires, query.signature) else {
        return Err(denied());
    };
    let Some((index, extension)) = file.split_once('.') else {
        return Err(denied());
    };
    let index: u32 = index.parse().map_err(|_| denied())?;
    let path = LinkSigner::path(&job_id, index, extension);
    if !state.signer().verify(&path, expires, &signature, now_s()) {
        return Err(denied());
    }
    let Some((row, bytes)) = state.jobs().image(&job_id, index).await? else {
        return Err(ApiFailure::new(
            ErrorCode::NotFound,
            "The image has expired or was deleted.",
        ));
    };
    let mime = if row.format == "png" {
        "image/png"
    } else {
        "image/jpeg"
    };
    let mut response = bytes.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=3600"),
    );
    Ok(response)
}
