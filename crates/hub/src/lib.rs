//! `seedbed pull`: download a diffusers model folder from a Hugging Face-style hub into the
//! models directory, only the files the pipeline needs, resumable and verified.
//!
//! Files go to `<models>/.<name>.partial/` first; the folder appears under its name only when
//! every file is complete and verified, so `seedbed serve` never sees half a model.

mod download;
mod error;
#[cfg(feature = "fake-hub")]
pub mod fake;
mod listing;
mod select;

use std::path::{Path, PathBuf};

pub use error::{PullError, Result};
pub use listing::{Listing, Sibling};
pub use select::{components, select};

use crate::download::{Expected, Fetch, fetch, is_complete};
use crate::error::io;

pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
/// Written last into a pulled folder: where it came from.
pub const MANIFEST: &str = ".seedbed-pull.json";

#[derive(Debug, Clone)]
pub struct PullOptions {
    /// e.g. `https://huggingface.co` or a mirror.
    pub endpoint: String,
    pub token: Option<String>,
    /// `owner/name`.
    pub repo: String,
    /// Branch, tag or commit.
    pub revision: String,
    pub models_dir: PathBuf,
    /// The folder name; default the repository's name.
    pub name: Option<String>,
    /// e.g. `fp16`: prefer those weight files when the repository has them.
    pub variant: Option<String>,
}

/// Hooks for showing progress; all do nothing by default.
pub trait PullProgress: Send + Sync {
    /// What will be fetched: file count and bytes, and the bytes already in place.
    fn start(&self, _files: usize, _bytes: u64, _have: u64) {}
    /// A download begins (at `from` bytes when resuming).
    fn file(&self, _path: &str, _size: u64, _from: u64) {}
    fn advance(&self, _bytes: u64) {}
    fn done(&self, _path: &str) {}
}

pub struct NoProgress;
impl PullProgress for NoProgress {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullReport {
    pub dest: PathBuf,
    pub commit: String,
    pub files: usize,
    /// Bytes fetched over the network this time.
    pub downloaded: u64,
    /// Nothing was fetched: the folder already held this commit.
    pub up_to_date: bool,
}

/// reqwest drops the token on a redirect to another host or port, but keeps it when only the
/// scheme changes (`https://hub` to `http://hub`), which would send it in clear text: with a
/// token, such a redirect is refused.
fn redirect_policy(with_token: bool) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= 10 {
            return attempt.error("too many redirects");
        }
        let downgrade = attempt
            .previous()
            .last()
            .is_some_and(|previous| scheme_only_change(previous, attempt.url()));
        if with_token && downgrade {
            let message = format!(
                "refused a redirect to {}: it changes only the scheme, and the token would go along",
                attempt.url()
            );
            return attempt.error(message);
        }
        attempt.follow()
    })
}

fn scheme_only_change(previous: &reqwest::Url, next: &reqwest::Url) -> bool {
    previous.host_str() == next.host_str()
        && previous.port_or_known_default() == next.port_or_known_default()
        && previous.scheme() != next.scheme()
}

