//! The flags as one wire request, built the same way for a server and for local generation, so
//! both are validated by the same rules (core's `spec::validate`) from the same fields.

use anyhow::{Context, Result};
use base64::Engine as _;
use seedbed_types::{GenerationRequest, ImageInput, SequentialMode, SequentialOptions};

use super::GenerateArgs;
use super::output::Format;

/// The request for `args`; `format` is the `-o` file's format (`None`: the default).
pub fn build(args: &GenerateArgs, format: Option<Format>) -> Result<GenerationRequest> {
    let mut images = Vec::with_capacity(args.image.len());
    for source in &args.image {
        images.push(reference(source)?);
    }
    Ok(GenerationRequest {
        model: args.model.clone(),
        prompt: Some(args.prompt.clone()),
        image: match images.len() {
            0 => None,
            1 => Some(ImageInput::One(images.remove(0))),
            _ => Some(ImageInput::Many(images)),
        },
        size: args.size.clone(),
        // A seed past i64 is still out of range, not -1 (random) after wrapping.
        seed: args.seed.map(|s| i64::try_from(s).unwrap_or(i64::MAX)),
        // `-n` is Seedream's sequential batch.
        sequential_image_generation: (args.count > 1).then_some(SequentialMode::Auto),
        sequential_image_generation_options: (args.count > 1).then_some(SequentialOptions {
            max_images: Some(args.count),
        }),
        guidance_scale: args.guidance,
        watermark: args.watermark,
        output_format: format.map(|f| f.extension().into()),
        negative_prompt: args.negative_prompt.clone(),
        steps: args.steps,
        scheduler: args.scheduler.map(|s| s.name().to_string()),
        strength: args.strength,
        karras_sigmas: args.karras.then_some(true),
        ..GenerationRequest::default()
    })
}

/// A URL is passed on; a file becomes a `data:` URI.
fn reference(source: &str) -> Result<String> {
    if is_url(source) {
        return Ok(source.to_string());
    }
    let bytes = std::fs::read(source).with_context(|| format!("reading {source}"))?;
    let format = image::guess_format(&bytes)
        .with_context(|| format!("{source} is not a picture seedbed can read"))?;
    let mime = format.to_mime_type();
    Ok(format!(
        "data:{mime};base64,{}",
        base64::engine::general_purpose::STANDARD.encode(&bytes)
    ))
}

pub fn is_url(source: &str) -> bool {
    source.starts_with("http://") || source.starts_with("https://")
}
