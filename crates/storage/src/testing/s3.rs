//! A real S3 server inside the test process: s3s serving a temporary folder on an ephemeral
//! port of 127.0.0.1, checking every request's SigV4 signature against one key pair. Tests of
//! anything that stores blobs run against actual S3 requests and errors, not our own mock.

use std::net::SocketAddr;
use std::path::Path;

use hyper_util::rt::TokioIo;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::{Blobs, S3Settings};

pub const ACCESS_KEY_ID: &str = "seedbed-test";
pub const SECRET_ACCESS_KEY: &str = "seedbed-test-secret";
pub const REGION: &str = "us-east-1";

/// Stops serving when dropped; its folder goes with it.
pub struct S3Server {
    addr: SocketAddr,
    root: TempDir,
    accept: JoinHandle<()>,
}

impl S3Server {
    /// Serve with these buckets, empty (s3s-fs keeps a bucket as a folder of the root).
    /// Needs a Tokio runtime: the accept loop is a task on it.
    pub async fn start(buckets: &[&str]) -> Self {
        let root = tempfile::tempdir().expect("a temporary folder for the S3 server");
        for bucket in buckets {
            std::fs::create_dir(root.path().join(bucket)).expect("creating a bucket folder");
        }
        let store = s3s_fs::FileSystem::new(root.path()).expect("s3s-fs over the folder");
        let mut service = S3ServiceBuilder::new(store);
        service.set_auth(SimpleAuth::from_single(ACCESS_KEY_ID, SECRET_ACCESS_KEY));
        let service = service.build();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding");
        let addr = listener.local_addr().expect("the bound address");
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let connection = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service.clone());
                // A client that hangs up mid-request is its own test's failure, not ours.
                tokio::spawn(async move {
                    let _ = connection.await;
                });
            }
        });
        Self { addr, root, accept }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The folder served: bucket `b`'s key `k` is the file `root/b/k`.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Settings that the server accepts.
    pub fn settings(&self) -> S3Settings {
        S3Settings {
            endpoint: Some(self.endpoint()),
            access_key_id: ACCESS_KEY_ID.into(),
            secret_access_key: SECRET_ACCESS_KEY.into(),
            region: REGION.into(),
            allow_http: true,
        }
    }

    /// `Blobs` for `s3://BUCKET/PREFIX` on this server.
    pub fn blobs(&self, url: &str) -> Blobs {
        Blobs::s3(url, &self.settings()).expect("Blobs for the test S3 server")
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.accept.abort();
    }
}
