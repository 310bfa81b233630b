//! `seedbed generate`: through a server when one is given (`--server` / `SEEDBED_SERVER`),
//! otherwise in this process on a local model folder. Both send the same request through the
//! same validation (core's), so a local run makes what a server would, and both name, report
//! and show what they make the same way (`output`, `report`, `crate::progress`).

mod local;
pub(crate) mod output;
mod remote;
mod report;
mod request;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use seedbed_core::loras::{MAX_LORA_SCALE, MAX_LORAS};
use seedbed_core::spec::{MAX_GUIDANCE, MAX_IMAGES_TOTAL, MAX_PROMPT_CHARS, MAX_SEED, MAX_STEPS};
use seedbed_engine::scheduler::SchedulerKind;

use crate::device::DeviceArgs;

/// Exit status after Ctrl-C: 128 + SIGINT, what shells report for an interrupted command.
pub const EXIT_INTERRUPTED: u8 = 130;

/// The long help's closing part; the limits come from core's constants, so they stay true.
fn after_help() -> String {
    format!(
        "\
Examples:
  seedbed generate \"a lighthouse at dusk, oil painting\"              # seedbed.jpeg, a local model
  seedbed generate \"four views of a harbour\" -n 4 -o shots/ --server http://127.0.0.1:8080
  seedbed generate \"the same, in winter\" --image shots/seedbed-1.jpeg --strength 0.6 -o winter.png
  seedbed generate \"a fox\" --lora watercolor:0.8 --loras-dir loras   # a LoRA, at 0.8

Without --server the model runs in this process (a folder in --models-dir) with the server's rules:
the same sizes, defaults (from the model's name or its seedbed.json), checks and pictures for the
same seed (byte for byte with SOURCE_DATE_EPOCH set). With --server (or SEEDBED_SERVER) the request
goes to that server and the command shows the queue position, then the steps of each image.

Limits: -n 1..={MAX_IMAGES_TOTAL} (reference images count against the same {MAX_IMAGES_TOTAL}), --steps 1..={MAX_STEPS},
--guidance 0..={MAX_GUIDANCE}, --strength in (0, 1], --seed 0..={MAX_SEED}, a prompt of at most {MAX_PROMPT_CHARS}
characters, --lora at most {MAX_LORAS} times at -{MAX_LORA_SCALE}..={MAX_LORA_SCALE}. Sizes depend on the model: (native side / 2)^2
to (4 x native side)^2 pixels.
These are checked before a model loads or a request is sent. --strength without --image is
ignored. A reference picture of another size is resized to the output size (stretched if its
aspect ratio differs; never cropped).

Files: JPEG unless -o names a .png. Without -o: seedbed.jpeg, or for -n N seedbed-1.jpeg ...
seedbed-N.jpeg, in the current directory; a name already taken is skipped for the next free
number (seedbed-1.jpeg, seedbed-2.jpeg, ...). `-o DIR/` names them the same way inside DIR.
`-o out.png` writes out.png (out-1.png ... out-N.png for several) and refuses to replace an
existing file. --force replaces files instead of skipping or refusing.

Output: stdout carries only the paths written, one per line; seeds, notes and progress go to
stderr (-q: errors only). --json prints instead one object, the same locally and from a server:
  {{\"model\": \"tiny-sd\", \"data\": [{{\"path\": \"seedbed.jpeg\", \"seed\": 42, \"size\": \"512x512\"}}]}}
(seed is null when a server does not say). --detach (with --server) prints only the job id
({{\"id\": ...}} with --json) and leaves the job running; `seedbed jobs watch ID` follows it.

Ctrl-C stops a local run before its next step and cancels a server's job (the first press
prints the job id; a second press while cancelling leaves the job running).

Exit codes: 0 done, 1 failed (some or all images), 2 bad usage or input, 3 the server refused the
request (4xx, e.g. QuotaExceeded), {EXIT_INTERRUPTED} interrupted by Ctrl-C."
    )
}

#[derive(Debug, Args)]
#[command(after_long_help = after_help())]
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
    #[arg(short = 'n', long, default_value_t = 1,
        value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_IMAGES_TOTAL)))]
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

    /// Classifier-free guidance scale [default: from the model]. SD, SDXL and SD3.5 guide
    /// above 1, Z-Image above 0 (each step then runs the model for the negative prompt too);
    /// FLUX.1 [dev] is fed it as its distilled guidance (3.5), [schnell] ignores it.
    #[arg(long)]
    guidance: Option<f64>,

    /// FLUX only: true classifier-free guidance with --negative-prompt, 1..=30; above 1 each
    /// step runs the model twice [default: off].
    #[arg(long, value_name = "SCALE")]
    true_cfg_scale: Option<f64>,

    /// SD/SDXL sampler: ddim, euler, euler_a or dpmpp2m [default: the model's scheduler
    /// config]. FLUX always uses flow-match Euler.
    #[arg(long)]
    scheduler: Option<SchedulerKind>,

    /// Use Karras sigmas (euler, euler_a, dpmpp2m; locally and on seedbed servers).
    #[arg(long)]
    karras: bool,

    /// What to steer away from (used when guidance > 1; for FLUX, with --true-cfg-scale).
    #[arg(long)]
    negative_prompt: Option<String>,

    /// Apply a LoRA by its name in the LoRA folder (--loras-dir locally; `GET /v1/loras` on a
    /// server), at SCALE (-4..=4, default 1); repeatable, at most 8. SD, SDXL and FLUX.1.
    #[arg(long = "lora", value_name = "NAME[:SCALE]", value_parser = request::parse_lora)]
    loras: Vec<seedbed_types::LoraRef>,

    /// Folder of LoRA files (`*.safetensors`, Kohya or diffusers/PEFT) that --lora names
    /// (local only; a server has its own).
    #[arg(long, env = "SEEDBED_LORAS_DIR")]
    loras_dir: Option<PathBuf>,

    /// Output file (.png, .jpg) or directory (ending in / or existing)
    /// [default: seedbed.jpeg, or the next free seedbed-N.jpeg].
    #[arg(short, long)]
    output: Option<PathBuf>,

    /// Replace existing files rather than choosing a free name or refusing.
    #[arg(long)]
    force: bool,

    /// Print one JSON object on stdout instead of the paths (files are still written).
    #[arg(long)]
    json: bool,

    /// Nothing on stderr but errors: no progress, seeds or notes.
    #[arg(long, short)]
    quiet: bool,

    /// Submit to --server and print the job id at once, without waiting or writing files.
    #[arg(long, conflicts_with_all = ["output", "force", "open"])]
    detach: bool,

    /// Open the written files with the desktop's viewer (xdg-open; `open` on macOS; the program
    /// in SEEDBED_OPEN when set).
    #[arg(long)]
    open: bool,

    /// Folder of models: diffusers folders and `.safetensors` checkpoints (local only).
    #[arg(long, env = "SEEDBED_MODELS_DIR", default_value = "models")]
    models_dir: PathBuf,

    #[command(flatten)]
    device: DeviceArgs,
}

pub fn run(args: GenerateArgs) -> Result<ExitCode> {
    request::check(&args)?;
    if args.strength.is_some() && args.image.is_empty() && !args.quiet {
        eprintln!("note: --strength is ignored without --image");
    }
    if args.detach && args.server.is_none() {
        return Err(seedbed_core::CoreError::invalid(
            "detach",
            "--detach needs --server (or SEEDBED_SERVER): a local run ends with the command",
        )
        .into());
    }
    if args.server.is_some() {
        remote::run(args)
    } else {
        local::run(args)
    }
}
