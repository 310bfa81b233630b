//! Final output stage: a visible "AI generated" watermark plus encoding to
//! JPEG/PNG with an embedded XMP packet that marks the file as AI-generated
//! (IPTC DigitalSourceType `trainedAlgorithmicMedia`) and records model + seed.
//!
//! Metadata is spliced into the encoder's bytes by hand so no extra crates are
//! needed; both container formats are simple enough to do this safely.

mod font;

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder, RgbImage};

/// Text stamped on every image.
const WATERMARK_TEXT: &str = "AI generated";
/// IPTC code for "created by a trained model" (what C2PA / Google / Meta read).
const DIGITAL_SOURCE_TYPE: &str =
    "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia";
/// Signature that prefixes an XMP packet inside a JPEG APP1 segment.
const JPEG_XMP_HEADER: &[u8] = b"http://ns.adobe.com/xap/1.0/\0";
const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
const JPEG_QUALITY: u8 = 90;

/// The file formats seedbed writes; the one enum the job spec, the device and the CLI share
/// (stored in job specs as `"jpeg"` / `"png"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputFormat {
    Jpeg,
    Png,
}

impl OutputFormat {
    pub fn extension(self) -> &'static str {
        match self {
            OutputFormat::Jpeg => "jpeg",
            OutputFormat::Png => "png",
        }
    }

    pub fn mime(self) -> &'static str {
        match self {
            OutputFormat::Jpeg => "image/jpeg",
            OutputFormat::Png => "image/png",
        }
    }
}

/// Who made the picture, written into the file's metadata.
#[derive(Debug, Clone)]
pub struct Provenance {
    pub model: String,
    pub seed: u64,
    /// e.g. "seedbed 0.1.0"
    pub software: String,
    pub created_unix: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("image encoding failed: {0}")]
    Encode(#[from] image::ImageError),
    #[error("XMP packet of {0} bytes does not fit in one JPEG APP1 segment")]
    MetadataTooLarge(usize),
    #[error("encoder produced unexpected {0} data")]
    Malformed(&'static str),
}

/// Images whose shorter side is below this get no visible mark: the smallest legible mark
/// (8 px letters) would cover more of them than [`WATERMARK_MAX_AREA`] allows, and a cut
/// one says nothing. Their XMP metadata still marks them as AI-generated.
pub const WATERMARK_MIN_SIDE: u32 = 128;
/// The most of an image the mark's box may cover.
pub const WATERMARK_MAX_AREA: f64 = 0.05;

/// What [`apply_watermark`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watermark {
    /// The whole mark is on the image, inside a box of `width` x `height` pixels.
    Drawn { width: u32, height: u32 },
    /// The image is too small for a legible mark; it was left as it was.
    Omitted,
}

/// Draws a visible "AI generated" mark at the bottom-right corner, in place.
///
/// White text on a box that darkens what is under it to 40%, so the mark reads on light and
/// dark images alike. Letters are about 3% of the shorter side high, in whole font pixels,
/// and the mark is always whole: on an image where it would not fit within
/// [`WATERMARK_MAX_AREA`] (any shorter side under [`WATERMARK_MIN_SIDE`]) it is left out.
pub fn apply_watermark(image: &mut RgbImage) -> Watermark {
    let (w, h) = (u64::from(image.width()), u64::from(image.height()));
    if w.min(h) < u64::from(WATERMARK_MIN_SIDE) {
        return Watermark::Omitted;
    }
    let text_w = u64::from(font::text_width(WATERMARK_TEXT));
    let text_h = u64::from(font::GLYPH_H);
    let box_size = |s: u64| (text_w * s + 2 * s, text_h * s + 2 * s); // 1-font-px padding
    let margin = |s: u64| 2 * s;
    let fits = |s: u64| {
        let (box_w, box_h) = box_size(s);
        box_w + 2 * margin(s) <= w
            && box_h + 2 * margin(s) <= h
            && (box_w * box_h) as f64 <= WATERMARK_MAX_AREA * (w * h) as f64
    };
    // round(shorter * 3% / glyph height), at least one pixel per font pixel.
    let mut scale = ((w.min(h) * 3 + 400) / 800).max(1);
    while scale > 1 && !fits(scale) {
        scale -= 1;
    }
    if !fits(scale) {
        return Watermark::Omitted;
    }
    let (box_w, box_h) = box_size(scale);
    let (x0, y0) = (w - margin(scale) - box_w, h - margin(scale) - box_h);
    for y in y0..y0 + box_h {
        for x in x0..x0 + box_w {
            // Coordinates inside the text, in font pixels (padding is one font pixel).
            let (fx, fy) = ((x - x0) / scale, (y - y0) / scale);
            let is_ink =
                fx >= 1 && fy >= 1 && font::ink(WATERMARK_TEXT, (fx - 1) as u32, (fy - 1) as u32);
            // In bounds: `fits` keeps the box and its margin inside the image.
            let px = image.get_pixel_mut(x as u32, y as u32);
            if is_ink {
                px.0 = [255, 255, 255];
            } else {
                px.0 = px.0.map(|c| (u16::from(c) * 2 / 5) as u8);
            }
        }
    }
    Watermark::Drawn {
        width: box_w as u32,
        height: box_h as u32,
    }
}

