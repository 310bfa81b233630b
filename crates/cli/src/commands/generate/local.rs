//! `seedbed generate` without a server. The flags become the wire request a server would get;
//! core validates it into a `LocalSpec` against the same catalog and runs it on a device
//! thread in this process (`seedbed_core::local`), so sizes, per-model defaults (`seedbed.json`
//! included), seeds, watermark, provenance and encoding are the server's, byte for byte. What
//! is left here is the command line's own part: choosing the model, progress and files.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use indicatif::{ProgressBar, ProgressStyle};
use seedbed_core::device::{DeviceEvent, DeviceFailure};
use seedbed_core::spec::LocalSpec;
use seedbed_core::{Catalog, CoreError, Device, DeviceOptions, InputPolicy, local};
use tokio::sync::mpsc::UnboundedReceiver;

use super::GenerateArgs;
use super::output::{Format, Target, write_atomically};
use super::request;

pub fn run(args: GenerateArgs) -> Result<ExitCode> {
    let target = Target::parse(args.output.as_deref(), Format::Png)?;
    if let Some(url) = args.image.iter().find(|source| request::is_url(source)) {
        bail!(CoreError::invalid(
            "image",
            format!(
                "local generation reads the reference from a file, not {url}; download it first or use --server"
            )
        ));
    }
    let catalog = Catalog::scan(&args.models_dir, &[]).with_context(|| {
        format!(
            "reading the models directory {} (set --models-dir or SEEDBED_MODELS_DIR)",
            args.models_dir.display()
        )
    })?;
    let mut wire = request::build(&args, Some(target.format().unwrap_or(Format::Png)))?;
    wire.model = Some(match &args.model {
        Some(name) => name.clone(),
        None => first_model(&catalog, &args.models_dir)?,
    });
    let prepared = crate::block_on(async {
        local::prepare(&wire, &catalog, &InputPolicy::default())
            .await
            .map_err(|error| explain(error, &catalog, &args.models_dir))
    })?;
    let (spec, images) = (prepared.spec.clone(), prepared.images);
    let device = Device::spawn(DeviceOptions {
        load: args.device.load_options()?,
        memory_budget: u64::MAX,
    })?;
    let mut events = local::start(&device, prepared, Arc::new(AtomicBool::new(false)))?;

    let started = Instant::now();
    let (written, last_failure) = follow(&mut events, &spec, images, &target, &args)?;
    tracing::info!(
        seconds = started.elapsed().as_secs_f64(),
        peak_rss_bytes = crate::memory::peak_rss_bytes(),
        "generated"
    );
    if written.is_empty() {
        return Err(anyhow!(
            last_failure.unwrap_or_else(|| "no image was produced".into())
        ));
    }
    if args.json {
        println!(
            "{}",
            serde_json::json!({"model": spec.local_model, "data": written})
        );
    }
    Ok(match last_failure {
        Some(_) => ExitCode::from(crate::EXIT_FAILURE),
        None => ExitCode::SUCCESS,
    })
}

/// Show the run's progress and write each picture as it comes; returns what was written (as
/// `--json` reports it) and the last failed image's message. A run that fails as a whole
/// (the model does not load) is an error.
fn follow(
    events: &mut UnboundedReceiver<DeviceEvent>,
    spec: &LocalSpec,
    count: u32,
    target: &Target,
    args: &GenerateArgs,
) -> Result<(Vec<serde_json::Value>, Option<String>)> {
    let format = spec.output_format;
    let bar = progress_bar(args.quiet);
    let mut written = Vec::new();
    let mut last_failure = None;
    let outcome = loop {
        match events.blocking_recv() {
            None => break Err(DeviceFailure::Internal("the device thread stopped".into())),
            Some(DeviceEvent::Done(result)) => break result,
            Some(DeviceEvent::Progress {
                image,
                images,
                step,
                steps,
            }) => {
                bar.set_length(u64::from(images * steps));
                bar.set_position(u64::from(image * steps + step));
                bar.set_message(format!("image {}/{images}", image + 1));
            }
            Some(DeviceEvent::Image {
                index,
                bytes,
                width,
                height,
                seed,
            }) => {
                let stem = format!("seedbed-{seed}");
                let path = target.path(index as usize, count as usize, &stem, format);
                write_atomically(&path, &bytes)?;
                if !args.json {
                    bar.suspend(|| println!("{} (seed {seed})", path.display()));
                }
                written.push(serde_json::json!({
                    "path": path,
                    "seed": seed,
                    "size": format!("{width}x{height}"),
                }));
            }
            Some(DeviceEvent::ImageFailed { index, message }) => {
                bar.suspend(|| eprintln!("image {index} failed: {message}"));
                last_failure = Some(message);
            }
        }
    };
    bar.finish_and_clear();
    match outcome {
        Ok(()) => Ok((written, last_failure)),
        Err(DeviceFailure::ModelLoad(message)) => {
            bail!("model {} could not be loaded: {message}", spec.local_model)
        }
        Err(DeviceFailure::Cancelled) => bail!("generation was cancelled"),
        Err(DeviceFailure::Internal(message)) => bail!(message),
    }
}

/// The convenience of naming no model: the first folder, alphabetically, that can be served.
fn first_model(catalog: &Catalog, models_dir: &Path) -> Result<String> {
    let first = catalog.models().next().with_context(|| {
        format!(
            "no model folder (with a model_index.json) in {}",
            models_dir.display()
        )
    })?;
    eprintln!("using model {}", first.path.display());
    Ok(first.name.clone())
}

/// A model that is not there is bad input here too; the message says where we looked.
fn explain(error: CoreError, catalog: &Catalog, models_dir: &Path) -> anyhow::Error {
    match error {
        CoreError::ModelNotFound { model } => {
            let names: Vec<&str> = catalog.models().map(|m| m.name.as_str()).collect();
            anyhow!(CoreError::invalid(
                "model",
                format!(
                    "no model folder `{model}` with a model_index.json in {} (there: {})",
                    models_dir.display(),
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    }
                )
            ))
        }
        other => anyhow!(other),
    }
}

fn progress_bar(quiet: bool) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] step {pos}/{len} {elapsed} (eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message("loading the model");
    bar
}
