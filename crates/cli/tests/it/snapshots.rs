//! What users read, pinned: `--help` pages and typical runs. After an intended change, review
//! and accept with `cargo insta review` (or `INSTA_UPDATE=always cargo test`).

use super::server_process::{KEY, ServerProcess, data_dir};
use super::{fixtures, seedbed};

pub fn run(cmd: &mut assert_cmd::Command) -> String {
    let output = cmd.output().unwrap();
    format!(
        "exit: {}\n--- stdout\n{}--- stderr\n{}",
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn help_pages() {
    for (name, args) in [
        ("help", vec!["--help"]),
        ("generate_help", vec!["generate", "--help"]),
        ("jobs_help", vec!["jobs", "--help"]),
        ("keys_create_help", vec!["keys", "create", "--help"]),
    ] {
        insta::assert_snapshot!(name, run(seedbed().args(&args)));
    }
}

#[test]
fn listing_local_models() {
    insta::assert_snapshot!(run(seedbed()
        .args(["models", "list", "--models-dir"])
        .arg(fixtures().join("models"))));
}

#[test]
fn a_refused_request() {
    let (_dir, data) = data_dir();
    let server = ServerProcess::start(&data);
    let output = run(seedbed()
        .env("SEEDBED_SERVER", &server.url)
        .env("SEEDBED_API_KEY", KEY)
        .args(["generate", "x", "-m", "tiny-sd", "--size", "3x3"]));
    insta::with_settings!({filters => vec![(r"(?i)request id: \w+", "Request ID: [ID]")]}, {
        insta::assert_snapshot!(output);
    });
    let output = run(seedbed()
        .env("SEEDBED_SERVER", &server.url)
        .args(["keys", "list"]));
    insta::with_settings!({filters => vec![(r"(?i)request id: \w+", "Request ID: [ID]")]}, {
        insta::assert_snapshot!("missing_key", output);
    });
}
