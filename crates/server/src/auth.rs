//! Who is calling. A server with no key ever stored runs open (start-up refuses that beyond
//! loopback); once any key has existed, every request needs a live one, so revoking keys can
//! never open the server again.

use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use hmac::{Hmac, Mac};
use seedbed_storage::{KeyRow, Keys};
use seedbed_types::ErrorCode;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::error::ApiFailure;
use crate::state::AppState;

pub const SCOPE_GENERATE: &str = "generate";
/// Read-only operations data: `/metrics` and `/info`.
pub const SCOPE_OPS: &str = "ops";
pub const SCOPE_ADMIN: &str = "admin";
pub const SCOPES: [&str; 3] = [SCOPE_GENERATE, SCOPE_OPS, SCOPE_ADMIN];

/// The key store and the rules around it, shared by every request.
pub struct Access {
    keys: Keys,
    /// True while no key was ever stored; only ever goes from true to false.
    open: AtomicBool,
    /// A digest of `--metrics-key`, a bearer token good for `/metrics` (and `/info`) alone,
    /// for a Prometheus scraper that should not hold an API key.
    metrics_key: Option<Vec<u8>>,
}

impl Access {
    /// `open`: whether no key was ever stored, decided once at start-up.
    pub fn new(keys: Keys, open: bool, metrics_key: Option<&str>) -> Self {
        Self {
            keys,
            open: AtomicBool::new(open),
            metrics_key: metrics_key.map(digest),
        }
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Close the server for good (a key was just created).
    pub fn close(&self) {
        self.open.store(false, Ordering::SeqCst);
    }

    /// Still open: no key made here, and none made by another process sharing the database.
    async fn is_open(&self) -> Result<bool, ApiFailure> {
        if !self.open.load(Ordering::SeqCst) {
            return Ok(false);
        }
        if self.keys.any_ever().await.map_err(internal)? {
            self.close();
            return Ok(false);
        }
        Ok(true)
    }
}

/// A fixed-length digest, so comparing the metrics key takes the same time whatever its length.
fn digest(secret: &str) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(b"seedbed metrics key").expect("any key length");
    mac.update(secret.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

fn internal(error: seedbed_storage::StorageError) -> ApiFailure {
    seedbed_core::CoreError::from(error).into()
}

/// A caller allowed to generate: a key with the `generate` scope, or anyone on an open server.
#[derive(Debug, Clone)]
pub struct Caller {
    pub key: Option<KeyRow>,
}

impl Caller {
    pub fn key_id(&self) -> Option<&str> {
        self.key.as_ref().map(|k| k.id.as_str())
    }

    /// Whose jobs this caller may see: `None` for admins and open servers (all of them).
    pub fn job_owner(&self) -> Option<&str> {
        match &self.key {
            Some(key) if !key.has_scope(SCOPE_ADMIN) => Some(key.id.as_str()),
            _ => None,
        }
    }
}

/// A caller with the `admin` scope (or anyone on an open server).
#[derive(Debug, Clone)]
pub struct Admin {
    pub key: Option<KeyRow>,
}

/// A caller allowed to read operations data: a key with the `ops` or `admin` scope, the
/// `--metrics-key`, or anyone on an open server.
#[derive(Debug, Clone)]
pub struct Operator;

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// The caller's live key; `None` only on an open server without a key presented.
async fn authenticate(parts: &Parts, state: &AppState) -> Result<Option<KeyRow>, ApiFailure> {
    let access = state.access();
    match bearer(&parts.headers) {
        Some(secret) => match access.keys.authenticate(secret).await.map_err(internal)? {
            Some(key) => Ok(Some(key)),
            None => Err(ApiFailure::unauthorized()),
        },
        None if access.is_open().await? => Ok(None),
        None => Err(ApiFailure::unauthorized()),
    }
}

/// A key with `scope` (admin keys have every scope), or no key on an open server.
fn require(key: &Option<KeyRow>, scope: &str) -> Result<(), ApiFailure> {
    match key {
        Some(key) if !key.has_scope(scope) && !key.has_scope(SCOPE_ADMIN) => Err(ApiFailure::new(
            ErrorCode::AccessDenied,
            format!("This API key lacks the `{scope}` scope."),
        )),
        _ => Ok(()),
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiFailure;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let key = authenticate(parts, state).await?;
        require(&key, SCOPE_GENERATE)?;
        Ok(Self { key })
    }
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiFailure;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let key = authenticate(parts, state).await?;
        require(&key, SCOPE_ADMIN)?;
        Ok(Self { key })
    }
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiFailure;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        if let (Some(expected), Some(presented)) =
            (&state.access().metrics_key, bearer(&parts.headers))
            && bool::from(expected.ct_eq(&digest(presented)))
        {
            return Ok(Self);
        }
        let key = authenticate(parts, state).await?;
        require(&key, SCOPE_OPS)?;
        Ok(Self)
    }
}
