//! A hard kill (SIGKILL) of the real `seedbed serve` process in the middle of a job: after a
//! restart on the same data directory nothing is lost, nothing is billed twice, and old image
//! links still work.

use serde_json::json;

use super::server_process::{ServerProcess, data_dir};

#[test]
fn a_killed_server_finishes_its_jobs_after_restart() {
    let (_dir, data) = data_dir();
    let server = ServerProcess::start(&data);
    let http = server.http();

    // A finished job whose link must outlive the crash.
    let done = http.generate(
        json!({"model": "seedream-4-5-251128", "prompt": "a harbour", "steps": 2}),
        false,
    );
    let link = done["data"][0]["url"].as_str().unwrap().to_string();

    // A long job that is running when the process dies, and one queued behind it.
    let long = json!({"model": "tiny-sd", "prompt": "a long one", "steps": 500,
        "sequential_image_generation": "auto",
        "sequential_image_generation_options": {"max_images": 2}});
    let running = http.generate(long, true)["id"]
        .as_str()
        .unwrap()
        .to_string();
    let queued = http.generate(
        json!({"model": "tiny-sd", "prompt": "next", "steps": 3}),
        true,
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    http.poll_job(&running, |job| {
        job["status"] == "running" && job["progress"]["step"].as_u64() >= Some(1)
    });
    let addr = server.addr().to_string();
    server.kill();

    let mut server = ServerProcess::start_on(&data, &addr);
    let http = server.http();
    for id in [&running, &queued] {
        let job = http.poll_job(id, |job| job["status"] == "succeeded");
        let images = job["result"]["data"].as_array().unwrap();
        assert!(images.iter().all(|image| image["url"].is_string()), "{job}");
    }
    let log = server.log_lines().join("\n");
    assert!(log.contains("requeued a job interrupted"), "{log}");
    let rerun = http.get(&format!("/v1/jobs/{running}"));
    assert_eq!(rerun["attempts"], 2, "{rerun}");
    assert_eq!(rerun["result"]["data"].as_array().unwrap().len(), 2);

    let image = http.fetch(&link);
    assert_eq!(image.status(), 200, "a link from before the crash");
    assert_eq!(image.bytes().unwrap()[..2], [0xFF, 0xD8]);

    // Three jobs, four images, each billed once (64x64 tiny images: 16 tokens each).
    let usage = http.get("/v1/usage");
    assert_eq!(usage["totals"]["jobs"], 3, "{usage}");
    assert_eq!(usage["totals"]["images"], 4, "{usage}");

    // A clean stop (SIGTERM) exits 0.
    assert!(server.terminate().success());
}
