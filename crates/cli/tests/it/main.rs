//! The `seedbed` binary, run as a user would.

use std::path::PathBuf;

use assert_cmd::Command;
use predicates::prelude::*;

mod architecture;
mod checkpoints;
mod cluster;
mod dit;
mod generate;
mod jobs;
mod kill;
mod one_path;
mod playground;
mod proxy;
mod remote;
mod serve_config;
mod server_process;
mod snapshots;
mod standalone;

/// The repository's `fixtures/` folder: the tiny models and the diffusers reference cases.
fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

/// The row of `seedbed models list`'s table that starts with `name`, its cells after the first
/// joined by single spaces ("" when there is none).
fn table_row(table: &str, name: &str) -> String {
    let line = table.lines().find(|l| l.starts_with(name)).unwrap_or("");
    line.split_whitespace()
        .skip(1)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The binary with no `SEEDBED_*` setting from the environment the tests run in.
fn seedbed() -> Command {
    let mut cmd = Command::cargo_bin("seedbed").unwrap();
    for (name, _) in std::env::vars() {
        if name.starts_with("SEEDBED_") {
            cmd.env_remove(name);
        }
    }
    cmd
}

#[test]
fn parity_prints_one_line_per_case_and_a_summary() {
    let output = seedbed()
        .args(["parity", "--cases"])
        .arg(fixtures().join("cases"))
        .arg("--models")
        .arg(fixtures().join("models"))
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let stdout = String::from_utf8(output).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.last(), Some(&"5 passed, 0 failed"), "{stdout}");
    for line in &lines[..lines.len() - 1] {
        assert!(
            line.contains(" max_abs=") && line.contains(" mean_abs=") && line.ends_with(" PASS"),
            "{line}"
        );
    }
}

#[test]
fn parity_fails_with_nonzero_exit_when_a_case_fails() {
    seedbed()
        .args([
            "parity",
            "--tolerance=-1",
            "--only",
            "sd-euler-turbo",
            "--cases",
        ])
        .arg(fixtures().join("cases"))
        .arg("--models")
        .arg(fixtures().join("models"))
        .assert()
        .code(1)
        .stdout(
            predicate::str::contains("FAIL").and(predicate::str::contains("0 passed, 1 failed")),
        );
}

#[test]
fn generate_writes_png_and_jpeg() {
    let tmp = tempfile::tempdir().unwrap();
    seedbed()
        .current_dir(tmp.path())
        .args([
            "generate",
            "a red fox",
            "--seed",
            "1",
            "--steps",
            "2",
            "-n",
            "2",
            "-o",
            "fox.png",
            "--models-dir",
        ])
        .arg(fixtures().join("models"))
        .assert()
        .success()
        // Only the paths on stdout; seeds on stderr.
        .stdout("fox-1.png\nfox-2.png\n")
        .stderr(
            predicate::str::contains("fox-1.png: seed 1, 64x64")
                .and(predicate::str::contains("fox-2.png: seed 2, 64x64")),
        );
    let png = image::open(tmp.path().join("fox-2.png")).unwrap();
    assert_eq!((png.width(), png.height()), (64, 64));

    seedbed()
        .current_dir(tmp.path())
        .args([
            "generate",
            "a red fox",
            "--model",
            "tiny-sdxl",
            "--size",
            "96x64",
            "--steps",
            "1",
            "-o",
            "fox.jpg",
            "--models-dir",
        ])
        .arg(fixtures().join("models"))
        .assert()
        .success();
    let bytes = std::fs::read(tmp.path().join("fox.jpg")).unwrap();
    assert_eq!(&bytes[..2], &[0xFF, 0xD8], "JPEG magic");
    assert_eq!(image::load_from_memory(&bytes).unwrap().width(), 96);
}

