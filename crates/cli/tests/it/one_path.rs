//! Local generation and the server are one path: the same request makes the same file, byte
//! for byte (with `SOURCE_DATE_EPOCH` fixing provenance's time), and a local run resolves
//! sizes and per-model defaults exactly as the server does.

use std::path::{Path, PathBuf};

use base64::Engine as _;

use super::server_process::{KEY, ServerProcess, data_dir};
use super::{fixtures, seedbed};

/// 2023-11-14T22:13:20Z.
const EPOCH: &str = "1700000000";

fn local(dir: &Path, models: &Path) -> assert_cmd::Command {
    let mut cmd = seedbed();
    cmd.current_dir(dir)
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .args(["generate", "--models-dir"])
        .arg(models);
    cmd
}

fn read(path: PathBuf) -> Vec<u8> {
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn json_stdout(assert: &assert_cmd::assert::Assert) -> serde_json::Value {
    serde_json::from_slice(&assert.get_output().stdout).unwrap()
}

#[test]
fn local_and_server_make_the_same_bytes() {
    let (_dir, data) = data_dir();
    let server = ServerProcess::start_configured(&data, "127.0.0.1:0", |command| {
        command.env("SOURCE_DATE_EPOCH", EPOCH);
    });
    let out = tempfile::tempdir().unwrap();
    let models = fixtures().join("models");

    // PNG, a batch of two: the server's answer inline, the CLI's files locally.
    let response = server.http().generate(
        serde_json::json!({"model": "tiny-sd", "prompt": "a red fox", "size": "64x64",
            "seed": 7, "steps": 2, "output_format": "png", "response_format": "b64_json",
            "sequential_image_generation": "auto",
            "sequential_image_generation_options": {"max_images": 2}}),
        false,
    );
    local(out.path(), &models)
        .args(["a red fox", "--model", "tiny-sd", "-o", "fox.png"])
        .args(["--size", "64x64", "--seed", "7", "--steps", "2", "-n", "2"])
        .assert()
        .success();
    let data = response["data"]
        .as_array()
        .unwrap_or_else(|| panic!("{response}"));
    assert_eq!(data.len(), 2, "{response}");
    for (index, image) in data.iter().enumerate() {
        let served = base64::engine::general_purpose::STANDARD
            .decode(image["b64_json"].as_str().unwrap())
            .unwrap();
        let made = read(out.path().join(format!("fox-{}.png", index + 1)));
        assert!(made.starts_with(b"\x89PNG"));
        assert!(served == made, "image {index} differs");
        let text = String::from_utf8_lossy(&made);
        assert!(text.contains("2023-11-14T22:13:20"), "provenance time");
    }

    // JPEG, image-to-image with Karras sigmas and guidance, through `generate --server`.
    let reference = out.path().join("in.png");
    image::RgbImage::from_pixel(40, 30, image::Rgb([200, 10, 10]))
        .save(&reference)
        .unwrap();
    let flags = "--model tiny-sd --size 2K --seed 11 --steps 4 --strength 0.5 --scheduler euler \
        --karras --guidance 3 --negative-prompt blurry";
    let flags: Vec<&str> = flags.split_whitespace().collect();
    // Both paths say what becomes of a reference of another shape.
    let resized = "note: in.png is 40x30; resized to 128x128 (stretched, not cropped)";
    seedbed()
        .current_dir(out.path())
        .env("SEEDBED_SERVER", &server.url)
        .env("SEEDBED_API_KEY", KEY)
        .args([
            "generate",
            "a barn",
            "-o",
            "served.jpg",
            "--image",
            "in.png",
        ])
        .args(&flags)
        .assert()
        .success()
        .stderr(predicates::str::contains(resized));
    local(out.path(), &models)
        .args(["a barn", "-o", "made.jpg", "--image", "in.png"])
        .args(&flags)
        .assert()
        .success()
        .stderr(predicates::str::contains(resized));
    let (served, made) = (
        read(out.path().join("served.jpg")),
        read(out.path().join("made.jpg")),
    );
    assert!(made.starts_with(&[0xFF, 0xD8]));
    assert!(served == made, "the JPEGs differ");

    // A ratio in the prompt shapes a preset the same way on both paths.
    let prompt = "a 16:9 poster of a harbour";
    let response = server.http().generate(
        serde_json::json!({"model": "tiny-sd", "prompt": prompt, "size": "2K", "steps": 1}),
        false,
    );
    let assert = local(out.path(), &models)
        .args([prompt, "--model", "tiny-sd", "--size", "2K", "--steps", "1"])
        .args(["--json", "-o", "poster.png"])
        .assert()
        .success();
    let size = json_stdout(&assert)["data"][0]["size"].clone();
    assert_eq!(size, response["data"][0]["size"], "{response}");
    assert_ne!(size, "128x128");
}

/// A model folder made of links to tiny-sd's parts, under another name, with an optional
/// `seedbed.json`.
pub fn model_like_tiny_sd(models: &Path, name: &str, overrides: Option<&str>) {
    let dir = models.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(fixtures().join("models/tiny-sd")).unwrap() {
        let entry = entry.unwrap();
        std::os::unix::fs::symlink(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    if let Some(json) = overrides {
        std::fs::write(dir.join("seedbed.json"), json).unwrap();
    }
}

/// Locally a model's defaults are the catalog's (what the server uses and `models list`
/// shows): one step without guidance for a Turbo model, a folder's `seedbed.json` when it has
/// one. A run without `--steps`/`--guidance` makes the same bytes as one that names the
/// defaults, and different bytes from the old local Turbo default of 4 steps.
#[test]
fn local_defaults_are_the_servers() {
    let models = tempfile::tempdir().unwrap();
    model_like_tiny_sd(models.path(), "tiny-turbo", None);
    model_like_tiny_sd(
        models.path(),
        "tiny-tuned",
        Some(r#"{"steps": 2, "guidance_scale": 0}"#),
    );
    let listed = json_stdout(
        &seedbed()
            .args(["models", "list", "--json", "--models-dir"])
            .arg(models.path())
            .assert()
            .success(),
    );
    let defaults = |id: &str| {
        let model = listed["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .unwrap_or_else(|| panic!("{listed}"));
        (
            model["default_steps"].as_u64().unwrap(),
            model["default_guidance_scale"].as_f64().unwrap(),
        )
    };
    assert_eq!(defaults("tiny-turbo"), (1, 0.0));
    assert_eq!(defaults("tiny-tuned"), (2, 0.0));

    let out = tempfile::tempdir().unwrap();
    let run = |model: &str, file: &str, extra: &[&str]| {
        local(out.path(), models.path())
            .args(["a fox", "--seed", "3", "--model", model, "-o", file])
            .args(extra)
            .assert()
            .success();
        read(out.path().join(file))
    };
    let turbo = run("tiny-turbo", "turbo.png", &[]);
    assert!(
        turbo
            == run(
                "tiny-turbo",
                "turbo-1.png",
                &["--steps", "1", "--guidance", "0"]
            )
    );
    assert!(
        turbo
            != run(
                "tiny-turbo",
                "turbo-4.png",
                &["--steps", "4", "--guidance", "0"]
            )
    );
    let tuned = run("tiny-tuned", "tuned.png", &[]);
    assert!(
        tuned
            == run(
                "tiny-tuned",
                "tuned-2.png",
                &["--steps", "2", "--guidance", "0"]
            )
    );
}
