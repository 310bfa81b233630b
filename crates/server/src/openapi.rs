//! `GET /openapi.json`: the OpenAPI 3.1 description of every route, built from the wire types'
//! JSON Schemas (so a changed field changes the document) and one table of operations below.
//! The committed `docs/openapi.json` is this document; a test keeps them equal.

use schemars::generate::{SchemaGenerator, SchemaSettings};
use schemars::{JsonSchema, Schema};
use seedbed_types::{
    ApiError, CreateKey, GenerationRequest, Health, ImagesResponse, JobEvent, JobList, JobView,
    KeyList, KeyView, LoraList, ModelList, ServerInfo, StreamEvent, UsageView,
};
use serde_json::{Map, Value, json};

use crate::GENERATION_PATHS;

/// Who may call an operation.
#[derive(Clone, Copy)]
enum Access {
    Public,
    /// Any key with the `generate` scope (or none when the server runs without keys).
    Key,
    /// A key with the `admin` scope.
    Admin,
}

/// What goes over the wire in a request or response body.
enum Body {
    Json(Schema),
    /// A JSON body or, with `stream: true`, server-sent events carrying `Schema`.
    JsonOrEvents(Schema, Schema),
    Events(Schema),
    Multipart,
    Image,
    Text,
    Html,
}

struct Operation {
    method: &'static str,
    path: String,
    id: String,
    summary: &'static str,
    description: &'static str,
    access: Access,
    params: &'static [(&'static str, &'static str, &'static str)],
    request: Option<Body>,
    /// The success status and body; errors are added from `Access` and the method.
    ok: (u16, Body),
}

const JOB_ID: (&str, &str, &str) = ("id", "path", "The job id (`X-Seedbed-Job-Id`).");

/// The document served at `/openapi.json`.
pub fn document() -> Value {
    let settings = SchemaSettings::draft2020_12().with(|s| {
        s.definitions_path = "/components/schemas".into();
        s.meta_schema = None;
    });
    let mut generator = SchemaGenerator::new(settings);
    let operations = operations(&mut generator);
    let error = generator.subschema_for::<ApiError>();

    let mut paths = Map::new();
    for op in operations {
        let entry = paths
            .entry(op.path.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        let method = op.method;
        entry[method] = operation_json(op, &error);
    }
    let schemas = generator.take_definitions(true);
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "seedbed",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "A self-hosted, Seedream-compatible image generation service. \
                `images/generations` follows the BytePlus ModelArk / Volcengine Ark API; \
                `/v1/jobs`, `/v1/keys`, `/v1/usage`, `/v1/models` and `/v1/loras` are seedbed's own.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    })
}

fn operation_json(op: Operation, error: &Schema) -> Value {
    let mut out = json!({
        "operationId": op.id,
        "summary": op.summary,
        "description": op.description,
    });
    if !matches!(op.access, Access::Public) {
        out["security"] = json!([{"bearer": []}]);
    }
    let params: Vec<Value> = op
        .params
        .iter()
        .map(|(name, place, description)| {
            json!({
                "name": name, "in": place, "required": *place == "path",
                "description": description,
                "schema": {"type": if *name == "limit" || *name == "since" { "integer" } else { "string" }},
            })
        })
        .collect();
    if !params.is_empty() {
        out["parameters"] = Value::Array(params);
    }
    if let Some(body) = op.request {
        out["requestBody"] = json!({"required": true, "content": content(body)});
    }
    let mut responses = Map::new();
    let (status, body) = op.ok;
    responses.insert(
        status.to_string(),
        json!({"description": "Success.", "content": content(body)}),
    );
    let errors: &[(u16, &str)] = match op.access {
        Access::Public => &[],
        Access::Key => &[
            (401, "Missing or unknown API key."),
            (429, "Rate limit, quota or full queue; see Retry-After."),
        ],
        Access::Admin => &[
            (401, "Missing or unknown API key."),
            (403, "The key lacks the admin scope."),
        ],
    };
    let mut errors = errors.to_vec();
    if op.method == "post" {
        errors.push((400, "The body is invalid; `error.param` names the field."));
    }
    if op.path.contains('{') {
        errors.push((404, "No such resource (or not the caller's)."));
    }
    for (status, description) in errors {
        responses.insert(
            status.to_string(),
            json!({"description": description, "content": {"application/json": {"schema": error}}}),
        );
    }
    out["responses"] = Value::Object(responses);
    out
}

fn content(body: Body) -> Value {
    match body {
        Body::Json(schema) => json!({"application/json": {"schema": schema}}),
        Body::JsonOrEvents(json_schema, event) => json!({
            "application/json": {"schema": json_schema},
            // One event per `data:` line; the stream ends with `data: [DONE]`.
            "text/event-stream": {"schema": event},
        }),
        Body::Events(event) => json!({"text/event-stream": {"schema": event}}),
        Body::Multipart => json!({"multipart/form-data": {"schema": {
            "type": "object",
            "required": ["image", "prompt"],
            "properties": {
                "image": {"type": "string", "contentMediaType": "application/octet-stream", "description": "One or more pictures (`image` or `image[]`)."},
                "prompt": {"type": "string"}, "model": {"type": "string"}, "size": {"type": "string"},
                "n": {"type": "integer", "minimum": 1, "maximum": 15},
                "response_format": {"enum": ["url", "b64_json"]},
                "output_format": {"enum": ["jpeg", "png"]}, "negative_prompt": {"type": "string"},
                "strength": {"type": "number"}, "seed": {"type": "integer"}, "stream": {"type": "boolean"},
            },
        }}}),
        Body::Image => json!({"image/jpeg": {}, "image/png": {}}),
        Body::Text => json!({"text/plain": {"schema": {"type": "string"}}}),
        Body::Html => json!({"text/html": {"schema": {"type": "string"}}}),
    }
}

fn schema<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    generator.subschema_for::<T>()
}

