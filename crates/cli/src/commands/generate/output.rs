//! Where generated images go, named the same way for a local run and a server's: by default
//! `seedbed.<ext>` in the current directory, or for a batch of n `seedbed-1.<ext>` ...
//! `seedbed-n.<ext>`; `-o DIR/` the same inside DIR; `-o out.png` exactly `out.png` (a batch
//! `out-1.png` ... `out-n.png`). No existing file is ever replaced unless `--force` says so:
//! default names skip to the next free number, a named file that exists is refused before
//! anything runs. Every file is written beside its target first, so none is ever half-written.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use seedbed_engine::EngineError;

/// The engine's one output format enum.
pub use seedbed_engine::output::OutputFormat as Format;

/// The stem of default names.
const DEFAULT_STEM: &str = "seedbed";
/// How far default names count before giving up (a directory full of `seedbed-N` files).
const MAX_NUMBER: usize = 100_000;

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
    /// `out.png`: used as is for one image, `out-<i>.png` (1-based) for several.
    File { path: PathBuf, format: Format },
    /// No `-o` (the current directory) or `dir/`: default names inside it.
    Dir(PathBuf),
}

impl Target {
    pub fn parse(output: Option<&Path>) -> Result<Self> {
        let Some(path) = output else {
            return Ok(Self::Dir(PathBuf::new()));
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

    /// The format a file target asks for; a directory takes the request's (JPEG by default).
    pub fn format(&self) -> Option<Format> {
        match self {
            Self::File { format, .. } => Some(*format),
            Self::Dir(_) => None,
        }
    }
}

/// Names and writes the images of one run, in the order they come.
#[derive(Debug)]
pub struct Files {
    target: Target,
    count: usize,
    force: bool,
    /// The number the next default name tries (0 stands for the unnumbered `seedbed.<ext>`).
    next: usize,
}

impl Files {
    pub fn new(target: Target, count: usize, force: bool) -> Self {
        let next = usize::from(count > 1);
        Self {
            target,
            count,
            force,
            next,
        }
    }

    /// Refuse, before anything runs, to replace a file `-o` names unless `--force`.
    pub fn check(&self) -> Result<()> {
        if self.force {
            return Ok(());
        }
        if let Target::File { path, .. } = &self.target {
            for index in 0..self.count {
                let path = self.file_path(path, index);
                if path.exists() {
                    bail!(EngineError::invalid(
                        "output",
                        format!("{} exists; pass --force to replace it", path.display())
                    ));
                }
            }
        }
        Ok(())
    }

    /// Write image `index` (0-based) and return its path.
    pub fn write(&mut self, index: usize, bytes: &[u8], format: Format) -> Result<PathBuf> {
        match &self.target {
            Target::File { path, .. } => {
                let path = self.file_path(path, index);
                if self.force {
                    write_atomically(&path, bytes)?;
                } else if !write_new(&path, bytes)? {
                    bail!("{} appeared meanwhile; not replaced", path.display());
                }
                Ok(path)
            }
            Target::Dir(dir) => {
                let dir = dir.clone();
                while self.next <= MAX_NUMBER {
                    let path = dir.join(default_name(self.next, format));
                    self.next += 1;
                    if self.force {
                        write_atomically(&path, bytes)?;
                        return Ok(path);
                    }
                    if write_new(&path, bytes)? {
                        return Ok(path);
                    }
                }
                bail!(
                    "no free name {DEFAULT_STEM}-N.{} left in {}",
                    format.extension(),
                    dir.display()
                )
            }
        }
    }

    fn file_path(&self, path: &Path, index: usize) -> PathBuf {
        if self.count == 1 {
            return path.to_path_buf();
        }
        let stem = path.file_stem().unwrap_or_default().to_string_lossy();
        let ext = path.extension().unwrap_or_default().to_string_lossy();
        path.with_file_name(format!("{stem}-{}.{ext}", index + 1))
    }
}

fn default_name(number: usize, format: Format) -> String {
    match number {
        0 => format!("{DEFAULT_STEM}.{}", format.extension()),
        n => format!("{DEFAULT_STEM}-{n}.{}", format.extension()),
    }
}

/// Write `bytes` to `path` via a temporary sibling and a rename, replacing what is there.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = write_partial(path, bytes)?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// Write `bytes` to `path` unless something is there already (then `false`). A hard link
/// fails on an existing name, so no other writer can slip in between the check and the write.
pub fn write_new(path: &Path, bytes: &[u8]) -> Result<bool> {
    if path.exists() {
        return Ok(false);
    }
    let tmp = write_partial(path, bytes)?;
    let linked = std::fs::hard_link(&tmp, path);
    let outcome = match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
        // A file system without hard links: the check above has to do.
        Err(_) => std::fs::rename(&tmp, path)
            .map(|()| true)
            .with_context(|| format!("writing {}", path.display())),
    };
    let _ = std::fs::remove_file(&tmp);
    outcome
}

fn write_partial(path: &Path, bytes: &[u8]) -> Result<PathBuf> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let tmp = partial_path(path);
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    Ok(tmp)
}

/// `seedbed.jpeg.<pid>.partial`: the process id keeps two runs in one directory (a script
/// starting several) from writing into each other's temporary file.
fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.partial", std::process::id()));
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(files: &mut Files, index: usize, format: Format) -> PathBuf {
        files.write(index, b"x", format).unwrap()
    }

    #[test]
    fn named_files_are_numbered_from_one_in_a_batch() {
        let dir = tempfile::tempdir().unwrap();
        let one = dir.path().join("fox.png");
        let target = Target::parse(Some(&one)).unwrap();
        let mut files = Files::new(target.clone(), 1, false);
        files.check().unwrap();
        assert_eq!(write(&mut files, 0, Format::Png), one);
        assert!(Files::new(target.clone(), 1, false).check().is_err());
        Files::new(target.clone(), 1, true).check().unwrap();
        let mut batch = Files::new(target, 2, false);
        batch.check().unwrap();
        assert_eq!(
            write(&mut batch, 1, Format::Png),
            dir.path().join("fox-2.png")
        );
        assert!(Target::parse(Some(Path::new("fox.gif"))).is_err());
        assert!(Target::parse(Some(Path::new("fox"))).is_err());
    }

    #[test]
    fn default_names_never_replace_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = Target::parse(Some(&dir.path().join("out/"))).unwrap();
        let out = dir.path().join("out");
        let mut one = Files::new(target.clone(), 1, false);
        assert_eq!(write(&mut one, 0, Format::Jpeg), out.join("seedbed.jpeg"));
        let mut again = Files::new(target.clone(), 1, false);
        assert_eq!(
            write(&mut again, 0, Format::Jpeg),
            out.join("seedbed-1.jpeg")
        );
        let mut batch = Files::new(target.clone(), 2, false);
        assert_eq!(
            write(&mut batch, 0, Format::Jpeg),
            out.join("seedbed-2.jpeg")
        );
        assert_eq!(
            write(&mut batch, 1, Format::Jpeg),
            out.join("seedbed-3.jpeg")
        );
        // Another format is another name.
        let mut png = Files::new(target.clone(), 1, false);
        assert_eq!(write(&mut png, 0, Format::Png), out.join("seedbed.png"));
        // --force: the plain names, replaced.
        let mut forced = Files::new(target, 2, true);
        assert_eq!(
            write(&mut forced, 0, Format::Jpeg),
            out.join("seedbed-1.jpeg")
        );
        let left: Vec<_> = std::fs::read_dir(&out).unwrap().flatten().collect();
        assert_eq!(left.len(), 5, "no temporary file left: {left:?}");
    }
}
