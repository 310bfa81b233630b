//! The one mapping from failures to HTTP: every error is an [`ErrorCode`] (status, code and
//! type come from its table), a message, and the offending field. The body is written by the
//! request-id layer, which knows the id the message must end with.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use seedbed_core::CoreError;
use seedbed_types::ErrorCode;

#[derive(Debug, Clone)]
pub struct ApiFailure {
    pub code: ErrorCode,
    pub message: String,
    pub param: Option<String>,
    pub retry_after_s: Option<u64>,
}

impl ApiFailure {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            param: None,
            retry_after_s: None,
        }
    }

    pub fn param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidParameter, message).param(param)
    }

    pub fn unauthorized() -> Self {
        Self::new(
            ErrorCode::AuthenticationError,
            "The API key in the request is missing or invalid.",
        )
    }

    pub fn internal() -> Self {
        Self::new(
            ErrorCode::InternalServiceError,
            "The service encountered an unexpected internal error.",
        )
    }
}

impl From<CoreError> for ApiFailure {
    fn from(error: CoreError) -> Self {
        let message = error.to_string();
        match error {
            CoreError::MissingParameter { param } => {
                Self::new(ErrorCode::MissingParameter, message).param(param)
            }
            CoreError::InvalidParameter { param, .. } => {
                Self::new(ErrorCode::InvalidParameter, message).param(param)
            }
            CoreError::ModelNotFound { .. } => {
                Self::new(ErrorCode::ModelNotFound, message).param("model")
            }
            CoreError::JobNotFound { .. } => Self::new(ErrorCode::NotFound, message),
            CoreError::QueueFull { retry_after_s, .. } => Self {
                retry_after_s: Some(retry_after_s),
                ..Self::new(ErrorCode::ServerOverloaded, message)
            },
            CoreError::RateLimited { retry_after_s, .. } => Self {
                retry_after_s: Some(retry_after_s),
                ..Self::new(ErrorCode::RateLimitExceeded, message)
            },
            CoreError::QuotaExceeded { .. } => Self::new(ErrorCode::QuotaExceeded, message),
            CoreError::ModelLoad { .. } => {
                Self::new(ErrorCode::ModelLoadFailed, message).param("model")
            }
            // 5xx bodies reveal nothing internal; the log has the detail.
            CoreError::Storage(_) | CoreError::Internal(_) => {
                tracing::error!(%error, "internal error");
                Self::internal()
            }
        }
    }
}

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        metrics::counter!("seedbed_errors_total", "code" => self.code.as_str()).increment(1);
        let mut response = (status, [(header::CONTENT_TYPE, "application/json")]).into_response();
        if let Some(seconds) = self.retry_after_s {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        // Upstream clients read this to decide on retries.
        // A model that cannot load will not load on a retry either.
        let retry =
            matches!(self.code.status(), 429 | 500..) && self.code != ErrorCode::ModelLoadFailed;
        response.headers_mut().insert(
            "x-should-retry",
            HeaderValue::from_static(if retry { "true" } else { "false" }),
        );
        response.extensions_mut().insert(self);
        response
    }
}
