//! `seedbed generate` as a user meets it on both paths: the same names, output and progress
//! locally and through a server, bad input refused before anything runs, a rate limit waited
//! out in view, a spent quota final, Ctrl-C cancelling the server's job, `--detach`, `--open`.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use base64::Engine as _;
use predicates::prelude::*;

use super::server_process::{KEY, ServerProcess, data_dir};
use super::snapshots::run;
use super::{fixtures, seedbed};

/// Ids and ports differ per run.
fn filters() -> Vec<(&'static str, &'static str)> {
    vec![
        (r"job_[A-Za-z0-9]+", "[JOB]"),
        (r"127\.0\.0\.1:\d+", "127.0.0.1:[PORT]"),
        (r"(?i)request id: [^)\s]+", "Request ID: [ID]"),
    ]
}

fn local(dir: &Path) -> assert_cmd::Command {
    let mut cmd = seedbed();
    cmd.current_dir(dir)
        .arg("generate")
        .arg("--models-dir")
        .arg(fixtures().join("models"));
    cmd
}

fn remote(dir: &Path, server: &str) -> assert_cmd::Command {
    let mut cmd = seedbed();
    cmd.current_dir(dir)
        .env("SEEDBED_SERVER", server)
        .env("SEEDBED_API_KEY", KEY)
        .arg("generate");
    cmd
}

/// The same request locally and through a server: the same file name and format, the same
/// stdout (paths only) and stderr (seed and size), and one `--json` shape.
#[test]
fn local_and_served_runs_name_and_report_alike() {
    let (_data, data) = data_dir();
    let server = ServerProcess::start(&data);
    let (here, there) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let flags = ["a red fox", "-m", "tiny-sd", "--seed", "5", "--steps", "1"];
    let made = run(local(here.path()).args(flags));
    let served = run(remote(there.path(), &server.url).args(flags));
    insta::assert_snapshot!("plain_run", made);
    assert_eq!(served, made);
    assert!(here.path().join("seedbed.jpeg").is_file());
    assert!(there.path().join("seedbed.jpeg").is_file());

    // A second run takes the next free name on both paths; a batch numbers from 1.
    let made = run(local(here.path()).args(flags).args(["-n", "2", "--json"]));
    let served = run(remote(there.path(), &server.url)
        .args(flags)
        .args(["-n", "2", "--json"]));
    insta::assert_snapshot!("json_run", made);
    assert_eq!(served, made);

    // A named file is not replaced without --force.
    local(here.path())
        .args(flags)
        .args(["-o", "seedbed.jpeg"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "seedbed.jpeg exists; pass --force to replace it",
        ));
    local(here.path())
        .args(flags)
        .args(["-o", "seedbed.jpeg", "--force", "-q"])
        .assert()
        .success()
        .stdout("seedbed.jpeg\n")
        .stderr("");
}

/// Every check that needs no model runs before one loads or a request is sent: against a
/// port nothing listens on, each is still exit 2, not a connection failure.
#[test]
fn bad_input_is_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not a picture").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let nowhere = format!("http://127.0.0.1:{port}");
    let cases: [&[&str]; 9] = [
        &["  "],
        &["x", "--image", "missing.png"],
        &["x", "--image", "notes.txt"],
        &["x", "-o", "fox.gif"],
        &["x", "--strength", "1.5", "--image", "notes.txt"],
        &["x", "--size", "big"],
        &["x", "--steps", "0"],
        &["x", "--detach"],
        &["x", "--lora", "watercolor:9"],
    ];
    let mut seen = String::new();
    for args in cases {
        let output = local(dir.path()).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).to_string();
        seen.push_str(&format!("$ generate {}\n{stderr}", args.join(" ")));
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        if args.contains(&"--detach") {
            continue;
        }
        let output = local(dir.path())
            .env("SEEDBED_SERVER", &nowhere)
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?} remote: {stderr}");
    }
    insta::assert_snapshot!(seen);
}

