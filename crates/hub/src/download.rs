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

/// Whether `path` already holds exactly this file: the listing's size and hash. A file the
/// listing gives neither for cannot be vouched for, so it is fetched again.
pub async fn is_complete(path: &Path, size: Option<u64>, expected: &Expected) -> bool {
    let Ok(meta) = tokio::fs::metadata(path).await else {
        return false;
    };
    if size.is_some_and(|size| meta.len() != size)
        || size.is_none() && matches!(expected, Expected::None)
    {
        return false;
    }
    hash_file(path, expected, meta.len())
        .await
        .is_ok_and(|h| h.check(expected, "").is_ok())
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
    /// The listing's size; `None` when it gives none (then the hub's length is checked).
    pub size: Option<u64>,
    pub expected: Expected,
    pub dest: PathBuf,
    pub progress: &'a dyn PullProgress,
}

/// Tries per file when the connection drops or the hub answers 5xx; each resumes.
const ATTEMPTS: u32 = 4;
/// Fresh downloads after a part turned out stale (a 416 or a range other than the one asked
/// for, or a resumed file failing verification).
const RESTARTS: u32 = 2;
/// Requests per file, all reasons together: a hub that keeps answering oddly ends the pull with
/// an error naming the file, never a loop.
const MAX_REQUESTS: u32 = 8;

/// What one request came to, short of an error.
enum Step {
    /// The file is verified and in place.
    Done,
    /// The part is stale (this is why): remove it and download the file from the start.
    Restart(String),
}

/// Download with retries; each retry resumes from what the last attempt wrote. Returns the
/// bytes received over the network.
pub async fn fetch(job: &Fetch<'_>) -> Result<u64> {
    let part = part_path(&job.dest);
    let (mut failures, mut restarts, mut received) = (0, 0, 0);
    for _ in 0..MAX_REQUESTS {
        match fetch_once(job, &part, &mut received).await {
            Ok(Step::Done) => return Ok(received),
            Ok(Step::Restart(why)) => {
                let _ = tokio::fs::remove_file(&part).await;
                if restarts == RESTARTS {
                    return Err(PullError::Protocol(format!(
                        "{}: {why}, again after downloading it afresh {RESTARTS} times ({})",
                        job.path, job.url
                    )));
                }
                tracing::warn!(
                    file = job.path,
                    why,
                    "the partial file is stale; downloading it again"
                );
                restarts += 1;
            }
            Err(error) if error.is_transient() && failures + 1 < ATTEMPTS => {
                failures += 1;
                tracing::warn!(file = job.path, %error, attempt = failures, "download interrupted; resuming");
                tokio::time::sleep(Duration::from_millis(200 * 2u64.pow(failures))).await;
            }
            Err(error) => return Err(error),
        }
    }
    Err(PullError::Protocol(format!(
        "{}: not complete after {MAX_REQUESTS} requests to {}",
        job.path, job.url
    )))
}

/// One request: a fresh download, or a resume with `Range` when a part is there. Every byte
/// of the body is counted in `received`, errors or not.
async fn fetch_once(job: &Fetch<'_>, part: &Path, received: &mut u64) -> Result<Step> {
    if let Some(parent) = part.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(io(parent))?;
    }
    let have = tokio::fs::metadata(part).await.map_or(0, |m| m.len());
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
    let content_range = content_range(&response);
    let start = match status {
        206 if have > 0 => match content_range {
            Some(ContentRange::Bytes { start, .. }) if start == have => have,
            _ => {
                return Ok(Step::Restart(format!(
                    "asked for bytes from {have}, the hub sent {}",
                    describe(content_range)
                )));
            }
        },
        200 => 0,
        // A range we did not ask for is not the file.
        206 => match content_range {
            Some(ContentRange::Bytes { start: 0, .. }) | None => 0,
            _ => {
                return Err(PullError::Protocol(format!(
                    "{}: the hub sent part of the file ({}) to a plain request ({})",
                    job.path,
                    describe(content_range),
                    job.url
                )));
            }
        },
        // 416 to a plain request: retrying cannot help, so say so instead of asking again.
        416 if have == 0 => {
            return Err(PullError::RangeNotSatisfiable {
                path: job.path.into(),
                url: job.url.clone(),
            });
        }
        416 => return after_416(job, part, have, content_range).await,
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
    // How long the whole file is: the listing's size, which the hub's lengths must agree
    // with, or (when the listing gives none) the hub's.
    let from_hub = match content_range {
        Some(ContentRange::Bytes {
            total: Some(total), ..
        }) if status == 206 => Some(total),
        _ => response.content_length().map(|length| start + length),
    };
    let total = match (job.size, from_hub) {
        (Some(size), Some(actual)) if size != actual => {
            let _ = tokio::fs::remove_file(part).await;
            return Err(job.size_error(size, actual, false));
        }
        (Some(size), _) => Some(size),
        (None, hub) => hub,
    };
    if total.is_none() && matches!(job.expected, Expected::None) {
        return Err(PullError::Protocol(format!(
            "{}: neither the listing nor the hub gives its size or hash, so it cannot be \
             verified ({})",
            job.path, job.url
        )));
    }
    // Git's blob hash starts with the length: without one, the file is hashed at the end.
    let mut hasher = match total {
        Some(total) if start > 0 => Some(hash_file(part, &job.expected, total).await?),
        Some(total) => Some(Hasher::new(&job.expected, total)),
        None => None,
    };
    let mut file = if start > 0 {
        tokio::fs::OpenOptions::new()
            .append(true)
            .open(part)
            .await
            .map_err(io(part))?
    } else {
        tokio::fs::File::create(part).await.map_err(io(part))?
    };
    job.progress.file(job.path, total.unwrap_or(0), start);
    let mut body = response.bytes_stream();
    let mut written = start;
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(error) => {
                // Keep what arrived (tokio writes in the background) so the retry resumes.
                file.flush().await.map_err(io(part))?;
                return Err(transport(error));
            }
        };
        written += chunk.len() as u64;
        *received += chunk.len() as u64;
        if let Some(total) = total
            && written > total
        {
            // Stop reading: a hub that sends too much may never stop.
            drop(file);
            let _ = tokio::fs::remove_file(part).await;
            return Err(job.size_error(total, written, true));
        }
        if let Some(hasher) = &mut hasher {
            hasher.update(&chunk);
        }
        file.write_all(&chunk).await.map_err(io(part))?;
        job.progress.advance(chunk.len() as u64);
    }
    file.flush().await.map_err(io(part))?;
    file.sync_all().await.map_err(io(part))?;
    drop(file);
    if let Some(total) = total
        && written < total
    {
        // The body ended early without a length to tell hyper it was cut: resume.
        return Err(PullError::Http {
            url: format!("{} (ended at {written} of {total} bytes)", job.url),
            status: 503,
        });
    }
    let hasher = match hasher {
        Some(hasher) => hasher,
        None => hash_file(part, &job.expected, written).await?,
    };
    if let Err(error) = hasher.check(&job.expected, job.path) {
        if start > 0 {
            // The part may have come from an older commit: one fresh download.
            return Ok(Step::Restart(format!(
                "the resumed file failed verification ({error})"
            )));
        }
        let _ = tokio::fs::remove_file(part).await;
        return Err(error);
    }
    promote(job, part).await?;
    Ok(Step::Done)
}

