pub type Result<T, E = StorageError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),

    #[error("database migration: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),

    #[error("blob store: {0}")]
    Blob(#[from] object_store::Error),

    #[error("unsupported {what} URL `{url}`: {hint}")]
    UnsupportedUrl {
        what: &'static str,
        url: String,
        hint: &'static str,
    },

    #[error("invalid {what} URL `{url}`: expected {expected}")]
    InvalidUrl {
        what: &'static str,
        url: String,
        expected: &'static str,
    },

    #[error("blob store `{name}` is not usable ({hint}): {source}")]
    BlobStoreUnusable {
        name: String,
        hint: &'static str,
        source: object_store::Error,
    },

    #[error("{0}")]
    Io(#[from] std::io::Error),

    #[error("corrupt record {what}: {message}")]
    Corrupt { what: String, message: String },
}
