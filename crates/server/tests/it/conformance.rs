//! The official Python SDKs (`volcengine-ark-runtime`, `byteplus-python-sdk-v2`, `openai`) and
//! the brief's curl and Python examples, run unchanged against a real server. The venv comes
//! from the README's set-up step (and `.ci/run`); `SEEDBED_CONFORMANCE_PYTHON` may point
//! at another interpreter that has `tests/conformance/requirements.txt` installed. Beside the
//! tiny SD model, the SDKs also drive FLUX, Z-Image and SD3.5 (Turbo links, a request or two each).

use std::path::{Path, PathBuf};

use crate::support::{DIT_LINKS, FLUX_LINKS, TestServer, linked_models};

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
    let models = linked_models(&[FLUX_LINKS.as_slice(), DIT_LINKS.as_slice()].concat());
    let models_dir = models.path().to_path_buf();
    let server = TestServer::start_with(|config| {
        config.api_keys = vec![KEY.into()];
        config.models_dir = models_dir;
        config.aliases.extend([
            ("flux-schnell".into(), "tiny-flux-schnell".into()),
            ("z-image-turbo".into(), "tiny-zimage-turbo".into()),
            ("sd3.5-large-turbo".into(), "tiny-sd3-turbo".into()),
        ]);
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
            // Turbo links: the edit form takes no `steps`, so it runs the few-step defaults.
            "z-image-turbo@512x512",
            "sd3.5-large-turbo@256x256",
        ])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
    for check in [
        "ok   openai: FLUX",
        "ok   volcengine-ark-runtime: z-image-turbo",
        "ok   openai: z-image-turbo images.edit",
        "ok   volcengine-ark-runtime: sd3.5-large-turbo",
        "ok   openai: sd3.5-large-turbo images.edit",
    ] {
        assert!(stdout.contains(check), "{check} missing from\n{stdout}");
    }
}
