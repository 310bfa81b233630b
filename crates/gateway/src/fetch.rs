//! Re-hosting: an upstream's image (link or base64) as bytes, with its size and format.

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;

use crate::Delivered;
use crate::error::ImageError;
use crate::net::{self, FetchError, FetchPolicy};

/// Pictures bigger than this from a provider are refused rather than stored.
pub const MAX_IMAGE_BYTES: usize = 64 << 20;
/// One download of an upstream's image, redirects included.
pub const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(120);
/// Redirects followed from an upstream's image link (storage services use them), each hop
/// checked like the link itself.
const MAX_REDIRECTS: usize = 3;

/// How an upstream's image links are fetched: the shared address rule, with the upstream's own
/// origin trusted (the operator configured it) and private addresses refused unless the
/// upstream's config allows them.
pub fn policy(config: &crate::UpstreamConfig) -> FetchPolicy {
    FetchPolicy {
        max_redirects: MAX_REDIRECTS,
        allow_private: config.allow_private_image_urls,
        ..FetchPolicy::new(MAX_IMAGE_BYTES, DOWNLOAD_TIMEOUT)
    }
    .trust_origin_of(&config.base_url)
}

/// The most base64 text that can decode to `bytes` bytes (padding included).
fn base64_len(bytes: usize) -> usize {
    bytes.div_ceil(3) * 4
}

/// The image of one upstream `data` entry or event. `rehost = false` keeps a link as a link
/// (base64 has nowhere else to live, so it is always stored).
pub async fn deliver(
    policy: &FetchPolicy,
    url: Option<&str>,
    b64: Option<&str>,
    size: Option<&str>,
    rehost: bool,
) -> Result<Delivered, ImageError> {
    let (width, height) = size.and_then(parse_size).unwrap_or((0, 0));
    if let (Some(url), false) = (url, rehost) {
        return Ok(Delivered {
            bytes: None,
            url: Some(url.to_string()),
            width,
            height,
            format: extension_of(url),
        });
    }
    let bytes = match (b64, url) {
        // Measured before decoding, so an oversized picture costs no second copy.
        (Some(b64), _) if b64.trim().len() > base64_len(policy.max_bytes) => {
            return Err(ImageError::TooLarge(policy.max_bytes));
        }
        (Some(b64), _) => Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|e| ImageError::Base64(e.to_string()))?,
        ),
        (None, Some(url)) => download(policy, url).await?,
        (None, None) => return Err(ImageError::Missing),
    };
    let format = image::guess_format(&bytes).map_err(|_| ImageError::NotAPicture)?;
    let (width, height) = if width > 0 {
        (width, height)
    } else {
        image::ImageReader::with_format(std::io::Cursor::new(&bytes), format)
            .into_dimensions()
            .map_err(|e| ImageError::Unreadable(e.to_string()))?
    };
    Ok(Delivered {
        bytes: Some(bytes),
        url: None,
        width,
        height,
        format: format
            .extensions_str()
            .first()
            .unwrap_or(&"bin")
            .to_string(),
    })
}

async fn download(policy: &FetchPolicy, url: &str) -> Result<Bytes, ImageError> {
    net::fetch(url, policy).await.map_err(|error| match error {
        FetchError::TooLarge(max) => ImageError::TooLarge(max),
        error => ImageError::Fetch(error.to_string()),
    })
}

pub fn parse_size(text: &str) -> Option<(u32, u32)> {
    let (w, h) = text.split_once(['x', 'X'])?;
    Some((w.trim().parse().ok()?, h.trim().parse().ok()?))
}

fn extension_of(url: &str) -> String {
    let path = url.split(['?', '#']).next().unwrap_or(url).to_lowercase();
    for ext in ["png", "webp", "jpeg", "jpg"] {
        if path.ends_with(&format!(".{ext}")) {
            return if ext == "jpg" {
                "jpeg".into()
            } else {
                ext.into()
            };
        }
    }
    "jpeg".into()
}
