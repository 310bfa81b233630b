//! The core's one error type. The server maps each variant to a Seedream error code and HTTP
//! status in one table; `param` names the offending request field.

use seedbed_storage::StorageError;

use crate::catalog::UnknownModel;

pub type Result<T, E = CoreError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("the request is missing the required parameter `{param}`.")]
    MissingParameter { param: &'static str },

    #[error("{message}")]
    InvalidParameter {
        param: &'static str,
        message: String,
    },

    /// `model` shows as the name alone; the message adds what is served and the nearest name.
    #[error("model `{model}` not found; {}", .model.hint())]
    ModelNotFound { model: UnknownModel },

    #[error("the job {id} does not exist or belongs to another key.")]
    JobNotFound { id: String },

    #[error("the queue is full ({queued} jobs waiting); retry after {retry_after_s} s.")]
    QueueFull { queued: u32, retry_after_s: u64 },

    #[error(
        "the images-per-minute limit of this key ({limit}) is exceeded; retry after {retry_after_s} s."
    )]
    RateLimited { limit: u32, retry_after_s: u64 },

    #[error(
        "the image quota of this key ({quota} images) is used up: {used} are billed or in queued and running jobs."
    )]
    QuotaExceeded { quota: u64, used: u64 },

    /// A model folder that exists but cannot be loaded (broken config, truncated weights).
    #[error("model {model} could not be loaded: {message}")]
    ModelLoad { model: String, message: String },

    #[error("{0}")]
    Storage(#[from] StorageError),

    #[error("{0}")]
    Internal(String),
}

impl CoreError {
    pub fn invalid(param: &'static str, message: impl Into<String>) -> Self {
        Self::InvalidParameter {
            param,
            message: message.into(),
        }
    }
}
