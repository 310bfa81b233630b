//! The files people download, as the CLI meets them: `models list` names each model's format,
//! and `generate` runs a checkpoint by its name.

use predicates::prelude::*;

use crate::{fixtures, seedbed};

#[test]
fn checkpoint_files_are_listed_and_generate() {
    let models = tempfile::tempdir().unwrap();
    let single = fixtures().join("single-file");
    std::os::unix::fs::symlink(
        fixtures().join("models/tiny-sd"),
        models.path().join("tiny-sd"),
    )
    .unwrap();
    std::fs::copy(
        single.join("tiny-sdxl.safetensors"),
        models.path().join("xl.safetensors"),
    )
    .unwrap();
    let base = serde_json::json!({"base": fixtures().join("models/tiny-sdxl")});
    std::fs::write(models.path().join("xl.json"), base.to_string()).unwrap();
    // A FLUX transformer as q8_0 GGUF, with the rest of its pipeline from its folder.
    std::fs::copy(
        single.join("tiny-flux-dev-q8_0.gguf"),
        models.path().join("flux-q8.gguf"),
    )
    .unwrap();
    let flux = serde_json::json!({"base": fixtures().join("models-dit/tiny-flux-dev")});
    std::fs::write(models.path().join("flux-q8.json"), flux.to_string()).unwrap();
    std::fs::write(models.path().join("broken.safetensors"), b"not weights").unwrap();

    let listed = seedbed()
        .args(["models", "list", "--models-dir"])
        .arg(models.path())
        .assert()
        .success()
        .stderr(predicate::str::contains("broken cannot be served"));
    let table = String::from_utf8_lossy(&listed.get_output().stdout).to_string();
    let row = |name: &str| crate::table_row(&table, name);
    assert_eq!(
        row("tiny-sd "),
        "- StableDiffusion diffusers folder 64x64 30 7.5",
        "{table}"
    );
    assert_eq!(
        row("xl "),
        "- StableDiffusionXl single file 64x64 30 5",
        "{table}"
    );
    assert_eq!(
        row("flux-q8 "),
        "- Flux gguf q8_0 1024x1024 28 3.5",
        "{table}"
    );

    let out = tempfile::tempdir().unwrap();
    for (model, side) in [("xl", 64), ("flux-q8", 512)] {
        let size = format!("{side}x{side}");
        seedbed()
            .current_dir(out.path())
            .args([
                "generate",
                "a red fox",
                "-m",
                model,
                "--size",
                &size,
                "--steps",
                "2",
            ])
            .args(["-o", &format!("{model}.png"), "--models-dir"])
            .arg(models.path())
            .assert()
            .success();
        let picture = image::open(out.path().join(format!("{model}.png"))).unwrap();
        assert_eq!((picture.width(), picture.height()), (side, side), "{model}");
    }
}
