//! Reference images (`image`): data URIs decoded, URLs fetched within limits, every picture
//! checked before a job is written.

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;

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
    /// The whole download of a URL: DNS (itself at most 5 s), connecting and the body.
    pub fetch_timeout: Duration,
    /// Fetch URLs that resolve to loopback, private, link-local or other non-public addresses
    /// (off by default: a public server must not be a proxy into its own network; the rule is
    /// [`seedbed_gateway::net::is_public`], shared with the gateway's image downloads).
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

/// Reference pictures decoded at once, process-wide.
const CONCURRENT_DECODES: usize = 2;
static DECODES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(CONCURRENT_DECODES);

/// Load and check every reference; returns the file bytes to store with the job.
pub async fn load(sources: Vec<ReferenceSource>, policy: &InputPolicy) -> Result<Vec<Bytes>> {
    let mut loaded = Vec::with_capacity(sources.len());
    for source in sources {
        let bytes = match source {
            ReferenceSource::Data(bytes) => bytes,
            ReferenceSource::Url(url) => fetch(&url, policy).await?,
        };
        // A full decode of a large picture takes a while and up to ~0.5 GB: off the async
        // workers, and a few at a time, so many concurrent requests cannot multiply that.
        let _turn = DECODES
            .acquire()
            .await
            .map_err(|e| CoreError::Internal(format!("checking a reference image: {e}")))?;
        let (checked, rules) = (bytes.clone(), policy.clone());
        tokio::task::spawn_blocking(move || check_picture(&checked, &rules))
            .await
            .map_err(|e| CoreError::Internal(format!("checking a reference image: {e}")))??;
        loaded.push(bytes);
    }
    Ok(loaded)
}

/// Check the picture before a job is written: a format we read, sides > 14 px, total pixels
/// and aspect ratio within upstream's bounds, and the whole picture decodes. Decoding it all
/// (not just the header) is what catches a truncated or corrupt file here, as a 400 naming
/// `image`, instead of as a failed job (a 500) once the worker opens it.
pub fn check_picture(bytes: &[u8], policy: &InputPolicy) -> Result<()> {
    if bytes.len() > policy.max_bytes {
        return Err(bad(&format!(
            "the image has {} bytes; the limit is {}.",
            bytes.len(),
            policy.max_bytes
        )));
    }
    let reader = || {
        image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| bad(&format!("the image cannot be read: {e}.")))
    };
    let format = reader()?
        .format()
        .ok_or_else(|| bad("the image is not a JPEG, PNG, WebP, BMP, TIFF or GIF file."))?;
    let (width, height) = reader()?
        .into_dimensions()
        .map_err(|e| bad(&format!("the image is truncated or corrupt: {e}.")))?;
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
    // The header's size passed the pixel bound, so the decode is bounded by it too; the limits
    // hold the decoder to that size and to what such a picture needs (16 bytes a pixel covers
    // 32-bit float RGBA), whatever the file claims further in.
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(width);
    limits.max_image_height = Some(height);
    limits.max_alloc = Some(pixels * 16 + (16 << 20));
    if format == image::ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        return Err(bad(
            "the image is truncated or corrupt (the JPEG data ends before its end marker).",
        ));
    }
    let mut decoder = reader()?;
    decoder.limits(limits);
    decoder.decode().map_err(|e| {
        bad(&format!(
            "the image is truncated or corrupt ({} cannot be decoded: {e}).",
            format.extensions_str().first().unwrap_or(&"file")
        ))
    })?;
    Ok(())
}

/// Whether JPEG data runs on to its end-of-image marker. The JPEG decoder fills a scan that
/// stops early with grey instead of failing, so a file cut short would decode "fine" and reach
/// the model as a half-grey picture; walking the markers finds the missing end.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let mut i = 2; // after the start-of-image marker
    loop {
        let Some(&[0xFF, marker]) = bytes.get(i..i + 2) else {
            return false;
        };
        match marker {
            0xD9 => return true,
            // Fill bytes before a marker, and markers without a length.
            0xFF => i += 1,
            0x01 | 0xD0..=0xD7 => i += 2,
            _ => {
                let Some(&[hi, lo]) = bytes.get(i + 2..i + 4) else {
                    return false;
                };
                i += 2 + usize::from(u16::from_be_bytes([hi, lo]));
                if marker == 0xDA {
                    // Entropy-coded data runs to the next marker; FF00 is an escaped FF and
                    // FFD0..FFD7 are restart markers inside the scan.
                    loop {
                        match bytes.get(i..i + 2) {
                            None => return false,
                            Some(&[0xFF, next]) if next != 0 && !(0xD0..=0xD7).contains(&next) => {
                                break;
                            }
                            _ => i += 1,
                        }
                    }
                }
            }
        }
    }
}

