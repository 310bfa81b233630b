//! `seedbed generate`: through a server when one is given (`--server` / `SEEDBED_SERVER`),
//! otherwise in this process on a local model folder. Both send the same request through the
//! same validation (core's), so a local run makes what a server would.

mod local;
pub(crate) mod output;
mod remote;
mod request;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use seedbed_engine::scheduler::SchedulerKind;

use crate::device::DeviceArgs;

#[derive(Debug, Args)]
#[command(after_long_help = "\
Without --server the model runs in this process (a folder in --models-dir) with the server's rules:
the same sizes, defaults (from the model's name or its seedbed.json), checks and pictures for the
same seed (byte for byte with SOURCE_DATE_EPOCH set). With --server (or SEEDBED_SERVER) the request
goes to that server and the command shows the queue position, then a progress bar per image.

Files: `-o out.png` writes out.png (out-0.png, out-1.png, ... for several images); `-o DIR/` writes
DIR/<job id>-<i>.<ext> (remote) or DIR/seedbed-<seed>.<ext> (local). Paths written go to stdout, one
per line; `--json` prints the response instead.

Exit codes: 0 done, 1 failed, 2 bad usage or input, 3 the server refused the request (4xx).")]
pub struct GenerateArgs {
    /// What to draw.
    prompt: String,

    /// Generate on this server instead of locally (a seedbed or any Seedream-compatible API).
    #[arg(long, env = "SEEDBED_SERVER")]
    server: Option<String>,

    /// API key for --server.
    #[arg(long, env = "SEEDBED_API_KEY", hide_env_values = true)]
    api_key: Option<String>,

    /// Model: a folder name in --models-dir locally; a model id on a server (`seedbed models
    /// list`). Locally defaults to the first folder, alphabetically.
    #[arg(long, short, env = "SEEDBED_MODEL")]
    model: Option<String>,

    /// WIDTHxHEIGHT or a preset: 1K (the model's native size), 1.5K, 2K, 3K, 4K; a W:H ratio
    /// in the prompt (e.g. "16:9") shapes a preset.
    #[arg(long)]
    size: Option<String>,

    /// Number of images.
    #[arg(short = 'n', long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=15))]
    count: u32,

    /// Seed of the first image; image i uses seed + i. Random when not given.
    #[arg(long)]
    seed: Option<u64>,

    /// A reference picture, file or URL (image-to-image); repeatable on servers that take
    /// several. Locally a file, and seedbed's own models take one.
    #[arg(long, visible_alias = "init-image", value_name = "PATH|URL")]
    image: Vec<String>,

    /// How much of the reference to repaint, in (0, 1] [default: 0.8].
    #[arg(long)]
    strength: Option<f64>,

    /// Draw the visible "AI generated" mark [default: true].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    watermark: Option<bool>,

    /// Denoising steps [default: from the model, e.g. 1-4 for Turbo models].
    #[arg(long)]
    steps: Option<u32>,

    /// Classifier-free guidance scale; <= 1 disables guidance [default: from the model].
    #[arg(long)]
    guidance: Option<f64>,

    /// Sampler: ddim, euler, euler_a or dpmpp2m [default: the model's scheduler config].
    #[arg(long)]
    scheduler: Option<SchedulerKind>,

    /// Use Karras sigmas (euler, euler_a, dpmpp2m; locally and on seedbed servers).
    #[arg(long)]
    karras: bool,

    /// What to steer away from (used when guidance > 1).
    #[arg(long)]
    negative_prompt: Option<String>,

    /// Output file (.png, .jpg) or directory (ending in / or existing)
    /// [default: seedbed.png locally, seedbed.jpeg from a server].
    #[arg(short, long)]
    output: Option<PathBuf>,

    /// Print the response as JSON on stdout (files are still written).
    #[arg(long)]
    json: bool,

    /// No progress bars or notes on stderr.
    #[arg(long, short)]
    quiet: bool,

    /// Folder of diffusers model folders (local only).
    #[arg(long, env = "SEEDBED_MODELS_DIR", default_value = "models")]
    models_dir: PathBuf,

    #[command(flatten)]
    device: DeviceArgs,
}

pub fn run(args: GenerateArgs) -> Result<ExitCode> {
    if args.server.is_some() {
        remote::run(args)
    } else {
        local::run(args)
    }
}
