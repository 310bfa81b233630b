//! A stand-in for the Hugging Face hub on 127.0.0.1, serving model folders from disk through the
//! same two routes `pull` uses, with `Range` support and faults on demand. For tests only: no
//! test may reach the real hub.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt;
use sha1::Digest as _;

pub const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

#[derive(Default)]
struct Hub {
    repos: HashMap<String, PathBuf>,
    /// Requests for tokens: repos that answer 401 without `Authorization: Bearer <token>`.
    gated: HashMap<String, String>,
    /// Path -> bytes after which the next download of it is cut off (once).
    cut_after: HashMap<String, usize>,
    /// Paths served with one byte flipped.
    corrupt: Vec<String>,
    /// Paths answered 416 (Range Not Satisfiable) whatever the request.
    always_416: Vec<String>,
    /// Paths listed with this size instead of their own (`None`: no size at all).
    listed_size: HashMap<String, Option<u64>>,
    /// Paths listed with neither an LFS SHA-256 nor a git blob id.
    unhashed: Vec<String>,
    /// Paths served without `Content-Length` (chunked), so only the listing bounds them.
    chunked: Vec<String>,
    /// Every `resolve` request: (path, Range header).
    pub requests: Vec<(String, Option<String>)>,
}

/// A running fake hub; stops when dropped with the test's runtime.
#[derive(Clone)]
pub struct FakeHub {
    pub url: String,
    hub: Arc<Mutex<Hub>>,
}

impl FakeHub {
    pub async fn start() -> Self {
        let hub = Arc::new(Mutex::new(Hub::default()));
        let app = Router::new()
            .route(
                "/api/models/{owner}/{name}/revision/{revision}",
                get(listing),
            )
            .route("/{owner}/{name}/resolve/{revision}/{*path}", get(resolve))
            .with_state(hub.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, hub }
    }

    /// Serve the folder `dir` as repository `repo` (`owner/name`).
    pub fn add_repo(&self, repo: &str, dir: &Path) {
        self.hub().repos.insert(repo.into(), dir.into());
    }

    pub fn gate(&self, repo: &str, token: &str) {
        self.hub().gated.insert(repo.into(), token.into());
    }

    /// Cut the next download of `path` off after `bytes` bytes.
    pub fn cut_after(&self, path: &str, bytes: usize) {
        self.hub().cut_after.insert(path.into(), bytes);
    }

    pub fn corrupt(&self, path: &str) {
        self.hub().corrupt.push(path.into());
    }

    /// Answer every request for `path` with 416, as a broken hub or proxy might.
    pub fn always_416(&self, path: &str) {
        self.hub().always_416.push(path.into());
    }

    /// List `path` with `size` (`None`: without a size) while serving its real bytes.
    pub fn list_size(&self, path: &str, size: Option<u64>) {
        self.hub().listed_size.insert(path.into(), size);
    }

    /// List `path` without a hash, as some mirrors do.
    pub fn unhashed(&self, path: &str) {
        self.hub().unhashed.push(path.into());
    }

    /// Serve `path` without `Content-Length`.
    pub fn chunked(&self, path: &str) {
        self.hub().chunked.push(path.into());
    }

    /// `(path, Range)` of every file request so far.
    pub fn requests(&self) -> Vec<(String, Option<String>)> {
        self.hub().requests.clone()
    }

    fn hub(&self) -> std::sync::MutexGuard<'_, Hub> {
        self.hub.lock().unwrap()
    }
}

fn authorized(hub: &Hub, repo: &str, headers: &HeaderMap) -> bool {
    match hub.gated.get(repo) {
        None => true,
        Some(token) => {
            headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                == Some(&format!("Bearer {token}"))
        }
    }
}

