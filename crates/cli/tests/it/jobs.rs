//! `seedbed jobs` and `seedbed usage` against a real server: what a person sees of a job
//! (its prompt), cancelling one that already ended, downloading its images, `--since`, and
//! output into a pipe that closes early.

use std::io::Read;
use std::process::Stdio;

use super::seedbed;
use super::server_process::{KEY, ServerProcess, data_dir};

fn with_server(server: &ServerProcess) -> assert_cmd::Command {
    let mut cmd = seedbed();
    cmd.env("SEEDBED_SERVER", &server.url)
        .env("SEEDBED_API_KEY", KEY);
    cmd
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).to_string()
}

/// A finished job of the tiny model, made through the API.
fn finished_job(server: &ServerProcess, prompt: &str) -> String {
    let http = server.http();
    let accepted = http.generate(
        serde_json::json!({"model": "tiny-sd", "prompt": prompt, "steps": 2}),
        true,
    );
    let id = accepted["id"].as_str().unwrap().to_string();
    http.poll_job(&id, |job| job["status"] == "succeeded");
    id
}

#[test]
fn jobs_show_their_prompt_and_download_their_images_and_an_ended_job_is_not_cancelled() {
    let (_dir, data) = data_dir();
    let server = ServerProcess::start(&data);
    let id = finished_job(&server, "a lighthouse\nat dusk");

    let list = with_server(&server)
        .args(["jobs", "list"])
        .assert()
        .success();
    let list = text(&list.get_output().stdout);
    assert!(list.lines().next().unwrap().ends_with("PROMPT"), "{list}");
    assert!(list.contains("a lighthouse at dusk"), "one line: {list}");

    let show = with_server(&server)
        .args(["jobs", "show", &id])
        .assert()
        .success();
    assert!(text(&show.get_output().stdout).contains("prompt:    a lighthouse\nat dusk"));

    let cancel = with_server(&server)
        .args(["jobs", "cancel", &id])
        .assert()
        .success();
    assert_eq!(
        text(&cancel.get_output().stdout),
        format!("job {id} already succeeded; nothing to cancel\n")
    );

    let out = tempfile::tempdir().unwrap();
    let folder = out.path().join("pictures");
    let download = || {
        let mut cmd = with_server(&server);
        cmd.args(["jobs", "download", &id, "-o"]).arg(&folder);
        cmd
    };
    let first = download().assert().success();
    let path = folder.join(format!("{id}-0.jpeg"));
    assert_eq!(
        text(&first.get_output().stdout),
        format!("{}\n", path.display())
    );
    assert!(std::fs::read(&path).unwrap().starts_with(&[0xFF, 0xD8]));
    let again = download().assert().code(1);
    assert!(text(&again.get_output().stderr).contains("pass --force"));
    download().arg("--force").assert().success();

    // `--since` takes a span; a job billed a moment ago is in the last hour.
    let usage = with_server(&server)
        .args(["usage", "--since", "1h", "--json"])
        .assert()
        .success();
    let usage: serde_json::Value = serde_json::from_slice(&usage.get_output().stdout).unwrap();
    assert_eq!(usage["totals"]["jobs"], 1, "{usage}");
    let bad = with_server(&server)
        .args(["usage", "--since", "yesterday"])
        .assert()
        .code(2);
    assert!(text(&bad.get_output().stderr).contains("7d"));
}

/// `seedbed models list --json | head -c 1` must end without a panic (exit 101) or a
/// "Broken pipe" message.
#[test]
fn a_closed_pipe_ends_the_output_quietly() {
    let models = super::fixtures().join("models");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_seedbed"))
        .args(["models", "list", "--json", "--models-dir"])
        .arg(&models)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Close the reading end before the command writes.
    drop(child.stdout.take());
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    assert_ne!(status.code(), Some(101), "panicked: {stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
        "{stderr}"
    );
}
