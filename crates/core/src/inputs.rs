//! Reference images (`image`): data URIs decoded, URLs fetched within limits, every picture
//! checked before a job is written.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use futures::StreamExt;

use crate::error::{CoreError, Result};

#[derive(Debug, Clone, PartialEq)]
pub enum ReferenceSource {
    Data(Bytes),
    Url(String),
}

/// Bounds on reference images (the current BytePlus limits by default).
#[derive(Debug, Clone)]
pub struct InputPolicy {
    pub max_bytes: usize,
    pub max_pixels: u64,
    pub fetch_timeout: Duration,
    /// Fetch URLs that resolve to loopback, private or link-local addresses (off by default:
    /// a public server must not be a proxy into its own network).
    pub allow_private_urls: bool,
}

impl Default for InputPolicy {
    fn default() -> Self {
        Self {
            max_bytes: 30 * 1024 * 1024,
            max_pixels: 36_000_000,
            fetch_timeout: Duration::from_secs(20),
            allow_private_urls: false,
        }
    }
}

const FORMATS: [&str; 8] = ["jpeg", "jpg", "png", "webp", "bmp", "tiff", "gif", "heic"];

impl ReferenceSource {
    /// `data:image/<fmt>;base64,<b64>` (lowercase format, as upstream requires) or an
    /// `http(s)` URL.
    pub fn parse(item: &str) -> Result<Self> {
        if let Some(rest) = item.strip_prefix("data:") {
            let Some((header, payload)) = rest.split_once(',') else {
                return Err(bad("a data URI needs a comma before its base64 payload."));
            };
            let Some(format) = header
                .strip_prefix("image/")
                .and_then(|h| h.strip_suffix(";base64"))
            else {
                return Err(bad(
                    "a data URI must look like data:image/<format>;base64,<data>.",
                ));
            };
            if format != format.to_ascii_lowercase() {
                return Err(bad(&format!(
                    "the data URI format `image/{format}` must be lowercase."
                )));
            }
            if !FORMATS.contains(&format) {
                return Err(bad(&format!(
                    "image format `{format}` is not one of {}.",
                    FORMATS.join(", ")
                )));
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(payload.trim())
                .map_err(|e| bad(&format!("the data URI is not valid base64: {e}.")))?;
            return Ok(Self::Data(bytes.into()));
        }
        if item.starts_with("http://") || item.starts_with("https://") {
            return Ok(Self::Url(item.to_string()));
        }
        Err(bad(
            "each image must be an http(s) URL or a data:image/...;base64 URI.",
        ))
    }
}

fn bad(message: &str) -> CoreError {
    CoreError::invalid("image", message)
}

/// Load and check every reference; returns the file bytes to store with the job.
pub async fn load(sources: Vec<ReferenceSource>, policy: &InputPolicy) -> Result<Vec<Bytes>> {
    let mut loaded = Vec::with_capacity(sources.len());
    for source in sources {
        let bytes = match source {
            ReferenceSource::Data(bytes) => bytes,
            ReferenceSource::Url(url) => fetch(&url, policy).await?,
        };
        check_picture(&bytes, policy)?;
        loaded.push(bytes);
    }
    Ok(loaded)
}

/// Decode just enough to check the picture: a format we read, sides > 14 px, total pixels
/// and aspect ratio within upstream's bounds.
pub fn check_picture(bytes: &[u8], policy: &InputPolicy) -> Result<()> {
    if bytes.len() > policy.max_bytes {
        return Err(bad(&format!(
            "the image has {} bytes; the limit is {}.",
            bytes.len(),
            policy.max_bytes
        )));
    }
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| bad(&format!("the image cannot be read: {e}.")))?;
    if reader.format().is_none() {
        return Err(bad(
            "the image is not a JPEG, PNG, WebP, BMP, TIFF or GIF file.",
        ));
    }
    let (width, height) = reader
        .into_dimensions()
        .map_err(|e| bad(&format!("the image cannot be decoded: {e}.")))?;
    let pixels = u64::from(width) * u64::from(height);
    if width <= 14 || height <= 14 || pixels > policy.max_pixels {
        return Err(bad(&format!(
            "the image is {width}x{height}; each side must exceed 14 px and the total stay within {} pixels.",
            policy.max_pixels
        )));
    }
    let ratio = f64::from(width) / f64::from(height);
    if !(1.0 / 16.0..=16.0).contains(&ratio) {
        return Err(bad(&format!(
            "the image is {width}x{height}; its aspect ratio must be between 1:16 and 16:1."
        )));
    }
    Ok(())
}

