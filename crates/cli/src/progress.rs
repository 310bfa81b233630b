//! What a user watching a job sees on stderr: a spinner while queued, then a bar per image.
//! Nothing at all when stderr is not a terminal or with `--quiet`, so pipes stay clean.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use seedbed_types::JobEvent;

pub struct JobProgress {
    bar: ProgressBar,
}

impl JobProgress {
    pub fn new(quiet: bool) -> Self {
        let bar = if quiet || !std::io::stderr().is_terminal() {
            ProgressBar::hidden()
        } else {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(spinner_style());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        };
        Self { bar }
    }

    pub fn note_waiting(&self) {
        self.bar.set_message("waiting for the server");
    }

    pub fn note_job(&self, id: &str) {
        self.bar.set_message(format!("job {id} submitted"));
    }

    pub fn on_event(&self, event: &JobEvent) {
        match event {
            JobEvent::Queued { position } => self.bar.set_message(match position {
                0 => "queued, next to run".to_string(),
                n => format!("queued, {n} ahead"),
            }),
            JobEvent::Started { attempt } => self.bar.set_message(match attempt {
                1 => "running".to_string(),
                n => format!("running (attempt {n})"),
            }),
            JobEvent::Progress {
                image,
                images,
                step,
                steps,
            } => {
                if self.bar.length() != Some(u64::from(*steps)) {
                    self.bar.set_style(bar_style());
                    self.bar.set_length(u64::from(*steps));
                    self.bar.reset_elapsed();
                }
                self.bar.set_position(u64::from(*step));
                self.bar
                    .set_message(format!("image {}/{images}", image + 1));
            }
            JobEvent::Image {
                index,
                width,
                height,
                ..
            } => self
                .bar
                .println(format!("image {index} ready ({width}x{height})")),
            JobEvent::ImageFailed {
                index,
                code,
                message,
                ..
            } => self
                .bar
                .println(format!("image {index} failed: {code}: {message}")),
            JobEvent::Completed { .. } | JobEvent::Failed { .. } | JobEvent::Cancelled => {
                self.bar.finish_and_clear()
            }
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {msg} {elapsed}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template("{msg} [{bar:30}] step {pos}/{len} {elapsed} (eta {eta})")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}
