//! The one place a wire request becomes a [`GenerationSpec`]: every default resolved, every
//! bound checked, errors naming the field.

use std::sync::LazyLock;

use rand::Rng;
use regex::Regex;
use seedbed_engine::EngineError;
use seedbed_engine::scheduler::SchedulerKind;
use seedbed_types::{GenerationRequest, LoraUse, RawRequest, ResponseFormat, SequentialMode};
use serde::{Deserialize, Serialize};

use crate::catalog::{Catalog, ModelEntry};
use crate::error::{CoreError, Result};
use crate::inputs::ReferenceSource;
use crate::sizes::{self, SizeRules};

/// Seedream's cap on reference images plus generated images.
pub const MAX_IMAGES_TOTAL: u32 = 15;
pub const MAX_STEPS: u32 = seedbed_engine::pipeline::MAX_STEPS as u32;
pub const MAX_GUIDANCE: f64 = seedbed_engine::pipeline::MAX_GUIDANCE;
/// Upstream's seed range.
pub const MAX_SEED: i64 = 2_147_483_647;
/// The longest `prompt` or `negative_prompt`, in characters. Seedream documents no maximum
/// (only advice: about 600 words); this is OpenAI's limit for its image models, far above
/// what any text encoder reads, and keeps one request's text work small.
pub const MAX_PROMPT_CHARS: usize = 32_000;

/// The engine's output format, under the name the API uses (`output_format`).
pub use seedbed_engine::output::OutputFormat as ImageFormat;

/// A validated generation: what a job row stores and a worker runs, again after a restart.
///
/// Stored as one flat JSON object (the [`RunSpec`] fields sit beside the common ones), so
/// rows written before the split still read: a row with a `gateway` body is a relay, any
/// other a local run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationSpec {
    /// The model name as the client sent it, echoed in responses.
    pub model: String,
    /// How many images to make.
    pub images: u32,
    pub response_format: ResponseFormat,
    pub stream: bool,
    /// Where and how the pictures are made.
    #[serde(flatten)]
    pub run: RunSpec,
}

/// The two ways a job is run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RunSpec {
    /// An upstream provider makes the pictures. Listed first: an old relayed row also
    /// carries (empty) local fields.
    Relay(RelaySpec),
    /// This node's device makes the pictures.
    Local(LocalSpec),
}

/// A model an upstream provider serves: the client's body as it came, relayed as is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RelaySpec {
    #[serde(rename = "gateway")]
    pub body: String,
}

/// Everything the device needs, every default resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocalSpec {
    /// The model folder that runs it.
    pub local_model: String,
    pub prompt: String,
    pub negative_prompt: Option<String>,
    /// Delivered size; the model computes at `compute_*` (multiples of its latent factor).
    pub width: u32,
    pub height: u32,
    pub compute_width: u32,
    pub compute_height: u32,
    /// Image `i` uses seed `seed + i` ([`seedbed_engine::pipeline::image_seed`]).
    pub seed: u64,
    pub steps: u32,
    pub guidance_scale: f64,
    /// `None`: the model's own scheduler.
    pub scheduler: Option<SchedulerKind>,
    /// Karras sigmas for the sampler (also on when the model's scheduler config asks).
    #[serde(default)]
    pub karras_sigmas: bool,
    /// FLUX's true classifier-free guidance (with a negative prompt); `None` is off.
    #[serde(default)]
    pub true_cfg_scale: Option<f64>,
    /// Image-to-image strength; used only with a reference image.
    pub strength: f64,
    /// Blob keys of the reference images, stored when the job was created.
    pub reference_images: Vec<String>,
    pub output_format: ImageFormat,
    pub watermark: bool,
    /// The LoRAs applied, by their names in the LoRA folder (resolved again on the node that
    /// runs the job), with their scales.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub loras: Vec<LoraUse>,
    /// Whether progress events carry a preview of the image as it forms.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub preview: bool,
}

impl GenerationSpec {
    /// The local part, if this node's device runs the job.
    pub fn local(&self) -> Option<&LocalSpec> {
        match &self.run {
            RunSpec::Local(local) => Some(local),
            RunSpec::Relay(_) => None,
        }
    }

