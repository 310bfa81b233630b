//! `seedbed generate`: text-to-image and image-to-image on the local machine.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use seedbed_engine::scheduler::SchedulerKind;
use seedbed_engine::{EngineError, GenerateRequest, InitImage, Pipeline, Progress};

use crate::device::DeviceArgs;

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// What to draw.
    prompt: String,

    /// Folder of diffusers model folders (each holding a `model_index.json`).
    #[arg(long, env = "SEEDBED_MODELS_DIR", default_value = "models")]
    models_dir: PathBuf,

    /// Model folder name inside `--models-dir`; defaults to the first one, alphabetically.
    #[arg(long, short, env = "SEEDBED_MODEL")]
    model: Option<String>,

    /// Image size as WIDTHxHEIGHT, multiples of 8; defaults to the model's native resolution.
    #[arg(long, value_parser = parse_size)]
    size: Option<(u32, u32)>,

    /// Denoising steps. Default: 4 for Turbo models (folder name contains "turbo"), else 25.
    #[arg(long)]
    steps: Option<usize>,

    /// Classifier-free guidance scale; <= 1 disables guidance. Default: 0 for Turbo models, else 7.5.
    #[arg(long)]
    guidance: Option<f64>,

    /// Sampler: ddim, euler, euler_a or dpmpp2m. Default: the one in the model's scheduler config.
    #[arg(long)]
    scheduler: Option<SchedulerKind>,

    /// Use Karras sigmas (euler, euler_a, dpmpp2m).
    #[arg(long)]
    karras: bool,

    /// Seed of the first image; image i uses seed + i. Random when not given.
    #[arg(long)]
    seed: Option<u64>,

    /// What to steer away from (used when guidance > 1).
    #[arg(long)]
    negative_prompt: Option<String>,

    /// Start from this picture (image-to-image); it is resized to the output size.
    #[arg(long, requires = "strength")]
    init_image: Option<PathBuf>,

    /// How much of the init image to repaint, in (0, 1].
    #[arg(long, requires = "init_image")]
    strength: Option<f64>,

    /// Number of images.
    #[arg(short = 'n', long, default_value_t = 1)]
    count: usize,

    /// Output file, .png or .jpg; with -n > 1 the image index is added before the extension.
    #[arg(short, long, default_value = "seedbed.png")]
    output: PathBuf,

    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,

    #[command(flatten)]
    device: DeviceArgs,
}

fn parse_size(text: &str) -> Result<(u32, u32), String> {
    let (w, h) = text
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("`{text}` is not WIDTHxHEIGHT, e.g. 512x512"))?;
    let side = |s: &str| {
        s.trim()
            .parse::<u32>()
            .map_err(|_| format!("`{text}` is not WIDTHxHEIGHT, e.g. 512x512"))
    };
    Ok((side(w)?, side(h)?))
}

pub fn run(args: GenerateArgs) -> Result<ExitCode> {
    let model_dir = resolve_model(&args.models_dir, args.model.as_deref())?;
    let model_name = model_dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let format = OutputFormat::from_path(&args.output)?;
    let init_image = match (&args.init_image, args.strength) {
        (Some(path), Some(strength)) => Some(InitImage {
            image: image::open(path).with_context(|| format!("reading {}", path.display()))?,
            strength,
        }),
        _ => None,
    };

    let loading = Instant::now();
    let pipeline = Pipeline::load(&model_dir, args.device.load_options()?)?;
    tracing::info!(model = %model_dir.display(), seconds = loading.elapsed().as_secs_f64(), "model loaded");

    let turbo = model_name.to_lowercase().contains("turbo");
    let native = pipeline.native_size();
    let (width, height) = args.size.unwrap_or((native, native));
    let request = GenerateRequest {
        prompt: args.prompt.clone(),
        negative_prompt: args.negative_prompt.clone(),
        width,
        height,
        steps: args.steps.unwrap_or(if turbo { 4 } else { 25 }),
        guidance_scale: args.guidance.unwrap_or(if turbo { 0.0 } else { 7.5 }),
        scheduler: args
            .scheduler
            .unwrap_or_else(|| pipeline.default_scheduler()),
        karras_sigmas: args.karras,
        seed: args.seed.unwrap_or_else(rand_seed),
        count: args.count,
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

    for (index, generated) in images.iter().enumerate() {
        let path = output_path(&args.output, index, images.len());
        format.save(&generated.image, &path)?;
        println!("{} (seed {})", path.display(), generated.seed);
    }
    Ok(ExitCode::SUCCESS)
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

fn output_path(base: &Path, index: usize, count: usize) -> PathBuf {
    if count == 1 {
        return base.to_path_buf();
    }
    let stem = base
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    let ext = base
        .extension()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    base.with_file_name(format!("{stem}-{index}.{ext}"))
}

enum OutputFormat {
    Png,
    Jpeg,
}

impl OutputFormat {
    fn from_path(path: &Path) -> Result<Self> {
        let ext = path.extension().map(|e| e.to_string_lossy().to_lowercase());
        match ext.as_deref() {
            Some("png") => Ok(Self::Png),
            Some("jpg" | "jpeg") => Ok(Self::Jpeg),
            _ => bail!(EngineError::invalid(
                "output",
                format!("{} must end in .png, .jpg or .jpeg", path.display())
            )),
        }
    }

    /// Write to a temporary file beside the target and rename it, so a failure never
    /// leaves a half-written image.
    fn save(&self, picture: &image::RgbImage, path: &Path) -> Result<()> {
        let tmp = path.with_extension("partial");
        let format = match self {
            Self::Png => image::ImageFormat::Png,
            Self::Jpeg => image::ImageFormat::Jpeg,
        };
        picture
            .save_with_format(&tmp, format)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }
}
