//! What a repository holds at one commit: `GET {endpoint}/api/models/{repo}/revision/{rev}?blobs=true`.

use serde::Deserialize;

use crate::error::{PullError, Result};

#[derive(Debug, Clone, Deserialize)]
pub struct Listing {
    /// The commit the revision resolved to; every file is fetched from it.
    pub sha: String,
    pub siblings: Vec<Sibling>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Sibling {
    /// The path inside the repository, `/`-separated.
    pub rfilename: String,
    #[serde(default)]
    pub size: Option<u64>,
    /// Git's blob id (SHA-1 of `blob {len}\0{content}`), for files stored in git.
    #[serde(default, rename = "blobId")]
    pub blob_id: Option<String>,
    /// Set for files stored in LFS (weights): their SHA-256 and size.
    #[serde(default)]
    pub lfs: Option<Lfs>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Lfs {
    pub sha256: String,
    pub size: u64,
}

impl Sibling {
    pub fn size(&self) -> Option<u64> {
        self.lfs.as_ref().map(|l| l.size).or(self.size)
    }
}

pub async fn fetch(
    http: &reqwest::Client,
    endpoint: &str,
    token: Option<&str>,
    repo: &str,
    revision: &str,
) -> Result<Listing> {
    let url = format!("{endpoint}/api/models/{repo}/revision/{revision}?blobs=true");
    let mut request = http.get(&url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request
        .send()
        .await
        .map_err(|source| PullError::Transport {
            url: url.clone(),
            source,
        })?;
    match response.status().as_u16() {
        200 => {}
        401 | 403 => {
            return Err(PullError::Unauthorized {
                repo: repo.into(),
                status: response.status().as_u16(),
            });
        }
        404 => {
            return Err(PullError::NotFound {
                endpoint: endpoint.into(),
                repo: repo.into(),
                revision: revision.into(),
            });
        }
        status => return Err(PullError::Http { url, status }),
    }
    response
        .json::<Listing>()
        .await
        .map_err(|e| PullError::Protocol(format!("the listing of {repo}: {e}")))
}
