//! Re-hosting: an upstream's image (link or base64) as bytes, with its size and format.

use base64::Engine as _;
use bytes::Bytes;
use futures::StreamExt;

use crate::Delivered;

/// Pictures bigger than this from a provider are refused rather than stored.
const MAX_IMAGE_BYTES: usize = 64 << 20;

/// The image of one upstream `data` entry or event. `rehost = false` keeps a link as a link
/// (base64 has nowhere else to live, so it is always stored).
pub async fn deliver(
    http: &reqwest::Client,
    url: Option<&str>,
    b64: Option<&str>,
    size: Option<&str>,
    rehost: bool,
) -> Result<Delivered, String> {
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
        (Some(b64), _) => Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|e| format!("the upstream's base64 image is invalid: {e}"))?,
        ),
        (None, Some(url)) => download(http, url).await?,
        (None, None) => return Err("the upstream sent an image without url or b64_json".into()),
    };
    let format = image::guess_format(&bytes)
        .map_err(|_| "the upstream's image is not a picture".to_string())?;
    let (width, height) = if width > 0 {
        (width, height)
    } else {
        image::ImageReader::with_format(std::io::Cursor::new(&bytes), format)
            .into_dimensions()
            .map_err(|e| format!("the upstream's image cannot be read: {e}"))?
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

async fn download(http: &reqwest::Client, url: &str) -> Result<Bytes, String> {
    let response = http
        .get(url)
        .send()
        .await
        .map_err(|e| format!("fetching the upstream's image: {e}"))?;
    if !response.status().is_success() {
        return Err(format!(
            "fetching the upstream's image: HTTP {}",
            response.status()
        ));
    }
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| format!("fetching the upstream's image: {e}"))?;
        if body.len() + chunk.len() > MAX_IMAGE_BYTES {
            return Err("the upstream's image is larger than 64 MiB".into());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(body))
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
