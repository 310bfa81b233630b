//! `seedbed serve --config` as a person runs it: a real server process reading a real file.

use super::seedbed;
use super::server_process::{ServerProcess, data_dir};

/// `serve --config`: the file sets options under their flag names, a `SEEDBED_*` variable wins
/// over the file and a flag over both; a mistake in the file names the file and exits 2.
#[test]
fn a_served_config_file_yields_to_variables_and_flags() {
    let (_dir, data) = data_dir();
    let file = data.join("seedbed.toml");
    std::fs::write(
        &file,
        "queue_size = 7\nimage_ttl_secs = 120\nmax_input_image_bytes = 1000\n",
    )
    .unwrap();
    let server = ServerProcess::start_configured(&data, "127.0.0.1:0", |cmd| {
        cmd.arg("--config")
            .arg(&file)
            .env("SEEDBED_IMAGE_TTL_SECS", "300")
            .args(["--max-input-image-bytes", "2000"]);
    });
    let limits = server.http().get("/info")["limits"].clone();
    assert_eq!(limits["queue_size"], 7, "from the file: {limits}");
    assert_eq!(limits["image_ttl_s"], 300, "the variable wins: {limits}");
    assert_eq!(limits["input_image_bytes"], 2000, "the flag wins: {limits}");
    drop(server);

    std::fs::write(&file, "queue_size = -1\n").unwrap();
    let refused = seedbed()
        .args(["serve", "--config"])
        .arg(&file)
        .assert()
        .code(2);
    let stderr = String::from_utf8_lossy(&refused.get_output().stderr).to_string();
    assert!(
        stderr.contains("seedbed.toml: `queue_size`") && stderr.contains("-1"),
        "{stderr}"
    );
}