    /// The prompt: the local run's, or the relayed body's `prompt` if it has one.
    pub fn prompt(&self) -> Option<String> {
        match &self.run {
            RunSpec::Local(local) => Some(local.prompt.clone()),
            RunSpec::Relay(relay) => {
                let body: serde_json::Value = serde_json::from_str(&relay.body).ok()?;
                body.get("prompt")?.as_str().map(str::to_string)
            }
        }
    }

    pub fn is_relay(&self) -> bool {
        matches!(self.run, RunSpec::Relay(_))
    }
}

/// Check a request against the catalog. Reference images come back unfetched: URLs are
/// loaded (with their own limits) before the job is written.
pub fn validate(
    request: &GenerationRequest,
    catalog: &Catalog,
) -> Result<(GenerationSpec, Vec<ReferenceSource>)> {
    let public = non_empty(request.model.as_deref())
        .ok_or(CoreError::MissingParameter { param: "model" })?;
    let prompt = non_empty(request.prompt.as_deref())
        .ok_or(CoreError::MissingParameter { param: "prompt" })?;
    check_length("prompt", prompt)?;
    if let Some(negative) = &request.negative_prompt {
        check_length("negative_prompt", negative)?;
    }
    let model = catalog.resolve(public)?;
    let rules = SizeRules {
        model: public,
        native: model.native_size,
        factor: model.latent_factor,
        max_side: model.max_side,
    };
    let size = sizes::resolve(request.size.as_deref(), prompt, rules)?;
    let references = references(request, model)?;
    let images = image_count(request, prompt, references.len() as u32)?;
    let seed = match request.seed {
        None | Some(-1) => rand::rng().random_range(0..=MAX_SEED) as u64,
        Some(seed) if (0..=MAX_SEED).contains(&seed) => seed as u64,
        Some(seed) => {
            return Err(CoreError::invalid(
                "seed",
                format!("seed {seed} must be -1 (random) or between 0 and {MAX_SEED}."),
            ));
        }
    };
    let steps = request.steps.unwrap_or(model.defaults.steps);
    if !(1..=MAX_STEPS).contains(&steps) {
        return Err(CoreError::invalid(
            "steps",
            format!("steps {steps} must be between 1 and {MAX_STEPS}."),
        ));
    }
    let guidance_scale = request
        .guidance_scale
        .unwrap_or(model.defaults.guidance_scale);
    if !guidance_scale.is_finite() || !(0.0..=MAX_GUIDANCE).contains(&guidance_scale) {
        return Err(CoreError::invalid(
            "guidance_scale",
            format!("guidance_scale {guidance_scale} must be between 0 and {MAX_GUIDANCE}."),
        ));
    }
    let scheduler = match request.scheduler.as_deref() {
        None => None,
        Some(name) => Some(name.parse::<SchedulerKind>().map_err(|_| {
            let names: Vec<_> = SchedulerKind::ALL.iter().map(|k| k.name()).collect();
            CoreError::invalid(
                "scheduler",
                format!("scheduler `{name}` is not one of {}.", names.join(", ")),
            )
        })?),
    };
    let karras_sigmas = request.karras_sigmas.unwrap_or(false);
    if karras_sigmas && scheduler == Some(SchedulerKind::Ddim) {
        return Err(CoreError::invalid(
            "karras_sigmas",
            "Karras sigmas need euler, euler_a or dpmpp2m, not ddim.",
        ));
    }
    let true_cfg_scale = request.true_cfg_scale;
    family_options(model, scheduler, karras_sigmas, true_cfg_scale)?;
    let loras = loras(request, model, catalog)?;
    let strength = request.strength.unwrap_or(0.8);
    if !(strength > 0.0 && strength <= 1.0) {
        return Err(CoreError::invalid(
            "strength",
            format!("strength {strength} must be in (0, 1]."),
        ));
    }
    // SD's img2img runs int(steps * strength) steps, which can be none; FLUX's runs
    // steps - int(steps - steps * strength), at least one.
    if !references.is_empty() && model.family.is_unet() && (f64::from(steps) * strength) < 1.0 {
        return Err(CoreError::invalid(
            "strength",
            format!("steps {steps} x strength {strength} leaves no step to run; raise either."),
        ));
    }
    let output_format = match request.output_format.as_deref() {
        None | Some("jpeg") | Some("jpg") => ImageFormat::Jpeg,
        Some("png") => ImageFormat::Png,
        Some(other) => {
            return Err(CoreError::invalid(
                "output_format",
                format!("output_format `{other}` must be jpeg or png."),
            ));
        }
    };
    if let Some(mode) = request
        .optimize_prompt_options
        .as_ref()
        .and_then(|o| o.mode.as_deref())
        && !matches!(mode, "standard" | "fast")
    {
        return Err(CoreError::invalid(
            "optimize_prompt_options.mode",
            format!("mode `{mode}` must be standard or fast."),
        ));
    }
    let spec = GenerationSpec {
        model: public.to_string(),
        images,
        response_format: request.response_format.unwrap_or_default(),
        stream: request.stream.unwrap_or(false),
        run: RunSpec::Local(LocalSpec {
            local_model: model.name.clone(),
            prompt: prompt.to_string(),
            negative_prompt: request.negative_prompt.clone().filter(|n| !n.is_empty()),
            width: size.width,
            height: size.height,
            compute_width: size.compute_width,
            compute_height: size.compute_height,
            seed,
            steps,
            guidance_scale,
            scheduler,
            karras_sigmas,
            true_cfg_scale,
            strength,
            reference_images: Vec::new(),
            output_format,
            watermark: request.watermark.unwrap_or(true),
            loras,
            preview: request.preview.unwrap_or(false),
        }),
    };
    Ok((spec, references))
}

