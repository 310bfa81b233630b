use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(
        "{repo} at {revision} was not found on {endpoint} (check the repository name and revision)"
    )]
    NotFound {
        endpoint: String,
        repo: String,
        revision: String,
    },

    #[error(
        "{repo} is private, gated or missing (HTTP {status}): for a gated model accept its license on the hub, then pass --token or set HF_TOKEN"
    )]
    Unauthorized { repo: String, status: u16 },

    #[error("{repo} is not a diffusers pipeline (it has no model_index.json)")]
    NotAPipeline { repo: String },

    #[error(
        "{repo}: component `{component}` has only pickle (.bin) weights; seedbed loads safetensors only"
    )]
    OnlyPickle { repo: String, component: String },

    #[error(
        "{path}: expected {expected}, got {actual}; the partial file was removed, run the pull again"
    )]
    Checksum {
        path: String,
        expected: String,
        actual: String,
    },

    /// The file's size disagrees with the listing's (or, without one, with the hub's length).
    #[error(
        "{path}: expected {expected} bytes, got {}{actual} from {url}; the partial file was removed",
        if *at_least { "at least " } else { "" }
    )]
    Size {
        path: String,
        url: String,
        expected: u64,
        actual: u64,
        /// The hub was still sending when the download stopped.
        at_least: bool,
    },

    /// A 416 to a request without `Range`: asking again would get the same answer.
    #[error(
        "{path}: the hub answered 416 (Range Not Satisfiable) to a plain request for {url}; giving up"
    )]
    RangeNotSatisfiable { path: String, url: String },

    #[error("{url}: HTTP {status}")]
    Http { url: String, status: u16 },

    #[error("{url}: {source}")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },

    #[error("unexpected answer from the hub: {0}")]
    Protocol(String),

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl PullError {
    /// Whether a retry (resuming the partial file) may get further.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Http { status, .. } => *status == 408 || *status == 429 || *status >= 500,
            Self::Transport { .. } => true,
            _ => false,
        }
    }
}

pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> PullError {
    let path = path.into();
    move |source| PullError::Io { path, source }
}

pub type Result<T, E = PullError> = std::result::Result<T, E>;
