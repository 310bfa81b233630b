//! `GET /` and `/assets/*`: the playground, a page for trying the service in a browser. Its
//! files are built into the binary (no CDN, works offline) and it calls the public API only,
//! with the caller's key from the browser's local storage; see `web/app.js`.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::error::ApiFailure;

static PAGE: LazyLock<String> = LazyLock::new(|| {
    include_str!("../../web/index.html").replace("{{VERSION}}", env!("CARGO_PKG_VERSION"))
});

/// Assets by the name the page asks for, with their media type.
const ASSETS: [(&str, &str, &str); 2] = [
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/app.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../../web/style.css"),
    ),
];

/// The page loads its own files and talks to its own origin; images may be links elsewhere
/// (a public base URL, an upstream's links) or `data:`/`blob:` previews.
const CSP: &str = "default-src 'self'; img-src * data: blob:; object-src 'none'; \
                   base-uri 'none'; frame-ancestors 'none'; form-action 'self'";

pub async fn page() -> Response {
    respond("text/html; charset=utf-8", PAGE.as_str().to_owned())
}

pub async fn asset(Path(name): Path<String>) -> Result<Response, ApiFailure> {
    let (_, media_type, text) = ASSETS
        .iter()
        .find(|(asset, ..)| *asset == name)
        .ok_or_else(|| {
            ApiFailure::new(seedbed_types::ErrorCode::NotFound, "There is no such file.")
        })?;
    Ok(respond(media_type, (*text).to_owned()))
}

/// Revalidated on every load (`no-cache`), so an upgraded server never runs last version's
/// script against its new API; the files are small.
fn respond(media_type: &'static str, body: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, media_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}