/// Encodes to JPEG (quality 90) or PNG and embeds provenance metadata.
pub fn encode(
    image: &RgbImage,
    format: OutputFormat,
    provenance: &Provenance,
) -> Result<Vec<u8>, OutputError> {
    let xmp = xmp_packet(provenance);
    let (w, h) = image.dimensions();
    let mut buf = Vec::new();
    match format {
        OutputFormat::Jpeg => {
            JpegEncoder::new_with_quality(&mut buf, JPEG_QUALITY).write_image(
                image.as_raw(),
                w,
                h,
                ExtendedColorType::Rgb8,
            )?;
            insert_jpeg_xmp(buf, &xmp)
        }
        OutputFormat::Png => {
            PngEncoder::new(&mut buf).write_image(image.as_raw(), w, h, ExtendedColorType::Rgb8)?;
            insert_png_metadata(buf, &xmp, &provenance.software)
        }
    }
}

/// Builds the XMP packet; all attribute values are escaped.
fn xmp_packet(p: &Provenance) -> String {
    format!(
        "<?xpacket begin=\"\u{feff}\" id=\"W5M0MpCehiHzreSzNTczkc9d\"?>\n\
<x:xmpmeta xmlns:x=\"adobe:ns:meta/\">\n\
 <rdf:RDF xmlns:rdf=\"http://www.w3.org/1999/02/22-rdf-syntax-ns#\">\n\
  <rdf:Description rdf:about=\"\"\n\
    xmlns:xmp=\"http://ns.adobe.com/xap/1.0/\"\n\
    xmlns:Iptc4xmpExt=\"http://iptc.org/std/Iptc4xmpExt/2008-02-29/\"\n\
    xmlns:seedbed=\"https://seedbed.dev/ns/1.0/\"\n\
    Iptc4xmpExt:DigitalSourceType=\"{DIGITAL_SOURCE_TYPE}\"\n\
    xmp:CreatorTool=\"{}\"\n\
    xmp:CreateDate=\"{}\"\n\
    seedbed:Model=\"{}\"\n\
    seedbed:Seed=\"{}\"/>\n\
 </rdf:RDF>\n\
</x:xmpmeta>\n\
<?xpacket end=\"r\"?>",
        xml_escape(&p.software),
        iso8601_utc(p.created_unix),
        xml_escape(&p.model),
        p.seed,
    )
}

/// Escapes for a double-quoted XML attribute. Whitespace controls become
/// character references (raw ones would be normalised to spaces); other C0
/// controls are not allowed in XML 1.0 at all, so they become U+FFFD.
fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push_str(&format!("&#x{:X};", u32::from(c))),
            c if c < ' ' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// Unix seconds to `YYYY-MM-DDTHH:MM:SSZ` (proleptic Gregorian, UTC), using
/// Howard Hinnant's days-to-civil algorithm so no date crate is needed.
fn iso8601_utc(unix: i64) -> String {
    let (days, secs) = (unix.div_euclid(86_400), unix.rem_euclid(86_400));
    let z = days + 719_468; // shift epoch to 0000-03-01
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of 400-year era
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153; // month counted from March
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (hh, mm, ss) = (secs / 3600, secs / 60 % 60, secs % 60);
    format!("{year:04}-{month:02}-{day:02}T{hh:02}:{mm:02}:{ss:02}Z")
}

