//! `POST /api/v3/images/generations` request body.

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// The request as sent by the Ark SDKs, the OpenAI SDK (with `extra_body`), curl or the Go SDK.
///
/// Every field is optional on the wire: the Python SDKs send `null` for unset fields, the Go
/// SDK omits them. Fields seedbed does not know are kept in `extra` (a gateway forwards them).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct GenerationRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageInput>,
    /// A preset (`1K`, `2K`, `4K`, `adaptive`) or `WxH`; checked per model by the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// `-1` means random.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequential_image_generation: Option<SequentialMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequential_image_generation_options: Option<SequentialOptions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Classifier-free guidance; for local models 0 turns it off (Turbo models), default from the model.
    pub guidance_scale: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<ResponseFormat>,
    /// Defaults to true: a visible "AI generated" mark.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optimize_prompt_options: Option<OptimizePromptOptions>,
    /// `jpeg` (default) or `png`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_format: Option<String>,

    // seedbed extensions for local models (documented in the OpenAPI schema).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// seedbed extension (local models): what the picture should not show.
    pub negative_prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// seedbed extension (local models): denoising steps, 1..=500; default from the model.
    pub steps: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// seedbed extension (local models): `euler`, `euler_a`, `ddim` or `dpmpp2m`; default the
    /// model's own scheduler.
    pub scheduler: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// seedbed extension (local models, with `image`): how much of the reference is repainted,
    /// (0, 1]; default 0.8.
    pub strength: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// seedbed extension (local models): space the sampler's steps with Karras sigmas (euler,
    /// euler_a, dpmpp2m; not ddim); default false, or what the model's scheduler config says.
    pub karras_sigmas: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// seedbed extension (FLUX models): true classifier-free guidance, 1..=30. Above 1, with a
    /// `negative_prompt`, each step runs the model on both prompts (twice the time); default off.
    pub true_cfg_scale: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// seedbed extension (local SD, SDXL and FLUX models): LoRAs from the server's LoRA folder
    /// (`GET /v1/loras`), applied in order for this request only; at most 8.
    pub loras: Option<Vec<LoraRef>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// seedbed extension (local models): job events carry a small JPEG of the image as it
    /// forms (`preview` on `progress` events, every few steps and at the last); default false.
    /// Models of an upstream provider send none.
    pub preview: Option<bool>,

    /// Everything else, including fields seedbed does not know (`tools`, `optimize_prompt`,
    /// `layer_decomposition`, ...), with `null`s dropped.
    #[serde(flatten, deserialize_with = "non_null_map")]
    pub extra: Map<String, Value>,
}

/// Fields that Seedream or OpenAI define and seedbed's local models do not use (an upstream
/// gets them relayed): SDKs send them, so they are no mistake and get no warning. Any other
/// field in `extra` is unknown to every API seedbed speaks, most often a misspelling.
pub const KNOWN_UNUSED_FIELDS: [&str; 14] = [
    // Seedream (Ark)
    "optimize_prompt",
    "tools",
    "layer_decomposition",
    // OpenAI images (`n` is read, on /v1, before this list is consulted)
    "n",
    "user",
    "quality",
    "style",
    "background",
    "moderation",
    "output_compression",
    "partial_images",
    "input_fidelity",
    "mask",
    // The OpenAI SDK's way to pass extra fields, when a client nests instead of merging.
    "extra_body",
];

impl GenerationRequest {
    /// Fields no API seedbed speaks defines (`stepz`), sorted.
    pub fn unknown_fields(&self) -> Vec<&str> {
        let mut unknown: Vec<&str> = self
            .extra
            .keys()
            .map(String::as_str)
            .filter(|field| !KNOWN_UNUSED_FIELDS.contains(field))
            .collect();
        unknown.sort_unstable();
        unknown
    }
}

fn non_null_map<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Map<String, Value>, D::Error> {
    let mut map = Map::<String, Value>::deserialize(deserializer)?;
    map.retain(|_, value| !value.is_null());
    Ok(map)
}

