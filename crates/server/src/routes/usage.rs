//! `GET /v1/usage`: what the caller's key was billed, per job and in total.

use axum::Json;
use axum::extract::{Query, State};
use seedbed_types::UsageView;
use serde::Deserialize;

use crate::auth::Caller;
use crate::error::ApiFailure;
use crate::state::AppState;

#[derive(Debug, Deserialize)]
pub struct UsageQuery {
    /// Unix seconds; default: everything.
    pub since: Option<i64>,
    pub limit: Option<u32>,
}

pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<UsageQuery>,
) -> Result<Json<UsageView>, ApiFailure> {
    let ledger = state.jobs().ledger();
    let since = query.since.unwrap_or(0) * 1000;
    let owner = caller.job_owner();
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let totals = ledger
        .totals(owner, since)
        .await
        .map_err(seedbed_core::CoreError::from)?;
    let mut data = ledger
        .entries(owner, since, limit)
        .await
        .map_err(seedbed_core::CoreError::from)?;
    // The ledger keeps milliseconds; every time in the API is in seconds.
    for entry in &mut data {
        entry.created_at /= 1000;
    }
    Ok(Json(UsageView {
        object: "usage".into(),
        key_id: owner.map(str::to_string),
        totals,
        data,
    }))
}
