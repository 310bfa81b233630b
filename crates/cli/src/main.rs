//! `seedbed`: the command line of the seedbed image generation service.

// The arguments' doc comments are `--help` text, written for a terminal: `[default:
// <data-dir>/...]` and FLUX.1 [dev] there are words, not HTML or links.
#![allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]

#[cfg(target_os = "linux")]
mod big_blocks;
mod candle_threads;
mod commands;
mod device;
#[cfg(test)]
mod docs;
mod huge_pages;
mod memory;
mod progress;
mod remote;
mod since;
mod table;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[global_allocator]
static ALLOCATOR: huge_pages::HugePageAllocator = huge_pages::HugePageAllocator;

/// A self-hosted, Seedream-compatible image generation service.
#[derive(Debug, Parser)]
#[command(
    name = "seedbed",
    version,
    about,
    long_about = None,
    after_help = "Examples:
  seedbed generate \"a lighthouse at dusk\"          (locally, the first model in ./models)
  seedbed serve --api-key KEY                      (the Seedream API on 127.0.0.1:8080)
  seedbed generate --server http://127.0.0.1:8080 \"a fox\" -o fox.jpeg

Exit codes: 0 done, 1 failed, 2 bad usage or input, 3 the server refused the request,
130 interrupted (Ctrl-C)."
)]
pub struct Cli {
    /// Log filter (tracing `EnvFilter` syntax), e.g. `info` or `seedbed_engine=debug`
    /// [default: `warn,seedbed_server=info,seedbed_core=info` for serve, `warn` otherwise].
    #[arg(long, global = true, env = "SEEDBED_LOG")]
    log: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the Seedream-compatible HTTP API (images/generations, jobs, keys, usage).
    Serve(Box<commands::serve::ServeArgs>),
    /// Generate images, on a server (--server) or locally from a diffusers model folder.
    Generate(Box<commands::generate::GenerateArgs>),
    /// A server's jobs: list, show, watch, cancel, download.
    Jobs(commands::jobs::JobsArgs),
    /// API keys on a server (admin): create, list, revoke.
    Keys(commands::keys::KeysArgs),
    /// What the caller's key was billed.
    Usage(commands::usage::UsageArgs),
    /// The models a server or a local models directory offers.
    Models(commands::models::ModelsArgs),
    /// Download a diffusers model folder from a Hugging Face-style hub.
    Pull(commands::pull::PullArgs),
    /// Print a shell completion script.
    Completions(commands::completions::CompletionsArgs),
    /// Check the engine against diffusers reference cases, stage by stage.
    Parity(commands::parity::ParityArgs),
    /// Time text-to-image stage by stage on one model (median of several runs).
    Bench(commands::bench::BenchArgs),
}

/// Exit codes: 0 success, 1 failure, 2 bad usage or invalid input, 3 the API refused.
pub const EXIT_FAILURE: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_API: u8 = 3;

fn main() -> ExitCode {
    memory::keep_freed_memory_for_reuse();
    candle_threads::park_idle_workers_at_once();
    let cli = parse();
    if !matches!(cli.command, Command::Serve(_)) {
        end_quietly_on_a_closed_pipe();
    }
    // A server reports its jobs; a local `generate` runs the same core code but only its
    // progress bar should show.
    let filter = cli.log.as_deref().unwrap_or(match cli.command {
        Command::Serve(_) => "warn,seedbed_server=info,seedbed_core=info",
        _ => "warn",
    });
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Command::Serve(args) => commands::serve::run(*args),
        Command::Generate(args) => commands::generate::run(*args),
        Command::Jobs(args) => commands::jobs::run(args),
        Command::Keys(args) => commands::keys::run(args),
        Command::Usage(args) => commands::usage::run(args),
        Command::Models(args) => commands::models::run(args),
        Command::Pull(args) => commands::pull::run(args),
        Command::Completions(args) => commands::completions::run(args),
        Command::Parity(args) => commands::parity::run(args),
        Command::Bench(args) => commands::bench::run(args),
    };
    match result {
        Ok(code) => code,
        Err(error) => report(&error),
    }
}

