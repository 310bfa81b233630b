//! What a user watching a generation sees on stderr, the same for a local run and a server's
//! job: a spinner while loading or queued, then one bar per image counted as "image i/n, step
//! s/S" (both 1-based), and notes printed above it. Bars only on a terminal; notes also when
//! stderr is a file or a pipe; with `--quiet` nothing at all, so only errors reach stderr.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use seedbed_types::JobEvent;

pub struct Progress {
    bar: ProgressBar,
    quiet: bool,
    /// Whether the bar is drawn, i.e. stderr is a terminal and not `--quiet`.
    drawn: bool,
}

impl Progress {
    pub fn new(quiet: bool) -> Self {
        let drawn = !quiet && std::io::stderr().is_terminal();
        let bar = if drawn {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(spinner_style());
            bar.set_message("starting");
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        } else {
            ProgressBar::hidden()
        };
        Self { bar, quiet, drawn }
    }

    /// What is happening before any step runs ("loading the model", "queued, 2 ahead").
    pub fn status(&self, message: impl Into<String>) {
        self.bar.set_message(message.into());
    }

    /// A line for the user (a seed, a warning), above the bar; nothing under `--quiet`.
    pub fn note(&self, line: impl AsRef<str>) {
        if !self.quiet {
            self.bar.suspend(|| eprintln!("{}", line.as_ref()));
        }
    }

    /// Run `f` (which prints) with the bar out of the way.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        self.bar.suspend(f)
    }

    /// `step` steps of `steps` done for image `image` (0-based, as engines count) of `images`.
    pub fn step(&self, image: u32, images: u32, step: u32, steps: u32) {
        // The message first, so a fresh bar never shows the spinner's or the last image's.
        self.bar
            .set_message(step_message(image, images, step, steps));
        if self.bar.length() != Some(u64::from(steps)) || u64::from(step) < self.bar.position() {
            // A new image (or the first): a fresh bar, its own elapsed time and estimate.
            self.bar.set_style(bar_style());
            self.bar.set_length(u64::from(steps));
            self.bar.reset();
        }
        self.bar.set_position(u64::from(step));
    }

    /// Wait `seconds` and say why, counting down on a terminal (one line otherwise).
    pub async fn countdown(&self, reason: &str, seconds: u64) {
        if self.drawn {
            let saved = self.bar.message();
            for left in (1..=seconds).rev() {
                self.bar
                    .set_message(format!("{reason}: retrying in {left} s"));
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            self.bar.set_message(saved);
        } else {
            self.note(format!("{reason}: retrying in {seconds} s"));
            tokio::time::sleep(Duration::from_secs(seconds)).await;
        }
    }

    /// A server job's event. Images and failures get a line on a terminal only (`jobs watch`);
    /// `generate` reports them itself and passes only the others.
    pub fn on_event(&self, event: &JobEvent) {
        match event {
            JobEvent::Queued { position } => self.status(match position {
                0 => "queued, next to run".to_string(),
                n => format!("queued, {n} ahead"),
            }),
            JobEvent::Started { attempt } => self.status(match attempt {
                1 => "running".to_string(),
                n => format!("running (attempt {n})"),
            }),
            JobEvent::Progress {
                image,
                images,
                step,
                steps,
                ..
            } => self.step(*image, *images, *step, *steps),
            JobEvent::Completed { .. } | JobEvent::Failed { .. } | JobEvent::Cancelled => {
                self.finish()
            }
            JobEvent::Image {
                index,
                width,
                height,
                ..
            } => self
                .bar
                .println(format!("image {} ready ({width}x{height})", index + 1)),
            JobEvent::ImageFailed {
                index,
                code,
                message,
                ..
            } => self
                .bar
                .println(format!("image {} failed: {code}: {message}", index + 1)),
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// "image 1/2, step 3/4": the one way both paths count.
pub fn step_message(image: u32, images: u32, step: u32, steps: u32) -> String {
    format!("image {}/{images}, step {step}/{steps}", image + 1)
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {msg} {elapsed}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template("{msg} [{bar:30}] {elapsed} (eta {eta})")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn images_and_steps_count_from_one() {
        assert_eq!(super::step_message(0, 2, 3, 4), "image 1/2, step 3/4");
        assert_eq!(super::step_message(1, 2, 4, 4), "image 2/2, step 4/4");
    }
}
