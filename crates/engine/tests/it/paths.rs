//! Where the tests' models are, and copies of them to break; shared by the `it` and
//! `candle_ops` binaries.

use std::path::{Path, PathBuf};

pub fn fixtures() -> PathBuf {
    super::before_any_model();
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

pub fn models() -> PathBuf {
    fixtures().join("models")
}

/// The tiny FLUX, Z-Image and SD3 pipelines.
pub fn dit_models() -> PathBuf {
    fixtures().join("models-dit")
}

/// Copy a model folder into `dest` so a test can break it.
pub fn copy_model(name: &str, dest: &Path) -> PathBuf {
    let target = dest.join(name);
    copy_dir(&models().join(name), &target);
    target
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        let target = to.join(entry.file_name());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
            // Fixtures are read-only; the copies must be writable to be broken.
            let mut perms = std::fs::metadata(&target).unwrap().permissions();
            #[allow(clippy::permissions_set_readonly_false)]
            perms.set_readonly(false);
            std::fs::set_permissions(&target, perms).unwrap();
        }
    }
}
