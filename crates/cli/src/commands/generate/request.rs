//! The flags as one wire request, built the same way for a server and for local generation, so
//! both are validated by the same rules (core's `spec::validate`) from the same fields. The
//! checks that need no model run here first, before a model loads or a request is sent, so a
//! typo costs nothing and exits 2 on either path (a server would only answer 400, exit 3).

use anyhow::Result;
use base64::Engine as _;
use seedbed_core::CoreError;
use seedbed_core::loras::{MAX_LORA_SCALE, MAX_LORAS};
use seedbed_core::spec::{MAX_GUIDANCE, MAX_PROMPT_CHARS, MAX_SEED, MAX_STEPS};
use seedbed_types::{GenerationRequest, ImageInput, LoraRef, SequentialMode, SequentialOptions};

use super::GenerateArgs;
use super::output::Format;

/// The size presets core knows (`seedbed_core::sizes`); anything else must be `WxH`.
const SIZE_PRESETS: [&str; 6] = ["1K", "1.5K", "2K", "3K", "4K", "adaptive"];

/// The model-independent checks; the model-dependent ones (size bounds, strength x steps)
/// are core's, which a local run also applies before loading the model.
pub fn check(args: &GenerateArgs) -> Result<()> {
    let prompt = args.prompt.trim();
    if prompt.is_empty() {
        return Err(CoreError::invalid("prompt", "the prompt is empty; say what to draw").into());
    }
    if prompt.chars().count() > MAX_PROMPT_CHARS {
        return Err(CoreError::invalid(
            "prompt",
            format!("the prompt is longer than {MAX_PROMPT_CHARS} characters"),
        )
        .into());
    }
    if let Some(size) = args.size.as_deref().map(str::trim)
        && !SIZE_PRESETS.contains(&size)
        && !is_width_x_height(size)
    {
        return Err(CoreError::invalid(
            "size",
            format!("--size {size} is neither a preset (1K, 1.5K, 2K, 3K, 4K) nor WIDTHxHEIGHT such as 1024x768"),
        )
        .into());
    }
    if let Some(strength) = args.strength
        && !(strength > 0.0 && strength <= 1.0)
    {
        return Err(CoreError::invalid(
            "strength",
            format!("--strength {strength} must be in (0, 1]"),
        )
        .into());
    }
    if let Some(steps) = args.steps
        && !(1..=MAX_STEPS).contains(&steps)
    {
        return Err(CoreError::invalid(
            "steps",
            format!("--steps {steps} must be between 1 and {MAX_STEPS}"),
        )
        .into());
    }
    if let Some(guidance) = args.guidance
        && !(guidance.is_finite() && (0.0..=MAX_GUIDANCE).contains(&guidance))
    {
        return Err(CoreError::invalid(
            "guidance_scale",
            format!("--guidance {guidance} must be between 0 and {MAX_GUIDANCE}"),
        )
        .into());
    }
    if let Some(seed) = args.seed
        && seed > MAX_SEED as u64
    {
        return Err(CoreError::invalid(
            "seed",
            format!("--seed {seed} must be between 0 and {MAX_SEED}"),
        )
        .into());
    }
    for source in args.image.iter().filter(|s| !is_url(s)) {
        picture_size(source)?;
    }
    if args.loras.len() > MAX_LORAS {
        return Err(CoreError::invalid(
            "loras",
            format!(
                "--lora is given {} times; a request applies at most {MAX_LORAS}",
                args.loras.len()
            ),
        )
        .into());
    }
    Ok(())
}

/// `--lora NAME[:SCALE]`: a name of the LoRA folder and its factor (1 when not given). The
/// scale's bound is checked here so that a typo exits 2 before a model loads or a request is
/// sent; whether the name exists is the LoRA folder's answer (core's or the server's).
pub fn parse_lora(value: &str) -> std::result::Result<LoraRef, String> {
    let form = format!(
        "expected NAME or NAME:SCALE, SCALE a number from -{MAX_LORA_SCALE} to {MAX_LORA_SCALE} \
         (e.g. watercolor or watercolor:0.8)"
    );
    let (name, scale) = match value.rsplit_once(':') {
        Some((name, scale)) => {
            let scale: f64 = scale
                .trim()
                .parse()
                .map_err(|_| format!("`{scale}` is not a scale; {form}"))?;
            if !(scale.is_finite() && scale.abs() <= MAX_LORA_SCALE) {
                return Err(format!("scale {scale} is out of range; {form}"));
            }
            (name, Some(scale))
        }
        None => (value, None),
    };
    let name = name.trim();
    if name.is_empty() {
        return Err(format!("no LoRA name; {form}"));
    }
    Ok(LoraRef {
        name: name.to_string(),
        scale,
    })
}

