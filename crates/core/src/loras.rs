//! The LoRAs a server offers: the `*.safetensors` files directly inside `--loras-dir`, each
//! under its file name without the extension. A request names one; it never gives a path, so
//! a name is checked against a strict alphabet and then looked up among the folder's files,
//! and whatever is found must still lie inside the folder once links are followed.

use std::path::{Path, PathBuf};

use seedbed_types::{LoraUse, LoraView};

use crate::error::{CoreError, Result};

/// At most this many LoRAs per request: each adds a low-rank product to every layer it
/// touches, per step.
pub const MAX_LORAS: usize = 8;
/// The largest factor on a LoRA's change, either sign (negative scales undo a "slider" LoRA).
pub const MAX_LORA_SCALE: f64 = 4.0;
const EXTENSION: &str = "safetensors";

/// `--loras-dir`, checked to be a folder when the server starts.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraFolder {
    dir: PathBuf,
}

impl LoraFolder {
    pub fn open(dir: &Path) -> Result<Self> {
        let dir = dir
            .canonicalize()
            .map_err(|e| CoreError::Internal(format!("LoRA folder {}: {e}", dir.display())))?;
        if !dir.is_dir() {
            return Err(CoreError::Internal(format!(
                "LoRA folder {} is not a folder",
                dir.display()
            )));
        }
        Ok(Self { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every LoRA in the folder, sorted by name (read now: files may be added while serving).
    pub fn list(&self) -> Vec<LoraView> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut views: Vec<LoraView> = entries
            .flatten()
            .filter_map(|entry| {
                let path = entry.path();
                let name = lora_name(&path)?;
                let meta = std::fs::metadata(&path).ok().filter(|m| m.is_file())?;
                Some(LoraView {
                    name,
                    object: "lora".into(),
                    bytes: meta.len(),
                })
            })
            .collect();
        views.sort_by(|a, b| a.name.cmp(&b.name));
        views
    }

    /// The file of the LoRA called `name`; a 400 naming `loras` and the offered names otherwise.
    pub fn resolve(&self, name: &str) -> Result<PathBuf> {
        if !is_plain_name(name) {
            return Err(CoreError::invalid(
                "loras",
                format!(
                    "loras: `{}` is not a LoRA name; names are letters, digits, `.`, `_` and `-` \
                     (no paths), as GET /v1/loras lists them.",
                    name.escape_debug()
                ),
            ));
        }
        let path = self.dir.join(format!("{name}.{EXTENSION}"));
        // Followed links must still end inside the folder.
        match path.canonicalize() {
            Ok(real) if real.starts_with(&self.dir) && real.is_file() => Ok(path),
            _ => Err(CoreError::invalid(
                "loras",
                format!("loras: no LoRA named `{name}`; {}.", self.offered()),
            )),
        }
    }

    fn offered(&self) -> String {
        let names: Vec<String> = self
            .list()
            .into_iter()
            .map(|v| format!("`{}`", v.name))
            .collect();
        if names.is_empty() {
            "the LoRA folder is empty".into()
        } else {
            format!("available: {}", names.join(", "))
        }
    }
}

/// The name a file is offered under, if it is a LoRA file with a plain name.
fn lora_name(path: &Path) -> Option<String> {
    if path.extension()? != EXTENSION {
        return None;
    }
    let stem = path.file_stem()?.to_str()?;
    is_plain_name(stem).then(|| stem.to_string())
}

/// Letters, digits, `.`, `_`, `-`; not starting with `.`, no `..`, at most 128 characters.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && !name.contains("..")
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// The request's `loras`, checked for count, names, scales and repeats (not yet against the
/// model): each as the job records it.
pub fn parse_request(
    loras: &[seedbed_types::LoraRef],
    folder: Option<&LoraFolder>,
) -> Result<Vec<(LoraUse, PathBuf)>> {
    if loras.is_empty() {
        return Ok(Vec::new());
    }
    let folder = folder.ok_or_else(|| {
        CoreError::invalid(
            "loras",
            "loras: this server offers no LoRAs (it was started without --loras-dir).",
        )
    })?;
    if loras.len() > MAX_LORAS {
        return Err(CoreError::invalid(
            "loras",
            format!("loras: {} given; at most {MAX_LORAS}.", loras.len()),
        ));
    }
    let mut out: Vec<(LoraUse, PathBuf)> = Vec::with_capacity(loras.len());
    for lora in loras {
        let scale = lora.scale.unwrap_or(1.0);
        if !scale.is_finite() || scale.abs() > MAX_LORA_SCALE {
            return Err(CoreError::invalid(
                "loras",
                format!(
                    "loras: scale {scale} of `{}` must be between -{MAX_LORA_SCALE} and {MAX_LORA_SCALE}.",
                    lora.name
                ),
            ));
        }
        let path = folder.resolve(&lora.name)?;
        if out.iter().any(|(used, _)| used.name == lora.name) {
            return Err(CoreError::invalid(
                "loras",
                format!(
                    "loras: `{}` is named twice; give it once with the scale wanted.",
                    lora.name
                ),
            ));
        }
        out.push((
            LoraUse {
                name: lora.name.clone(),
                scale,
            },
            path,
        ));
    }
    Ok(out)
}

/// The files of a job's LoRAs in this node's folder (the job was checked where it was
/// admitted; the folder must hold the same files on every node).
pub fn choices(
    uses: &[LoraUse],
    folder: Option<&LoraFolder>,
) -> Result<Vec<seedbed_engine::lora::LoraChoice>> {
    uses.iter()
        .map(|lora| {
            let folder = folder.ok_or_else(|| {
                CoreError::invalid(
                    "loras",
                    "loras: this node has no LoRA folder (--loras-dir).",
                )
            })?;
            Ok(seedbed_engine::lora::LoraChoice {
                name: lora.name.clone(),
                path: folder.resolve(&lora.name)?,
                scale: lora.scale,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder() -> (tempfile::TempDir, LoraFolder) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("style-a.safetensors"), b"x").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"x").unwrap();
        let folder = LoraFolder::open(dir.path()).unwrap();
        (dir, folder)
    }

    fn message(error: CoreError) -> String {
        match error {
            CoreError::InvalidParameter { param, message } => {
                assert_eq!(param, "loras");
                message
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn lists_safetensors_files_by_name() {
        let (_dir, folder) = folder();
        let names: Vec<_> = folder.list().into_iter().map(|v| v.name).collect();
        assert_eq!(names, ["style-a"]);
        assert!(folder.resolve("style-a").is_ok());
    }

    #[test]
    fn paths_and_unknown_names_are_refused_naming_loras() {
        let (_dir, folder) = folder();
        for name in [
            "../style-a",
            "/etc/passwd",
            "a/b",
            "..",
            ".hidden",
            "style-a\\x",
            "",
        ] {
            let error = message(folder.resolve(name).unwrap_err());
            assert!(error.contains("is not a LoRA name"), "{name}: {error}");
        }
        let error = message(folder.resolve("style-b").unwrap_err());
        assert!(error.contains("available: `style-a`"), "{error}");
    }

    #[cfg(unix)]
    #[test]
    fn a_link_leading_out_of_the_folder_is_not_followed() {
        let (dir, folder) = folder();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret.safetensors"), b"x").unwrap();
        std::os::unix::fs::symlink(
            outside.path().join("secret.safetensors"),
            dir.path().join("escape.safetensors"),
        )
        .unwrap();
        let error = message(folder.resolve("escape").unwrap_err());
        assert!(error.contains("no LoRA named `escape`"), "{error}");
    }

    #[test]
    fn scales_counts_repeats_and_a_missing_folder_are_checked() {
        let (_dir, folder) = folder();
        let lora = |name: &str, scale: Option<f64>| seedbed_types::LoraRef {
            name: name.into(),
            scale,
        };
        let ok = parse_request(&[lora("style-a", None)], Some(&folder)).unwrap();
        assert_eq!(ok[0].0.scale, 1.0);
        let error =
            message(parse_request(&[lora("style-a", Some(9.0))], Some(&folder)).unwrap_err());
        assert!(error.contains("between -4 and 4"), "{error}");
        let error = message(
            parse_request(
                &[lora("style-a", None), lora("style-a", Some(0.5))],
                Some(&folder),
            )
            .unwrap_err(),
        );
        assert!(error.contains("named twice"), "{error}");
        let error = message(parse_request(&[lora("style-a", None)], None).unwrap_err());
        assert!(error.contains("--loras-dir"), "{error}");
    }
}
