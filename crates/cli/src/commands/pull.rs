//! `seedbed pull REPO`: a diffusers model folder from a Hugging Face-style hub into the models
//! directory, only what the pipeline needs, resumable and checksum-verified.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use seedbed_hub::{PullOptions, PullProgress, pull};

#[derive(Debug, Args)]
#[command(after_long_help = "\
Fetches model_index.json, each component's configs and tokenizer files, and one set of
safetensors weights per component; pickle (.bin), ONNX, Flax and single-file checkpoints stay on
the hub. Files land in MODELS_DIR/.NAME.partial first and the folder appears as MODELS_DIR/NAME
only when every file is complete and its SHA-256 (or git blob id) matches the hub's. Run the same
command again after an interruption: finished files are kept and the partial one resumes.

Examples:
  seedbed pull stabilityai/sd-turbo
  seedbed pull stabilityai/sdxl-turbo --fp16
  HF_TOKEN=hf_... seedbed pull some-org/gated-model --revision v1.0")]
pub struct PullArgs {
    /// The repository, `owner/name`.
    repo: String,

    /// Branch, tag or commit.
    #[arg(long, default_value = "main")]
    revision: String,

    /// Where model folders live (what `seedbed serve --models-dir` reads).
    #[arg(long, env = "SEEDBED_MODELS_DIR", default_value = "models")]
    models_dir: PathBuf,

    /// Folder name [default: the repository's name].
    #[arg(long)]
    name: Option<String>,

    /// Prefer the `.fp16` weight files (half the download) when the repository has them.
    #[arg(long)]
    fp16: bool,

    /// Access token for private or gated repositories.
    #[arg(long, env = "HF_TOKEN", hide_env_values = true)]
    token: Option<String>,

    /// The hub's base URL (a mirror works too).
    #[arg(long, env = "HF_ENDPOINT", default_value = seedbed_hub::DEFAULT_ENDPOINT)]
    endpoint: String,

    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

pub fn run(args: PullArgs) -> Result<ExitCode> {
    let options = PullOptions {
        endpoint: args.endpoint,
        token: args.token,
        repo: args.repo,
        revision: args.revision,
        models_dir: args.models_dir,
        name: args.name,
        variant: args.fp16.then(|| "fp16".to_string()),
    };
    let progress = Bar::new(args.quiet);
    let report = crate::block_on(async { Ok(pull(&options, &progress).await?) })?;
    progress.bar.finish_and_clear();
    if report.up_to_date {
        eprintln!("{} is up to date", report.dest.display());
    } else if !args.quiet {
        eprintln!(
            "pulled {} files ({:.1} MiB downloaded) at {}",
            report.files,
            report.downloaded as f64 / (1 << 20) as f64,
            &report.commit[..report.commit.len().min(12)]
        );
    }
    println!("{}", report.dest.display());
    Ok(ExitCode::SUCCESS)
}

/// One bar over all bytes, naming the file being fetched.
struct Bar {
    bar: ProgressBar,
}

impl Bar {
    fn new(quiet: bool) -> Self {
        let bar = if quiet || !std::io::stderr().is_terminal() {
            ProgressBar::hidden()
        } else {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} (eta {eta})",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar
        };
        Self { bar }
    }
}

impl PullProgress for Bar {
    fn start(&self, _files: usize, bytes: u64, have: u64) {
        self.bar.set_length(bytes);
        self.bar.set_position(have);
        self.bar.reset_eta();
    }

    fn file(&self, path: &str, _size: u64, from: u64) {
        self.bar.inc(from);
        self.bar.set_message(path.to_string());
    }

    fn advance(&self, bytes: u64) {
        self.bar.inc(bytes);
    }
}