/// The options only some families take: the UNet samplers for SD and SDXL, true CFG for FLUX.
fn family_options(
    model: &ModelEntry,
    scheduler: Option<SchedulerKind>,
    karras_sigmas: bool,
    true_cfg_scale: Option<f64>,
) -> Result<()> {
    model
        .family
        .check_options(&model.name, scheduler, karras_sigmas, true_cfg_scale)
        .map_err(|error| match error {
            EngineError::InvalidInput { field, message } => {
                CoreError::invalid(field, format!("{message}."))
            }
            other => CoreError::Internal(other.to_string()),
        })?;
    match true_cfg_scale {
        Some(scale) if !(scale.is_finite() && (1.0..=MAX_GUIDANCE).contains(&scale)) => {
            Err(CoreError::invalid(
                "true_cfg_scale",
                format!("true_cfg_scale {scale} must be between 1 and {MAX_GUIDANCE}."),
            ))
        }
        _ => Ok(()),
    }
}

/// The request's LoRAs, each found in the LoRA folder and checked against the model's layers
/// from file headers alone (a LoRA for another model, a file in no known layout, a family that
/// takes none: all 400s naming `loras`, before a job is written).
fn loras(
    request: &GenerationRequest,
    model: &ModelEntry,
    catalog: &Catalog,
) -> Result<Vec<LoraUse>> {
    let wanted = request.loras.as_deref().unwrap_or_default();
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    if seedbed_engine::lora::targets::components(model.family).is_none() {
        return Err(CoreError::invalid(
            "loras",
            format!(
                "loras: model {} ({:?}) takes no LoRAs; {} models do.",
                model.name,
                model.family,
                seedbed_engine::lora::FAMILIES_TAKING_LORAS
            ),
        ));
    }
    let parsed = crate::loras::parse_request(wanted, catalog.loras())?;
    // A model another node runs has its folder or file there, not here: that node checks it.
    if model.path.exists() {
        for (lora, path) in &parsed {
            seedbed_engine::lora::check(&model.path, path).map_err(|error| {
                let message = match error {
                    EngineError::InvalidInput { message, .. } => message,
                    other => other.to_string(),
                };
                CoreError::invalid(
                    "loras",
                    format!(
                        "loras: `{}` does not fit model {}: {message}.",
                        lora.name, model.name
                    ),
                )
            })?;
        }
    }
    Ok(parsed.into_iter().map(|(lora, _)| lora).collect())
}

