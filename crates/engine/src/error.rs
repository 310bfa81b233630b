//! The engine's one error type. Every variant names what was wrong and where, so a user
//! pointing seedbed at a broken model folder learns which file and which tensor to fix.

use std::path::PathBuf;

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{}: not found", path.display())]
    MissingFile { path: PathBuf },

    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{}: invalid config: {message}", path.display())]
    Config { path: PathBuf, message: String },

    #[error(
        "{}: unsupported pipeline class `{class}`; supported: {supported}",
        path.display()
    )]
    UnsupportedPipeline {
        path: PathBuf,
        class: String,
        supported: String,
    },

    /// A weights file that cannot be read, or a tensor in it that is missing or has the
    /// wrong shape. `message` names the tensor.
    #[error("{}: {message}", path.display())]
    Weights { path: PathBuf, message: String },

    #[error("invalid {field}: {message}")]
    InvalidInput {
        field: &'static str,
        message: String,
    },

    #[error("generation cancelled")]
    Cancelled,

    #[error("computation failed: {0}")]
    Compute(#[from] candle_core::Error),
}

impl EngineError {
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::InvalidInput {
            field,
            message: message.into(),
        }
    }

    pub fn config(path: impl Into<PathBuf>, message: impl std::fmt::Display) -> Self {
        Self::Config {
            path: path.into(),
            message: message.to_string(),
        }
    }
}