/// `--lora NAME:SCALE` becomes the request's `loras` on both paths: locally from `--loras-dir`,
/// on a server from its own folder. Both paint the same picture, and not the one without it.
#[test]
fn a_lora_changes_the_picture_locally_and_on_a_server() {
    let loras = fixtures().join("loras");
    let (_data, data) = data_dir();
    let server = ServerProcess::start_configured(&data, "127.0.0.1:0", |command| {
        command.arg("--loras-dir").arg(&loras);
    });
    let dir = tempfile::tempdir().unwrap();
    let flags = [
        "a red fox",
        "-m",
        "tiny-sd",
        "--seed",
        "5",
        "--steps",
        "1",
        "-q",
    ];
    let lora = ["--lora", "tiny-sd-kohya:0.8"];
    local(dir.path())
        .args(flags)
        .args(["-o", "plain.png"])
        .assert()
        .success();
    local(dir.path())
        .args(flags)
        .args(lora)
        .arg("--loras-dir")
        .arg(&loras)
        .args(["-o", "local.png"])
        .assert()
        .success();
    remote(dir.path(), &server.url)
        .args(flags)
        .args(lora)
        .args(["-o", "served.png"])
        .assert()
        .success();
    let pixels = |name: &str| image::open(dir.path().join(name)).unwrap().into_rgb8();
    assert!(pixels("local.png") == pixels("served.png"));
    assert!(
        pixels("local.png") != pixels("plain.png"),
        "the LoRA changed nothing"
    );
    // Without a LoRA folder the name is refused before the model loads.
    local(dir.path())
        .args(flags)
        .args(lora)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--loras-dir"));
}

/// `-q` leaves stderr to errors: no "using model", no note about an ignored flag, no seeds.
#[test]
fn quiet_prints_nothing_but_the_paths() {
    let dir = tempfile::tempdir().unwrap();
    let loud = local(dir.path())
        .args(["a fox", "--steps", "1", "--strength", "0.5"])
        .assert()
        .success();
    let stderr = String::from_utf8_lossy(&loud.get_output().stderr).to_string();
    assert!(
        stderr.contains("note: --strength is ignored without --image")
            && stderr.contains("using model")
            && stderr.contains("seedbed.jpeg: seed "),
        "{stderr}"
    );
    local(dir.path())
        .args(["a fox", "--steps", "1", "--strength", "0.5", "-q"])
        .assert()
        .success()
        .stdout("seedbed-1.jpeg\n")
        .stderr("");
}

/// What a fake server does with one request.
enum Reply {
    Answer(String),
    /// Send this head and then nothing, holding the connection open (a stream with no events
    /// yet, a cancel that never returns).
    Hang(String),
}

/// A loopback HTTP server answering each request (by its request line) with `handler`, each
/// connection on a thread of its own; returns its URL and the request lines as they come.
fn fake_server(
    handler: impl Fn(&str) -> Reply + Send + Sync + 'static,
) -> (String, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (sender, seen) = mpsc::channel();
    let handler = Arc::new(handler);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            let (handler, sender) = (handler.clone(), sender.clone());
            std::thread::spawn(move || {
                let head = read_request(&mut stream);
                let line = head.lines().next().unwrap_or_default().to_string();
                let reply = handler(&line);
                let _ = sender.send(line);
                match reply {
                    Reply::Answer(answer) => {
                        let _ = stream.write_all(answer.as_bytes());
                    }
                    Reply::Hang(head) => {
                        let _ = stream.write_all(head.as_bytes());
                        std::thread::sleep(Duration::from_secs(120));
                    }
                }
            });
        }
    });
    (url, seen)
}

/// A fake Seedream API (not a seedbed: `/info` is 404) that answers the generation requests
/// with `answers` in turn; returns its URL and the request lines it got.
fn fake_api(answers: Vec<String>) -> (String, mpsc::Receiver<String>) {
    let answers = Mutex::new(answers.into_iter());
    fake_server(move |line| {
        Reply::Answer(if line.starts_with("POST") {
            let next = answers.lock().unwrap().next();
            next.unwrap_or_else(|| status(500, "{}", ""))
        } else {
            status(404, "{}", "")
        })
    })
}

