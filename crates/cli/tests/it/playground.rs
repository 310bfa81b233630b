//! The playground at `/` in a real browser: `tests/browser/playground.mjs` drives Debian's
//! Chromium through playwright-core against a real `seedbed serve` with the tiny models (key,
//! generate with previews, an error by its field, cancel, history, run again). The browser and
//! `node_modules` come from the README's set-up step (and `.ci/run`).
//!
//! With `SEEDBED_UPDATE_DOCS=1` the screenshot it takes after a generation replaces
//! `docs/playground.png`, the picture the README shows.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::server_process::{KEY, ServerProcess};

fn browser_tests() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

#[test]
fn the_playground_works_in_a_real_browser() {
    let scripts = browser_tests();
    assert!(
        scripts.join("node_modules/playwright-core").exists(),
        "playwright-core is missing: run `npm ci --prefix crates/cli/tests/browser` and install \
         Chromium (the README's set-up does both)"
    );
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path());
    let screenshot = match std::env::var_os("SEEDBED_UPDATE_DOCS") {
        Some(_) => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/playground.png"),
        None => data.path().join("playground.png"),
    };
    let output = Command::new("node")
        .arg(scripts.join("playground.mjs"))
        .env("SEEDBED_URL", &server.url)
        .env("SEEDBED_KEY", KEY)
        .env("SEEDBED_SCREENSHOT", &screenshot)
        .output()
        .expect("running node (the README's set-up installs it with npm)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "the browser test failed:\n{said}");
    assert!(said.contains("all steps passed"), "{said}");
    let picture = image::open(&screenshot).expect("the screenshot");
    assert_eq!(
        picture.width(),
        1100,
        "the screenshot has the viewport's width"
    );
}