async fn fetch(url: &str, policy: &InputPolicy) -> Result<Bytes> {
    let parsed = reqwest::Url::parse(url).map_err(|e| bad(&format!("bad image URL: {e}.")))?;
    let host = parsed
        .host_str()
        .ok_or_else(|| bad("the image URL has no host."))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = parsed.port_or_known_default().unwrap_or(80);
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| bad(&format!("the image host {host} cannot be resolved: {e}.")))?
        .collect();
    let Some(first) = addrs.first().copied() else {
        return Err(bad(&format!("the image host {host} has no address.")));
    };
    if !policy.allow_private_urls && addrs.iter().any(|a| !is_public(a.ip())) {
        return Err(bad(&format!(
            "the image URL points at a private or loopback address ({}); this server does not fetch those.",
            first.ip()
        )));
    }
    // Pin the checked address so a second DNS answer cannot redirect the fetch.
    let client = reqwest::Client::builder()
        .timeout(policy.fetch_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .resolve(&host, first)
        .build()
        .map_err(|e| CoreError::Internal(format!("http client: {e}")))?;
    let response = client
        .get(parsed)
        .send()
        .await
        .map_err(|e| bad(&format!("the image could not be downloaded: {e}.")))?;
    if !response.status().is_success() {
        return Err(bad(&format!(
            "the image could not be downloaded: HTTP {}.",
            response.status()
        )));
    }
    if response
        .content_length()
        .is_some_and(|n| n > policy.max_bytes as u64)
    {
        return Err(bad(&format!(
            "the image is larger than {} bytes.",
            policy.max_bytes
        )));
    }
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| bad(&format!("the image download failed: {e}.")))?;
        if body.len() + chunk.len() > policy.max_bytes {
            return Err(bad(&format!(
                "the image is larger than {} bytes.",
                policy.max_bytes
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.into())
}

fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        image::RgbImage::new(width, height)
            .write_to(&mut out, image::ImageFormat::Png)
            .unwrap();
        out.into_inner()
    }

    fn data_uri(bytes: &[u8], format: &str) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
        format!("data:image/{format};base64,{b64}")
    }

    #[test]
    fn data_uris_are_parsed_strictly() {
        let bytes = png(32, 32);
        let parsed = ReferenceSource::parse(&data_uri(&bytes, "png")).unwrap();
        assert_eq!(parsed, ReferenceSource::Data(bytes.clone().into()));
        for (item, needle) in [
            (data_uri(&bytes, "PNG"), "lowercase"),
            (data_uri(&bytes, "svg"), "not one of"),
            ("data:image/png;base64,@@@".to_string(), "base64"),
            ("data:text/plain,hi".to_string(), "data:image/"),
            ("ftp://x/y.png".to_string(), "http(s)"),
        ] {
            let message = ReferenceSource::parse(&item).unwrap_err().to_string();
            assert!(message.contains(needle), "{item}: {message}");
        }
        assert_eq!(
            ReferenceSource::parse("https://example.com/a.png").unwrap(),
            ReferenceSource::Url("https://example.com/a.png".into())
        );
    }

    #[test]
    fn pictures_are_checked() {
        let policy = InputPolicy::default();
        check_picture(&png(32, 32), &policy).unwrap();
        for (bytes, needle) in [
            (png(14, 32), "exceed 14"),
            (png(600, 20), "aspect ratio"),
            (b"not an image".to_vec(), "not a JPEG"),
        ] {
            let message = check_picture(&bytes, &policy).unwrap_err().to_string();
            assert!(message.contains(needle), "{message}");
        }
        let small = InputPolicy {
            max_bytes: 10,
            ..InputPolicy::default()
        };
        let message = check_picture(&png(32, 32), &small).unwrap_err().to_string();
        assert!(message.contains("limit is 10"), "{message}");
    }

    #[tokio::test]
    async fn private_addresses_are_refused() {
        let message = load(
            vec![ReferenceSource::Url("http://127.0.0.1:9/x.png".into())],
            &InputPolicy::default(),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(message.contains("private or loopback"), "{message}");
        assert!(!is_public("10.1.2.3".parse().unwrap()));
        assert!(!is_public("169.254.169.254".parse().unwrap()));
        assert!(!is_public("::1".parse().unwrap()));
        assert!(!is_public("::ffff:192.168.0.1".parse().unwrap()));
        assert!(is_public("93.184.216.34".parse().unwrap()));
    }
}
