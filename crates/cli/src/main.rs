//! `seedbed`: the command line of the seedbed image generation service.

mod commands;
mod device;
mod memory;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// A self-hosted, Seedream-compatible image generation service.
#[derive(Debug, Parser)]
#[command(name = "seedbed", version, about, long_about = None)]
struct Cli {
    /// Log filter (tracing `EnvFilter` syntax), e.g. `info` or `seedbed_engine=debug`.
    #[arg(
        long,
        global = true,
        env = "SEEDBED_LOG",
        default_value = "warn,seedbed_server=info,seedbed_core=info"
    )]
    log: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the Seedream-compatible HTTP API (images/generations, jobs, keys, usage).
    Serve(Box<commands::serve::ServeArgs>),
    /// Generate images locally from a diffusers model folder.
    Generate(commands::generate::GenerateArgs),
    /// Check the engine against diffusers reference cases, stage by stage.
    Parity(commands::parity::ParityArgs),
    /// Time text-to-image stage by stage on one model (median of several runs).
    Bench(commands::bench::BenchArgs),
}

/// Exit codes: 0 success, 1 failure, 2 bad usage or invalid input.
pub const EXIT_FAILURE: u8 = 1;
pub const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cli.log))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Command::Serve(args) => commands::serve::run(*args),
        Command::Generate(args) => commands::generate::run(args),
        Command::Parity(args) => commands::parity::run(args),
        Command::Bench(args) => commands::bench::run(args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error}");
            for cause in error.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            let usage = error
                .downcast_ref::<seedbed_engine::EngineError>()
                .is_some_and(|e| matches!(e, seedbed_engine::EngineError::InvalidInput { .. }));
            ExitCode::from(if usage { EXIT_USAGE } else { EXIT_FAILURE })
        }
    }
}
