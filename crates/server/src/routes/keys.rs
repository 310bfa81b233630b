//! `/v1/keys` (admin): create (the secret is shown once), list, revoke.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use rand::Rng;
use seedbed_storage::{KeyRow, NewKey};
use seedbed_types::{CreateKey, ErrorCode, KeyList, KeyView};

use crate::auth::{Admin, SCOPE_GENERATE, SCOPES};
use crate::error::ApiFailure;
use crate::routes::generations::{body_failure, parse_json};
use crate::state::AppState;

fn key_view(key: KeyRow) -> KeyView {
    KeyView {
        id: key.id,
        object: "api_key".into(),
        name: key.name,
        scopes: key.scopes,
        images_per_minute: key.images_per_minute,
        quota_images: key.quota_images,
        created_at: key.created_at / 1000,
        revoked_at: key.revoked_at.map(|t| t / 1000),
        secret: None,
    }
}

/// `sb-` and 40 random alphanumerics (about 238 bits).
fn new_secret() -> String {
    let chars = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let body: String = (0..40)
        .map(|_| chars[rng.random_range(0..chars.len())] as char)
        .collect();
    format!("sb-{body}")
}

pub async fn create(
    State(state): State<AppState>,
    _admin: Admin,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<KeyView>), ApiFailure> {
    let body = body.map_err(body_failure)?;
    let request: CreateKey = if body.iter().all(u8::is_ascii_whitespace) {
        CreateKey::default()
    } else {
        parse_json(&body)?
    };
    let scopes = request
        .scopes
        .unwrap_or_else(|| vec![SCOPE_GENERATE.to_string()]);
    if scopes.is_empty() || scopes.iter().any(|s| !SCOPES.contains(&s.as_str())) {
        return Err(ApiFailure::invalid(
            "scopes",
            format!(
                "scopes must be a non-empty list of {}.",
                SCOPES.map(|s| format!("`{s}`")).join(", ")
            ),
        ));
    }
    let id = seedbed_core::new_id("key");
    let secret = new_secret();
    let name = request.name.unwrap_or_default();
    let keys = state.access().keys();
    keys.insert(&NewKey {
        id: &id,
        name: &name,
        secret: &secret,
        scopes: &scopes,
        images_per_minute: request.images_per_minute,
        quota_images: request.quota_images,
    })
    .await
    .map_err(seedbed_core::CoreError::from)?;
    // From now on this server needs a key, even if this one is revoked later.
    state.access().close();
    let row = keys
        .key(&id)
        .await
        .map_err(seedbed_core::CoreError::from)?
        .ok_or_else(ApiFailure::internal)?;
    let mut view = key_view(row);
    view.secret = Some(secret);
    Ok((StatusCode::CREATED, Json(view)))
}

pub async fn list(
    State(state): State<AppState>,
    _admin: Admin,
) -> Result<Json<KeyList>, ApiFailure> {
    let keys = state
        .access()
        .keys()
        .list()
        .await
        .map_err(seedbed_core::CoreError::from)?;
    Ok(Json(KeyList {
        object: "list".into(),
        data: keys.into_iter().map(key_view).collect(),
    }))
}

pub async fn revoke(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
) -> Result<Json<KeyView>, ApiFailure> {
    let keys = state.access().keys();
    if !keys
        .revoke(&id)
        .await
        .map_err(seedbed_core::CoreError::from)?
    {
        return Err(ApiFailure::new(
            ErrorCode::NotFound,
            format!("There is no live key {id}."),
        ));
    }
    let row = keys
        .key(&id)
        .await
        .map_err(seedbed_core::CoreError::from)?
        .ok_or_else(ApiFailure::internal)?;
    Ok(Json(key_view(row)))
}
