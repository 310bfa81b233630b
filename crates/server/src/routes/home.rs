//! `GET /`: a short page for a person who opens the server in a browser, saying what it is
//! and where to go. Static on purpose; a playground replaces it later.

use axum::http::header;
use axum::response::IntoResponse;

const PAGE: &str = concat!(
    "<!doctype html>\n",
    "<html lang=\"en\"><head><meta charset=\"utf-8\"><title>seedbed</title></head>\n",
    "<body style=\"font-family: sans-serif; max-width: 40em; margin: 2em auto\">\n",
    "<h1>seedbed</h1>\n",
    "<p>Version ",
    env!("CARGO_PKG_VERSION"),
    ". A Seedream-compatible image generation API.</p>\n",
    "<ul>\n",
    "<li><code>POST <a href=\"/api/v3/images/generations\">/api/v3/images/generations</a></code>: ",
    "generate images (also under <code>/v3</code>, <code>/byteplus/v3</code> and <code>/v1</code>)</li>\n",
    "<li><a href=\"/openapi.json\">/openapi.json</a>: the whole API</li>\n",
    "<li><a href=\"/v1/models\">/v1/models</a>: the models served (with a key)</li>\n",
    "<li><a href=\"/v1/loras\">/v1/loras</a>: the LoRAs a request may apply (<code>loras</code>)</li>\n",
    "<li><a href=\"/health\">/health</a>: whether the server can take work</li>\n",
    "</ul>\n",
    "</body></html>\n",
);

pub async fn page() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE)
}
