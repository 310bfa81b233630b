//! `seedbed generate` without a server: text-to-image and image-to-image in this process.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use seedbed_engine::output::{self, OutputFormat, Provenance};
use seedbed_engine::{EngineError, GenerateRequest, InitImage, Pipeline, Progress};

use super::GenerateArgs;
use super::output::{Format, Target, write_atomically};

/// `WxH`, or a preset relative to the model's native square: 1K = native, 2K, 4K.
fn parse_size(text: &str, native: u32) -> Result<(u32, u32)> {
    let scale = match text.to_ascii_uppercase().as_str() {
        "1K" => Some(1),
        "2K" => Some(2),
        "4K" => Some(4),
        _ => None,
    };
    if let Some(scale) = scale {
        return Ok((native * scale, native * scale));
    }
    let invalid = || {
        EngineError::invalid(
            "size",
            format!("`{text}` is not WIDTHxHEIGHT (e.g. 512x512) or a preset (1K, 2K, 4K)"),
        )
    };
    let (w, h) = text.split_once(['x', 'X']).ok_or_else(invalid)?;
    let side = |s: &str| s.trim().parse::<u32>().map_err(|_| invalid());
    Ok((side(w)?, side(h)?))
}

pub fn run(args: GenerateArgs) -> Result<ExitCode> {
    // A malformed size is bad usage, whatever the model.
    if let Some(text) = &args.size {
        parse_size(text, 1)?;
    }
    let model_dir = resolve_model(&args.models_dir, args.model.as_deref())?;
    let model_name = model_dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let target = Target::parse(args.output.as_deref(), Format::Png)?;
    let init_image = match args.image.first() {
        Some(source) if source.starts_with("http://") || source.starts_with("https://") => {
            bail!(EngineError::invalid(
                "image",
                "local generation reads the reference from a file; download it first or use --server"
            ))
        }
        Some(path) => Some(InitImage {
            image: image::open(path).with_context(|| format!("reading {path}"))?,
            strength: args.strength.unwrap_or(0.8),
        }),
        None => None,
    };

    let loading = Instant::now();
    let pipeline = Pipeline::load(&model_dir, args.device.load_options()?)?;
    tracing::info!(model = %model_dir.display(), seconds = loading.elapsed().as_secs_f64(), "model loaded");

    let turbo = model_name.to_lowercase().contains("turbo");
    let native = pipeline.native_size();
    let (width, height) = match &args.size {
        Some(text) => parse_size(text, native)?,
        None => (native, native),
    };
    let request = GenerateRequest {
        prompt: args.prompt.clone(),
        negative_prompt: args.negative_prompt.clone(),
        width,
        height,
        steps: args
            .steps
            .map_or(if turbo { 4 } else { 25 }, |s| s as usize),
        guidance_scale: args.guidance.unwrap_or(if turbo { 0.0 } else { 7.5 }),
        scheduler: args
            .scheduler
            .unwrap_or_else(|| pipeline.default_scheduler()),
        karras_sigmas: args.karras,
        seed: args.seed.unwrap_or_else(rand_seed),
        count: args.count as usize,
        init_image,
    };

    let bar = progress_bar(args.quiet, request.count * request.steps);
    let mut on_progress = |p: Progress| {
        bar.set_position((p.image * p.steps + p.step) as u64);
        bar.set_message(format!("image {}/{}", p.image + 1, p.images));
    };
    let started = Instant::now();
    let images = pipeline.generate(&request, &mut on_progress, &AtomicBool::new(false))?;
    bar.finish_and_clear();
    tracing::info!(
        seconds = started.elapsed().as_secs_f64(),
        peak_rss_bytes = crate::memory::peak_rss_bytes(),
        "generated"
    );

    let format = target.format().unwrap_or(Format::Png);
    let mut written = Vec::new();
    for (index, generated) in images.into_iter().enumerate() {
        let stem = format!("seedbed-{}", generated.seed);
        let path = target.path(index, request.count, &stem, format);
        let mut picture = generated.image;
        if args.watermark.unwrap_or(true) {
            output::apply_watermark(&mut picture);
        }
        let provenance = Provenance {
            model: model_name.clone(),
            seed: generated.seed,
            software: format!("seedbed {}", env!("CARGO_PKG_VERSION")),
            created_unix: unix_now(),
        };
        let encoding = match format {
            Format::Png => OutputFormat::Png,
            Format::Jpeg => OutputFormat::Jpeg,
        };
        write_atomically(&path, &output::encode(&picture, encoding, &provenance)?)?;
        if !args.json {
            println!("{} (seed {})", path.display(), generated.seed);
        }
        written.push(serde_json::json!({
            "path": path,
            "seed": generated.seed,
            "size": format!("{}x{}", picture.width(), picture.height()),
        }));
    }
    if args.json {
        println!(
            "{}",
            serde_json::json!({"model": model_name, "data": written})
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The named model, or the first model folder (alphabetically) inside `models_dir`.
fn resolve_model(models_dir: &Path, model: Option<&str>) -> Result<PathBuf> {
    if let Some(name) = model {
        let dir = models_dir.join(name);
        if !dir.join("model_index.json").is_file() {
            bail!(EngineError::invalid(
                "model",
                format!(
                    "no model folder `{name}` with a model_index.json in {}",
                    models_dir.display()
                )
            ));
        }
        return Ok(dir);
    }
    let entries = std::fs::read_dir(models_dir).with_context(|| {
        format!(
            "reading the models directory {} (set --models-dir or SEEDBED_MODELS_DIR)",
            models_dir.display()
        )
    })?;
    let mut models: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.join("model_index.json").is_file())
        .collect();
    models.sort();
    let first = models.into_iter().next().with_context(|| {
        format!(
            "no model folder (with a model_index.json) in {}",
            models_dir.display()
        )
    })?;
    eprintln!("using model {}", first.display());
    Ok(first)
}

/// A random seed in Seedream's seed range [0, 2^31), so any seed we print can be sent back.
fn rand_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now()) % (1 << 31)
}

fn progress_bar(quiet: bool, total: usize) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] step {pos}/{len} {elapsed} (eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar
}
