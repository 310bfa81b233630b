//! `seedbed bench`: time the stages of text-to-image on one model.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use clap::Args;
use seedbed_engine::cpu::{CpuReport, on_workers};
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

    /// Timed runs after the warm-up runs.
    #[arg(long, default_value_t = 3)]
    runs: usize,

    /// Untimed runs first (allocator and caches warm). 0 for a long run measured only for its
    /// peak memory.
    #[arg(long, default_value_t = 1)]
    warmup: usize,

    /// End with one JSON line: text_encode_s, denoise_s, vae_decode_s, total_s (medians, seconds),
    /// peak_rss_bytes, load_s (the first load), load_warm_s (a second load, files in the page
    /// cache), load_cold (whether the first load started with the files evicted) and cpu (the
    /// CPU's model, the features detected and the path each kernel takes, also printed first on
    /// stderr).
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
    // Where the numbers come from: the CPU and the path each kernel takes on it (the CPU
    // still tokenizes and schedules when the model runs on a GPU).
    let cpu = CpuReport::detect();
    for line in cpu.lines() {
        eprintln!("{line}");
    }
    let loading = Instant::now();
    let options = args.device.load_options()?;
    // On a worker of the kernels' pool, as the device thread runs its jobs.
    let pipeline = on_workers(|| Pipeline::load(&args.model_dir, options.clone()))?;
    let load = loading.elapsed();
    let native = pipeline.native_size();
    let (width, height) = (args.width.unwrap_or(native), args.height.unwrap_or(native));
    // Validate the sizes and steps the same way generation does.
    bench_request(&pipeline, width, height, args.steps).validate(pipeline.latent_factor())?;

    let mut samples = Vec::with_capacity(args.runs);
    for index in 0..args.warmup + args.runs {
        let sample = time_one(&pipeline, width, height, args.steps, index as u64)?;
        if let Some(run) = (index + 1).checked_sub(args.warmup).filter(|r| *r > 0) {
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
    drop(on_workers(|| Pipeline::load(&args.model_dir, options))?);
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
        "cpu": {
            "model": cpu.model,
            "features": cpu.features,
            "kernels": cpu.kernels.iter().map(|(k, p)| (k.to_string(), (*p).into())).collect::<serde_json::Map<_, _>>(),
        },
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

/// One text-to-image call at guidance 0 (Euler for the UNet families, whose diffusers
/// counterpart is timed with it), timed by stage. Each run's prompt differs, so that no run
/// reads another's encoding from a prompt cache.
fn time_one(
    pipeline: &Pipeline,
    width: u32,
    height: u32,
    steps: usize,
    seed: u64,
) -> Result<Sample> {
    let request = GenerateRequest {
        prompt: format!("a photograph of an astronaut riding a horse, take {seed}"),
        ..bench_request(pipeline, width, height, steps)
    };
    let started = Instant::now();
    let mut images =
        on_workers(|| pipeline.generate(&request, &mut |_| {}, &AtomicBool::new(false)))?;
    let total = started.elapsed();
    let times = images
        .pop()
        .ok_or_else(|| anyhow::anyhow!("the engine returned no image"))?
        .times;
    Ok(Sample {
        text_encode: times.text_encode,
        denoise: times.denoise,
        vae_decode: times.decode,
        total,
    })
}

fn bench_request(pipeline: &Pipeline, width: u32, height: u32, steps: usize) -> GenerateRequest {
    GenerateRequest {
        prompt: String::new(),
        negative_prompt: None,
        width,
        height,
        steps,
        guidance_scale: 0.0,
        scheduler: pipeline.family().is_unet().then_some(SchedulerKind::Euler),
        karras_sigmas: false,
        true_cfg_scale: None,
        seed: 0,
        count: 1,
        init_image: None,
    }
}
