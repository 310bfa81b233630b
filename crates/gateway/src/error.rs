//! The gateway's own errors. Codes it answers with itself (an upstream that timed out, could
//! not be reached or broke off its stream) are in the one table, `seedbed_types::ErrorCode`;
//! an upstream's own codes are relayed as they came.

/// Setting the gateway up: a flag, a config table or a route that does not fit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    #[error("`{text}` is not {expected}")]
    Syntax {
        text: String,
        expected: &'static str,
    },
    #[error("unknown upstream kind `{0}`: ark, openai or seedbed")]
    UnknownKind(String),
    #[error("route {public}: no upstream named `{upstream}`")]
    UnknownUpstream { public: String, upstream: String },
    #[error("upstream {upstream}: {message}")]
    Client { upstream: String, message: String },
}

/// Why one image from an upstream could not be delivered (the image fails, not the job).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    #[error("the upstream sent an image without url or b64_json")]
    Missing,
    #[error("the upstream's base64 image is invalid: {0}")]
    Base64(String),
    #[error("the upstream's image is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the upstream's image is not a picture")]
    NotAPicture,
    #[error("the upstream's image cannot be read: {0}")]
    Unreadable(String),
    #[error("fetching the upstream's image: {0}")]
    Fetch(String),
}
