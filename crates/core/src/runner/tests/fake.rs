//! A scripted backend: each run plays the next script, step by step. A `Hold` step tells the
//! test it got there and waits for the test to release it, or for the runner's stop.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use seedbed_types::Usage;
use seedbed_types::job_event::UpstreamStatus;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::backend::{Backend, Done, Failure, NewImage, Work, WorkEvent};

pub enum Step {
    Emit(WorkEvent),
    Hold,
}

pub struct Script {
    steps: Vec<Step>,
    /// Stopped at a hold: go on to the end (the device finishing its last image) instead of
    /// ending with `Done::Cancelled` (an upstream relay).
    finish_when_stopped: bool,
}

impl Script {
    pub fn new(steps: impl IntoIterator<Item = Step>) -> Self {
        Self {
            steps: steps.into_iter().collect(),
            finish_when_stopped: false,
        }
    }

    pub fn finishing(mut self) -> Self {
        self.finish_when_stopped = true;
        self
    }
}

#[derive(Debug, PartialEq)]
pub enum Report {
    Held(String),
    Stopped(String),
}

pub struct Fake {
    scripts: Mutex<VecDeque<Script>>,
    reports: mpsc::UnboundedSender<Report>,
    release: Arc<Semaphore>,
    runs: AtomicUsize,
}

impl Fake {
    pub fn new(scripts: impl IntoIterator<Item = Script>) -> (Arc<Self>, Reports) {
        let (reports, receiver) = mpsc::unbounded_channel();
        let fake = Self {
            scripts: Mutex::new(scripts.into_iter().collect()),
            reports,
            release: Arc::new(Semaphore::new(0)),
            runs: AtomicUsize::new(0),
        };
        (Arc::new(fake), Reports(receiver))
    }

    /// Let one held run go on.
    pub fn release(&self) {
        self.release.add_permits(1);
    }

    pub fn runs(&self) -> usize {
        self.runs.load(Ordering::SeqCst)
    }
}

impl Backend for Fake {
    fn run(&self, work: Work, stop: CancellationToken) -> BoxStream<'static, WorkEvent> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        let script = self.scripts.lock().unwrap().pop_front();
        let script = script.expect("a script for every run");
        let (out, events) = futures::channel::mpsc::unbounded();
        let reports = self.reports.clone();
        let release = self.release.clone();
        tokio::spawn(async move {
            for step in script.steps {
                let event = match step {
                    Step::Emit(event) => event,
                    Step::Hold => {
                        let _ = reports.send(Report::Held(work.id.clone()));
                        tokio::select! {
                            permit = release.acquire() => {
                                permit.unwrap().forget();
                                continue;
                            }
                            _ = stop.cancelled() => {
                                let _ = reports.send(Report::Stopped(work.id.clone()));
                                if script.finish_when_stopped {
                                    continue;
                                }
                                WorkEvent::Done(Done::Cancelled)
                            }
                        }
                    }
                };
                let last = matches!(event, WorkEvent::Done(_));
                let _ = out.unbounded_send(event);
                if last {
                    return;
                }
            }
        });
        events.boxed()
    }
}

/// What the fake tells the test.
pub struct Reports(mpsc::UnboundedReceiver<Report>);

impl Reports {
    pub async fn next(&mut self) -> Report {
        tokio::time::timeout(Duration::from_secs(10), self.0.recv())
            .await
            .expect("the fake reported nothing for 10 s")
            .expect("the fake is gone")
    }

    /// The job that reached a hold.
    pub async fn held(&mut self) -> String {
        match self.next().await {
            Report::Held(id) => id,
            other => panic!("expected a hold, got {other:?}"),
        }
    }

    /// The job the runner stopped at its hold.
    pub async fn stopped(&mut self) -> String {
        match self.next().await {
            Report::Stopped(id) => id,
            other => panic!("expected a stop, got {other:?}"),
        }
    }

    /// Nothing reported within `wait`.
    pub async fn quiet(&mut self, wait: Duration) {
        if let Ok(report) = tokio::time::timeout(wait, self.0.recv()).await {
            panic!("expected nothing, got {report:?}");
        }
    }
}

pub fn progress(step: u32) -> Step {
    Step::Emit(WorkEvent::Progress {
        image: 0,
        images: 1,
        step,
        steps: 4,
        preview: None,
    })
}

/// A 64x64 PNG-named image whose bytes are `image <index>`.
pub fn image(index: u32) -> Step {
    Step::Emit(WorkEvent::Image(NewImage {
        index,
        bytes: Some(Bytes::from(format!("image {index}"))),
        url: None,
        width: 64,
        height: 64,
        format: "png".into(),
        seed: Some(u64::from(index)),
        extra: Default::default(),
    }))
}

pub fn image_failed(index: u32) -> Step {
    Step::Emit(WorkEvent::ImageFailed {
        index,
        code: "OutputImageSensitiveContentDetected".into(),
        message: "blocked".into(),
    })
}

pub fn ok() -> Step {
    ok_with(None, Default::default())
}

pub fn ok_with(usage: Option<Usage>, extra: serde_json::Map<String, serde_json::Value>) -> Step {
    Step::Emit(WorkEvent::Done(Done::Ok { usage, extra }))
}

/// An upstream's failure: `status` with a `Retry-After` of 7 s.
pub fn failed(code: &str, status: u16) -> Step {
    Step::Emit(WorkEvent::Done(Done::Failed(Failure {
        code: code.into(),
        message: format!("{code} happened"),
        status: Some(UpstreamStatus {
            status,
            retry_after_s: Some(7),
        }),
        param: None,
    })))
}
