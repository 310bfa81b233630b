//! Where generated images go: one file, numbered files, or a directory with predictable names.
//! Every file is written beside its target and renamed, so none is ever half-written.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use seedbed_engine::EngineError;

/// The engine's one output format enum.
pub use seedbed_engine::output::OutputFormat as Format;

/// The format a file name's extension asks for; `None` for a name without one.
pub fn format_of_path(path: &Path) -> Result<Option<Format>> {
    let Some(ext) = path.extension() else {
        return Ok(None);
    };
    match ext.to_string_lossy().to_lowercase().as_str() {
        "png" => Ok(Some(Format::Png)),
        "jpg" | "jpeg" => Ok(Some(Format::Jpeg)),
        _ => bail!(EngineError::invalid(
            "output",
            format!("{} must end in .png, .jpg or .jpeg", path.display())
        )),
    }
}

/// The format of a picture from its first bytes (what a server sent).
pub fn sniff_format(bytes: &[u8]) -> Format {
    if bytes.starts_with(b"\x89PNG") {
        Format::Png
    } else {
        Format::Jpeg
    }
}

/// The user's `-o`, understood once.
#[derive(Debug, Clone)]
pub enum Target {
    /// `out.png`: used as is for one image, `out-<i>.png` for several.
    File { path: PathBuf, format: Format },
    /// `dir/`: `<stem>.<ext>` per image, the stem chosen by the caller.
    Dir(PathBuf),
}

impl Target {
    /// `None` means the default: `seedbed.<default format>` in the current directory.
    pub fn parse(output: Option<&Path>, default: Format) -> Result<Self> {
        let Some(path) = output else {
            return Ok(Self::File {
                path: PathBuf::from(format!("seedbed.{}", default.extension())),
                format: default,
            });
        };
        let text = path.to_string_lossy();
        if path.is_dir() || text.ends_with('/') || text.ends_with(std::path::MAIN_SEPARATOR) {
            return Ok(Self::Dir(path.to_path_buf()));
        }
        match format_of_path(path)? {
            Some(format) => Ok(Self::File {
                path: path.to_path_buf(),
                format,
            }),
            None => bail!(EngineError::invalid(
                "output",
                format!(
                    "{} has no .png/.jpg extension and is not a directory (end it with / to create one)",
                    path.display()
                )
            )),
        }
    }

    /// The format a file target asks for; a directory takes whatever comes.
    pub fn format(&self) -> Option<Format> {
        match self {
            Self::File { format, .. } => Some(*format),
            Self::Dir(_) => None,
        }
    }

    /// The path of image `index` of `count`; `stem` names it inside a directory.
    pub fn path(&self, index: usize, count: usize, stem: &str, format: Format) -> PathBuf {
        match self {
            Self::File { path, .. } if count == 1 => path.clone(),
            Self::File { path, .. } => {
                let name = path
                    .file_stem()
                    .map(|s| s.to_string_lossy().to_string())
                    .unwrap_or_default();
                let ext = path
                    .extension()
                    .map(|s| s.to_string_lossy().to_string())
                    .unwrap_or_default();
                path.with_file_name(format!("{name}-{index}.{ext}"))
            }
            Self::Dir(dir) => dir.join(format!("{stem}.{}", format.extension())),
        }
    }
}

/// Write `bytes` to `path` via a temporary sibling and a rename.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let tmp = partial_path(path);
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

pub fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_name_images_predictably() {
        let one = Target::parse(Some(Path::new("fox.png")), Format::Jpeg).unwrap();
        assert_eq!(one.path(0, 1, "x", Format::Png), Path::new("fox.png"));
        assert_eq!(one.path(1, 2, "x", Format::Png), Path::new("fox-1.png"));
        let dir = Target::parse(Some(Path::new("out/")), Format::Jpeg).unwrap();
        assert_eq!(
            dir.path(0, 2, "job-0", Format::Jpeg),
            Path::new("out/job-0.jpeg")
        );
        let default = Target::parse(None, Format::Jpeg).unwrap();
        assert_eq!(
            default.path(0, 1, "x", Format::Jpeg),
            Path::new("seedbed.jpeg")
        );
        assert!(Target::parse(Some(Path::new("fox.gif")), Format::Png).is_err());
        assert!(Target::parse(Some(Path::new("fox")), Format::Png).is_err());
    }
}
