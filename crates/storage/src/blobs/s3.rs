//! `s3://BUCKET/PREFIX`: an S3 bucket (AWS or any S3-compatible server) through object_store.

use std::sync::{Arc, Once};

use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as StorePath;
use object_store::prefix::PrefixStore;

use super::Blobs;
use crate::error::{Result, StorageError};

pub(super) const SCHEME: &str = "s3://";

const EXPECTED: &str =
    "s3://BUCKET or s3://BUCKET/PREFIX, a bucket name then an optional key prefix";

/// How to reach an S3-compatible store when not from the AWS_* variables.
#[derive(Clone, Default)]
pub struct S3Settings {
    /// `http://127.0.0.1:9000`, say; `None` for AWS itself (from the region).
    pub endpoint: Option<String>,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub region: String,
    /// Needed for an `http://` endpoint; object_store refuses plain HTTP otherwise.
    pub allow_http: bool,
}

// By hand, so a settings value in a log never shows the secret key.
impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("access_key_id", &self.access_key_id)
            .field("region", &self.region)
            .field("allow_http", &self.allow_http)
            .finish_non_exhaustive()
    }
}

pub(super) fn from_env(url: &str) -> Result<Blobs> {
    build(url, AmazonS3Builder::from_env())
}

pub(super) fn from_settings(url: &str, settings: &S3Settings) -> Result<Blobs> {
    let mut builder = AmazonS3Builder::new()
        .with_access_key_id(&settings.access_key_id)
        .with_secret_access_key(&settings.secret_access_key)
        .with_region(&settings.region)
        .with_allow_http(settings.allow_http);
    if let Some(endpoint) = &settings.endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    build(url, builder)
}

fn build(url: &str, builder: AmazonS3Builder) -> Result<Blobs> {
    let (bucket, prefix) = parse(url)?;
    use_ring_for_tls();
    let store = builder.with_bucket_name(bucket).build()?;
    // Keys are the same on every backend ("images/job_1/0.jpeg"); the prefix only decides
    // where they land in the bucket, so one bucket can hold several deployments.
    let store: Arc<dyn ObjectStore> = match prefix {
        Some(prefix) => Arc::new(PrefixStore::new(store, prefix)),
        None => Arc::new(store),
    };
    Ok(Blobs {
        store,
        name: url.into(),
    })
}

/// The bucket, and the key prefix if there is one (slashes around it ignored).
fn parse(url: &str) -> Result<(&str, Option<StorePath>)> {
    let invalid = || StorageError::InvalidUrl {
        what: "blob store",
        url: url.to_string(),
        expected: EXPECTED,
    };
    let rest = url.strip_prefix(SCHEME).ok_or_else(invalid)?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    // Query strings and credentials in the URL would be silently ignored: refuse them.
    if bucket.is_empty() || bucket.contains(['?', '#', '@', ':']) || prefix.contains(['?', '#']) {
        return Err(invalid());
    }
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() {
        return Ok((bucket, None));
    }
    // `parse` refuses empty segments ("a//b") and "." / "..", which S3 would store literally.
    let prefix = StorePath::parse(prefix).map_err(|_| invalid())?;
    Ok((bucket, Some(prefix)))
}

/// object_store's S3 client is reqwest 0.13 built without a crypto provider (see the root
/// Cargo.toml): give rustls ring, the one the rest of the workspace already links, as the
/// process default. Another part of the process may have installed one first; that one is
/// kept, which is why the result is ignored.
fn use_ring_for_tls() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_and_prefix_from_the_url() {
        let (bucket, prefix) = parse("s3://images").unwrap();
        assert_eq!((bucket, prefix), ("images", None));
        let (bucket, prefix) = parse("s3://images/").unwrap();
        assert_eq!((bucket, prefix), ("images", None));
        let (bucket, prefix) = parse("s3://images/prod/eu/").unwrap();
        assert_eq!(bucket, "images");
        assert_eq!(prefix.unwrap().as_ref(), "prod/eu");
    }

    #[test]
    fn urls_without_a_bucket_are_refused_by_name() {
        for url in [
            "s3://",
            "s3:///prefix",
            "s3://b?x=1",
            "s3://key:secret@b",
            "s3://b/a//c",
        ] {
            let error = parse(url).unwrap_err().to_string();
            assert!(error.contains(url), "{error}");
            assert!(error.contains("s3://BUCKET/PREFIX"), "{error}");
        }
    }

    #[test]
    fn settings_debug_hides_the_secret() {
        let settings = S3Settings {
            secret_access_key: "hunter2".into(),
            ..S3Settings::default()
        };
        assert!(!format!("{settings:?}").contains("hunter2"));
    }
}
