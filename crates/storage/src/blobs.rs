//! Image bytes, by key, in an `object_store`.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::error::{Result, StorageError};

#[derive(Clone)]
pub struct Blobs {
    store: Arc<dyn ObjectStore>,
}

impl std::fmt::Debug for Blobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Blobs({})", self.store)
    }
}

impl Blobs {
    /// `file:///abs/dir` or a plain path: a local folder (created if missing). Other schemes
    /// (`s3://`) need a build with that object_store backend.
    pub fn open(url: &str) -> Result<Self> {
        let path = match url.strip_prefix("file://") {
            Some(path) => path,
            None if url.contains("://") => {
                return Err(StorageError::UnsupportedUrl {
                    what: "blob store",
                    url: url.to_string(),
                    hint: "this build stores blobs in a local folder (file:///path)",
                });
            }
            None => url,
        };
        Self::local(Path::new(path))
    }

    pub fn local(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        // Writes go to a temporary file renamed into place: a crash never leaves half a file.
        // Empty folders (a job's inputs once deleted) are removed with their last file.
        let store = LocalFileSystem::new_with_prefix(dir)?.with_automatic_cleanup(true);
        Ok(Self {
            store: Arc::new(store),
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

    pub async fn delete(&self, key: &str) -> Result<()> {
        match self.store.delete(&StorePath::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_get_delete_in_a_local_folder() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(&format!("file://{}", dir.path().display())).unwrap();
        blobs
            .put("images/job_1/0.jpeg", Bytes::from_static(b"abc"))
            .await
            .unwrap();
        assert!(dir.path().join("images/job_1/0.jpeg").is_file());
        let got = blobs.get("images/job_1/0.jpeg").await.unwrap();
        assert_eq!(got.as_deref(), Some(&b"abc"[..]));
        blobs.delete("images/job_1/0.jpeg").await.unwrap();
        assert_eq!(blobs.get("images/job_1/0.jpeg").await.unwrap(), None);
        blobs.delete("images/job_1/0.jpeg").await.unwrap();
        for key in ["inputs/job_a/0", "inputs/job_a/1", "inputs/job_b/0"] {
            blobs.put(key, Bytes::from_static(b"x")).await.unwrap();
        }
        let mut folders = blobs.folders("inputs").await.unwrap();
        folders.sort();
        assert_eq!(folders, ["job_a", "job_b"]);
        assert_eq!(blobs.delete_prefix("inputs/job_a").await.unwrap(), 2);
        assert_eq!(blobs.folders("inputs").await.unwrap(), ["job_b"]);
        assert_eq!(blobs.delete_prefix("inputs/job_none").await.unwrap(), 0);
        let error = Blobs::open("s3://bucket/x").unwrap_err().to_string();
        assert!(error.contains("s3://bucket/x"), "{error}");
    }
}