/// Inserts an XMP APP1 segment after SOI and any APP0 (JFIF) segments, where
/// readers expect it (JFIF must stay first).
fn insert_jpeg_xmp(jpeg: Vec<u8>, xmp: &str) -> Result<Vec<u8>, OutputError> {
    let seg_len = 2 + JPEG_XMP_HEADER.len() + xmp.len();
    let seg_len = u16::try_from(seg_len).map_err(|_| OutputError::MetadataTooLarge(xmp.len()))?;
    if !jpeg.starts_with(&[0xFF, 0xD8]) {
        return Err(OutputError::Malformed("JPEG"));
    }
    let mut pos = 2;
    while jpeg.get(pos..pos + 2) == Some(&[0xFF, 0xE0]) {
        let len = jpeg
            .get(pos + 2..pos + 4)
            .ok_or(OutputError::Malformed("JPEG"))?;
        pos += 2 + usize::from(u16::from_be_bytes([len[0], len[1]]));
    }
    if pos > jpeg.len() {
        return Err(OutputError::Malformed("JPEG"));
    }
    let mut out = Vec::with_capacity(jpeg.len() + usize::from(seg_len) + 2);
    out.extend_from_slice(&jpeg[..pos]);
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&seg_len.to_be_bytes());
    out.extend_from_slice(JPEG_XMP_HEADER);
    out.extend_from_slice(xmp.as_bytes());
    out.extend_from_slice(&jpeg[pos..]);
    Ok(out)
}

/// Inserts `iTXt XML:com.adobe.xmp` (uncompressed, as the XMP spec requires)
/// and `tEXt Software` before the first IDAT.
fn insert_png_metadata(png: Vec<u8>, xmp: &str, software: &str) -> Result<Vec<u8>, OutputError> {
    if !png.starts_with(PNG_SIGNATURE) {
        return Err(OutputError::Malformed("PNG"));
    }
    let mut pos = PNG_SIGNATURE.len();
    loop {
        let header = png.get(pos..pos + 8).ok_or(OutputError::Malformed("PNG"))?;
        if &header[4..8] == b"IDAT" {
            break;
        }
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        pos += 12 + len; // length + type + data + crc
    }
    // keyword, NUL, compression flag 0, method 0, empty language, NUL, empty
    // translated keyword, NUL, then the UTF-8 text.
    let mut itxt = b"XML:com.adobe.xmp\0\0\0\0\0".to_vec();
    itxt.extend_from_slice(xmp.as_bytes());
    // tEXt is Latin-1 only; anything outside it becomes '?'.
    let mut text = b"Software\0".to_vec();
    text.extend(software.chars().map(|c| u8::try_from(c).unwrap_or(b'?')));
    let mut out = Vec::with_capacity(png.len() + itxt.len() + text.len() + 24);
    out.extend_from_slice(&png[..pos]);
    write_png_chunk(&mut out, b"iTXt", &itxt);
    write_png_chunk(&mut out, b"tEXt", &text);
    out.extend_from_slice(&png[pos..]);
    Ok(out)
}

fn write_png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    // Metadata here is a few KiB at most, far below PNG's 2^31-1 chunk limit.
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]); // CRC covers type + data
    out.extend_from_slice(&crc.to_be_bytes());
}

/// CRC-32 (IEEE, reflected 0xEDB88320) table, built at compile time.
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut n = 0;
    while n < 256 {
        let mut c = n as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 == 1 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[n] = c;
        n += 1;
    }
    table
};