fn is_width_x_height(size: &str) -> bool {
    size.split_once('x').is_some_and(|(w, h)| {
        [w, h]
            .iter()
            .all(|n| !n.is_empty() && n.len() <= 6 && n.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// The width and height of a reference file, read from its header; a file that is missing
/// or not a picture is bad input.
pub fn picture_size(source: &str) -> Result<(u32, u32)> {
    let unreadable = |why: String| CoreError::invalid("image", format!("--image {source}: {why}"));
    let reader = image::ImageReader::open(source)
        .map_err(|e| unreadable(e.to_string()))?
        .with_guessed_format()
        .map_err(|e| unreadable(e.to_string()))?;
    if reader.format().is_none() {
        return Err(
            unreadable("not a picture seedbed can read (PNG, JPEG, WebP, ...)".into()).into(),
        );
    }
    Ok(reader
        .into_dimensions()
        .map_err(|e| unreadable(e.to_string()))?)
}

/// What happens to a reference of another size: the engine resizes it (Lanczos) to the size it
/// computes at, stretching it when the aspect ratio differs (nothing is cropped or padded).
pub fn resize_note(source: &str, from: (u32, u32), to: (u32, u32)) -> Option<String> {
    if from == to {
        return None;
    }
    let how = if u64::from(from.0) * u64::from(to.1) == u64::from(from.1) * u64::from(to.0) {
        "scaled"
    } else {
        "stretched, not cropped"
    };
    Some(format!(
        "note: {source} is {}x{}; resized to {}x{} ({how})",
        from.0, from.1, to.0, to.1
    ))
}

/// The request for `args`; `format` is the `-o` file's format (`None`: the default, JPEG).
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
        true_cfg_scale: args.true_cfg_scale,
        loras: (!args.loras.is_empty()).then(|| args.loras.clone()),
        ..GenerationRequest::default()
    })
}

/// A URL is passed on; a file becomes a `data:` URI.
fn reference(source: &str) -> Result<String> {
    if is_url(source) {
        return Ok(source.to_string());
    }
    let bytes = std::fs::read(source)
        .map_err(|e| CoreError::invalid("image", format!("--image {source}: {e}")))?;
    let format = image::guess_format(&bytes).map_err(|_| {
        CoreError::invalid(
            "image",
            format!("--image {source} is not a picture seedbed can read"),
        )
    })?;
    let mime = format.to_mime_type();
    Ok(format!(
        "data:{mime};base64,{}",
        base64::engine::general_purpose::STANDARD.encode(&bytes)
    ))
}

pub fn is_url(source: &str) -> bool {
    source.starts_with("http://") || source.starts_with("https://")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_presets_or_width_x_height() {
        assert!(is_width_x_height("1024x768"));
        for bad in ["big", "x768", "1024x", "1024*768", "10x10x10", "-1x5"] {
            assert!(!is_width_x_height(bad), "{bad}");
        }
    }

    #[test]
    fn loras_are_a_name_and_an_optional_scale() {
        let lora = |name: &str, scale| LoraRef {
            name: name.into(),
            scale,
        };
        assert_eq!(parse_lora("watercolor").unwrap(), lora("watercolor", None));
        assert_eq!(
            parse_lora("watercolor:0.8").unwrap(),
            lora("watercolor", Some(0.8))
        );
        assert_eq!(parse_lora("slider:-4").unwrap(), lora("slider", Some(-4.0)));
        for (bad, why) in [
            ("watercolor:", "`` is not a scale"),
            ("watercolor:lots", "`lots` is not a scale"),
            ("watercolor:4.5", "scale 4.5 is out of range"),
            ("watercolor:NaN", "scale NaN is out of range"),
            (":0.5", "no LoRA name"),
            ("", "no LoRA name"),
        ] {
            let error = parse_lora(bad).unwrap_err();
            assert!(error.starts_with(why), "{bad}: {error}");
            assert!(error.contains("expected NAME or NAME:SCALE"), "{error}");
        }
    }

    #[test]
    fn a_reference_of_another_shape_is_said_to_be_stretched() {
        assert_eq!(resize_note("a.png", (64, 64), (64, 64)), None);
        assert_eq!(
            resize_note("a.png", (32, 32), (64, 64)).unwrap(),
            "note: a.png is 32x32; resized to 64x64 (scaled)"
        );
        assert_eq!(
            resize_note("a.png", (640, 480), (512, 512)).unwrap(),
            "note: a.png is 640x480; resized to 512x512 (stretched, not cropped)"
        );
    }
}