/// The command line, with `serve --config FILE`'s values as the defaults of its flags.
fn parse() -> Cli {
    let cli = Cli::parse();
    let config = match &cli.command {
        Command::Serve(args) => args.config.clone(),
        _ => None,
    };
    let Some(config) = config else {
        return cli;
    };
    match commands::serve::with_config_file(&config, std::env::args_os()) {
        Ok(cli) => cli,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::exit(EXIT_USAGE.into());
        }
    }
}

/// `seedbed jobs list --json | head` must not panic when `head` closes the pipe: take the
/// default action on SIGPIPE (end, silently), as other command-line tools do. Rust ignores the
/// signal, which turns every later `println!` into a panic. Not for `serve`, whose sockets
/// report a closed peer as an error to handle.
fn end_quietly_on_a_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: at start-up, before any thread exists, restoring a signal's default action.
    #[allow(unsafe_code)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Print the error with its causes and a hint, and choose the exit code.
fn report(error: &anyhow::Error) -> ExitCode {
    for line in error_lines(error) {
        eprintln!("{line}");
    }
    if let Some(client_error) = error.downcast_ref::<seedbed_client::ClientError>() {
        if let Some(hint) = remote::hint(client_error) {
            eprintln!("hint: {hint}");
        }
        let refused = client_error
            .status()
            .is_some_and(|status| (400..500).contains(&status));
        return ExitCode::from(if refused { EXIT_API } else { EXIT_FAILURE });
    }
    if let Some(pull_error) = error.downcast_ref::<seedbed_hub::PullError>() {
        let refused = matches!(
            pull_error,
            seedbed_hub::PullError::NotFound { .. }
                | seedbed_hub::PullError::Unauthorized { .. }
                | seedbed_hub::PullError::NotAPipeline { .. }
                | seedbed_hub::PullError::OnlyPickle { .. }
        );
        return ExitCode::from(if refused { EXIT_API } else { EXIT_FAILURE });
    }
    // Core's request errors are the same bad input, whichever path found them.
    let usage = error
        .downcast_ref::<seedbed_engine::EngineError>()
        .is_some_and(|e| matches!(e, seedbed_engine::EngineError::InvalidInput { .. }))
        || error
            .downcast_ref::<seedbed_core::CoreError>()
            .is_some_and(|e| {
                matches!(
                    e,
                    seedbed_core::CoreError::InvalidParameter { .. }
                        | seedbed_core::CoreError::MissingParameter { .. }
                        | seedbed_core::CoreError::ModelNotFound { .. }
                )
            });
    ExitCode::from(if usage { EXIT_USAGE } else { EXIT_FAILURE })
}

/// `error: ...` then one `caused by: ...` per cause, leaving out a cause whose text the line
/// before already says (an I/O error wrapped by a context that quotes it).
fn error_lines(error: &anyhow::Error) -> Vec<String> {
    let mut lines = vec![format!("error: {error}")];
    let mut said = error.to_string();
    for cause in error.chain().skip(1) {
        let text = cause.to_string();
        if !said.contains(&text) {
            lines.push(format!("  caused by: {text}"));
        }
        said = text;
    }
    lines
}

/// Run a command's async part on a small runtime of its own.
pub fn block_on<T>(future: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("starting the async runtime: {e}"))?
        .block_on(future)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_cause_the_message_already_says_is_printed_once() {
        let io = std::io::Error::new(std::io::ErrorKind::AddrInUse, "Address already in use");
        let error =
            anyhow::Error::new(io).context("listening on 127.0.0.1:8080: Address already in use");
        assert_eq!(
            super::error_lines(&error),
            ["error: listening on 127.0.0.1:8080: Address already in use"]
        );
        let error = anyhow::anyhow!("disk full").context("writing out.png");
        assert_eq!(
            super::error_lines(&error),
            ["error: writing out.png", "  caused by: disk full"]
        );
    }
}
