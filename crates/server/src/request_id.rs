//! Every response carries `X-Client-Request-Id` (the client's, or one we make in the SDKs'
//! format), every log line of the request its span, every error body its id.

use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use seedbed_types::{ApiError, ErrorCode};
use tracing::Instrument;

use crate::error::ApiFailure;

pub const HEADER: &str = "x-client-request-id";

/// The request id, for handlers that put it in job rows.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// `%Y%m%d%H%M%S` + 20 random alphanumerics, as the Ark SDKs make them.
pub fn generate() -> String {
    seedbed_types::new_request_id()
}

pub async fn layer(mut request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_string)
        .unwrap_or_else(generate);
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = request.method().to_string();
    request.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!("request", request_id = %id, %method, %route);
    let started = Instant::now();
    let mut response = next.run(request).instrument(span.clone()).await;
    if let Some(failure) = response.extensions_mut().remove::<ApiFailure>() {
        let param = failure.param.as_deref();
        let mut body = ApiError::new(failure.code, &failure.message, param, &id);
        if let Some((status, code)) = &failure.upstream {
            body.error.code = code.clone();
            body.error.kind = ErrorCode::type_for_status(*status).into();
        }
        *response.body_mut() = Body::from(serde_json::to_vec(&body).unwrap_or_default());
        response
            .headers_mut()
            .remove(axum::http::header::CONTENT_LENGTH);
        span.in_scope(|| tracing::info!(code = failure.code_str(), message = %failure.message, "request failed"));
    }
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(HEADER, value);
    }
    let status = response.status().as_u16().to_string();
    metrics::counter!("seedbed_requests_total", "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("seedbed_request_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_look_like_the_sdks() {
        let id = generate();
        assert_eq!(id.len(), 34, "{id}");
        assert!(id[..14].chars().all(|c| c.is_ascii_digit()), "{id}");
    }
}
