//! Who is calling. With no API key configured the server runs open (and only on loopback);
//! once any key exists every request needs one.

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use seedbed_storage::KeyRow;
use seedbed_types::ErrorCode;

use crate::error::ApiFailure;
use crate::state::AppState;

pub const SCOPE_GENERATE: &str = "generate";
pub const SCOPE_ADMIN: &str = "admin";

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

async fn authenticate(parts: &Parts, state: &AppState) -> Result<Option<KeyRow>, ApiFailure> {
    let db = state.jobs().db();
    let presented = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|v| !v.is_empty());
    match presented {
        Some(secret) => match db
            .authenticate(secret)
            .await
            .map_err(seedbed_core::CoreError::from)?
        {
            Some(key) => Ok(Some(key)),
            None => Err(ApiFailure::unauthorized()),
        },
        None => {
            let keys = db
                .live_key_count()
                .await
                .map_err(seedbed_core::CoreError::from)?;
            if keys == 0 {
                Ok(None)
            } else {
                Err(ApiFailure::unauthorized())
            }
        }
    }
}

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
        match &key {
            Some(k) if !k.has_scope(SCOPE_ADMIN) => Err(ApiFailure::new(
                ErrorCode::AccessDenied,
                "This API key lacks the `admin` scope.",
            )),
            _ => Ok(Self { key }),
        }
    }
}