/// A request for a model an upstream serves: the upstream validates it; seedbed reads only what
/// it needs to answer (`stream`, `response_format`) and to count images against key limits.
pub fn validate_gateway(request: &GenerationRequest, raw: &RawRequest) -> Result<GenerationSpec> {
    let public = non_empty(request.model.as_deref())
        .ok_or(CoreError::MissingParameter { param: "model" })?;
    let prompt = request.prompt.clone().unwrap_or_default();
    check_length("prompt", &prompt)?;
    if request.loras.as_ref().is_some_and(|l| !l.is_empty()) {
        return Err(CoreError::invalid(
            "loras",
            format!(
                "loras: model {public} is served by an upstream; LoRAs apply to local models only."
            ),
        ));
    }
    let images = image_count(request, &prompt, 0)?;
    // Previews come from a local denoise; an upstream gets none of seedbed's asking for them.
    let mut raw = raw.clone();
    raw.remove("preview");
    Ok(GenerationSpec {
        model: public.to_string(),
        images,
        response_format: request.response_format.unwrap_or_default(),
        stream: request.stream.unwrap_or(false),
        run: RunSpec::Relay(RelaySpec {
            body: String::from_utf8_lossy(&raw.to_bytes()).into_owned(),
        }),
    })
}

fn check_length(param: &'static str, text: &str) -> Result<()> {
    // Bytes bound characters from above: most prompts need no count at all.
    if text.len() > MAX_PROMPT_CHARS && text.chars().count() > MAX_PROMPT_CHARS {
        return Err(CoreError::invalid(
            param,
            format!(
                "{param} has {} characters; the limit is {MAX_PROMPT_CHARS}.",
                text.chars().count()
            ),
        ));
    }
    Ok(())
}

fn non_empty(text: Option<&str>) -> Option<&str> {
    text.filter(|t| !t.trim().is_empty())
}

fn references(request: &GenerationRequest, model: &ModelEntry) -> Result<Vec<ReferenceSource>> {
    let Some(input) = &request.image else {
        return Ok(Vec::new());
    };
    let items = input.as_slice();
    if items.is_empty() {
        return Err(CoreError::invalid(
            "image",
            "image must not be an empty list.",
        ));
    }
    if items.len() > model.max_reference_images {
        return Err(CoreError::invalid(
            "image",
            format!(
                "{} reference images given; model {} takes at most {}.",
                items.len(),
                model.name,
                model.max_reference_images
            ),
        ));
    }
    items
        .iter()
        .map(|item| ReferenceSource::parse(item))
        .collect()
}

static COUNT_IN_PROMPT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)\b(\d{1,2}|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|fifteen)\s+(?:[a-z-]+\s+){0,2}(?:images|pictures|photos|illustrations|panels|frames|variations|versions|views|scenes)\b",
    )
    .unwrap()
});

/// `sequential_image_generation: auto`: Seedream decides the count from the prompt. We take
/// `max_images` when the client set it, else a count the prompt names ("four images of"),
/// else one; refs + generated never exceed 15.
fn image_count(request: &GenerationRequest, prompt: &str, references: u32) -> Result<u32> {
    let max_images = request
        .sequential_image_generation_options
        .as_ref()
        .and_then(|o| o.max_images);
    if let Some(max) = max_images
        && !(1..=MAX_IMAGES_TOTAL).contains(&max)
    {
        return Err(CoreError::invalid(
            "sequential_image_generation_options.max_images",
            format!("max_images {max} must be between 1 and {MAX_IMAGES_TOTAL}."),
        ));
    }
    if request.sequential_image_generation != Some(SequentialMode::Auto) {
        return Ok(1);
    }
    let wanted = max_images.unwrap_or_else(|| count_in_prompt(prompt).unwrap_or(1));
    Ok(wanted.min(MAX_IMAGES_TOTAL - references).max(1))
}

fn count_in_prompt(prompt: &str) -> Option<u32> {
    let word = COUNT_IN_PROMPT
        .captures(prompt)?
        .get(1)?
        .as_str()
        .to_ascii_lowercase();
    let words = [
        "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
        "thirteen", "fourteen", "fifteen",
    ];
    let n = match words.iter().position(|w| *w == word) {
        Some(i) => i as u32 + 2,
        None => word.parse().ok()?,
    };
    (1..=MAX_IMAGES_TOTAL).contains(&n).then_some(n)
}

#[cfg(test)]
mod tests;
