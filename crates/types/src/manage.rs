//! seedbed's own management API (`/v1/jobs`, `/v1/keys`, `/v1/usage`, `/v1/models`, `/info`):
//! the JSON the server writes and the client reads.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::response::{ImageError, ImagesResponse};

/// What `GET /v1/jobs/{id}` and a `Prefer: respond-async` 202 return.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JobView {
    pub id: String,
    /// Always `job`.
    pub object: String,
    pub model: String,
    /// The prompt as the request gave it (null for a relayed request without one).
    #[serde(default)]
    pub prompt: Option<String>,
    pub status: JobState,
    /// Unix seconds.
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// Jobs ahead of this one (0 = next); null once it left the queue.
    pub queue_position: Option<u32>,
    /// The latest step report.
    pub progress: Option<JobProgress>,
    /// How many times a worker took the job (more than 1 after a restart).
    pub attempts: u32,
    /// The node (`seedbed serve` process) that runs or last ran the job; null before any did.
    #[serde(default)]
    pub node: Option<String>,
    /// The LoRAs the job applies (local models; left out when none), with the scale used.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub loras: Vec<LoraUse>,
    /// What a local model's job computes, every default resolved: enough to run it again
    /// (left out for a model an upstream serves).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<JobSettings>,
    /// The images so far, in the shape of the synchronous response.
    pub result: Option<ImagesResponse>,
    pub error: Option<ImageError>,
}

/// A local job's request with the server's defaults filled in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JobSettings {
    /// `"<W>x<H>"`, as delivered.
    pub size: String,
    /// Image `i` of the job used seed `seed + i`.
    pub seed: u64,
    pub steps: u32,
    pub guidance_scale: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub negative_prompt: Option<String>,
    /// Images asked for.
    pub images: u32,
    /// Image-to-image strength; left out when the job had no reference image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strength: Option<f64>,
}

/// A LoRA a job applied, and at which scale.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LoraUse {
    pub name: String,
    pub scale: f64,
}

/// One LoRA of the server's LoRA folder, as `GET /v1/loras` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LoraView {
    /// The name to send in a request's `loras`.
    pub name: String,
    /// Always `lora`.
    pub object: String,
    /// The file's size.
    pub bytes: u64,
}

/// `GET /v1/loras`: every LoRA a request may name, sorted by name (empty without a LoRA folder).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LoraList {
    /// Always `list`.
    pub object: String,
    pub data: Vec<LoraView>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Whether the job can still change.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

/// Denoising step `step` of `steps` of image `image` (0-based) of `images`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct JobProgress {
    pub image: u32,
    pub images: u32,
    pub step: u32,
    pub steps: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JobList {
    /// Always `list`.
    pub object: String,
    pub data: Vec<JobView>,
}

/// `POST /v1/keys` body; every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Any of `generate` (default), `ops` (read `/metrics` and `/info`) and `admin` (everything).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images_per_minute: Option<u32>,
    /// Images the key may generate in total.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_images: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct KeyView {
    pub id: String,
    /// Always `api_key`.
    pub object: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub images_per_minute: Option<u32>,
    pub quota_images: Option<u64>,
    /// Unix seconds.
    pub created_at: i64,
    pub revoked_at: Option<i64>,
    /// Only in the response that created the key: it is stored as a hash and cannot be shown again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct KeyList {
    pub object: String,
    pub data: Vec<KeyView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UsageView {
    /// Always `usage`.
    pub object: String,
    /// The caller's key; null when the server runs without keys.
    pub key_id: Option<String>,
    pub totals: UsageTotals,
    /// Newest first.
    pub data: Vec<UsageEntry>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct UsageTotals {
    pub jobs: u64,
    pub images: u64,
    pub tokens: u64,
}

/// What one job was billed: delivered images and Seedream tokens (`round(sum(w*h)/256)`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct UsageEntry {
    pub job_id: String,
    pub key_id: Option<String>,
    pub model: String,
    pub images: u64,
    pub tokens: u64,
    /// Unix seconds.
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ModelView {
    /// The id to send as `model`.
    pub id: String,
    /// Always `model`.
    pub object: String,
    /// The model folder or checkpoint (by its name without extension) serving this id
    /// (itself, or an alias's target).
    pub local_model: String,
    /// `StableDiffusion` or `StableDiffusionXl`.
    pub family: String,
    /// The side of the model's native square resolution (the `1K` preset).
    pub native_size: u32,
    pub default_steps: u32,
    pub default_guidance_scale: f64,
    /// How the weights are stored: `diffusers folder`, `single file`, or `upstream` for a
    /// model another service runs.
    #[serde(default)]
    pub format: String,
    /// Whether the weights are in memory now.
    pub loaded: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ModelList {
    pub object: String,
    pub data: Vec<ModelView>,
}

/// `GET /info`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ServerInfo {
    /// Always `seedbed`.
    pub name: String,
    pub version: String,
    pub uptime_s: u64,
    /// Where the engine runs, e.g. `cpu` or `cuda:0`.
    pub device: String,
    pub loaded_models: Vec<String>,
    pub models: Vec<ModelView>,
    pub limits: ServerLimits,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ServerLimits {
    pub queue_size: u32,
    pub body_bytes: u64,
    pub image_ttl_s: u64,
    pub input_image_bytes: u64,
    pub max_attempts: u32,
}

/// `GET /health`: 200 with `status: ok` once the server can take work, else 503.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Health {
    /// `ok` or `unavailable`.
    pub status: String,
    pub database: bool,
    pub device: bool,
}
