//! One file: fetched into `<path>.part` (resuming with `Range` after an interruption), checked
//! against the listing's size and hash, then renamed into place. A file never appears under its
//! final name unless it is complete and verified.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use sha1::Digest as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::PullProgress;
use crate::error::{PullError, Result, io};
use crate::listing::Sibling;

/// What a file must hash to.
#[derive(Debug, Clone)]
pub enum Expected {
    /// LFS files: SHA-256 of the content.
    Sha256(String),
    /// Files in git: SHA-1 of `blob {len}\0{content}`.
    GitBlob(String),
    None,
}

impl Expected {
    pub fn of(sibling: &Sibling) -> Self {
        match (&sibling.lfs, &sibling.blob_id) {
            (Some(lfs), _) => Self::Sha256(lfs.sha256.to_lowercase()),
            (None, Some(id)) => Self::GitBlob(id.to_lowercase()),
            (None, None) => Self::None,
        }
    }
}

/// Incremental hash matching [`Expected`].
enum Hasher {
    Sha256(sha2::Sha256),
    GitBlob(sha1::Sha1),
    None,
}

impl Hasher {
    fn new(expected: &Expected, size: u64) -> Self {
        match expected {
            Expected::Sha256(_) => Self::Sha256(sha2::Sha256::new()),
            Expected::GitBlob(_) => {
                let mut hasher = sha1::Sha1::new();
                hasher.update(format!("blob {size}\0").as_bytes());
                Self::GitBlob(hasher)
            }
            Expected::None => Self::None,
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        match self {
            Self::Sha256(h) => h.update(bytes),
            Self::GitBlob(h) => h.update(bytes),
            Self::None => {}
        }
    }

    fn check(self, expected: &Expected, path: &str) -> Result<()> {
        let (want, got) = match (self, expected) {
            (Self::Sha256(h), Expected::Sha256(want)) => (want, hex(&h.finalize())),
            (Self::GitBlob(h), Expected::GitBlob(want)) => (want, hex(&h.finalize())),
            _ => return Ok(()),
        };
        if *want == got {
            Ok(())
        } else {
            Err(PullError::Checksum {
                path: path.into(),
                expected: want.clone(),
                actual: got,
            })
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `path` already holds exactly this file.
pub async fn is_complete(path: &Path, size: u64, expected: &Expected) -> bool {
    match tokio::fs::metadata(path).await {
        Ok(meta) if meta.len() == size => hash_file(path, expected, size)
            .await
            .is_ok_and(|h| h.check(expected, "").is_ok()),
        _ => false,
    }
}

async fn hash_file(path: &Path, expected: &Expected, size: u64) -> Result<Hasher> {
    let mut hasher = Hasher::new(expected, size);
    let mut file = tokio::fs::File::open(path).await.map_err(io(path))?;
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer).await.map_err(io(path))?;
        if n == 0 {
            return Ok(hasher);
        }
        hasher.update(&buffer[..n]);
    }
}

pub struct Fetch<'a> {
    pub http: &'a reqwest::Client,
    pub url: String,
    pub token: Option<&'a str>,
    pub path: &'a str,
    pub size: u64,
    pub expected: Expected,
    pub dest: PathBuf,
    pub progress: &'a dyn PullProgress,
}

const ATTEMPTS: u32 = 4;

/// Download with retries; each retry resumes from what the last attempt wrote.
pub async fn fetch(job: &Fetch<'_>) -> Result<()> {
    let mut attempt = 1;
    loop {
        match fetch_once(job).await {
            Err(error) if error.is_transient() && attempt < ATTEMPTS => {
                tracing::warn!(file = job.path, %error, attempt, "download interrupted; resuming");
                tokio::time::sleep(Duration::from_millis(200 * 2u64.pow(attempt))).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

async fn fetch_once(job: &Fetch<'_>) -> Result<()> {
    let part = part_path(&job.dest);
    if let Some(parent) = part.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(io(parent))?;
    }
    let have = tokio::fs::metadata(&part).await.map_or(0, |m| m.len());
    let mut request = job.http.get(&job.url);
    if let Some(token) = job.token {
        request = request.bearer_auth(token);
    }
    if have > 0 {
        request = request.header("range", format!("bytes={have}-"));
    }
    let transport = |source| PullError::Transport {
        url: job.url.clone(),
        source,
    };
    let response = request.send().await.map_err(transport)?;
    let status = response.status().as_u16();
    let (mut file, mut hasher, start) = match status {
        206 if have > 0 && range_start(&response) == Some(have) => {
            let hasher = hash_file(&part, &job.expected, job.size).await?;
            let file = tokio::fs::OpenOptions::new()
                .append(true)
                .open(&part)
                .await
                .map_err(io(&part))?;
            (file, hasher, have)
        }
        // The part already holds everything.
        416 if have == job.size => return finish(job, &part).await,
        200 | 206 | 416 => {
            let file = tokio::fs::File::create(&part).await.map_err(io(&part))?;
            (file, Hasher::new(&job.expected, job.size), 0)
        }
        401 | 403 => {
            return Err(PullError::Unauthorized {
                repo: job.path.into(),
                status,
            });
        }
        _ => {
            return Err(PullError::Http {
                url: job.url.clone(),
                status,
            });
        }
    };
    if status == 416 || start == 0 && have > 0 && status == 206 {
        // A stale part longer than the file, or a range we did not ask for: start over.
        drop(file);
        return Box::pin(fetch_once(job)).await;
    }
    job.progress.file(job.path, job.size, start);
    let mut body = response.bytes_stream();
    let mut written = start;
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(error) => {
                // Keep what arrived (tokio writes in the background) so the retry resumes.
                file.flush().await.map_err(io(&part))?;
                return Err(transport(error));
            }
        };
        written += chunk.len() as u64;
        if written > job.size {
            drop(file);
            let _ = tokio::fs::remove_file(&part).await;
            return Err(PullError::Protocol(format!(
                "{} is longer than the listing's {} bytes",
                job.path, job.size
            )));
        }
        hasher.update(&chunk);
        file.write_all(&chunk).await.map_err(io(&part))?;
        job.progress.advance(chunk.len() as u64);
    }
    file.flush().await.map_err(io(&part))?;
    file.sync_all().await.map_err(io(&part))?;
    drop(file);
    if written < job.size {
        return Err(PullError::Http {
            url: format!("{} (ended at {written} of {} bytes)", job.url, job.size),
            status: 503,
        });
    }
    if let Err(error) = hasher.check(&job.expected, job.path) {
        let _ = tokio::fs::remove_file(&part).await;
        if start > 0 {
            // The part may have come from an older commit: one fresh download.
            tracing::warn!(
                file = job.path,
                "resumed file failed verification; downloading again"
            );
            return Box::pin(fetch_once(job)).await;
        }
        return Err(error);
    }
    tokio::fs::rename(&part, &job.dest)
        .await
        .map_err(io(&job.dest))?;
    job.progress.done(job.path);
    Ok(())
}

/// The first byte of a 206 body, from `Content-Range: bytes START-END/TOTAL`.
fn range_start(response: &reqwest::Response) -> Option<u64> {
    let value = response.headers().get("content-range")?.to_str().ok()?;
    value
        .strip_prefix("bytes ")?
        .split('-')
        .next()?
        .trim()
        .parse()
        .ok()
}

/// A part already complete (after a 416): verify and move it into place.
async fn finish(job: &Fetch<'_>, part: &Path) -> Result<()> {
    let hasher = hash_file(part, &job.expected, job.size).await?;
    if let Err(error) = hasher.check(&job.expected, job.path) {
        let _ = tokio::fs::remove_file(part).await;
        return Err(error);
    }
    tokio::fs::rename(part, &job.dest)
        .await
        .map_err(io(&job.dest))?;
    job.progress.done(job.path);
    Ok(())
}

pub fn part_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    dest.with_file_name(name)
}