/// The request's head, with its body read past (by Content-Length).
fn read_request(stream: &mut std::net::TcpStream) -> String {
    let mut request = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        if let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&request[..end]).to_string();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .unwrap_or(0);
            while request.len() < end + 4 + length {
                match stream.read(&mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buffer[..n]),
                }
            }
            return head;
        }
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => return String::from_utf8_lossy(&request).to_string(),
            Ok(n) => request.extend_from_slice(&buffer[..n]),
        }
    }
}

fn status(code: u16, body: &str, headers: &str) -> String {
    format!(
        "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n{headers}\r\n{body}",
        body.len()
    )
}

fn one_image() -> String {
    let mut png = Vec::new();
    image::RgbImage::from_pixel(8, 8, image::Rgb([1, 2, 3]))
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(png);
    let body = serde_json::json!({"model": "m", "created": 1,
        "data": [{"b64_json": b64, "size": "8x8"}]});
    status(200, &body.to_string(), "")
}

/// A per-minute limit is waited out in view ("rate limited: retrying in 1 s"; nothing under
/// -q); a spent quota is final at once, exit 3, though the server says it may be retried.
#[test]
fn rate_limits_are_waited_out_and_quotas_are_final() {
    let limited = status(
        429,
        r#"{"error": {"code": "ModelAccountIpmRateLimitExceeded", "message": "slow down"}}"#,
        "Retry-After: 1\r\nx-should-retry: true\r\n",
    );
    let dir = tempfile::tempdir().unwrap();
    let (url, _) = fake_api(vec![limited.clone(), one_image()]);
    let output = run(remote(dir.path(), &url).args(["a fox"]));
    insta::with_settings!({filters => filters()}, {
        insta::assert_snapshot!("rate_limited", output);
    });
    let (url, _) = fake_api(vec![limited, one_image()]);
    remote(dir.path(), &url)
        .args(["a fox", "-q"])
        .assert()
        .success()
        .stdout("seedbed-1.png\n")
        .stderr("");

    let quota = status(
        429,
        r#"{"error": {"code": "QuotaExceeded", "message": "the image quota of this key (1 images) is used up"}}"#,
        "x-should-retry: true\r\n",
    );
    let (url, seen) = fake_api(vec![quota, one_image()]);
    let output = run(remote(dir.path(), &url).args(["a fox"]));
    insta::with_settings!({filters => filters()}, {
        insta::assert_snapshot!("quota_exceeded", output);
    });
    let posts = seen.try_iter().filter(|l| l.starts_with("POST")).count();
    assert_eq!(posts, 1, "a spent quota is never retried");
}

/// Ctrl-C while the server runs the job: the job id is said, the job ends cancelled, exit 130.
#[test]
fn ctrl_c_cancels_the_servers_job() {
    let (_data, data) = data_dir();
    let server = ServerProcess::start(&data);
    let http = server.http();
    let dir = tempfile::tempdir().unwrap();
    let args = ["a long one", "-m", "tiny-sd", "--steps", "500"];
    let mut child = spawn_generate(dir.path(), &server.url, &args);
    let deadline = Instant::now() + Duration::from_secs(60);
    let id = loop {
        let jobs = http.get("/v1/jobs");
        let job = &jobs["data"][0];
        if job["status"] == "running" && job["progress"]["step"].as_u64() >= Some(1) {
            break job["id"].as_str().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "the job never ran: {jobs}");
        std::thread::sleep(Duration::from_millis(20));
    };
    interrupt(&child);
    let (code, stdout, stderr) = wait_out(&mut child);
    assert_eq!(code, Some(130), "{stderr}");
    assert_eq!(stdout, "");
    assert!(
        stderr.contains(&format!("interrupted: cancelling job {id}"))
            && stderr.contains(&format!("job {id} cancelled")),
        "{stderr}"
    );
    http.poll_job(&id, |job| job["status"] == "cancelled");
}

