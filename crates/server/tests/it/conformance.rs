//! The official Python SDKs (`volcengine-ark-runtime`, `byteplus-python-sdk-v2`, `openai`) and
//! the brief's curl and Python examples, run unchanged against a real server. The venv comes
//! from the README's set-up step (and `.ci/run`); `SEEDBED_CONFORMANCE_PYTHON` may point
//! at another interpreter that has `tests/conformance/requirements.txt` installed.

use std::path::{Path, PathBuf};

use crate::support::{TestServer, models_with_flux};

const KEY: &str = "conformance-key";

fn python() -> PathBuf {
    match std::env::var_os("SEEDBED_CONFORMANCE_PYTHON") {
        Some(path) => PathBuf::from(path),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv-conformance/bin/python"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn official_sdks_and_the_brief_examples_work_unchanged() {
    let python = python();
    assert!(
        python.exists(),
        "{} is missing: run `python3 -m venv .venv-conformance && .venv-conformance/bin/pip install \
         -r crates/server/tests/conformance/requirements.txt` (the README's set-up does)",
        python.display()
    );
    let models = models_with_flux();
    let models_dir = models.path().to_path_buf();
    let server = TestServer::start_with(|config| {
        config.api_keys = vec![KEY.into()];
        config.models_dir = models_dir;
        config
            .aliases
            .push(("flux-schnell".into(), "tiny-flux-schnell".into()));
    })
    .await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance/conformance.py");
    let output = tokio::process::Command::new(&python)
        .arg(&script)
        .args([
            server.url.as_str(),
            KEY,
            "seedream-4-5-251128",
            "flux-schnell",
        ])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
    assert!(stdout.contains("ok   openai: FLUX"), "{stdout}");
}
