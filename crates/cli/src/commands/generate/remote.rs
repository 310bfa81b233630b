//! `seedbed generate --server URL`: the request goes to a server. On a seedbed it runs as a job
//! so the queue position and per-step progress can be shown; on any other Seedream-compatible
//! API it is one plain request.

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use futures::StreamExt;
use seedbed_client::Client;
use seedbed_types::{GenerationRequest, ImagesResponse, JobState, ResponseFormat};

use super::GenerateArgs;
use super::output::{Format, Target, sniff_format, write_atomically};
use crate::progress::JobProgress;
use crate::remote::connect;

pub fn run(args: GenerateArgs) -> Result<ExitCode> {
    let server = args.server.clone().unwrap_or_default();
    let target = Target::parse(args.output.as_deref(), Format::Jpeg)?;
    let mut request = GenerationRequest {
        stream: Some(false),
        response_format: Some(ResponseFormat::Url),
        ..super::request::build(&args, target.format())?
    };
    crate::block_on(async move {
        let client = connect(&server, args.api_key.as_deref())?;
        let is_seedbed = client.info().await.is_ok_and(|info| info.name == "seedbed");
        if request.model.is_none() && is_seedbed {
            // Like local generation: the first model the server offers.
            let first = client.models().await?.data.into_iter().next();
            let model = first.context("the server offers no model")?.id;
            if !args.quiet {
                eprintln!("using model {model}");
            }
            request.model = Some(model);
        }
        let (response, stem) = if is_seedbed {
            run_job(&client, &request, args.quiet).await?
        } else {
            let spinner = JobProgress::new(args.quiet);
            spinner.note_waiting();
            let generated = client.generate(&request).await?;
            spinner.finish();
            let stem = generated.job_id.unwrap_or(generated.request_id);
            (generated.response, stem)
        };
        save(&client, &response, &target, &stem, &args).await
    })
}

/// Submit as a job, follow its events with progress bars, then read its result.
async fn run_job(
    client: &Client,
    request: &GenerationRequest,
    quiet: bool,
) -> Result<(ImagesResponse, String)> {
    let job = client.create_job(request).await?;
    let progress = JobProgress::new(quiet);
    progress.note_job(&job.id);
    let mut events = Box::pin(client.follow_job(&job.id));
    while let Some(item) = events.next().await {
        progress.on_event(&item?.event);
    }
    progress.finish();
    let job = client.job(&job.id).await?;
    if job.status == JobState::Cancelled {
        bail!("job {} was cancelled", job.id);
    }
    match job.result {
        Some(response) => Ok((response, job.id)),
        None => {
            let (code, message) = job
                .error
                .map(|e| (e.code, e.message))
                .unwrap_or_else(|| ("Unknown".into(), "the job ended without a result".into()));
            bail!("job {} failed: {code}: {message}", job.id)
        }
    }
}

async fn save(
    client: &Client,
    response: &ImagesResponse,
    target: &Target,
    stem: &str,
    args: &GenerateArgs,
) -> Result<ExitCode> {
    let count = response.data.len();
    let mut failed = 0;
    for (index, image) in response.data.iter().enumerate() {
        let bytes = match (&image.url, &image.b64_json) {
            (Some(url), _) => client.download(url).await?.to_vec(),
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .context("the server sent invalid base64")?,
            (None, None) => {
                failed += 1;
                if let Some(error) = &image.error {
                    eprintln!("image {index} failed: {}: {}", error.code, error.message);
                }
                continue;
            }
        };
        let format = target.format().unwrap_or(sniff_format(&bytes));
        let path = target.path(index, count, &format!("{stem}-{index}"), format);
        write_atomically(&path, &bytes)?;
        if !args.json {
            println!("{}", path.display());
        } else if !args.quiet {
            eprintln!("wrote {}", path.display());
        }
    }
    if args.json {
        println!("{}", serde_json::to_string(response)?);
    }
    if failed == count && count > 0 {
        bail!("every image failed");
    }
    Ok(if failed > 0 {
        ExitCode::from(crate::EXIT_FAILURE)
    } else {
        ExitCode::SUCCESS
    })
}