/// A second Ctrl-C while the cancel is under way leaves the job running and says how to stop
/// it. A fake seedbed whose cancel never returns holds the command in that state.
#[test]
fn a_second_ctrl_c_leaves_the_job_running() {
    let info = serde_json::json!({"name": "seedbed", "version": "0", "uptime_s": 1,
        "device": "cpu", "loaded_models": [], "models": [],
        "limits": {"queue_size": 1, "body_bytes": 1, "image_ttl_s": 1,
            "input_image_bytes": 1, "max_attempts": 1}});
    let job = serde_json::json!({"id": "job_slow", "object": "job", "model": "m",
        "status": "queued", "created_at": 1, "started_at": null, "finished_at": null,
        "queue_position": 0, "progress": null, "attempts": 0, "result": null, "error": null});
    let (url, seen) = fake_server(move |line| {
        let path = line.split_whitespace().nth(1).unwrap_or_default();
        match path {
            "/info" => Reply::Answer(status(200, &info.to_string(), "")),
            "/api/v3/images/generations" => Reply::Answer(status(202, &job.to_string(), "")),
            "/v1/jobs/job_slow/events" => {
                Reply::Hang("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n".into())
            }
            _ => Reply::Hang(String::new()),
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn_generate(dir.path(), &url, &["a fox", "-m", "m"]);
    let wait_for = |wanted: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match seen.recv_timeout(left) {
                Ok(line) if line.contains(wanted) => break,
                Ok(_) => {}
                Err(_) => panic!("no request for {wanted}"),
            }
        }
    };
    wait_for("/events");
    interrupt(&child);
    wait_for("/cancel");
    interrupt(&child);
    let (code, stdout, stderr) = wait_out(&mut child);
    assert_eq!(code, Some(130), "{stderr}");
    assert_eq!(stdout, "");
    insta::assert_snapshot!(stderr);
}

/// Ctrl-C stops a local run as well, before its next step: exit 130, no file half-written.
#[test]
fn ctrl_c_stops_a_local_run() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = generate_command(dir.path());
    let mut child = command
        .arg("--models-dir")
        .arg(fixtures().join("models"))
        .args(["a long one", "--steps", "500", "-n", "3"])
        .spawn()
        .unwrap();
    // The handler is in place before the model loads; a second is plenty.
    std::thread::sleep(Duration::from_secs(1));
    interrupt(&child);
    let (code, _, stderr) = wait_out(&mut child);
    assert_eq!(code, Some(130), "{stderr}");
    assert!(
        stderr.contains("interrupted: stopping before the next step"),
        "{stderr}"
    );
    let partial = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
        .count();
    assert_eq!(partial, 0);
}

/// `seedbed generate` as a child to signal, with no `SEEDBED_*` from the test's environment.
fn generate_command(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_seedbed"));
    for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("SEEDBED_")) {
        command.env_remove(name);
    }
    command
        .current_dir(dir)
        .arg("generate")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

fn spawn_generate(dir: &Path, server: &str, args: &[&str]) -> std::process::Child {
    generate_command(dir)
        .env("SEEDBED_SERVER", server)
        .env("SEEDBED_API_KEY", KEY)
        .args(args)
        .spawn()
        .unwrap()
}

/// Ctrl-C, as a terminal sends it.
fn interrupt(child: &std::process::Child) {
    let pid = child.id().to_string();
    let sent = Command::new("kill").args(["-INT", &pid]).status().unwrap();
    assert!(sent.success());
}

