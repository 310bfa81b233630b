//! Image bytes, by key, in an `object_store`: a local folder or an S3-compatible bucket.

mod s3;

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::error::{Result, StorageError};

pub use s3::S3Settings;

#[derive(Clone)]
pub struct Blobs {
    store: Arc<dyn ObjectStore>,
    /// The folder or URL it was opened with, for logs and error messages.
    name: Arc<str>,
}

impl std::fmt::Debug for Blobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Blobs({})", self.name)
    }
}

impl Blobs {
    /// `file:///abs/dir` or a plain path: a local folder (created if missing).
    /// `s3://BUCKET/PREFIX` (prefix optional): keys under PREFIX/ in an S3 bucket, reached
    /// through the standard AWS_* variables (AWS_ENDPOINT_URL and AWS_ALLOW_HTTP=true for a
    /// local S3-compatible server).
    pub fn open(url: &str) -> Result<Self> {
        if url.starts_with(s3::SCHEME) {
            return s3::from_env(url);
        }
        let path = match url.strip_prefix("file://") {
            Some(path) => path,
            None if url.contains("://") => {
                return Err(StorageError::UnsupportedUrl {
                    what: "blob store",
                    url: url.to_string(),
                    hint: "expected a folder, file:///path or s3://BUCKET/PREFIX",
                });
            }
            None => url,
        };
        Self::local(Path::new(path))
    }

    /// `s3://BUCKET/PREFIX` reached with explicit settings rather than the process's AWS_*
    /// variables (tests, or a caller that reads its own configuration).
    pub fn s3(url: &str, settings: &S3Settings) -> Result<Self> {
        s3::from_settings(url, settings)
    }

    pub fn local(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        // Writes go to a temporary file renamed into place: a crash never leaves half a file.
        // Empty folders (a job's inputs once deleted) are removed with their last file.
        let store = LocalFileSystem::new_with_prefix(dir)?.with_automatic_cleanup(true);
        Ok(Self {
            store: Arc::new(store),
            name: dir.display().to_string().into(),
        })
    }

    /// One cheap request (a delimited listing of the top level) so a server fails at start,
    /// with the URL and a likely cause, rather than on its first image: a missing bucket,
    /// refused credentials, an endpoint that does not answer. Listing is also what
    /// `folders` and `delete_prefix` need the credentials to allow.
    pub async fn check(&self) -> Result<()> {
        let Err(source) = self.store.list_with_delimiter(None).await else {
            return Ok(());
        };
        // object_store returns S3 listing failures untyped (no status to match on); reading
        // a key that need not exist fails the same way, typed by status, to name the cause.
        let probe = self.store.head(&StorePath::from(".seedbed-check")).await;
        Err(StorageError::BlobStoreUnusable {
            hint: unusable_hint(probe.err()),
            name: self.name.to_string(),
            source,
        })
    }

    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<()> {
        self.store
            .put(&StorePath::from(key), PutPayload::from_bytes(bytes))
            .await?;
        Ok(())
    }

    /// `None` when there is no such blob.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        match self.store.get(&StorePath::from(key)).await {
            Ok(result) => Ok(Some(result.bytes().await?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(error) => Err(error.into()),
        }
    }

    /// Delete every blob under `prefix/` (a job's input folder, say); returns how many.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<usize> {
        let prefix = StorePath::from(prefix);
        let mut listed = self.store.list(Some(&prefix));
        let mut deleted = 0;
        while let Some(meta) = listed.next().await {
            match self.store.delete(&meta?.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => deleted += 1,
                Err(error) => return Err(error.into()),
            }
        }
        Ok(deleted)
    }

    /// The names of the folders directly under `prefix/` (`inputs/` -> job ids).
    pub async fn folders(&self, prefix: &str) -> Result<Vec<String>> {
        let listed = self
            .store
            .list_with_delimiter(Some(&StorePath::from(prefix)))
            .await?;
        Ok(listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect())
    }

    /// When a blob under `prefix/` was last written: the newest, or `None` for an empty folder.
    pub async fn last_written(&self, prefix: &str) -> Result<Option<std::time::SystemTime>> {
        let prefix = StorePath::from(prefix);
        let mut listed = self.store.list(Some(&prefix));
        let mut newest = None;
        while let Some(meta) = listed.next().await {
            let written = std::time::SystemTime::from(meta?.last_modified);
            newest = newest.max(Some(written));
        }
        Ok(newest)
    }

    pub async fn delete(&self, key: &str) -> Result<()> {
        match self.store.delete(&StorePath::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }
}

/// The likely cause of a failed [`Blobs::check`], in the operator's terms, from the probe
/// read: not found while listing failed means no bucket (a missing key alone is fine).
fn unusable_hint(probe: Option<object_store::Error>) -> &'static str {
    match probe {
        Some(object_store::Error::NotFound { .. }) => "no such bucket or folder",
        Some(
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. },
        ) => {
            "access refused: check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, \
             and that the key may list, read and write the bucket"
        }
        _ => "unreachable or failing: check AWS_ENDPOINT_URL (and AWS_ALLOW_HTTP for http://)",
    }
}
