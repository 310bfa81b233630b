//! Z-Image and SD3.5 locally, as FLUX: `models list` shows each with its family, 1K and
//! defaults (and no fixture folder is left unservable), and `generate` writes a PNG of the asked
//! size with each tiny model, guidance and a negative prompt included.

use predicates::prelude::*;

use crate::{fixtures, seedbed};

#[test]
fn zimage_and_sd3_models_list_and_generate_locally() {
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
        row("tiny-zimage "),
        "- ZImage diffusers folder 1024x1024 50 4",
        "{table}"
    );
    assert_eq!(
        row("tiny-sd3 "),
        "- StableDiffusion3 diffusers folder 256x256 40 4.5",
        "{table}"
    );
    let warnings = String::from_utf8_lossy(&output.stderr);
    assert!(!warnings.contains("cannot be served"), "{warnings}");

    let dir = tempfile::tempdir().unwrap();
    for (model, size) in [("tiny-zimage", "512x512"), ("tiny-sd3", "256x256")] {
        let file = format!("{model}.png");
        seedbed()
            .current_dir(dir.path())
            .args(["generate", "a red fox", "-m", model, "--size", size])
            .args(["--seed", "1", "--steps", "2", "--guidance", "2"])
            .args(["--negative-prompt", "fog", "-o", &file, "--models-dir"])
            .arg(&models)
            .assert()
            .success()
            .stderr(predicate::str::contains(format!("seed 1, {size}")));
        let picture = image::open(dir.path().join(&file)).unwrap();
        assert_eq!(
            format!("{}x{}", picture.width(), picture.height()),
            size,
            "{model}"
        );
    }
}
