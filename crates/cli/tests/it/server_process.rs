//! `seedbed serve` as a real child process on port 0, for tests that restart or kill it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use super::fixtures;

pub const KEY: &str = "test-admin-key";

pub struct ServerProcess {
    child: Child,
    pub url: String,
    /// Everything the server wrote to stderr so far (drained by a thread so it never blocks).
    log: mpsc::Receiver<String>,
    /// Lines read while waiting for it to listen.
    startup: Vec<String>,
}

impl ServerProcess {
    pub fn start(data_dir: &Path) -> Self {
        Self::start_on(data_dir, "127.0.0.1:0")
    }

    /// On a given address, e.g. the previous run's, so its image links stay valid.
    pub fn start_on(data_dir: &Path, listen: &str) -> Self {
        Self::start_configured(data_dir, listen, |_| {})
    }

    /// With extra flags or environment set by `configure`.
    pub fn start_configured(
        data_dir: &Path,
        listen: &str,
        configure: impl FnOnce(&mut Command),
    ) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_seedbed"));
        command
            .args([
                "serve",
                "--listen",
                listen,
                "--api-key",
                KEY,
                "--log",
                "info",
            ])
            .arg("--models-dir")
            .arg(fixtures().join("models"))
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--alias", "seedream-4-5-251128=tiny-sd"])
            .env_remove("SEEDBED_SERVER")
            .env_remove("SEEDBED_API_KEY")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        configure(&mut command);
        let mut child = command.spawn().expect("spawning seedbed serve");
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let (sender, log) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let mut seen = Vec::new();
        let url = loop {
            let line = log
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("seedbed serve did not start:\n{}", seen.join("\n")));
            if let Some(rest) = line.strip_prefix("seedbed listening on ") {
                break rest.split_whitespace().next().unwrap().to_string();
            }
            seen.push(line);
        };
        Self {
            child,
            url,
            log,
            startup: seen,
        }
    }

    /// SIGKILL: no shutdown code runs, exactly like a crash or the OOM killer.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        self.child.wait().unwrap()
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> &str {
        self.url.trim_start_matches("http://")
    }

    /// What the server logged since the last call.
    pub fn log_lines(&mut self) -> Vec<String> {
        let mut lines = std::mem::take(&mut self.startup);
        lines.extend(self.log.try_iter());
        lines
    }

    pub fn http(&self) -> Http {
        Http {
            base: self.url.clone(),
            client: reqwest::blocking::Client::new(),
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Plain blocking HTTP with the admin key, for what the CLI has no command for.
pub struct Http {
    base: String,
    client: reqwest::blocking::Client,
}

impl Http {
    pub fn get(&self, path: &str) -> serde_json::Value {
        self.client
            .get(format!("{}{path}", self.base))
            .bearer_auth(KEY)
            .send()
            .unwrap()
            .json()
            .unwrap()
    }

    pub fn fetch(&self, url: &str) -> reqwest::blocking::Response {
        self.client.get(url).send().unwrap()
    }

    pub fn generate(&self, body: serde_json::Value, respond_async: bool) -> serde_json::Value {
        let mut request = self
            .client
            .post(format!("{}/api/v3/images/generations", self.base))
            .bearer_auth(KEY)
            .json(&body);
        if respond_async {
            request = request.header("Prefer", "respond-async");
        }
        request.send().unwrap().json().unwrap()
    }

    /// The whole event stream of a job that has ended (the stream closes after its final
    /// event), as the server sent it.
    pub fn events(&self, id: &str) -> String {
        self.client
            .get(format!("{}/v1/jobs/{id}/events", self.base))
            .bearer_auth(KEY)
            .send()
            .unwrap()
            .text()
            .unwrap()
    }

    /// Poll a job until `reached` or about a minute passes.
    pub fn poll_job(
        &self,
        id: &str,
        reached: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let mut job = serde_json::Value::Null;
        for _ in 0..3000 {
            job = self.get(&format!("/v1/jobs/{id}"));
            if reached(&job) {
                return job;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("job {id} never reached the state: {job}");
    }
}

pub fn data_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    (dir, path)
}