/// One LoRA a request asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LoraRef {
    /// A name `GET /v1/loras` lists: a file of the server's LoRA folder without its
    /// `.safetensors`; never a path.
    pub name: String,
    /// The factor on the LoRA's change, -4..=4; default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<f64>,
}

/// `image`: one URL / data URI, or a list of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ImageInput {
    One(String),
    Many(Vec<String>),
}

impl ImageInput {
    pub fn as_slice(&self) -> &[String] {
        match self {
            Self::One(one) => std::slice::from_ref(one),
            Self::Many(many) => many,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SequentialMode {
    Auto,
    Disabled,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SequentialOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_images: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ResponseFormat {
    #[default]
    Url,
    B64Json,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OptimizePromptOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thinking: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `volcenginesdkarkruntime` sends: every known field, `null` when unset.
    #[test]
    fn python_sdk_nulls_are_absent() {
        let body = r#"{"model":"seedream-4-0-250828","prompt":"hi","image":null,"response_format":null,"size":"2K","seed":null,
 "guidance_scale":null,"watermark":null,"optimize_prompt":null,"optimize_prompt_options":null,
 "sequential_image_generation":null,"sequential_image_generation_options":null,"tools":null,
 "output_format":null,"layer_decomposition":null}"#;
        let request: GenerationRequest = serde_json::from_str(body).unwrap();
        assert_eq!(request.model.as_deref(), Some("seedream-4-0-250828"));
        assert_eq!(request.size.as_deref(), Some("2K"));
        assert_eq!(request.image, None);
        assert!(request.extra.is_empty(), "{:?}", request.extra);
    }

    #[test]
    fn only_fields_no_api_defines_are_unknown() {
        let body = r#"{"model":"m","prompt":"p","stepz":4,"user":"u","n":2,"quality":"high",
            "optimize_prompt_options":{"mode":"fast"},"tools":[],"Steps":3,"seed":null}"#;
        let request: GenerationRequest = serde_json::from_str(body).unwrap();
        assert_eq!(request.unknown_fields(), ["Steps", "stepz"]);
    }

    #[test]
    fn images_unknown_fields_and_extensions() {
        let body = r#"{"model":"m","prompt":"p","image":["https://a/x.png","data:image/png;base64,AAAA"],
            "sequential_image_generation":"auto","sequential_image_generation_options":{"max_images":3},
            "stream":true,"response_format":"b64_json","watermark":false,"tools":[{"type":"web_search"}],
            "negative_prompt":"blurry","steps":4,"scheduler":"euler","strength":0.5,"karras_sigmas":true}"#;
        let request: GenerationRequest = serde_json::from_str(body).unwrap();
        assert_eq!(request.image.as_ref().unwrap().as_slice().len(), 2);
        assert_eq!(
            request.sequential_image_generation,
            Some(SequentialMode::Auto)
        );
        assert_eq!(
            request
                .sequential_image_generation_options
                .as_ref()
                .unwrap()
                .max_images,
            Some(3)
        );
        assert_eq!(request.response_format, Some(ResponseFormat::B64Json));
        assert_eq!(request.steps, Some(4));
        assert_eq!(request.karras_sigmas, Some(true));
        assert_eq!(
            request.extra["tools"],
            serde_json::json!([{"type": "web_search"}])
        );
        // Round trip keeps the unknown field for upstream forwarding.
        let again: Value = serde_json::to_value(&request).unwrap();
        assert_eq!(again["tools"], serde_json::json!([{"type": "web_search"}]));
        let one: GenerationRequest =
            serde_json::from_str(r#"{"image":"https://a/x.png"}"#).unwrap();
        assert_eq!(one.image.unwrap().as_slice(), ["https://a/x.png"]);
    }

    #[test]
    fn wrong_types_are_errors_that_name_the_field() {
        let err =
            serde_json::from_str::<GenerationRequest>(r#"{"response_format":"jpeg"}"#).unwrap_err();
        assert!(err.to_string().contains("jpeg"), "{err}");
        let err = serde_json::from_str::<GenerationRequest>(r#"{"seed":"x"}"#).unwrap_err();
        assert!(err.to_string().contains("invalid type"), "{err}");
    }
}
