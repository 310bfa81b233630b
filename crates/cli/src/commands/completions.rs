//! `seedbed completions SHELL`: a completion script on stdout.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, CommandFactory};
use clap_complete::Shell;

#[derive(Debug, Args)]
#[command(after_help = "\
Install, e.g.:
  bash: seedbed completions bash > ~/.local/share/bash-completion/completions/seedbed
  zsh:  seedbed completions zsh > ~/.zfunc/_seedbed   (with fpath+=~/.zfunc)
  fish: seedbed completions fish > ~/.config/fish/completions/seedbed.fish")]
pub struct CompletionsArgs {
    /// bash, zsh, fish, elvish or powershell.
    shell: Shell,
}

pub fn run(args: CompletionsArgs) -> Result<ExitCode> {
    let mut command = crate::Cli::command();
    clap_complete::generate(args.shell, &mut command, "seedbed", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}
