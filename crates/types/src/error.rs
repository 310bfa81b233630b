//! The error envelope and the one table of error codes, HTTP statuses and types.

use serde::{Deserialize, Serialize};

/// Every error code seedbed returns, with its HTTP status and `type` (the HTTP reason class).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    MissingParameter,
    InvalidParameter,
    AuthenticationError,
    AccessDenied,
    ModelNotFound,
    RateLimitExceeded,
    QuotaExceeded,
    ServerOverloaded,
    InternalServiceError,
}

impl ErrorCode {
    /// `(HTTP status, code string, type)`.
    pub fn table(self) -> (u16, &'static str, &'static str) {
        match self {
            Self::MissingParameter => (400, "MissingParameter", "BadRequest"),
            Self::InvalidParameter => (400, "InvalidParameter", "BadRequest"),
            Self::AuthenticationError => (401, "AuthenticationError", "Unauthorized"),
            Self::AccessDenied => (403, "AccessDenied", "Forbidden"),
            Self::ModelNotFound => (404, "InvalidEndpointOrModel.NotFound", "NotFound"),
            Self::RateLimitExceeded => (429, "ModelAccountIpmRateLimitExceeded", "TooManyRequests"),
            Self::QuotaExceeded => (429, "QuotaExceeded", "TooManyRequests"),
            Self::ServerOverloaded => (429, "ServerOverloaded", "TooManyRequests"),
            Self::InternalServiceError => (500, "InternalServiceError", "InternalServerError"),
        }
    }

    pub fn status(self) -> u16 {
        self.table().0
    }

    pub fn as_str(self) -> &'static str {
        self.table().1
    }

    pub fn type_name(self) -> &'static str {
        self.table().2
    }
}

/// `{"error": {"code", "message", "param", "type"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub error: ErrorBody,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
    /// The offending field, or `""` when there is none.
    #[serde(default)]
    pub param: String,
    #[serde(rename = "type", default)]
    pub kind: String,
}

impl ApiError {
    /// The envelope for `code`; the message ends with the request id as upstream's do.
    pub fn new(code: ErrorCode, message: &str, param: Option<&str>, request_id: &str) -> Self {
        Self {
            error: ErrorBody {
                code: code.as_str().to_string(),
                message: format!("{message} Request ID: {request_id}"),
                param: param.unwrap_or_default().to_string(),
                kind: code.type_name().to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_matches_upstream() {
        let error = ApiError::new(
            ErrorCode::InvalidParameter,
            "size 1x1 is below 921600 pixels.",
            Some("size"),
            "021",
        );
        assert_eq!(
            serde_json::to_string(&error).unwrap(),
            r#"{"error":{"code":"InvalidParameter","message":"size 1x1 is below 921600 pixels. Request ID: 021","param":"size","type":"BadRequest"}}"#
        );
        let auth = ApiError::new(
            ErrorCode::AuthenticationError,
            "the API key is missing or invalid.",
            None,
            "x",
        );
        assert_eq!(
            (auth.error.param.as_str(), auth.error.kind.as_str()),
            ("", "Unauthorized")
        );
        let parsed: ApiError =
            serde_json::from_str(r#"{"error":{"code":"C","message":"m"}}"#).unwrap();
        assert_eq!(parsed.error.param, "");
    }

    #[test]
    fn statuses_follow_the_sdk_exception_classes() {
        assert_eq!(ErrorCode::MissingParameter.status(), 400);
        assert_eq!(ErrorCode::AuthenticationError.status(), 401);
        assert_eq!(ErrorCode::ModelNotFound.status(), 404);
        assert_eq!(ErrorCode::ServerOverloaded.status(), 429);
        assert_eq!(ErrorCode::InternalServiceError.status(), 500);
    }
}
