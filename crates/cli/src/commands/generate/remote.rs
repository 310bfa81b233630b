//! `seedbed generate --server URL`: the request goes to a server. On a seedbed it runs as a job
//! so the queue position and per-step progress can be shown, Ctrl-C can cancel it and
//! `--detach` can leave it; on any other Seedream-compatible API it is one plain request.

use std::collections::HashMap;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use futures::StreamExt;
use seedbed_client::Client;
use seedbed_types::{GenerationRequest, ImagesResponse, JobEvent, JobState, ResponseFormat};

use super::output::{Files, Target, sniff_format};
use super::report::{Report, Written};
use super::{EXIT_INTERRUPTED, GenerateArgs, request};
use crate::progress::Progress;
use crate::remote::{connect, connect_once, retrying};

pub fn run(args: GenerateArgs) -> Result<ExitCode> {
    let server = args.server.clone().unwrap_or_default();
    let target = Target::parse(args.output.as_deref())?;
    let mut request = GenerationRequest {
        stream: Some(false),
        response_format: Some(ResponseFormat::Url),
        ..request::build(&args, target.format())?
    };
    let mut files = Files::new(target, args.count as usize, args.force);
    if !args.detach {
        files.check()?;
    }
    crate::block_on(async move {
        let progress = Progress::new(args.quiet);
        // Retries are ours, so a wait is shown (and silenced by -q) rather than logged; only
        // the event stream keeps the client's own reconnecting (it has no wait to show).
        let client = connect_once(&server, args.api_key.as_deref())?;
        let watcher = connect(&server, args.api_key.as_deref())?;
        progress.status("waiting for the server");
        let is_seedbed = match retrying(&progress, || client.info()).await {
            Ok(info) => info.name == "seedbed",
            // It answered, just not as a seedbed does.
            Err(error) if error.status().is_some() => false,
            Err(error) => return Err(error.into()),
        };
        if args.detach && !is_seedbed {
            bail!("--detach needs a seedbed server: {server} does not run requests as jobs");
        }
        if request.model.is_none() && is_seedbed {
            // Like local generation: the first model the server offers.
            let models = retrying(&progress, || client.models()).await?;
            let first = models.data.into_iter().next();
            let model = first.context("the server offers no model")?.id;
            progress.note(format!("using model {model}"));
            request.model = Some(model);
        }
        if args.detach {
            let job = retrying(&progress, || client.create_job(&request)).await?;
            progress.finish();
            if args.json {
                println!("{}", serde_json::json!({"id": job.id}));
            } else {
                println!("{}", job.id);
            }
            return Ok(ExitCode::SUCCESS);
        }
        let report = if !is_seedbed {
            let generated = retrying(&progress, || client.generate(&request)).await?;
            let seeds = Seeds::default();
            save(
                &client,
                &generated.response,
                &seeds,
                &mut files,
                &args,
                &progress,
            )
            .await?
        } else {
            let job = retrying(&progress, || client.create_job(&request)).await?;
            progress.status(format!("job {} submitted", job.id));
            // Ctrl-C is ours from here on: the job must not be left running without a word.
            let finished = run_job(&client, &watcher, &job.id, &mut files, &args, &progress);
            tokio::select! {
                report = finished => report?,
                _ = tokio::signal::ctrl_c() => return interrupted(&client, &job.id, &progress).await,
            }
        };
        report.finish(args.json, args.open, &progress)
    })
}

/// The first Ctrl-C cancels the job; a second one while that is under way leaves it running.
/// Said even under `--quiet`: what became of the job is the command's outcome.
async fn interrupted(client: &Client, id: &str, progress: &Progress) -> Result<ExitCode> {
    progress.finish();
    eprintln!("interrupted: cancelling job {id} (Ctrl-C again to leave it running)");
    tokio::select! {
        cancelled = client.cancel_job(id) => match cancelled {
            // A running job stops at its next step, so it may still say running here.
            Ok(job) if !job.status.is_final() || job.status == JobState::Cancelled => {
                eprintln!("job {id} cancelled")
            }
            Ok(job) => eprintln!("job {id} had already {}", job.status.as_str()),
            Err(error) => eprintln!(
                "error: job {id} could not be cancelled ({error}); `seedbed jobs cancel {id}` stops it"
            ),
        },
        _ = tokio::signal::ctrl_c() => {
            eprintln!("job {id} left running; `seedbed jobs cancel {id}` stops it");
        }
    }
    Ok(ExitCode::from(EXIT_INTERRUPTED))
}

/// What the job's events said about each image (the result body does not carry seeds).
#[derive(Default)]
struct Seeds(HashMap<usize, u64>);

/// Follow the job's events (through `watcher`) with progress, then write what it made.
async fn run_job(
    client: &Client,
    watcher: &Client,
    id: &str,
    files: &mut Files,
    args: &GenerateArgs,
    progress: &Progress,
) -> Result<Report> {
    let mut seeds = Seeds::default();
    let mut noted_resize = false;
    let mut events = Box::pin(watcher.follow_job(id));
    while let Some(item) = events.next().await {
        match item?.event {
            JobEvent::Image {
                index,
                width,
                height,
                seed,
                ..
            } => {
                if let Some(seed) = seed {
                    seeds.0.insert(index as usize, seed);
                }
                if !noted_resize {
                    noted_resize = true;
                    note_resized(args, (width, height), progress);
                }
            }
            // Reported once the files are written, with the others.
            JobEvent::ImageFailed { .. } => {}
            event => progress.on_event(&event),
        }
    }
    progress.finish();
    let job = retrying(progress, || client.job(id)).await?;
    if job.status == JobState::Cancelled {
        bail!("job {id} was cancelled");
    }
    match job.result {
        Some(response) => save(client, &response, &seeds, files, args, progress).await,
        None => {
            let (code, message) = job
                .error
                .map(|e| (e.code, e.message))
                .unwrap_or_else(|| ("Unknown".into(), "the job ended without a result".into()));
            bail!("job {id} failed: {code}: {message}")
        }
    }
}

/// A seedbed resizes a reference to the output size as a local run does; say so the same way.
fn note_resized(args: &GenerateArgs, to: (u32, u32), progress: &Progress) {
    for source in args.image.iter().filter(|s| !request::is_url(s)) {
        if let Ok(from) = request::picture_size(source)
            && let Some(note) = request::resize_note(source, from, to)
        {
            progress.note(note);
        }
    }
}

async fn save(
    client: &Client,
    response: &ImagesResponse,
    seeds: &Seeds,
    files: &mut Files,
    args: &GenerateArgs,
    progress: &Progress,
) -> Result<Report> {
    let mut report = Report::new(response.model.clone());
    for (index, image) in response.data.iter().enumerate() {
        let bytes = match (&image.url, &image.b64_json) {
            (Some(url), _) => retrying(progress, || client.download(url)).await?.to_vec(),
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .context("the server sent invalid base64")?,
            (None, None) => {
                let message = match &image.error {
                    Some(error) => format!("{}: {}", error.code, error.message),
                    None => "the server sent neither a link nor the picture".into(),
                };
                report.image_failed(index, &message, progress);
                continue;
            }
        };
        let path = files.write(index, &bytes, sniff_format(&bytes))?;
        let written = Written {
            path,
            seed: seeds.0.get(&index).copied(),
            size: image.size.clone(),
        };
        report.wrote(written, args.json, progress);
    }
    Ok(report)
}
