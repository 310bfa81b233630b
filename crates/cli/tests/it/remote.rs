//! The CLI against a real `seedbed serve` process: generate through the server, jobs, keys,
//! usage, models, and the exit codes and hints users see when something is wrong.

use std::path::Path;

use predicates::prelude::*;

use super::server_process::{KEY, ServerProcess, data_dir};
use super::{fixtures, seedbed};

fn with_server(server: &ServerProcess, key: Option<&str>) -> assert_cmd::Command {
    let mut cmd = seedbed();
    cmd.env("SEEDBED_SERVER", &server.url);
    match key {
        Some(key) => cmd.env("SEEDBED_API_KEY", key),
        None => cmd.env_remove("SEEDBED_API_KEY"),
    };
    cmd
}

fn stdout(assert: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&assert.get_output().stdout).to_string()
}

fn is_jpeg(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|bytes| bytes.starts_with(&[0xFF, 0xD8]))
}

#[test]
fn generate_through_the_server_then_manage_jobs_keys_and_usage() {
    let (_dir, data) = data_dir();
    let server = ServerProcess::start(&data);
    let out = tempfile::tempdir().unwrap();

    // Two images into a directory: predictable names, paths on stdout, nothing else.
    let assert = with_server(&server, Some(KEY))
        .current_dir(out.path())
        .args([
            "generate",
            "a lighthouse",
            "-m",
            "seedream-4-5-251128",
            "--steps",
            "2",
        ])
        .args(["-n", "2", "-o", "shots/"])
        .assert()
        .success();
    let paths: Vec<String> = stdout(&assert).lines().map(str::to_string).collect();
    // The names a local run gives them too.
    assert_eq!(paths, ["shots/seedbed-1.jpeg", "shots/seedbed-2.jpeg"]);
    let job_id = server.http().get("/v1/jobs")["data"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    for path in &paths {
        assert!(is_jpeg(&out.path().join(path)), "{path}");
    }
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr).to_string();
    assert!(
        !stderr.contains('\r'),
        "no progress bars when not a terminal: {stderr}"
    );

    // A reference picture from a file, PNG out, JSON for scripts.
    let reference = out.path().join("ref.png");
    image::RgbImage::from_pixel(64, 64, image::Rgb([10, 200, 10]))
        .save(&reference)
        .unwrap();
    let assert = with_server(&server, Some(KEY))
        .current_dir(out.path())
        .args([
            "generate",
            "a barn",
            "-m",
            "tiny-sd",
            "--steps",
            "4",
            "--strength",
            "0.5",
        ])
        .args([
            "--image",
            "ref.png",
            "-o",
            "barn.png",
            "--json",
            "--watermark",
            "false",
        ])
        .assert()
        .success();
    let response: serde_json::Value = serde_json::from_str(stdout(&assert).trim()).unwrap();
    assert_eq!(response["data"].as_array().unwrap().len(), 1, "{response}");
    assert_eq!(response["data"][0]["path"], "barn.png", "{response}");
    assert_eq!(response["data"][0]["size"], "64x64", "{response}");
    assert!(response["data"][0]["seed"].is_u64(), "{response}");
    let png = std::fs::read(out.path().join("barn.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG"));

    // Jobs.
    let list = with_server(&server, Some(KEY))
        .args(["jobs", "list"])
        .assert()
        .success();
    let table = stdout(&list);
    assert!(table.starts_with("ID"), "{table}");
    assert!(
        table.contains(&job_id) && table.contains("succeeded"),
        "{table}"
    );
    with_server(&server, Some(KEY))
        .args(["jobs", "show", &job_id])
        .assert()
        .success()
        .stdout(
            predicate::str::contains("status:    succeeded")
                .and(predicate::str::contains("image 1:")),
        );
    with_server(&server, Some(KEY))
        .args(["jobs", "watch", &job_id, "--json"])
        .assert()
        .success()
        .stdout(predicate::str::contains("\"status\": \"succeeded\""));
    with_server(&server, Some(KEY))
        .args(["jobs", "cancel", &job_id])
        .assert()
        .success();
    with_server(&server, Some(KEY))
        .args(["jobs", "show", "job_missing"])
        .assert()
        .code(3)
        .stderr(predicate::str::contains("ResourceNotFound"));

    // Keys: the secret alone on stdout, so it can be captured.
    let created = with_server(&server, Some(KEY))
        .args([
            "keys",
            "create",
            "--name",
            "ci",
            "--images-per-minute",
            "10",
        ])
        .assert()
        .success();
    let secret = stdout(&created).trim().to_string();
    assert!(secret.starts_with("sb-"), "{secret}");
    let keys = stdout(
        &with_server(&server, Some(KEY))
            .args(["keys", "list"])
            .assert()
            .success(),
    );
    assert!(keys.contains("ci") && keys.contains("generate"), "{keys}");
    let key_id = keys
        .lines()
        .find(|line| line.contains(" ci "))
        .and_then(|line| line.split_whitespace().next())
        .unwrap()
        .to_string();
    with_server(&server, Some(&secret))
        .args(["keys", "list"])
        .assert()
        .code(3)
        .stderr(predicate::str::contains("hint: this key lacks the scope"));
    with_server(&server, Some(KEY))
        .args(["keys", "revoke", &key_id])
        .assert()
        .success()
        .stdout(format!("revoked {key_id}\n"));

    // Usage: the three images above.
    with_server(&server, Some(KEY))
        .arg("usage")
        .assert()
        .success()
        .stdout(predicate::str::starts_with("2 jobs, 3 images, "));

    // Models from the server.
    with_server(&server, None)
        .args(["models", "list"])
        .assert()
        .success()
        .stdout(predicate::str::contains("seedream-4-5-251128  tiny-sd"));
}

