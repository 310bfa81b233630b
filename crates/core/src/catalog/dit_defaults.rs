//! Z-Image's and SD3.5's catalog entries: 1K, the latent factor and the defaults come from the
//! family's reading of the configs (the engine's `shape()`), the Turbo variants are told apart
//! by "turbo" in the folder name (their configs are the base models'), and a `seedbed.json`
//! beside the configs wins over both. Checked here because a wrong default silently makes every
//! request that leaves `steps` out slow (50 steps for a 9-step Turbo) or ignores guidance.

use std::path::{Path, PathBuf};

use seedbed_engine::model::Family;

use super::Catalog;

fn dit_fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models-dit")
}

/// `dir/name`: a folder whose entries link to `fixture`'s, so files may be added beside them
/// without touching the fixture.
fn linked_folder(dir: &Path, name: &str, fixture: &str) -> PathBuf {
    let folder = dir.join(name);
    std::fs::create_dir(&folder).unwrap();
    for entry in std::fs::read_dir(dit_fixtures().join(fixture)).unwrap() {
        let entry = entry.unwrap();
        std::os::unix::fs::symlink(entry.path(), folder.join(entry.file_name())).unwrap();
    }
    folder
}

/// `(steps, guidance_scale)` of the model `name` in `catalog`.
fn defaults(catalog: &Catalog, name: &str) -> (u32, f64) {
    let entry = catalog.resolve(name).unwrap();
    (entry.defaults.steps, entry.defaults.guidance_scale)
}

/// The tiny fixtures under their own names: the base models' defaults. Z-Image's 1K is 128
/// latents x the VAE's 8 whatever the checkpoint; SD3's is the transformer's `sample_size`
/// (32 in the tiny model, 128 in the real ones) x 8. Both patch 2x2 latents of a /8 VAE: 16.
#[test]
fn zimage_and_sd3_read_family_size_and_defaults_from_their_configs() {
    let catalog = Catalog::scan(&dit_fixtures(), &[]).unwrap();
    let broken: Vec<_> = catalog.broken().collect();
    assert!(broken.is_empty(), "{broken:?}");

    let zimage = catalog.resolve("tiny-zimage").unwrap();
    assert_eq!(zimage.family, Family::ZImage);
    assert_eq!((zimage.native_size, zimage.latent_factor), (1024, 16));
    // Its RoPE rows and columns reach 512 patches (8192 px): the engine's own limit holds.
    assert_eq!(zimage.max_side, seedbed_engine::pipeline::MAX_SIDE);
    assert_eq!(defaults(&catalog, "tiny-zimage"), (50, 4.0));

    let sd3 = catalog.resolve("tiny-sd3").unwrap();
    assert_eq!(sd3.family, Family::StableDiffusion3);
    assert_eq!((sd3.native_size, sd3.latent_factor), (256, 16));
    // 16 stored positions a side x patch 2 x the VAE's 8.
    assert_eq!(sd3.max_side, 256);
    // The tiny transformer has dual-attention layers: it is shaped like SD3.5 Medium.
    assert_eq!(defaults(&catalog, "tiny-sd3"), (40, 4.5));
}

/// SD3.5 Large (no dual-attention layers) runs the card's 28 steps at 3.5; "turbo" in a name
/// makes Z-Image 9 steps and SD3.5 4 steps, both without guidance, whatever the transformer.
#[test]
fn turbo_by_name_and_sd3_large_by_its_transformer() {
    let dir = tempfile::tempdir().unwrap();
    linked_folder(dir.path(), "Z-Image-Turbo", "tiny-zimage");
    linked_folder(dir.path(), "sd3.5-large-turbo", "tiny-sd3");
    let large = linked_folder(dir.path(), "sd3.5-large", "tiny-sd3");
    std::fs::remove_file(large.join("transformer")).unwrap();
    std::fs::create_dir(large.join("transformer")).unwrap();
    let config = dit_fixtures().join("tiny-sd3/transformer/config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(config).unwrap()).unwrap();
    config["dual_attention_layers"] = serde_json::json!([]);
    std::fs::write(
        large.join("transformer/config.json"),
        config.to_string().as_bytes(),
    )
    .unwrap();

    let catalog = Catalog::scan(dir.path(), &[]).unwrap();
    assert_eq!(defaults(&catalog, "Z-Image-Turbo"), (9, 0.0));
    assert_eq!(defaults(&catalog, "sd3.5-large-turbo"), (4, 0.0));
    assert_eq!(defaults(&catalog, "sd3.5-large"), (28, 3.5));
}

/// A `seedbed.json` overrides the name's Turbo defaults and the native size.
#[test]
fn seedbed_json_overrides_the_turbo_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let overrides = r#"{"steps": 6, "guidance_scale": 1.5, "native_size": 512}"#;
    for (name, fixture) in [
        ("z-image-turbo", "tiny-zimage"),
        ("sd3.5-large-turbo", "tiny-sd3"),
    ] {
        let folder = linked_folder(dir.path(), name, fixture);
        std::fs::write(folder.join("seedbed.json"), overrides).unwrap();
    }
    let catalog = Catalog::scan(dir.path(), &[]).unwrap();
    for name in ["z-image-turbo", "sd3.5-large-turbo"] {
        assert_eq!(defaults(&catalog, name), (6, 1.5), "{name}");
        assert_eq!(catalog.resolve(name).unwrap().native_size, 512, "{name}");
    }
}
