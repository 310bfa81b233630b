//! `seedbed generate` without a server. The flags become the wire request a server would get;
//! core validates it into a `LocalSpec` against the same catalog and runs it on a device
//! thread in this process (`seedbed_core::local`), so sizes, per-model defaults (`seedbed.json`
//! included), seeds, watermark, provenance and encoding are the server's, byte for byte. What
//! is left here is the command line's own part: choosing the model, progress and files.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use seedbed_core::device::{DeviceEvent, DeviceFailure};
use seedbed_core::local::Prepared;
use seedbed_core::loras::LoraFolder;
use seedbed_core::{Catalog, CoreError, Device, DeviceOptions, InputPolicy, local};
use tokio::sync::mpsc::UnboundedReceiver;

use super::output::{Files, Target};
use super::report::{Report, Written};
use super::{EXIT_INTERRUPTED, GenerateArgs, request};
use crate::progress::Progress;

pub fn run(args: GenerateArgs) -> Result<ExitCode> {
    let target = Target::parse(args.output.as_deref())?;
    if let Some(url) = args.image.iter().find(|source| request::is_url(source)) {
        bail!(CoreError::invalid(
            "image",
            format!(
                "local generation reads the reference from a file, not {url}; download it first or use --server"
            )
        ));
    }
    let loras = match &args.loras_dir {
        Some(dir) => Some(LoraFolder::open(dir).with_context(|| {
            format!(
                "reading the LoRA folder {} (--loras-dir or SEEDBED_LORAS_DIR)",
                dir.display()
            )
        })?),
        None => None,
    };
    let catalog = Catalog::scan(&args.models_dir, &[])
        .with_context(|| {
            format!(
                "reading the models directory {} (set --models-dir or SEEDBED_MODELS_DIR)",
                args.models_dir.display()
            )
        })?
        .with_loras(loras);
    let progress = Progress::new(args.quiet);
    let mut wire = request::build(&args, target.format())?;
    wire.model = Some(match &args.model {
        Some(name) => name.clone(),
        None => first_model(&catalog, &args.models_dir, &progress)?,
    });
    // Every check (core's, as a server makes them) before the model loads.
    let prepared = crate::block_on(async {
        local::prepare(&wire, &catalog, &InputPolicy::default())
            .await
            .map_err(|error| explain(error, &args.models_dir))
    })?;
    let mut files = Files::new(target, prepared.images as usize, args.force);
    files.check()?;
    note_resized(&args, &prepared, &progress);
    let mut report = Report::new(prepared.spec.local_model.clone());
    let model = prepared.spec.local_model.clone();
    let device = Device::spawn(DeviceOptions {
        load: args.device.load_options()?,
        memory_budget: u64::MAX,
    })?;
    progress.status("loading the model");
    let cancel = Arc::new(AtomicBool::new(false));
    stop_on_ctrl_c(cancel.clone());
    let mut events = local::start(&device, prepared, cancel)?;

    let started = Instant::now();
    let stopped = follow(
        &mut events,
        &model,
        &mut files,
        &mut report,
        &args,
        &progress,
    )?;
    tracing::info!(
        seconds = started.elapsed().as_secs_f64(),
        peak_rss_bytes = crate::memory::peak_rss_bytes(),
        "generated"
    );
    if stopped {
        // Said even under --quiet, as for a server's job: it is the command's outcome.
        eprintln!("generation stopped; {} image(s) written", report.data.len());
        return Ok(ExitCode::from(EXIT_INTERRUPTED));
    }
    report.finish(args.json, args.open, &progress)
}

/// Ctrl-C stops a local run before its next step, as it cancels a server's job; a second
/// one ends the process at once.
fn stop_on_ctrl_c(cancel: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        runtime.block_on(async {
            if tokio::signal::ctrl_c().await.is_err() {
                return;
            }
            eprintln!("interrupted: stopping before the next step (Ctrl-C again to quit now)");
            cancel.store(true, Ordering::SeqCst);
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(EXIT_INTERRUPTED.into());
            }
        });
    });
}

/// Say how each reference of another size becomes the size the model draws at.
fn note_resized(args: &GenerateArgs, prepared: &Prepared, progress: &Progress) {
    let to = (prepared.spec.width, prepared.spec.height);
    for source in &args.image {
        if let Ok(from) = request::picture_size(source)
            && let Some(note) = request::resize_note(source, from, to)
        {
            progress.note(note);
        }
    }
}

/// Show the run's progress and write each picture as it comes; `true` when Ctrl-C stopped
/// it. A run that fails as a whole (the model does not load) is an error; a failed image is
/// counted in the report.
fn follow(
    events: &mut UnboundedReceiver<DeviceEvent>,
    model: &str,
    files: &mut Files,
    report: &mut Report,
    args: &GenerateArgs,
    progress: &Progress,
) -> Result<bool> {
    let outcome = loop {
        match events.blocking_recv() {
            None => break Err(DeviceFailure::Internal("the device thread stopped".into())),
            Some(DeviceEvent::Done(result)) => break result,
            Some(DeviceEvent::Progress {
                image,
                images,
                step,
                steps,
                ..
            }) => progress.step(image, images, step, steps),
            Some(DeviceEvent::Image {
                index,
                bytes,
                width,
                height,
                seed,
            }) => {
                let format = super::output::sniff_format(&bytes);
                let path = files.write(index as usize, &bytes, format)?;
                let written = Written {
                    path,
                    seed: Some(seed),
                    size: Some(format!("{width}x{height}")),
                };
                report.wrote(written, args.json, progress);
            }
            Some(DeviceEvent::ImageFailed { index, message }) => {
                report.image_failed(index as usize, &message, progress)
            }
        }
    };
    progress.finish();
    match outcome {
        Ok(()) => Ok(false),
        Err(DeviceFailure::ModelLoad(message)) => {
            bail!("model {model} could not be loaded: {message}")
        }
        Err(DeviceFailure::Cancelled) => Ok(true),
        Err(DeviceFailure::Internal(message)) => bail!(message),
    }
}

/// The convenience of naming no model: the first folder, alphabetically, that can be served.
fn first_model(catalog: &Catalog, models_dir: &Path, progress: &Progress) -> Result<String> {
    let first = catalog.models().next().with_context(|| {
        format!(
            "no model (a folder with a model_index.json, or a .safetensors checkpoint) in {}",
            models_dir.display()
        )
    })?;
    progress.note(format!("using model {}", first.path.display()));
    Ok(first.name.clone())
}

/// A model that is not there is bad input here too; the message says where we looked.
fn explain(error: CoreError, models_dir: &Path) -> anyhow::Error {
    match error {
        // Core's list of what is served and its suggestion, with the folder they came from.
        CoreError::ModelNotFound { model } => anyhow!(CoreError::invalid(
            "model",
            format!(
                "no model `{model}` (a folder with a model_index.json, or {model}.safetensors) in {}; {}",
                models_dir.display(),
                model.hint()
            )
        )),
        other => anyhow!(other),
    }
}
