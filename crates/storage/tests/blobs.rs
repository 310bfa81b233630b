//! One `Blobs` suite, run on every backend: a local folder and S3 (a real in-process S3
//! server from `seedbed_storage::testing`), so the two behave the same to their callers.

use bytes::Bytes;
use seedbed_storage::testing::S3Server;
use seedbed_storage::{Blobs, S3Settings, StorageError};

/// Everything callers rely on: missing blobs are `None` and deleting them is fine, folders
/// are listed one level deep, deleting a prefix counts what it removed.
async fn exercise(blobs: &Blobs) {
    blobs.check().await.unwrap();
    assert_eq!(blobs.get("images/job_1/0.jpeg").await.unwrap(), None);
    blobs
        .put("images/job_1/0.jpeg", Bytes::from_static(b"abc"))
        .await
        .unwrap();
    let got = blobs.get("images/job_1/0.jpeg").await.unwrap();
    assert_eq!(got.as_deref(), Some(&b"abc"[..]));
    // Every byte value survives, and a second put replaces the first.
    let binary: Bytes = (0..=255u8).collect();
    blobs
        .put("images/job_1/0.jpeg", binary.clone())
        .await
        .unwrap();
    assert_eq!(
        blobs.get("images/job_1/0.jpeg").await.unwrap(),
        Some(binary)
    );
    blobs.put("images/empty", Bytes::new()).await.unwrap();
    assert_eq!(blobs.get("images/empty").await.unwrap(), Some(Bytes::new()));

    blobs.delete("images/job_1/0.jpeg").await.unwrap();
    assert_eq!(blobs.get("images/job_1/0.jpeg").await.unwrap(), None);
    blobs.delete("images/job_1/0.jpeg").await.unwrap();

    for key in [
        "inputs/job_a/0",
        "inputs/job_a/1",
        "inputs/job_b/0",
        "inputs/loose",
    ] {
        blobs.put(key, Bytes::from_static(b"x")).await.unwrap();
    }
    // A blob directly under the prefix is not a folder.
    let mut folders = blobs.folders("inputs").await.unwrap();
    folders.sort();
    assert_eq!(folders, ["job_a", "job_b"]);
    assert_eq!(blobs.delete_prefix("inputs/job_a").await.unwrap(), 2);
    assert_eq!(blobs.folders("inputs").await.unwrap(), ["job_b"]);
    let kept = blobs.get("inputs/job_b/0").await.unwrap();
    assert_eq!(kept.as_deref(), Some(&b"x"[..]));
    assert_eq!(blobs.delete_prefix("inputs/job_none").await.unwrap(), 0);
    assert!(blobs.folders("nothing_here").await.unwrap().is_empty());
}

#[tokio::test]
async fn a_local_folder_passes_the_suite() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = Blobs::open(&format!("file://{}", dir.path().display())).unwrap();
    exercise(&blobs).await;
    assert!(dir.path().join("inputs/job_b/0").is_file());
}

#[tokio::test]
async fn s3_passes_the_suite() {
    let server = S3Server::start(&["images"]).await;
    exercise(&server.blobs("s3://images")).await;
    assert!(server.root().join("images/inputs/job_b/0").is_file());
}

#[tokio::test]
async fn an_s3_prefix_keeps_every_key_under_it() {
    let server = S3Server::start(&["images"]).await;
    exercise(&server.blobs("s3://images/prod/eu/")).await;
    assert!(
        server
            .root()
            .join("images/prod/eu/inputs/job_b/0")
            .is_file()
    );
    assert!(!server.root().join("images/inputs").exists());
    // Another prefix in the same bucket sees none of it; the bucket's top level sees the prefix.
    let staging = server.blobs("s3://images/staging");
    assert_eq!(staging.get("inputs/job_b/0").await.unwrap(), None);
    assert!(staging.folders("inputs").await.unwrap().is_empty());
    assert_eq!(staging.delete_prefix("inputs").await.unwrap(), 0);
    let top = server.blobs("s3://images").folders("").await.unwrap();
    assert_eq!(top, ["prod"]);
}

#[tokio::test]
async fn a_wrong_secret_key_is_refused() {
    let server = S3Server::start(&["images"]).await;
    let settings = S3Settings {
        secret_access_key: "not-the-secret".into(),
        ..server.settings()
    };
    let blobs = Blobs::s3("s3://images", &settings).unwrap();
    let error = blobs.check().await.unwrap_err();
    assert!(
        matches!(error, StorageError::BlobStoreUnusable { .. }),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains("s3://images"), "{message}");
    assert!(message.contains("access refused"), "{message}");
    // A refused read is an error, never mistaken for a missing blob.
    assert!(blobs.get("images/job_1/0.jpeg").await.is_err());
    assert!(blobs.put("k", Bytes::from_static(b"x")).await.is_err());
    assert!(!server.root().join("images/k").exists());
}

#[tokio::test]
async fn a_missing_bucket_is_named_at_check() {
    let server = S3Server::start(&["images"]).await;
    let blobs = server.blobs("s3://no-such-bucket/prod");
    let message = blobs.check().await.unwrap_err().to_string();
    assert!(message.contains("s3://no-such-bucket/prod"), "{message}");
    assert!(message.contains("no such bucket"), "{message}");
    // Only `check` is asserted: s3s-fs, unlike S3, makes the bucket's folder on a put.
}

#[test]
fn urls_it_cannot_use_are_refused_by_name() {
    for url in ["s3://", "s3:///prod"] {
        let error = Blobs::open(url).unwrap_err();
        assert!(
            matches!(error, StorageError::InvalidUrl { .. }),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(message.contains(url), "{message}");
        assert!(message.contains("s3://BUCKET/PREFIX"), "{message}");
    }
    let message = Blobs::open("gs://bucket/x").unwrap_err().to_string();
    assert!(message.contains("gs://bucket/x"), "{message}");
    assert!(message.contains("s3://BUCKET/PREFIX"), "{message}");
}

/// Takes a few seconds: object_store retries a refused connection (with backoff) before
/// giving up, for the listing and then for the probe.
#[tokio::test]
async fn an_unreachable_endpoint_is_named_at_check() {
    // A port that was free a moment ago: nothing answers there.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .unwrap();
    let settings = S3Settings {
        endpoint: Some(format!("http://{addr}")),
        access_key_id: "any".into(),
        secret_access_key: "any".into(),
        region: "us-east-1".into(),
        allow_http: true,
    };
    let blobs = Blobs::s3("s3://images", &settings).unwrap();
    let message = blobs.check().await.unwrap_err().to_string();
    assert!(message.contains("s3://images"), "{message}");
    assert!(message.contains("AWS_ENDPOINT_URL"), "{message}");
}
