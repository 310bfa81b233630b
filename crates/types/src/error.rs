//! The error envelope and the one table of error codes, HTTP statuses and types.

use schemars::JsonSchema;
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
    /// A job or image that does not exist (or belongs to another key).
    NotFound,
    /// The request body is larger than the server accepts.
    PayloadTooLarge,
    /// The model exists but cannot be loaded (broken config, truncated weights).
    ModelLoadFailed,
    /// The job was interrupted (crash, kill) too many times and will not run again.
    RetriesExhausted,
    /// The job was cancelled before it produced an image.
    Cancelled,
    /// The request body did not finish arriving in time (a stalled or deliberately slow client).
    RequestTimeout,
    /// An upstream provider did not answer in time.
    UpstreamTimeout,
    /// No upstream provider could be used (refused connections, broken answers).
    UpstreamUnavailable,
    /// An upstream provider's event stream broke off before its end.
    UpstreamStreamBroken,
    /// The path exists but not with this method (the `Allow` header lists those it takes).
    MethodNotAllowed,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 19] = [
        Self::MissingParameter,
        Self::InvalidParameter,
        Self::AuthenticationError,
        Self::AccessDenied,
        Self::ModelNotFound,
        Self::RateLimitExceeded,
        Self::QuotaExceeded,
        Self::ServerOverloaded,
        Self::InternalServiceError,
        Self::NotFound,
        Self::PayloadTooLarge,
        Self::ModelLoadFailed,
        Self::RetriesExhausted,
        Self::Cancelled,
        Self::RequestTimeout,
        Self::UpstreamTimeout,
        Self::UpstreamUnavailable,
        Self::UpstreamStreamBroken,
        Self::MethodNotAllowed,
    ];

    /// The code whose string this is.
    pub fn parse(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == code)
    }

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
            Self::NotFound => (404, "ResourceNotFound", "NotFound"),
            Self::PayloadTooLarge => (413, "RequestEntityTooLarge", "BadRequest"),
            Self::ModelLoadFailed => (500, "ModelLoadFailed", "InternalServerError"),
            Self::RetriesExhausted => (
                500,
                "InternalServiceError.RetriesExhausted",
                "InternalServerError",
            ),
            Self::Cancelled => (409, "RequestCancelled", "Conflict"),
            Self::RequestTimeout => (408, "RequestTimeout", "RequestTimeout"),
            Self::UpstreamTimeout => (504, "UpstreamTimeout", "GatewayTimeout"),
            Self::UpstreamUnavailable => (502, "UpstreamUnavailable", "BadGateway"),
            Self::UpstreamStreamBroken => (502, "UpstreamStreamBroken", "BadGateway"),
            Self::MethodNotAllowed => (405, "MethodNotAllowed", "MethodNotAllowed"),
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

    /// The envelope's `type` for a status (for an upstream's code seedbed does not know).
    pub fn type_for_status(status: u16) -> &'static str {
        match status {
            400 | 413 | 422 => "BadRequest",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "NotFound",
            405 => "MethodNotAllowed",
            408 => "RequestTimeout",
            409 => "Conflict",
            429 => "TooManyRequests",
            502 => "BadGateway",
            503 => "ServiceUnavailable",
            504 => "GatewayTimeout",
            _ => "InternalServerError",
        }
    }
}

/// `{"error": {"code", "message", "param", "type"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ApiError {
    pub error: ErrorBody,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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
    fn codes_parse_back() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
        }
        assert_eq!(ErrorCode::parse("Nope"), None);
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