pub async fn pull(options: &PullOptions, progress: &dyn PullProgress) -> Result<PullReport> {
    let http = reqwest::Client::builder()
        .redirect(redirect_policy(options.token.is_some()))
        .connect_timeout(std::time::Duration::from_secs(15))
        .read_timeout(std::time::Duration::from_secs(60))
        .user_agent(concat!("seedbed/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| PullError::Protocol(e.to_string()))?;
    let endpoint = options.endpoint.trim_end_matches('/');
    let token = options.token.as_deref();
    let repo = options.repo.trim_matches('/');
    let name = options
        .name
        .clone()
        .unwrap_or_else(|| repo.rsplit('/').next().unwrap_or(repo).to_string());
    if !select::is_safe_path(&name) || name.contains('/') || name.starts_with('.') {
        return Err(PullError::Protocol(format!(
            "`{name}` cannot be a model folder name (use --name)"
        )));
    }
    let dest = options.models_dir.join(&name);
    let staging = options.models_dir.join(format!(".{name}.partial"));

    let listing = listing::fetch(&http, endpoint, token, repo, &options.revision).await?;
    if up_to_date(&dest, &listing.sha) {
        return Ok(PullReport {
            dest,
            commit: listing.sha,
            files: 0,
            downloaded: 0,
            up_to_date: true,
        });
    }
    let fetch_one = |sibling: &'_ Sibling| Fetch {
        http: &http,
        url: format!(
            "{endpoint}/{repo}/resolve/{}/{}",
            listing.sha, sibling.rfilename
        ),
        token,
        path: "",
        size: sibling.size(),
        expected: Expected::of(sibling),
        dest: staging.join(&sibling.rfilename),
        progress,
    };
    // model_index.json names the components, so it comes first.
    let index = listing
        .siblings
        .iter()
        .find(|s| s.rfilename == "model_index.json")
        .ok_or_else(|| PullError::NotAPipeline { repo: repo.into() })?;
    let mut index_fetch = fetch_one(index);
    index_fetch.path = "model_index.json";
    let mut downloaded = fetch(&index_fetch).await?;
    let index_path = staging.join("model_index.json");
    let model_index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).map_err(io(&index_path))?)
            .map_err(|e| PullError::Protocol(format!("model_index.json: {e}")))?;
    let wanted = select(
        repo,
        &listing.siblings,
        &components(&model_index),
        options.variant.as_deref(),
    )?;

    let total: u64 = wanted.iter().map(|s| s.size().unwrap_or(0)).sum();
    let mut todo = Vec::new();
    let mut have = 0;
    for sibling in &wanted {
        let target = staging.join(&sibling.rfilename);
        let (size, expected) = (sibling.size(), Expected::of(sibling));
        if is_complete(&target, size, &expected).await {
            have += size.unwrap_or(0);
            continue;
        }
        // A file unchanged since an earlier pull is copied, not downloaded again.
        let previous = dest.join(&sibling.rfilename);
        if is_complete(&previous, size, &expected).await {
            copy(&previous, &target)?;
            have += size.unwrap_or(0);
            continue;
        }
        todo.push(*sibling);
    }
    progress.start(wanted.len(), total, have);
    for sibling in todo {
        let mut job = fetch_one(sibling);
        job.path = &sibling.rfilename;
        downloaded += fetch(&job).await?;
    }

    let manifest = serde_json::json!({
        "repo": repo,
        "revision": options.revision,
        "commit": listing.sha,
        "endpoint": endpoint,
        "variant": options.variant,
        "files": wanted.iter().map(|s| &s.rfilename).collect::<Vec<_>>(),
    });
    let manifest_path = staging.join(MANIFEST);
    std::fs::write(
        &manifest_path,
        serde_json::to_vec_pretty(&manifest).unwrap_or_default(),
    )
    .map_err(io(&manifest_path))?;
    prune(&staging, &staging, &manifest["files"])?;
    swap_into_place(&staging, &dest)?;
    Ok(PullReport {
        dest,
        commit: listing.sha,
        files: wanted.len(),
        downloaded,
        up_to_date: false,
    })
}

/// Whether `dest` was pulled from this commit and still holds every file it listed.
fn up_to_date(dest: &Path, commit: &str) -> bool {
    let Ok(bytes) = std::fs::read(dest.join(MANIFEST)) else {
        return false;
    };
    let Ok(manifest) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return false;
    };
    manifest["commit"] == commit
        && manifest["files"].as_array().is_some_and(|files| {
            files
                .iter()
                .filter_map(|f| f.as_str())
                .all(|f| dest.join(f).is_file())
        })
}

/// Remove what an earlier, different pull left in the staging folder (other variants, parts).
fn prune(root: &Path, dir: &Path, keep: &serde_json::Value) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(io(dir))?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            prune(root, &path, keep)?;
            continue;
        }
        let relative = path
            .strip_prefix(root)
            .map(|p| p.to_string_lossy().replace('\\', "/"))
            .unwrap_or_default();
        let wanted = relative == MANIFEST
            || keep
                .as_array()
                .is_some_and(|files| files.iter().any(|f| f.as_str() == Some(&relative)));
        if !wanted {
            std::fs::remove_file(&path).map_err(io(&path))?;
        }
    }
    Ok(())
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to).map_err(io(to))?;
    }
    Ok(())
}

/// Replace `dest` with the finished `staging` folder; the old one is removed only after.
fn swap_into_place(staging: &Path, dest: &Path) -> Result<()> {
    if dest.exists() {
        let old = dest.with_file_name(format!(
            ".{}.old",
            dest.file_name().unwrap_or_default().to_string_lossy()
        ));
        let _ = std::fs::remove_dir_all(&old);
        std::fs::rename(dest, &old).map_err(io(dest))?;
        std::fs::rename(staging, dest).map_err(io(dest))?;
        let _ = std::fs::remove_dir_all(&old);
    } else {
        std::fs::rename(staging, dest).map_err(io(dest))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::scheme_only_change;

    #[test]
    fn only_a_scheme_change_on_the_same_host_and_port_keeps_the_token() {
        let url = |u: &str| reqwest::Url::parse(u).unwrap();
        let hub = url("https://hub.example:8443/a");
        assert!(scheme_only_change(&hub, &url("http://hub.example:8443/b")));
        assert!(!scheme_only_change(
            &hub,
            &url("https://hub.example:8443/b")
        ));
        assert!(!scheme_only_change(&hub, &url("http://cdn.example:8443/b")));
        assert!(!scheme_only_change(
            &url("https://hub.example/a"),
            &url("http://hub.example/b")
        ));
    }
}
