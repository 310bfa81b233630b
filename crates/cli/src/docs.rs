//! `docs/cli.md`: every command's `--help`, generated from the clap definitions so the manual
//! cannot drift from the binary (a test compares them).

use clap::{Command, CommandFactory};

/// The whole manual as Markdown.
pub fn markdown() -> String {
    let mut root = crate::Cli::command()
        .term_width(100)
        .mut_args(|arg| arg.hide_env_values(true));
    root.build();
    let mut out = String::from(
        "# seedbed command line\n\n\
         Generated from `seedbed --help` and each subcommand's `--help`; do not edit by hand \
         (`SEEDBED_UPDATE_DOCS=1 cargo test -p seedbed docs` rewrites it).\n",
    );
    section(&mut out, &mut root, "seedbed");
    out
}

fn section(out: &mut String, command: &mut Command, path: &str) {
    let help = command.render_long_help().to_string();
    out.push_str(&format!(
        "\n## `{path}`\n\n```text\n{}\n```\n",
        help.trim_end()
    ));
    let names: Vec<String> = command
        .get_subcommands()
        .filter(|c| c.get_name() != "help")
        .map(|c| c.get_name().to_string())
        .collect();
    for name in names {
        if let Some(sub) = command.find_subcommand_mut(&name) {
            let mut sub = sub.clone().mut_args(|arg| arg.hide_env_values(true));
            section(out, &mut sub, &format!("{path} {name}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    #[test]
    fn docs_cli_md_matches_the_binary() {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/cli.md");
        let current = super::markdown();
        if std::env::var_os("SEEDBED_UPDATE_DOCS").is_some() {
            std::fs::write(&path, &current).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == current,
            "docs/cli.md is stale: run `SEEDBED_UPDATE_DOCS=1 cargo test -p seedbed docs`"
        );
    }

    #[test]
    fn every_argument_is_documented() {
        use clap::CommandFactory;
        fn check(command: &clap::Command, path: &str) {
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                assert!(arg.get_help().is_some(), "{path} --{id} has no help text");
            }
            for sub in command.get_subcommands() {
                assert!(
                    sub.get_about().is_some(),
                    "{path} {} has no about",
                    sub.get_name()
                );
                check(sub, &format!("{path} {}", sub.get_name()));
            }
        }
        let mut command = crate::Cli::command();
        command.build();
        check(&command, "seedbed");
    }
}
