//! `seedbed serve`: the Seedream-compatible HTTP server.

mod args;
mod file;
#[cfg(test)]
mod tests;

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{CommandFactory, FromArgMatches};
use seedbed_server::serve::start;

pub use args::ServeArgs;

/// Parse `argv` again with `config`'s values as the serve flags' defaults.
pub fn with_config_file(
    config: &Path,
    argv: impl IntoIterator<Item = std::ffi::OsString>,
) -> Result<crate::Cli> {
    let mut root = crate::Cli::command();
    let serve = root
        .find_subcommand("serve")
        .cloned()
        .context("the serve command")?;
    let (serve, upstreams) = file::apply(serve, config)?;
    root = root.mut_subcommand("serve", |_| serve);
    let matches = root.try_get_matches_from(argv).unwrap_or_else(|e| e.exit());
    let mut cli = crate::Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let crate::Command::Serve(args) = &mut cli.command {
        args.file_upstreams = upstreams;
    }
    Ok(cli)
}

pub fn run(args: ServeArgs) -> Result<ExitCode> {
    let config = args.into_config()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let server = start(config).await?;
        eprintln!(
            "seedbed listening on http://{} (images at {})",
            server.addr, server.public_url
        );
        let token = server.shutdown_token();
        tokio::spawn(async move {
            wait_for_signal().await;
            eprintln!("shutting down: finishing the running job, ending streams");
            token.cancel();
        });
        server.wait().await;
        Ok(ExitCode::SUCCESS)
    })
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
