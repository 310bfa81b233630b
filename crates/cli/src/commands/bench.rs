//! `seedbed bench`: time the stages of text-to-image on one model.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use clap::Args;
use seedbed_engine::noise::SeededNoise;
use seedbed_engine::pipeline::{Run, Start};
use seedbed_engine::scheduler::SchedulerKind;
use seedbed_engine::{GenerateRequest, Pipeline};

use crate::device::DeviceArgs;

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  seedbed bench models/sd-turbo
  seedbed bench models/sdxl-turbo --width 1024 --height 1024 --steps 4 --runs 5 --json
  seedbed bench models/sd-turbo --cold")]
pub struct BenchArgs {
    /// The diffusers model folder to measure.
    model_dir: PathBuf,

    /// Image width; defaults to the model's native resolution.
    #[arg(long)]
    width: Option<u32>,

    /// Image height; defaults to the model's native resolution.
    #[arg(long)]
    height: Option<u32>,

    /// Denoising steps per run.
    #[arg(long, default_value_t = 1)]
    steps: usize,

    /// Timed runs after one warm-up run.
    #[arg(long, default_value_t = 3)]
    runs: usize,

    /// End with one JSON line: text_encode_s, denoise_s, vae_decode_s, total_s (medians, seconds),
    /// peak_rss_bytes, load_s (the first load), load_warm_s (a second load, files in the page
    /// cache) and load_cold (whether the first load started with the files evicted).
    #[arg(long)]
    json: bool,

    /// Evict the model's weight files from the OS page cache first, so that load_s is a cold
    /// load from disk (as after a reboot).
    #[arg(long)]
    cold: bool,

    #[command(flatten)]
    device: DeviceArgs,
}

struct Sample {
    text_encode: Duration,
    denoise: Duration,
    vae_decode: Duration,
    total: Duration,
}

pub fn run(args: BenchArgs) -> Result<ExitCode> {
    ensure!(args.runs > 0, "--runs must be at least 1");
    if args.cold {
        crate::memory::evict_from_page_cache(&args.model_dir)?;
    }
    let loading = Instant::now();
    let pipeline = Pipeline::load(&args.model_dir, args.device.load_options()?)?;
    let load = loading.elapsed();
    let native = pipeline.native_size();
    let (width, height) = (args.width.unwrap_or(native), args.height.unwrap_or(native));
    // Validate the sizes and steps the same way generation does.
    GenerateRequest {
        prompt: String::new(),
        negative_prompt: None,
        width,
        height,
        steps: args.steps,
        guidance_scale: 0.0,
        scheduler: SchedulerKind::Euler,
        karras_sigmas: false,
        seed: 0,
        count: 1,
        init_image: None,
    }
    .validate(pipeline.latent_factor())?;

    let mut samples = Vec::with_capacity(args.runs);
    for run in 0..=args.runs {
        let sample = time_one(&pipeline, width, height, args.steps, run as u64)?;
        if run > 0 {
            eprintln!(
                "run {run}: text {:.3}s denoise {:.3}s decode {:.3}s total {:.3}s",
                sample.text_encode.as_secs_f64(),
                sample.denoise.as_secs_f64(),
                sample.vae_decode.as_secs_f64(),
                sample.total.as_secs_f64()
            );
            samples.push(sample);
        }
    }
    let median = |stage: fn(&Sample) -> Duration| {
        let mut times: Vec<f64> = samples.iter().map(|s| stage(s).as_secs_f64()).collect();
        times.sort_by(f64::total_cmp);
        let mid = times.len() / 2;
        if times.len() % 2 == 1 {
            times[mid]
        } else {
            (times[mid - 1] + times[mid]) / 2.0
        }
    };
    // The peak belongs to the runs above, before a second copy is loaded.
    let peak_rss_bytes = crate::memory::peak_rss_bytes();
    drop(pipeline);
    let loading = Instant::now();
    drop(Pipeline::load(
        &args.model_dir,
        args.device.load_options()?,
    )?);
    let load_warm = loading.elapsed();
    let report = serde_json::json!({
        "model": args.model_dir.display().to_string(),
        "width": width,
        "height": height,
        "steps": args.steps,
        "runs": args.runs,
        "load_s": load.as_secs_f64(),
        "load_cold": args.cold,
        "load_warm_s": load_warm.as_secs_f64(),
        "text_encode_s": median(|s| s.text_encode),
        "denoise_s": median(|s| s.denoise),
        "vae_decode_s": median(|s| s.vae_decode),
        "total_s": median(|s| s.total),
        "peak_rss_bytes": peak_rss_bytes,
    });
    println!(
        "{}x{} {} step(s), median of {}: text {:.3}s, denoise {:.3}s, decode {:.3}s, total {:.3}s (load {:.2}s{}, warm {:.2}s)",
        width,
        height,
        args.steps,
        args.runs,
        report["text_encode_s"].as_f64().unwrap_or_default(),
        report["denoise_s"].as_f64().unwrap_or_default(),
        report["vae_decode_s"].as_f64().unwrap_or_default(),
        report["total_s"].as_f64().unwrap_or_default(),
        load.as_secs_f64(),
        if args.cold { " cold" } else { "" },
        load_warm.as_secs_f64()
    );
    if args.json {
        println!("{report}");
    }
    Ok(ExitCode::SUCCESS)
}

/// One text-to-image call (guidance 0, Euler) timed by stage.
fn time_one(
    pipeline: &Pipeline,
    width: u32,
    height: u32,
    steps: usize,
    seed: u64,
) -> Result<Sample> {
    let started = Instant::now();
    let prompts =
        pipeline.encode_prompts("a photograph of an astronaut riding a horse", None, 0.0)?;
    let text_encode = started.elapsed();
    let factor = pipeline.latent_factor();
    let shape = [
        1,
        pipeline.unet().config().in_channels,
        (height / factor) as usize,
        (width / factor) as usize,
    ];
    let mut noise = SeededNoise::new(seed);
    let initial = noise.randn(&shape, pipeline.device())?;
    let output = pipeline.run(
        Run {
            prompts: &prompts,
            guidance_scale: 0.0,
            width,
            height,
            steps,
            scheduler: SchedulerKind::Euler,
            scheduler_config: pipeline.scheduler_config(),
            karras_sigmas: false,
            start: Start::Noise(initial),
        },
        &mut noise,
        &mut |_, _| {},
        &AtomicBool::new(false),
    )?;
    Ok(Sample {
        text_encode,
        denoise: output.denoise_time,
        vae_decode: output.decode_time,
        total: started.elapsed(),
    })
}