#[test]
fn server_errors_exit_3_with_the_code_and_a_hint() {
    let (_dir, data) = data_dir();
    let server = ServerProcess::start(&data);
    with_server(&server, Some(KEY))
        .args(["generate", "x", "-m", "tiny-sd", "--size", "3x3"])
        .assert()
        .code(3)
        .stderr(
            predicate::str::contains("InvalidParameter")
                .and(predicate::str::contains("size"))
                .and(predicate::str::contains("Request ID: ")),
        );
    with_server(&server, None)
        .args(["generate", "x", "-m", "tiny-sd"])
        .assert()
        .code(3)
        .stderr(predicate::str::contains("hint: pass a key with --api-key"));
}

#[test]
fn an_unreachable_server_is_a_failure_with_a_hint() {
    // A port nothing listens on: bind one, then let it go.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    seedbed()
        .env("SEEDBED_SERVER", format!("http://127.0.0.1:{port}"))
        .args(["jobs", "list"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(format!(
            "is `seedbed serve` running at http://127.0.0.1:{port}?"
        )));
}

#[test]
fn local_models_and_completions() {
    let assert = seedbed()
        .env_remove("SEEDBED_SERVER")
        .args(["models", "list", "--models-dir"])
        .arg(fixtures().join("models"))
        .assert()
        .success();
    let table = stdout(&assert);
    assert!(
        table.contains("tiny-sd ") && table.contains("tiny-sdxl"),
        "{table}"
    );
    seedbed()
        .args(["completions", "bash"])
        .assert()
        .success()
        .stdout(predicate::str::contains("_seedbed()"));
}

#[test]
fn pull_from_a_hub_then_generate_with_it() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let hub = runtime.block_on(seedbed_hub::fake::FakeHub::start());
    hub.add_repo("test/tiny-sd", &fixtures().join("models/tiny-sd"));
    let models = tempfile::tempdir().unwrap();
    seedbed()
        .env("HF_ENDPOINT", &hub.url)
        .args(["pull", "test/tiny-sd", "--models-dir"])
        .arg(models.path())
        .assert()
        .success()
        .stdout(format!("{}\n", models.path().join("tiny-sd").display()));
    seedbed()
        .env("HF_ENDPOINT", &hub.url)
        .args(["pull", "test/tiny-sd", "--models-dir"])
        .arg(models.path())
        .assert()
        .success()
        .stderr(predicate::str::contains("is up to date"));
    let out = tempfile::tempdir().unwrap();
    seedbed()
        .current_dir(out.path())
        .args([
            "generate",
            "a pulled model",
            "--steps",
            "1",
            "-m",
            "tiny-sd",
            "--models-dir",
        ])
        .arg(models.path())
        .assert()
        .success();
    assert!(out.path().join("seedbed.jpeg").is_file());
    seedbed()
        .env("HF_ENDPOINT", &hub.url)
        .args(["pull", "test/missing", "--models-dir"])
        .arg(models.path())
        .assert()
        .code(3)
        .stderr(predicate::str::contains(
            "test/missing at main was not found",
        ));
}