async fn listing(
    State(hub): State<Arc<Mutex<Hub>>>,
    UrlPath((owner, name, _revision)): UrlPath<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let repo = format!("{owner}/{name}");
    let hub = hub.lock().unwrap();
    if !authorized(&hub, &repo, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let Some(dir) = hub.repos.get(&repo) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let mut siblings = Vec::new();
    for path in files(dir, dir) {
        let bytes = std::fs::read(dir.join(&path)).unwrap();
        // Like the hub: weights in LFS (SHA-256), small text files in git (blob SHA-1).
        let sibling = if path.ends_with(".safetensors") || path.ends_with(".bin") {
            let sha = hex(&sha2::Sha256::digest(&bytes));
            serde_json::json!({"rfilename": path, "size": bytes.len(), "blobId": "x",
                "lfs": {"sha256": sha, "size": bytes.len(), "pointerSize": 134}})
        } else {
            let mut git = sha1::Sha1::new();
            git.update(format!("blob {}\0", bytes.len()).as_bytes());
            git.update(&bytes);
            serde_json::json!({"rfilename": path, "size": bytes.len(), "blobId": hex(&git.finalize())})
        };
        let mut sibling = sibling;
        if hub.unhashed.contains(&path) {
            sibling.as_object_mut().unwrap().remove("blobId");
            sibling.as_object_mut().unwrap().remove("lfs");
        }
        if let Some(size) = hub.listed_size.get(&path) {
            let object = sibling.as_object_mut().unwrap();
            match size {
                Some(size) => {
                    object.insert("size".into(), (*size).into());
                    if let Some(lfs) = object.get_mut("lfs") {
                        lfs["size"] = (*size).into();
                    }
                }
                None => {
                    object.remove("size");
                }
            }
        }
        siblings.push(sibling);
    }
    axum::Json(serde_json::json!({"id": repo, "sha": COMMIT, "siblings": siblings})).into_response()
}

async fn resolve(
    State(hub): State<Arc<Mutex<Hub>>>,
    UrlPath((owner, name, revision, path)): UrlPath<(String, String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let repo = format!("{owner}/{name}");
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut hub = hub.lock().unwrap();
    hub.requests.push((path.clone(), range.clone()));
    if !authorized(&hub, &repo, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let Some(dir) = hub.repos.get(&repo) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if revision != COMMIT {
        return StatusCode::NOT_FOUND.into_response();
    }
    let Ok(mut bytes) = std::fs::read(dir.join(&path)) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if hub.corrupt.contains(&path)
        && let Some(last) = bytes.last_mut()
    {
        *last ^= 0xFF;
    }
    let total = bytes.len();
    // As RFC 9110 says a 416 should: the file's length, in `Content-Range: bytes */LENGTH`.
    let unsatisfiable = || {
        (
            StatusCode::RANGE_NOT_SATISFIABLE,
            [(header::CONTENT_RANGE, format!("bytes */{total}"))],
        )
            .into_response()
    };
    if hub.always_416.contains(&path) {
        return unsatisfiable();
    }
    let start = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|r| r.parse::<usize>().ok());
    let (status, body) = match start {
        Some(start) if start >= total => return unsatisfiable(),
        Some(start) => (StatusCode::PARTIAL_CONTENT, bytes[start..].to_vec()),
        None => (StatusCode::OK, bytes),
    };
    let content_range = format!("bytes {}-{}/{total}", start.unwrap_or(0), total - 1);
    if let Some(cut) = hub.cut_after.remove(&path) {
        // Send `cut` bytes, then fail the body: the client sees a connection dropped mid-file.
        let head = bytes::Bytes::from(body[..cut.min(body.len())].to_vec());
        let stream = futures::stream::iter([true, false]).then(move |first| {
            let head = head.clone();
            async move {
                if first {
                    return Ok::<_, std::io::Error>(head);
                }
                // Let the head reach the client before the connection breaks.
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                Err(std::io::Error::other("connection reset by the fake hub"))
            }
        });
        return (
            status,
            [(header::CONTENT_RANGE, content_range)],
            Body::from_stream(stream),
        )
            .into_response();
    }
    if hub.chunked.contains(&path) {
        let stream = futures::stream::once(async move { Ok::<_, std::io::Error>(body) });
        return (
            status,
            [(header::CONTENT_RANGE, content_range)],
            Body::from_stream(stream),
        )
            .into_response();
    }
    (status, [(header::CONTENT_RANGE, content_range)], body).into_response()
}

fn files(root: &Path, dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
    entries.sort_by_key(|e| e.path());
    for entry in entries {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files(root, &path));
        } else {
            let relative = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            out.push(relative);
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
