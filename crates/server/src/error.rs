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
    /// An upstream provider's own status and code, passed through unchanged (a gateway job).
    pub upstream: Option<(u16, String)>,
}

impl ApiFailure {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            param: None,
            retry_after_s: None,
            upstream: None,
        }
    }

    /// The failure a job's `Failed` event describes: our own code, or an upstream's status and
    /// code when the job ran at a provider.
    pub fn from_job_event(event: &seedbed_core::JobEvent) -> Option<Self> {
        let seedbed_core::JobEvent::Failed {
            code,
            message,
            status,
            param,
        } = event
        else {
            return None;
        };
        let known = ErrorCode::parse(code);
        let mut failure = Self::new(
            known.unwrap_or(ErrorCode::InternalServiceError),
            message.clone(),
        );
        failure.param = param.clone().filter(|p| !p.is_empty());
        if status.is_some() || known.is_none() {
            failure.upstream = Some((status.map_or(500, |s| s.status), code.clone()));
        }
        // The upstream's Retry-After goes on to the client with its status.
        failure.retry_after_s = status.and_then(|s| s.retry_after_s);
        Some(failure)
    }

    pub fn status(&self) -> u16 {
        self.upstream
            .as_ref()
            .map_or(self.code.status(), |(status, _)| *status)
    }

    pub fn code_str(&self) -> &str {
        self.upstream
            .as_ref()
            .map_or(self.code.as_str(), |(_, code)| code.as_str())
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
            StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        metrics::counter!("seedbed_errors_total", "code" => self.code_str().to_string())
            .increment(1);
        let mut response = (status, [(header::CONTENT_TYPE, "application/json")]).into_response();
        if let Some(seconds) = self.retry_after_s {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        // Upstream clients read this to decide on retries. A model that cannot load will not
        // load on a retry either, and a used-up quota does not refill by waiting.
        let final_refusal = matches!(
            self.code,
            ErrorCode::ModelLoadFailed | ErrorCode::QuotaExceeded
        );
        let retry = matches!(self.status(), 429 | 500..) && !final_refusal;
        response.headers_mut().insert(
            "x-should-retry",
            HeaderValue::from_static(if retry { "true" } else { "false" }),
        );
        response.extensions_mut().insert(self);
        response
    }
}
