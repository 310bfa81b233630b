//! Operations: `/health` (open to all, for load balancers), `/info` and `/metrics` (upstream
//! names, limits and counters: an `ops` or `admin` key or the metrics key), `/v1/models`,
//! `/v1/loras`.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use seedbed_types::{Health, LoraList, ModelList, ModelView, ServerInfo, ServerLimits};

use crate::auth::Operator;
use crate::state::AppState;

/// 200 once the server can take work: database reachable, device thread alive.
pub async fn health(State(state): State<AppState>) -> Response {
    let db_ok = state.jobs().database_ok().await;
    let device_ok = state.device().is_alive();
    let status = if db_ok && device_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Health {
        status: if status == StatusCode::OK {
            "ok"
        } else {
            "unavailable"
        }
        .into(),
        database: db_ok,
        device: device_ok,
    };
    (status, Json(body)).into_response()
}

fn models(state: &AppState) -> Vec<ModelView> {
    let catalog = state.jobs().catalog();
    let loaded = state.device().loaded_models();
    let view = |id: &str, local: &str| {
        catalog
            .resolve(local)
            .ok()
            .map(|model| model.view(id, loaded.contains(&model.name)))
    };
    let mut out: Vec<ModelView> = catalog
        .models()
        .filter_map(|m| view(&m.name, &m.name))
        .collect();
    out.extend(
        catalog
            .aliases()
            .filter_map(|(public, local)| view(public, local)),
    );
    for (public, upstream, kind) in state.jobs().gateway().models() {
        out.push(ModelView {
            id: public,
            object: "model".into(),
            local_model: upstream,
            family: format!("upstream:{kind:?}").to_lowercase(),
            native_size: 0,
            default_steps: 0,
            default_guidance_scale: 0.0,
            format: "upstream".into(),
            loaded: true,
        });
    }
    // What only other nodes sharing the database run: accepted here, run there.
    for (public, model) in catalog.peer_models() {
        out.push(model.view(public, false));
    }
    out
}

pub async fn list_models(State(state): State<AppState>) -> Json<ModelList> {
    Json(ModelList {
        object: "list".into(),
        data: models(&state),
    })
}

/// The LoRAs requests may name (the LoRA folder, read now), like `/v1/models` open to all.
pub async fn list_loras(State(state): State<AppState>) -> Json<LoraList> {
    let catalog = state.jobs().catalog();
    Json(LoraList {
        object: "list".into(),
        data: catalog
            .loras()
            .map(|folder| folder.list())
            .unwrap_or_default(),
    })
}

pub async fn info(State(state): State<AppState>, _operator: Operator) -> Json<ServerInfo> {
    let config = state.jobs().config();
    Json(ServerInfo {
        name: "seedbed".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        uptime_s: state.uptime_s(),
        device: state.device().description().into(),
        loaded_models: state.device().loaded_models(),
        models: models(&state),
        limits: ServerLimits {
            queue_size: config.queue_size,
            body_bytes: state.limits().body_bytes as u64,
            image_ttl_s: config.image_ttl.as_secs(),
            input_image_bytes: config.inputs.max_bytes as u64,
            max_attempts: config.max_attempts,
        },
    })
}

pub async fn metrics(State(state): State<AppState>, _operator: Operator) -> Response {
    if let Ok(depth) = state.jobs().queued_count().await {
        metrics::gauge!("seedbed_queue_depth").set(f64::from(depth));
    }
    let text = state.metrics().map(|m| m.render()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// Built once: the document only changes with the binary.
pub async fn openapi() -> Json<&'static serde_json::Value> {
    static DOCUMENT: std::sync::LazyLock<serde_json::Value> =
        std::sync::LazyLock::new(crate::openapi::document);
    Json(&DOCUMENT)
}
