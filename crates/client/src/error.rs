//! What can go wrong talking to a server; every variant keeps the request id so a failure can
//! be matched with the server's logs.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error envelope (or, for non-JSON bodies, code `HttpError`).
    #[error("{code} ({status}): {message}{}", api_suffix(message, request_id))]
    Api {
        status: u16,
        code: String,
        message: String,
        param: Option<String>,
        request_id: Option<String>,
        retry_after: Option<Duration>,
    },

    #[error("the server did not answer in time{}", suffix(request_id))]
    Timeout { request_id: Option<String> },

    #[error("cannot reach the server: {source}{}", suffix(request_id))]
    Connect {
        request_id: Option<String>,
        #[source]
        source: reqwest::Error,
    },

    #[error("unexpected response: {message}{}", suffix(request_id))]
    Decode {
        request_id: Option<String>,
        message: String,
    },

    #[error("the event stream broke: {message}{}", suffix(request_id))]
    Stream {
        request_id: Option<String>,
        message: String,
    },

    #[error("invalid base URL `{url}`: {message}")]
    InvalidBaseUrl { url: String, message: String },
}

/// Ark and seedbed end their messages with "Request ID: ..." already; don't say it twice.
fn api_suffix(message: &str, request_id: &Option<String>) -> String {
    match request_id {
        Some(id) if message.contains(id.as_str()) => String::new(),
        _ => suffix(request_id),
    }
}

/// `error: cause: cause...`, since reqwest's own message leaves out why.
fn with_sources(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

fn suffix(request_id: &Option<String>) -> String {
    match request_id {
        Some(id) => format!(" (request id: {id})"),
        None => String::new(),
    }
}

impl ClientError {
    pub fn request_id(&self) -> Option<&str> {
        match self {
            Self::Api { request_id, .. }
            | Self::Timeout { request_id }
            | Self::Connect { request_id, .. }
            | Self::Decode { request_id, .. }
            | Self::Stream { request_id, .. } => request_id.as_deref(),
            Self::InvalidBaseUrl { .. } => None,
        }
    }

    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The error code of an API error, e.g. `InvalidParameter`.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Whether trying again later may succeed (the client already did, up to its limit). A
    /// 429 for a used-up quota is final: waiting does not refill it.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Api { code, .. } if code == "QuotaExceeded" => false,
            Self::Api { status, .. } => *status == 408 || *status == 429 || *status >= 500,
            Self::Timeout { .. } | Self::Connect { .. } => true,
            _ => false,
        }
    }

    pub(crate) fn from_transport(error: reqwest::Error, request_id: &str) -> Self {
        let request_id = Some(request_id.to_string());
        if error.is_timeout() {
            Self::Timeout { request_id }
        } else if error.is_redirect() {
            // A refused or endless redirect is the server's answer, not a network fault: not
            // worth retrying. The source chain keeps the policy's reason, naming both URLs.
            Self::Decode {
                request_id,
                message: with_sources(&error),
            }
        } else if error.is_decode() || error.is_body() {
            Self::Stream {
                request_id,
                message: error.to_string(),
            }
        } else {
            Self::Connect {
                request_id,
                source: error,
            }
        }
    }
}