fn crc32(bytes: &[u8]) -> u32 {
    !bytes.iter().fold(!0u32, |c, &b| {
        CRC_TABLE[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prov(model: &str) -> Provenance {
        Provenance {
            model: model.to_string(),
            seed: 18_446_744_073_709_551_557,
            software: "seedbed 0.1.0".to_string(),
            created_unix: 1_700_000_000,
        }
    }

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
        })
    }

    /// The XMP text of an encoded file, found by its packet markers.
    fn find_xmp(bytes: &[u8]) -> String {
        let s = String::from_utf8_lossy(bytes);
        let start = s.find("<?xpacket begin").expect("no XMP packet");
        let end = s.find("<?xpacket end=\"r\"?>").expect("unterminated XMP");
        s[start..end].to_string()
    }

    /// Every PNG chunk as (type, data), asserting each CRC on the way.
    fn png_chunks(png: &[u8]) -> Vec<([u8; 4], Vec<u8>)> {
        assert!(png.starts_with(PNG_SIGNATURE));
        let (mut pos, mut chunks) = (PNG_SIGNATURE.len(), Vec::new());
        while pos < png.len() {
            let len = u32::from_be_bytes(png[pos..pos + 4].try_into().unwrap()) as usize;
            let body = &png[pos + 4..pos + 8 + len];
            let crc = u32::from_be_bytes(png[pos + 8 + len..pos + 12 + len].try_into().unwrap());
            assert_eq!(crc32(body), crc, "bad CRC on {:?}", &body[..4]);
            chunks.push((body[..4].try_into().unwrap(), body[4..].to_vec()));
            pos += 12 + len;
        }
        assert_eq!(pos, png.len());
        chunks
    }

    fn check_xmp(xmp: &str, model: &str) {
        assert!(xmp.contains(&format!("DigitalSourceType=\"{DIGITAL_SOURCE_TYPE}\"")));
        assert!(xmp.contains(&format!("seedbed:Model=\"{model}\"")));
        assert!(xmp.contains("seedbed:Seed=\"18446744073709551557\""));
        assert!(xmp.contains("xmp:CreatorTool=\"seedbed 0.1.0\""));
        assert!(xmp.contains("xmp:CreateDate=\"2023-11-14T22:13:20Z\""));
    }

    #[test]
    fn formats_have_extension_and_mime() {
        assert_eq!(OutputFormat::Jpeg.extension(), "jpeg");
        assert_eq!(OutputFormat::Png.extension(), "png");
        assert_eq!(OutputFormat::Jpeg.mime(), "image/jpeg");
        assert_eq!(OutputFormat::Png.mime(), "image/png");
    }

    #[test]
    fn jpeg_decodes_and_carries_xmp_after_jfif() {
        let bytes = encode(&gradient(96, 40), OutputFormat::Jpeg, &prov("sd-turbo")).unwrap();
        let img = image::load_from_memory(&bytes).unwrap();
        assert_eq!((img.width(), img.height()), (96, 40));
        check_xmp(&find_xmp(&bytes), "sd-turbo");
        // SOI, APP0 (JFIF), then our APP1 with the XMP signature.
        assert_eq!(&bytes[..4], &[0xFF, 0xD8, 0xFF, 0xE0]);
        let app1 = 4 + usize::from(u16::from_be_bytes([bytes[4], bytes[5]]));
        assert_eq!(&bytes[app1..app1 + 2], &[0xFF, 0xE1]);
        assert!(bytes[app1 + 4..].starts_with(JPEG_XMP_HEADER));
    }

    #[test]
    fn png_decodes_with_valid_crcs_and_xmp_before_idat() {
        let bytes = encode(&gradient(50, 70), OutputFormat::Png, &prov("sd-turbo")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.png");
        std::fs::write(&path, &bytes).unwrap();
        let img = image::open(&path).unwrap();
        assert_eq!((img.width(), img.height()), (50, 70));
        let chunks = png_chunks(&bytes);
        let kinds: Vec<&[u8]> = chunks.iter().map(|(k, _)| &k[..]).collect();
        let idat = kinds.iter().position(|k| *k == b"IDAT").unwrap();
        let itxt = kinds.iter().position(|k| *k == b"iTXt").unwrap();
        assert!(itxt < idat && kinds[0] == b"IHDR" && kinds.last() == Some(&&b"IEND"[..]));
        assert!(chunks[itxt].1.starts_with(b"XML:com.adobe.xmp\0\0\0\0\0"));
        check_xmp(&find_xmp(&chunks[itxt].1), "sd-turbo");
        let text = chunks.iter().find(|(k, _)| k == b"tEXt").unwrap();
        assert_eq!(text.1, b"Software\0seedbed 0.1.0");
    }

    #[test]
    fn model_name_is_escaped() {
        let model = "evil<&\"'>\n\u{1}model ünï";
        let escaped = "evil&lt;&amp;&quot;&apos;&gt;&#xA;\u{fffd}model ünï";
        for format in [OutputFormat::Jpeg, OutputFormat::Png] {
            let bytes = encode(&gradient(8, 8), format, &prov(model)).unwrap();
            check_xmp(&find_xmp(&bytes), escaped);
        }
    }

    #[test]
    fn oversized_metadata_is_an_error_for_jpeg_only() {
        let long = "m".repeat(70_000);
        let err = encode(&gradient(8, 8), OutputFormat::Jpeg, &prov(&long)).unwrap_err();
        assert!(matches!(err, OutputError::MetadataTooLarge(_)));
        assert!(encode(&gradient(8, 8), OutputFormat::Png, &prov(&long)).is_ok());
    }

    #[test]
    fn iso_dates_match_known_instants() {
        assert_eq!(iso8601_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(iso8601_utc(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(iso8601_utc(4_107_542_399), "2100-02-28T23:59:59Z");
        assert_eq!(iso8601_utc(-1), "1969-12-31T23:59:59Z");
        let _ = (iso8601_utc(i64::MIN), iso8601_utc(i64::MAX)); // must not panic
    }

    #[test]
    fn crc32_matches_reference() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b"IEND"), 0xAE42_6082);
    }

    #[test]
    fn watermark_touches_only_bottom_right() {
        let original = gradient(1024, 768);
        let mut marked = original.clone();
        apply_watermark(&mut marked);
        let changed: Vec<(u32, u32)> = original
            .enumerate_pixels()
            .filter(|&(x, y, p)| marked.get_pixel(x, y) != p)
            .map(|(x, y, _)| (x, y))
            .collect();
        assert!(changed.len() > 1000, "mark too small: {}", changed.len());
        let (min_x, min_y) = changed
            .iter()
            .fold((u32::MAX, u32::MAX), |(a, b), &(x, y)| (a.min(x), b.min(y)));
        // Scale 3 => box 219x30 plus a 6 px margin: well inside the corner.
        assert!(
            min_x >= 1024 - 240 && min_y >= 768 - 45,
            "({min_x},{min_y})"
        );
        assert!(changed.iter().all(|&(x, y)| x < 1024 - 5 && y < 768 - 5));
    }

    #[test]
    fn watermark_reads_on_white_and_black() {
        // 256 px => scale 1: a 73x10 box (71x8 text + 1 px padding).
        let mut black = RgbImage::new(256, 256);
        apply_watermark(&mut black);
        let ink = black.pixels().filter(|p| p.0 == [255; 3]).count();
        let glyph_ink: u32 = WATERMARK_TEXT
            .chars()
            .flat_map(font::glyph)
            .map(u8::count_ones)
            .sum();
        assert_eq!(ink, glyph_ink as usize); // every font pixel drawn, none clipped
        // On white, everything in the box but the ink is darkened to 40%.
        let mut white = RgbImage::from_pixel(256, 256, image::Rgb([255; 3]));
        apply_watermark(&mut white);
        let dark = white.pixels().filter(|p| p.0 == [102; 3]).count();
        assert_eq!(dark, 73 * 10 - ink);
    }

    #[test]
    fn the_mark_is_whole_and_small_or_absent() {
        let glyph_ink: usize = WATERMARK_TEXT
            .chars()
            .flat_map(font::glyph)
            .map(|row| row.count_ones() as usize)
            .sum();
        for (w, h) in [
            (32, 32),
            (127, 127),
            (127, 1024),
            (128, 128),
            (512, 512),
            (1024, 256),
        ] {
            let mut image = RgbImage::new(w, h);
            let outcome = apply_watermark(&mut image);
            let ink = image.pixels().filter(|p| p.0 == [255; 3]).count();
            if w.min(h) < WATERMARK_MIN_SIDE {
                assert_eq!(outcome, Watermark::Omitted, "{w}x{h}");
                assert_eq!(ink, 0, "{w}x{h}: nothing drawn");
                continue;
            }
            let Watermark::Drawn { width, height } = outcome else {
                panic!("{w}x{h}: no mark");
            };
            let share = f64::from(width * height) / f64::from(w * h);
            assert!(share <= WATERMARK_MAX_AREA, "{w}x{h}: covers {share:.3}");
            // Whole: every font pixel drawn at the mark's scale, inside the image.
            let scale = (height / (font::GLYPH_H + 2)) as usize;
            assert_eq!(ink, glyph_ink * scale * scale, "{w}x{h}");
            let ink_at = |x: u32, y: u32| image.get_pixel(x, y).0 == [255; 3];
            let inked: Vec<(u32, u32)> = (0..h)
                .flat_map(|y| (0..w).map(move |x| (x, y)))
                .filter(|&(x, y)| ink_at(x, y))
                .collect();
            // "A" starts one font pixel into the box, which sits two font pixels from the
            // corner; nothing is drawn in that margin.
            let s = scale as u32;
            let left = inked.iter().map(|p| p.0).min().unwrap();
            assert_eq!(left, w - 2 * s - width + s, "{w}x{h}");
            assert!(
                inked.iter().all(|&(x, y)| x < w - 2 * s && y < h - 2 * s),
                "{w}x{h}: ink in the margin"
            );
        }
    }

    #[test]
    fn tiny_and_odd_images_do_not_panic() {
        for (w, h) in [
            (1, 1),
            (8, 8),
            (64, 64),
            (1, 300),
            (300, 1),
            (80, 12),
            (4096, 3),
        ] {
            let mut img = gradient(w, h);
            apply_watermark(&mut img);
            for format in [OutputFormat::Jpeg, OutputFormat::Png] {
                let bytes = encode(&img, format, &prov("m")).unwrap();
                let back = image::load_from_memory(&bytes).unwrap();
                assert_eq!((back.width(), back.height()), (w, h));
            }
        }
        // Empty images: the mark is a no-op and encoding fails cleanly.
        let mut empty = RgbImage::new(0, 5);
        apply_watermark(&mut empty);
        assert!(encode(&empty, OutputFormat::Png, &prov("m")).is_err());
    }
}