fn operations(g: &mut SchemaGenerator) -> Vec<Operation> {
    let mut ops: Vec<Operation> = GENERATION_PATHS
        .iter()
        .enumerate()
        .map(|(i, path)| Operation {
            method: "post",
            path: path.to_string(),
            id: if i == 0 {
                "createImages".into()
            } else {
                format!("createImages{i}")
            },
            summary: "Generate images (Seedream images/generations)",
            description: "The Seedream API. `stream: true` answers with server-sent events, one \
                per image as soon as it is stored, then `image_generation.completed` with usage, \
                then `data: [DONE]`; errors before the first image come back as JSON. \
                `Prefer: respond-async` answers 202 with the job at once. Every response carries \
                `X-Client-Request-Id` and `X-Seedbed-Job-Id`. `negative_prompt`, `steps`, \
                `scheduler` and `strength` are seedbed extensions for local models. For a local \
                model, a field neither Seedream, OpenAI nor seedbed defines is ignored and named \
                in an `X-Seedbed-Warning` header (one per field). The same \
                operation is served under /api/v3, /api/plan/v3, /v3, /byteplus/v3 and /v1; on \
                /v1 OpenAI's `n` is accepted too.",
            access: Access::Key,
            params: &[],
            request: Some(Body::Json(schema::<GenerationRequest>(g))),
            ok: (
                200,
                Body::JsonOrEvents(schema::<ImagesResponse>(g), schema::<StreamEvent>(g)),
            ),
        })
        .collect();
    let job = || schema::<JobView>;
    ops.extend([
        Operation {
            method: "post",
            path: "/v1/images/edits".into(),
            id: "editImages".into(),
            summary: "Edit images (OpenAI, multipart)",
            description: "OpenAI's multipart edits endpoint mapped onto a Seedream generation with the uploaded picture as `image`.",
            access: Access::Key,
            params: &[],
            request: Some(Body::Multipart),
            ok: (200, Body::JsonOrEvents(schema::<ImagesResponse>(g), schema::<StreamEvent>(g))),
        },
        Operation {
            method: "get",
            path: "/v1/images/{job}/{file}".into(),
            id: "getImage".into(),
            summary: "Fetch a generated image",
            description: "The link in a response's `url`; `expires` and `signature` make it valid until the image's TTL. A tampered or expired link gets 403.",
            access: Access::Public,
            params: &[("job", "path", "The job id."), ("file", "path", "The image file name."), ("expires", "query", "Unix seconds."), ("signature", "query", "HMAC over path and expiry.")],
            request: None,
            ok: (200, Body::Image),
        },
        Operation {
            method: "get",
            path: "/v1/jobs".into(),
            id: "listJobs".into(),
            summary: "List the caller's jobs, newest first",
            description: "",
            access: Access::Key,
            params: &[("limit", "query", "1..100, default 20.")],
            request: None,
            ok: (200, Body::Json(schema::<JobList>(g))),
        },
        Operation {
            method: "get",
            path: "/v1/jobs/{id}".into(),
            id: "getJob".into(),
            summary: "A job: status, queue position, progress, result, error",
            description: "",
            access: Access::Key,
            params: &[JOB_ID],
            request: None,
            ok: (200, Body::Json(job()(g))),
        },
        Operation {
            method: "post",
            path: "/v1/jobs/{id}/cancel".into(),
            id: "cancelJob".into(),
            summary: "Cancel a queued or running job",
            description: "A queued job is cancelled at once; a running one stops within one denoising step and keeps the images already stored. A finished job is returned unchanged.",
            access: Access::Key,
            params: &[JOB_ID],
            request: None,
            ok: (200, Body::Json(job()(g))),
        },
        Operation {
            method: "get",
            path: "/v1/jobs/{id}/events".into(),
            id: "jobEvents".into(),
            summary: "Follow a job as server-sent events",
            description: "Event names equal the `type`; the SSE `id` is the event's sequence number, so a client resumes with `Last-Event-ID`. Ends after completed, failed or cancelled.",
            access: Access::Key,
            params: &[JOB_ID, ("Last-Event-ID", "header", "Resume after this sequence number.")],
            request: None,
            ok: (200, Body::Events(schema::<JobEvent>(g))),
        },
        Operation {
            method: "post",
            path: "/v1/keys".into(),
            id: "createKey".into(),
            summary: "Create an API key (its secret is shown only in this response)",
            description: "",
            access: Access::Admin,
            params: &[],
            request: Some(Body::Json(schema::<CreateKey>(g))),
            ok: (201, Body::Json(schema::<KeyView>(g))),
        },
        Operation {
            method: "get",
            path: "/v1/keys".into(),
            id: "listKeys".into(),
            summary: "List API keys (never their secrets)",
            description: "",
            access: Access::Admin,
            params: &[],
            request: None,
            ok: (200, Body::Json(schema::<KeyList>(g))),
        },
        Operation {
            method: "delete",
            path: "/v1/keys/{id}".into(),
            id: "revokeKey".into(),
            summary: "Revoke an API key",
            description: "",
            access: Access::Admin,
            params: &[("id", "path", "The key id.")],
            request: None,
            ok: (200, Body::Json(schema::<KeyView>(g))),
        },
        Operation {
            method: "get",
            path: "/v1/usage".into(),
            id: "getUsage".into(),
            summary: "What the caller's key was billed, per job and in total",
            description: "Tokens follow Seedream's rule: round(sum(width*height)/256) over delivered images.",
            access: Access::Key,
            params: &[("since", "query", "Unix seconds; default everything."), ("limit", "query", "1..1000, default 100.")],
            request: None,
            ok: (200, Body::Json(schema::<UsageView>(g))),
        },
        Operation {
            method: "get",
            path: "/v1/models".into(),
            id: "listModels".into(),
            summary: "Models this server serves, aliases included",
            description: "",
            access: Access::Public,
            params: &[],
            request: None,
            ok: (200, Body::Json(schema::<ModelList>(g))),
        },
        Operation {
            method: "get",
            path: "/v1/loras".into(),
            id: "listLoras".into(),
            summary: "LoRAs a generation request may apply by name (`loras`)",
            description: "The `*.safetensors` files of the server's `--loras-dir`, each under its file name \
                without the extension; an empty list when the server has none. A request's `loras` \
                names them (never a path) with a `scale`; SD 1.x/2.x, SDXL and FLUX.1 models take them. \
                Kohya (`lora_unet_`/`lora_te_`) and diffusers/PEFT (`unet.`/`text_encoder.`/`transformer.` \
                with `lora_A`/`lora_B`) files are read; a name not listed, a model that takes no LoRAs, or \
                a file in no known layout or for another model's layers is a 400 naming `loras`.",
            access: Access::Public,
            params: &[],
            request: None,
            ok: (200, Body::Json(schema::<LoraList>(g))),
        },
        Operation {
            method: "get",
            path: "/health".into(),
            id: "health".into(),
            summary: "200 once the server can take work, else 503",
            description: "",
            access: Access::Public,
            params: &[],
            request: None,
            ok: (200, Body::Json(schema::<Health>(g))),
        },
        Operation {
            method: "get",
            path: "/info".into(),
            id: "info".into(),
            summary: "Version, device, models and limits",
            description: "",
            access: Access::Public,
            params: &[],
            request: None,
            ok: (200, Body::Json(schema::<ServerInfo>(g))),
        },
        Operation {
            method: "get",
            path: "/metrics".into(),
            id: "metrics".into(),
            summary: "Prometheus metrics",
            description: "",
            access: Access::Public,
            params: &[],
            request: None,
            ok: (200, Body::Text),
        },
        Operation {
            method: "get",
            path: "/openapi.json".into(),
            id: "openapi".into(),
            summary: "This document",
            description: "",
            access: Access::Public,
            params: &[],
            request: None,
            ok: (200, Body::Json(Schema::default())),
        },
        Operation {
            method: "get",
            path: "/".into(),
            id: "home".into(),
            summary: "The playground: a page to generate images in a browser",
            description: "Calls the API below with the key it asks for (kept in the browser).",
            access: Access::Public,
            params: &[],
            request: None,
            ok: (200, Body::Html),
        },
        Operation {
            method: "get",
            path: "/assets/{name}".into(),
            id: "asset".into(),
            summary: "The playground's script and style sheet",
            description: "",
            access: Access::Public,
            params: &[("name", "path", "`app.js` or `style.css`.")],
            request: None,
            ok: (200, Body::Text),
        },
    ]);
    ops
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    /// `docs/openapi.json` is what `/openapi.json` serves. After an API change, rewrite it with
    /// `SEEDBED_UPDATE_DOCS=1 cargo test -p seedbed-server openapi` and review the diff.
    #[test]
    fn committed_document_is_current() {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
        let current = serde_json::to_string_pretty(&super::document()).unwrap() + "\n";
        if std::env::var_os("SEEDBED_UPDATE_DOCS").is_some() {
            std::fs::write(&path, &current).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == current,
            "docs/openapi.json is stale: run `SEEDBED_UPDATE_DOCS=1 cargo test -p seedbed-server openapi`"
        );
    }

    #[test]
    fn every_generation_path_and_schema_is_described() {
        let document = super::document();
        for path in crate::GENERATION_PATHS {
            assert!(document["paths"][path]["post"].is_object(), "{path}");
        }
        let schemas = document["components"]["schemas"].as_object().unwrap();
        for name in [
            "GenerationRequest",
            "ImagesResponse",
            "StreamEvent",
            "JobView",
            "ApiError",
        ] {
            assert!(schemas.contains_key(name), "{name}");
        }
        // Every $ref points at a schema that exists.
        let text = document.to_string();
        for reference in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = &reference[..reference.find('"').unwrap()];
            assert!(schemas.contains_key(name), "dangling $ref {name}");
        }
    }
}