/// The exit code, stdout and stderr once the child ends (within 30 s).
fn wait_out(child: &mut std::process::Child) -> (Option<i32>, String, String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        assert!(
            Instant::now() < deadline,
            "generate did not stop after Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let (mut stdout, mut stderr) = (String::new(), String::new());
    let mut pipe = child.stdout.take().unwrap();
    pipe.read_to_string(&mut stdout).unwrap();
    let mut pipe = child.stderr.take().unwrap();
    pipe.read_to_string(&mut stderr).unwrap();
    (code, stdout, stderr)
}

/// `--detach` hands back the job id at once and leaves the job to the server.
#[test]
fn detach_prints_the_job_id() {
    let (_data, data) = data_dir();
    let server = ServerProcess::start(&data);
    let dir = tempfile::tempdir().unwrap();
    let assert = remote(dir.path(), &server.url)
        .args(["a fox", "-m", "tiny-sd", "--steps", "1", "--detach"])
        .assert()
        .success()
        .stderr("");
    let id = String::from_utf8_lossy(&assert.get_output().stdout)
        .trim()
        .to_string();
    assert!(id.starts_with("job_"), "{id}");
    server
        .http()
        .poll_job(&id, |job| job["status"] == "succeeded");
    let assert = remote(dir.path(), &server.url)
        .args([
            "a fox", "-m", "tiny-sd", "--steps", "1", "--detach", "--json",
        ])
        .assert()
        .success();
    let answer: serde_json::Value = serde_json::from_slice(&assert.get_output().stdout).unwrap();
    assert!(
        answer["id"].as_str().unwrap().starts_with("job_"),
        "{answer}"
    );
    assert_eq!(answer.as_object().unwrap().len(), 1, "{answer}");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "no files"
    );
}

/// `--open` hands each written file to the opener; SEEDBED_OPEN names it.
#[cfg(unix)]
#[test]
fn open_hands_the_files_to_the_opener() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("opener.sh");
    let record = dir.path().join("opened.txt");
    std::fs::write(
        &script,
        format!("#!/bin/sh\necho \"$@\" >> '{}'\n", record.display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    local(dir.path())
        .env("SEEDBED_OPEN", &script)
        .args(["a fox", "--steps", "1", "-n", "2", "--open", "-q"])
        .assert()
        .success()
        .stdout("seedbed-1.jpeg\nseedbed-2.jpeg\n");
    assert_eq!(
        std::fs::read_to_string(&record).unwrap(),
        "seedbed-1.jpeg\nseedbed-2.jpeg\n"
    );
}

/// FLUX locally: `models list` shows the family and its defaults, and `generate` makes the file.
#[test]
fn flux_models_list_and_generate_locally() {
    let models = fixtures().join("models-dit");
    let listed = seedbed()
        .args(["models", "list", "--models-dir"])
        .arg(&models)
        .assert()
        .success();
    let output = listed.get_output();
    let table = String::from_utf8_lossy(&output.stdout);
    let row = |name: &str| crate::table_row(&table, name);
    assert_eq!(
        row("tiny-flux-schnell "),
        "- Flux diffusers folder 1024x1024 4 0",
        "{table}"
    );
    assert_eq!(
        row("tiny-flux-dev "),
        "- Flux diffusers folder 1024x1024 28 3.5",
        "{table}"
    );

    let dir = tempfile::tempdir().unwrap();
    seedbed()
        .current_dir(dir.path())
        .args([
            "generate",
            "a red fox",
            "-m",
            "tiny-flux-schnell",
            "--size",
            "512x512",
        ])
        .args([
            "--seed",
            "1",
            "--steps",
            "2",
            "-o",
            "fox.png",
            "--models-dir",
        ])
        .arg(&models)
        .assert()
        .success()
        .stderr(predicate::str::contains("seed 1, 512x512"));
    let picture = image::open(dir.path().join("fox.png")).unwrap();
    assert_eq!((picture.width(), picture.height()), (512, 512));
    // A UNet sampler is refused by name before anything loads.
    seedbed()
        .current_dir(dir.path())
        .args([
            "generate",
            "x",
            "-m",
            "tiny-flux-schnell",
            "--scheduler",
            "ddim",
        ])
        .arg("--models-dir")
        .arg(&models)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("flow-match Euler"));
}
