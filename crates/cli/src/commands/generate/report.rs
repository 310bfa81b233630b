//! What a finished run tells its caller, the same for a local run and a server's: each path on
//! stdout as it is written (a script reads nothing else there), its seed and size on stderr,
//! or with `--json` one object at the end:
//! `{"model": ..., "data": [{"path": ..., "seed": ..., "size": "WxH"}]}`.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Result, anyhow};
use serde::Serialize;

use crate::progress::Progress;

/// The program that opens files when `--open` is given and `SEEDBED_OPEN` is not set.
const OPENER: &str = if cfg!(target_os = "macos") {
    "open"
} else {
    "xdg-open"
};

/// `--json`'s one shape.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The model as the server or the catalog named it.
    pub model: String,
    pub data: Vec<Written>,
    /// Images that failed (their messages went to stderr); not part of the JSON.
    #[serde(skip)]
    pub failed: usize,
}

#[derive(Debug, Serialize)]
pub struct Written {
    pub path: PathBuf,
    /// `null` when a server does not say (an upstream provider's image).
    pub seed: Option<u64>,
    /// `"WxH"`; `null` when a server does not say.
    pub size: Option<String>,
}

impl Report {
    pub fn new(model: impl Into<String>) -> Self {
        Self {
            model: model.into(),
            data: Vec::new(),
            failed: 0,
        }
    }

    /// One file written: its path on stdout now (unless `--json`), its seed on stderr.
    pub fn wrote(&mut self, written: Written, json: bool, progress: &Progress) {
        if !json {
            progress.suspend(|| println!("{}", written.path.display()));
        }
        let mut about = Vec::new();
        if let Some(seed) = written.seed {
            about.push(format!("seed {seed}"));
        }
        if let Some(size) = &written.size {
            about.push(size.clone());
        }
        if !about.is_empty() {
            progress.note(format!("{}: {}", written.path.display(), about.join(", ")));
        }
        self.data.push(written);
    }

    pub fn image_failed(&mut self, index: usize, message: &str, progress: &Progress) {
        self.failed += 1;
        // Not a note: a failure is an error, shown under --quiet too.
        progress.suspend(|| eprintln!("error: image {} failed: {message}", index + 1));
    }

    /// Print `--json`, open the files for `--open`, and choose the exit code: 0 when every
    /// image was written, 1 when some failed; an error when none was.
    pub fn finish(self, json: bool, open: bool, progress: &Progress) -> Result<ExitCode> {
        progress.finish();
        if self.data.is_empty() {
            return Err(anyhow!(match self.failed {
                0 => "no image was produced".to_string(),
                n => format!("every image failed ({n})"),
            }));
        }
        if json {
            println!("{}", serde_json::to_string(&self)?);
        }
        if open {
            let paths: Vec<&Path> = self.data.iter().map(|w| w.path.as_path()).collect();
            open_files(&paths, progress);
        }
        Ok(if self.failed > 0 {
            ExitCode::from(crate::EXIT_FAILURE)
        } else {
            ExitCode::SUCCESS
        })
    }
}

/// Hand the files to the desktop's opener (or `SEEDBED_OPEN`). The images are written
/// whatever happens here, so a missing opener is a note, not a failure.
fn open_files(paths: &[&Path], progress: &Progress) {
    let program = std::env::var("SEEDBED_OPEN")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| OPENER.to_string());
    // xdg-open takes one file at a time; `open` and most scripts take several, but one each
    // works for all of them.
    for path in paths {
        match Command::new(&program).arg(path).status() {
            Ok(status) if status.success() => {}
            Ok(status) => progress.note(format!(
                "warning: {program} {} exited with {status}",
                path.display()
            )),
            Err(error) => progress.note(format!(
                "warning: could not run {program} to open {}: {error} (set SEEDBED_OPEN)",
                path.display()
            )),
        }
    }
}