#[test]
fn image_to_image_from_a_file() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.png");
    image::RgbImage::from_pixel(40, 30, image::Rgb([200, 10, 10]))
        .save(&input)
        .unwrap();
    seedbed()
        .current_dir(tmp.path())
        .args([
            "generate",
            "a barn",
            "--steps",
            "4",
            "--strength",
            "0.5",
            "--init-image",
        ])
        .arg(&input)
        .arg("--models-dir")
        .arg(fixtures().join("models"))
        .assert()
        .success()
        // What the engine does with a reference of another shape, said exactly.
        .stderr(predicate::str::contains(format!(
            "note: {} is 40x30; resized to 64x64 (stretched, not cropped)",
            input.display()
        )));
    // JPEG by default, as from a server.
    assert!(tmp.path().join("seedbed.jpeg").is_file());
}

#[test]
fn bad_input_exits_2_and_names_the_field() {
    let models = fixtures().join("models");
    seedbed()
        .args(["generate", "x", "--size", "16x16", "--models-dir"])
        .arg(&models)
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "size 16x16 is too small: tiny-sd takes 32x32 to 256x256",
        ))
        .stderr(predicate::str::contains("e.g. 64x64"));
    seedbed()
        .args(["generate", "x", "--size", "big", "--models-dir"])
        .arg(&models)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("WIDTHxHEIGHT"));
    seedbed()
        .args(["generate", "x", "--seed", "2147483648", "--models-dir"])
        .arg(&models)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("between 0 and 2147483647"));
    seedbed()
        .args(["generate", "x", "--model", "nope", "--models-dir"])
        .arg(&models)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("nope"));
    seedbed()
        .args(["generate", "x", "--scheduler", "plms", "--models-dir"])
        .arg(&models)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("dpmpp2m"));
}

#[test]
fn missing_models_dir_is_a_failure_with_a_hint() {
    let tmp = tempfile::tempdir().unwrap();
    seedbed()
        .current_dir(tmp.path())
        .args(["generate", "x"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("SEEDBED_MODELS_DIR"));
}

/// The tiny model at 1024x1024: attention over 16k latent tokens must not materialise the
/// full score matrix (2 heads x 16k x 16k f32 = 2 GiB) and the VAE decodes in tiles. Sizes
/// are bounded by the native size (4K = four times each side), so a `seedbed.json` declares
/// 256 for that size to be allowed.
#[test]
fn large_image_runs_in_bounded_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let overrides = r#"{"steps": 1, "guidance_scale": 0, "native_size": 256}"#;
    one_path::model_like_tiny_sd(tmp.path(), "tiny-256", Some(overrides));
    let assert = seedbed()
        .current_dir(tmp.path())
        .args(["generate", "x", "--size", "1024x1024", "--log", "info"])
        .arg("--models-dir")
        .arg(tmp.path())
        .assert()
        .success();
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr).to_string();
    let peak: u64 = stderr
        .split("peak_rss_bytes=")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no peak_rss_bytes in: {stderr}"));
    println!("peak RSS at 1024x1024: {} MiB", peak / (1024 * 1024));
    assert!(peak < 1536 * 1024 * 1024, "peak RSS {peak} bytes");
}

#[test]
fn bench_reports_stage_medians_as_json() {
    let assert = seedbed()
        .args(["bench", "--runs", "2", "--json"])
        .arg(fixtures().join("models/tiny-sd"))
        .assert()
        .success();
    let stdout = String::from_utf8_lossy(&assert.get_output().stdout).to_string();
    let last = stdout.lines().last().unwrap();
    let report: serde_json::Value = serde_json::from_str(last).unwrap();
    for key in ["text_encode_s", "denoise_s", "vae_decode_s", "total_s"] {
        let value = report[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} in {last}"));
        assert!(value > 0.0, "{key} = {value}");
    }
    assert!(report["total_s"].as_f64() >= report["denoise_s"].as_f64());
    assert!(report["peak_rss_bytes"].as_u64().unwrap() > 0);
    // Which machine and kernel paths the numbers come from, in the JSON and first on stderr.
    let kernels = report["cpu"]["kernels"].as_object().unwrap();
    assert!(kernels.contains_key("f32 matmul and convolution"), "{last}");
    assert!(kernels.contains_key("GGUF q8_0 and q4_K linears"), "{last}");
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr).to_string();
    assert!(stderr.starts_with("cpu: "), "{stderr}");
    assert!(
        stderr.contains("kernel: f32 matmul and convolution: "),
        "{stderr}"
    );
}