/// Download a reference image with the gateway's shared SSRF rule ([`seedbed_gateway::net`]):
/// public addresses only (unless `allow_private_urls`), pinned to the checked address, no proxy
/// from the environment, no redirects (a redirect could point anywhere; clients can resolve
/// their own links), DNS and the whole download bounded by `fetch_timeout`.
async fn fetch(url: &str, policy: &InputPolicy) -> Result<Bytes> {
    use seedbed_gateway::net::{self, FetchError, FetchPolicy};
    let rules = FetchPolicy {
        allow_private: policy.allow_private_urls,
        ..FetchPolicy::new(policy.max_bytes, policy.fetch_timeout)
    };
    net::fetch(url, &rules).await.map_err(|error| match error {
        FetchError::Status(status) => bad(&format!(
            "the image could not be downloaded: HTTP {status}."
        )),
        FetchError::TooLarge(max) => bad(&format!("the image is larger than {max} bytes.")),
        FetchError::Timeout { .. } | FetchError::Transport(_) => {
            bad(&format!("the image could not be downloaded: {error}."))
        }
        other => bad(&format!("the image URL cannot be used: {other}.")),
    })
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

    fn jpeg(width: u32, height: u32) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        // Noise, so most of the file is the scan rather than its headers.
        image::RgbImage::from_fn(width, height, |x, y| {
            let n = (x * 7919 + y * 104_729).wrapping_mul(2_654_435_761) >> 7;
            image::Rgb([n as u8, (n >> 8) as u8, (n >> 16) as u8])
        })
        .write_to(&mut out, image::ImageFormat::Jpeg)
        .unwrap();
        out.into_inner()
    }

    #[test]
    fn truncated_or_corrupt_pictures_are_refused() {
        let policy = InputPolicy::default();
        let png = png(64, 64);
        let jpeg = jpeg(256, 256);
        check_picture(&jpeg, &policy).unwrap();
        let mut garbage = png[..33].to_vec(); // the signature and a valid IHDR: 64x64
        garbage.extend((0..4000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
        for (name, bytes) in [
            ("png cut in half", &png[..png.len() / 2]),
            ("jpeg cut in half", &jpeg[..jpeg.len() / 2]),
            ("random bytes after a png header", &garbage[..]),
        ] {
            let error = check_picture(bytes, &policy).unwrap_err();
            assert!(
                matches!(&error, CoreError::InvalidParameter { param, .. } if *param == "image"),
                "{name}: {error:?}"
            );
            assert!(
                error.to_string().contains("truncated or corrupt"),
                "{name}: {error}"
            );
        }
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
        // Addresses that wrap a private IPv4 address, and the rest of the non-public ranges.
        for url in [
            "http://[::127.0.0.1]:9/x.png",
            "http://[::ffff:10.0.0.1]:9/x.png",
            "http://[64:ff9b::7f00:1]:9/x.png",
            "http://[2002:c0a8:0001::1]:9/x.png",
            "http://[fec0::1]:9/x.png",
            "http://[ff02::1]:9/x.png",
            "http://224.0.0.1:9/x.png",
            "http://100.100.1.1:9/x.png",
            "http://198.18.0.1:9/x.png",
            "http://240.0.0.1:9/x.png",
            "http://0.1.2.3:9/x.png",
        ] {
            let error = load(
                vec![ReferenceSource::Url(url.into())],
                &InputPolicy::default(),
            )
            .await
            .unwrap_err();
            let message = error.to_string();
            assert!(message.contains("private or loopback"), "{url}: {message}");
            assert!(
                matches!(&error, CoreError::InvalidParameter { param, .. } if *param == "image"),
                "{url}: {error:?}"
            );
        }
        // A name is refused by its name: what it resolved to is our DNS's business.
        let message = load(
            vec![ReferenceSource::Url("http://localhost:9/x.png".into())],
            &InputPolicy::default(),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(message.contains("host localhost"), "{message}");
        assert!(
            !message.contains("127.0.0.1") && !message.contains("::1"),
            "{message}"
        );
    }
}
