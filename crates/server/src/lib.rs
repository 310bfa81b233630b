//! seedbed's HTTP API: Seedream-compatible `images/generations` plus jobs, keys, usage,
//! signed image links and operations endpoints. `app(state)` builds the whole router, so
//! tests drive it without sockets.

pub mod auth;
pub mod error;
pub mod limits;
pub mod links;
pub mod listener;
pub mod openapi;
mod private;
pub mod render;
pub mod request_id;
pub mod routes;
pub mod serve;
pub mod state;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware::from_fn_with_state;
use axum::routing::{delete, get, post};

pub use error::ApiFailure;
pub use links::LinkSigner;
pub use state::{AppState, HttpLimits};

/// Every path the generation handler answers on: Ark's, its relays', OpenAI's.
pub const GENERATION_PATHS: [&str; 5] = [
    "/api/v3/images/generations",
    "/api/plan/v3/images/generations",
    "/v3/images/generations",
    "/byteplus/v3/images/generations",
    "/v1/images/generations",
];

pub fn app(state: AppState) -> Router {
    let body_limit = state.limits().body_bytes;
    let mut router = Router::new();
    for path in GENERATION_PATHS {
        router = router.route(path, post(routes::generations::create));
    }
    router
        .route("/v1/images/edits", post(routes::openai::edits))
        .route("/v1/images/{job}/{file}", get(routes::images::get))
        .route("/v1/jobs", get(routes::jobs::list))
        .route("/v1/jobs/{id}", get(routes::jobs::get))
        .route("/v1/jobs/{id}/cancel", post(routes::jobs::cancel))
        .route("/v1/jobs/{id}/events", get(routes::jobs::events))
        .route(
            "/v1/keys",
            post(routes::keys::create).get(routes::keys::list),
        )
        .route("/v1/keys/{id}", delete(routes::keys::revoke))
        .route("/v1/usage", get(routes::usage::get))
        .route("/v1/models", get(routes::ops::list_models))
        .route("/v1/loras", get(routes::ops::list_loras))
        .route("/health", get(routes::ops::health))
        .route("/info", get(routes::ops::info))
        .route("/metrics", get(routes::ops::metrics))
        .route("/openapi.json", get(routes::ops::openapi))
        .route("/", get(routes::home::page))
        .route("/assets/{name}", get(routes::home::asset))
        // After every route: it applies to those registered before it.
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        // Outermost last: the request id wraps everything, so the limits' refusals get the
        // error envelope; a request holds its in-flight slot while its body arrives, and the
        // body deadline bounds that.
        .layer(from_fn_with_state(state.clone(), limits::body_deadline))
        .layer(from_fn_with_state(state.clone(), limits::admit))
        .layer(axum::middleware::from_fn(request_id::layer))
        .with_state(state)
}

async fn not_found() -> ApiFailure {
    ApiFailure::new(
        seedbed_types::ErrorCode::NotFound,
        "There is no such endpoint.",
    )
}

/// A known path asked with a method it does not take; axum adds the `Allow` header.
async fn method_not_allowed(method: axum::http::Method) -> ApiFailure {
    ApiFailure::new(
        seedbed_types::ErrorCode::MethodNotAllowed,
        format!(
            "This endpoint does not answer {method}; the Allow header lists the methods it takes."
        ),
    )
}