/// A 416 to `Range: bytes={have}-`: the hub has nothing from `have` on. When `have` is the
/// whole file the part may be complete (an earlier run was stopped before the rename): verify
/// it. Otherwise the part is longer than the file, or stale: start over.
async fn after_416(
    job: &Fetch<'_>,
    part: &Path,
    have: u64,
    content_range: Option<ContentRange>,
) -> Result<Step> {
    // `Content-Range: bytes */LENGTH`, when the hub gives it, is the file's length.
    let hub_total = match content_range {
        Some(ContentRange::Unsatisfied { total }) => Some(total),
        _ => None,
    };
    if let (Some(size), Some(total)) = (job.size, hub_total)
        && size != total
    {
        let _ = tokio::fs::remove_file(part).await;
        return Err(job.size_error(size, total, false));
    }
    let whole = job.size.or(hub_total) == Some(have);
    if !whole {
        return Ok(Step::Restart(format!(
            "the hub has no bytes from {have} on (HTTP 416)"
        )));
    }
    let hasher = hash_file(part, &job.expected, have).await?;
    if let Err(error) = hasher.check(&job.expected, job.path) {
        return Ok(Step::Restart(format!(
            "the complete-looking part failed verification ({error})"
        )));
    }
    promote(job, part).await?;
    Ok(Step::Done)
}

impl Fetch<'_> {
    /// `at_least`: the download stopped with the hub still sending.
    fn size_error(&self, expected: u64, actual: u64, at_least: bool) -> PullError {
        PullError::Size {
            path: self.path.into(),
            url: self.url.clone(),
            expected,
            actual,
            at_least,
        }
    }
}

/// A `Content-Range` answer header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ContentRange {
    /// `bytes START-END/TOTAL` (TOTAL may be `*`).
    Bytes { start: u64, total: Option<u64> },
    /// `bytes */TOTAL`, with a 416.
    Unsatisfied { total: u64 },
}

/// For messages: what range a response said it holds.
fn describe(range: Option<ContentRange>) -> String {
    match range {
        None => "no Content-Range".into(),
        Some(ContentRange::Bytes { start, total }) => match total {
            Some(total) => format!("bytes from {start} of {total}"),
            None => format!("bytes from {start}"),
        },
        Some(ContentRange::Unsatisfied { total }) => format!("no range of {total} bytes"),
    }
}

fn content_range(response: &reqwest::Response) -> Option<ContentRange> {
    let value = response.headers().get("content-range")?.to_str().ok()?;
    parse_content_range(value)
}

fn parse_content_range(value: &str) -> Option<ContentRange> {
    let (range, total) = value.trim().strip_prefix("bytes ")?.split_once('/')?;
    let total = total.trim();
    if range.trim() == "*" {
        return Some(ContentRange::Unsatisfied {
            total: total.parse().ok()?,
        });
    }
    let start = range.split_once('-')?.0.trim().parse().ok()?;
    let total = if total == "*" {
        None
    } else {
        Some(total.parse().ok()?)
    };
    Some(ContentRange::Bytes { start, total })
}

/// Move a verified part into place.
async fn promote(job: &Fetch<'_>, part: &Path) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::{ContentRange, parse_content_range};

    #[test]
    fn content_ranges() {
        assert_eq!(
            parse_content_range("bytes 10-99/100"),
            Some(ContentRange::Bytes {
                start: 10,
                total: Some(100)
            })
        );
        assert_eq!(
            parse_content_range("bytes 10-99/*"),
            Some(ContentRange::Bytes {
                start: 10,
                total: None
            })
        );
        assert_eq!(
            parse_content_range("bytes */100"),
            Some(ContentRange::Unsatisfied { total: 100 })
        );
        assert_eq!(parse_content_range("bytes */*"), None);
        assert_eq!(parse_content_range("items 1-2/3"), None);
        assert_eq!(parse_content_range("bytes x-2/3"), None);
    }
}
