//! Three real `seedbed serve` processes on one Postgres database, as docs/cluster.md runs them:
//! a SIGKILL of the node running a job, while the others are alive, loses nothing. The job row
//! is the only truth, so another node takes the job once the dead node's lease runs out.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;

use super::server_process::{ServerProcess, data_dir};

/// Short, so the test waits little for the dead node's lease to run out (the floor is 2).
const LEASE_SECS: &str = "2";

/// What every node of one cluster shares: the database, the image folder and the secret API
/// keys are hashed with (without the same secret a key stored by one node fails on another).
struct Shared {
    database: String,
    folder: tempfile::TempDir,
}

impl Shared {
    fn new() -> Self {
        // `postgres_url` is async (it creates the database over a connection); the test is not.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let database = runtime.block_on(seedbed_storage::testing::postgres_url());
        Self {
            database,
            folder: tempfile::tempdir().unwrap(),
        }
    }

    fn blobs(&self) -> PathBuf {
        self.folder.path().join("blobs")
    }

    fn key_secret(&self) -> PathBuf {
        self.folder.path().join("key-hash.secret")
    }

    /// A node named `name` with its own data folder (its own node-id file and logs).
    fn start_node(&self, name: &str, data: &Path) -> ServerProcess {
        ServerProcess::start_configured(data, "127.0.0.1:0", |command| {
            command
                .arg("--database-url")
                .arg(&self.database)
                .args(["--node-id", name, "--lease-secs", LEASE_SECS])
                .arg("--blob-url")
                .arg(self.blobs())
                .arg("--key-secret-file")
                .arg(self.key_secret());
        })
    }
}

fn id_of(response: &serde_json::Value) -> String {
    response["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no job id in {response}"))
        .to_string()
}

#[test]
fn a_job_on_a_killed_node_finishes_once_on_another() {
    let shared = Shared::new();
    let dirs: Vec<_> = (0..3).map(|_| data_dir()).collect();

    // A alone first, so the long job is certainly A's.
    let a = shared.start_node("node-a", &dirs[0].1);
    let http_a = a.http();
    let long = id_of(&http_a.generate(
        json!({"model": "tiny-sd", "prompt": "a long one", "steps": 500}),
        true,
    ));
    let running = http_a.poll_job(&long, |job| {
        job["status"] == "running" && job["progress"]["step"].as_u64() >= Some(1)
    });
    assert_eq!(running["node"], "node-a", "{running}");
    assert_eq!(running["attempts"], 1, "{running}");

    let mut b = shared.start_node("node-b", &dirs[1].1);
    let mut c = shared.start_node("node-c", &dirs[2].1);
    let (http_b, http_c) = (b.http(), c.http());
    // Sent to B while A is busy; B or C runs it (A's device lane takes one job at a time).
    let second = id_of(&http_b.generate(
        json!({"model": "tiny-sd", "prompt": "meanwhile", "steps": 3}),
        true,
    ));

    let killed = Instant::now();
    a.kill();

    // Seen from C whichever node runs it: the row is the truth, not the node asked.
    let finished = http_c.poll_job(&long, |job| job["status"] == "succeeded");
    let took = killed.elapsed();
    let survivors = ["node-b", "node-c"];
    let ran_on = finished["node"].as_str().unwrap_or_default();
    assert!(survivors.contains(&ran_on), "ran on {ran_on}: {finished}");
    // A's claim and exactly one more: had B and C both claimed it, this would be 3.
    assert_eq!(finished["attempts"], 2, "{finished}");
    assert_eq!(finished["result"]["data"].as_array().unwrap().len(), 1);
    // The lease (2 s) plus a reaper pass (every 1 s) plus the rerun, with room for a slow
    // machine; a lease never noticed would hit poll_job's minute instead.
    assert!(
        took < Duration::from_secs(45),
        "finished {took:?} after the kill"
    );
    println!("the long job finished on {ran_on} {took:?} after node-a was killed");

    // One run after the other, never two at once: A's attempt, then the survivor's, each
    // announced once, and a single end.
    let events = http_b.events(&long);
    assert_eq!(started_attempts(&events), [1, 2], "{events}");
    assert_eq!(events.matches("event: completed").count(), 1, "{events}");
    assert!(!events.contains("event: failed"), "{events}");

    let other = http_b.poll_job(&second, |job| job["status"] == "succeeded");
    let other_node = other["node"].as_str().unwrap_or_default();
    assert!(survivors.contains(&other_node), "{other}");
    assert_eq!(other["attempts"], 1, "never interrupted: {other}");

    // Some survivor put the dead node's job back (the reaper runs on every node).
    let mut log = b.log_lines();
    log.extend(c.log_lines());
    let log = log.join("\n");
    assert!(
        log.contains("requeued a job interrupted"),
        "no survivor logged the requeue:\n{log}"
    );

    // Each job billed once (64x64 tiny images), whichever node is asked.
    for http in [&http_b, &http_c] {
        let usage = http.get("/v1/usage");
        assert_eq!(usage["totals"]["jobs"], 2, "{usage}");
        assert_eq!(usage["totals"]["images"], 2, "{usage}");
    }
    assert!(b.terminate().success());
    assert!(c.terminate().success());
}

/// The `attempt` of each `started` event in a server-sent event stream, in order.
fn started_attempts(stream: &str) -> Vec<u64> {
    stream
        .split("\n\n")
        .filter(|event| event.lines().any(|line| line == "event: started"))
        .filter_map(|event| {
            let data = event.lines().find_map(|line| line.strip_prefix("data: "))?;
            serde_json::from_str::<serde_json::Value>(data).ok()?["attempt"].as_u64()
        })
        .collect()
}
