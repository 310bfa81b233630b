//! `seedbed jobs list|show|watch|cancel|download`: a server's jobs, as the caller's key sees
//! them.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use futures::StreamExt;
use seedbed_client::Client;
use seedbed_types::{JobState, JobView};

use crate::commands::generate::output;
use crate::progress::Progress;
use crate::remote::ServerArgs;
use crate::table;

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  seedbed jobs list --server http://gpu-box:8080
  seedbed jobs watch job_0123abcd
  seedbed jobs download job_0123abcd -o pictures/")]
pub struct JobsArgs {
    #[command(flatten)]
    server: ServerArgs,

    /// Print JSON instead of a table or summary.
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: JobsCommand,
}

#[derive(Debug, Subcommand)]
enum JobsCommand {
    /// The caller's jobs, newest first.
    List {
        /// How many (1..=100).
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=100))]
        limit: u32,
    },
    /// One job: status, queue position, progress, images, error.
    Show {
        /// The job id (`X-Seedbed-Job-Id`, or from `seedbed jobs list`).
        id: String,
    },
    /// Follow a job until it ends, with progress bars; exits 1 unless it succeeded.
    Watch {
        /// The job id.
        id: String,
        /// No progress bars.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Cancel a queued or running job (images already made stay); waits a few seconds for
    /// a running job to stop.
    Cancel {
        /// The job id.
        id: String,
    },
    /// Save a job's images into a folder as `<job id>-<index>.<ext>`, printing each path.
    Download {
        /// The job id.
        id: String,
        /// The folder to write into (made if missing).
        #[arg(short, long, default_value = ".")]
        output: PathBuf,
        /// Replace files that already exist.
        #[arg(long)]
        force: bool,
    },
}

/// How long `jobs cancel` waits for a running job to reach its next step and stop.
const CANCEL_WAIT: Duration = Duration::from_secs(5);

pub fn run(args: JobsArgs) -> Result<ExitCode> {
    crate::block_on(async move {
        let client = args.server.client()?;
        let job = match args.command {
            JobsCommand::List { limit } => {
                let list = client.jobs(Some(limit)).await?;
                if args.json {
                    println!("{}", serde_json::to_string_pretty(&list)?);
                } else {
                    print_list(&list.data);
                }
                return Ok(ExitCode::SUCCESS);
            }
            JobsCommand::Show { id } => client.job(&id).await?,
            JobsCommand::Cancel { id } => return cancel(&client, &id, args.json).await,
            JobsCommand::Download { id, output, force } => {
                return download(&client, &id, &output, force).await;
            }
            JobsCommand::Watch { id, quiet } => {
                let progress = Progress::new(quiet);
                let mut events = Box::pin(client.follow_job(&id));
                while let Some(item) = events.next().await {
                    progress.on_event(&item?.event);
                }
                progress.finish();
                let job = client.job(&id).await?;
                show(&job, args.json)?;
                return Ok(if job.status == JobState::Succeeded {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(crate::EXIT_FAILURE)
                });
            }
        };
        show(&job, args.json)?;
        Ok(ExitCode::SUCCESS)
    })
}

/// Cancel `id`: a finished job is left as it is and says so; a running one is followed for a
/// few seconds until it stops.
async fn cancel(client: &Client, id: &str, json: bool) -> Result<ExitCode> {
    let before = client.job(id).await?;
    if before.status.is_final() {
        if json {
            show(&before, true)?;
        } else {
            println!(
                "job {id} already {}; nothing to cancel",
                before.status.as_str()
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut job = client.cancel_job(id).await?;
    let deadline = tokio::time::Instant::now() + CANCEL_WAIT;
    while !job.status.is_final() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        job = client.job(id).await?;
    }
    if json {
        show(&job, true)?;
    } else if job.status.is_final() {
        println!("job {id} {}", job.status.as_str());
    } else {
        println!("job {id} cancelling: it stops at its next step");
    }
    Ok(ExitCode::SUCCESS)
}

/// Write each image of `id` into `dir`; an existing file is an error unless `force`.
async fn download(
    client: &Client,
    id: &str,
    dir: &std::path::Path,
    force: bool,
) -> Result<ExitCode> {
    let job = client.job(id).await?;
    let urls: Vec<(usize, &str)> = job
        .result
        .iter()
        .flat_map(|r| r.data.iter())
        .enumerate()
        .filter_map(|(index, image)| Some((index, image.url.as_deref()?)))
        .collect();
    if urls.is_empty() {
        bail!(
            "job {id} has no images to download (it is {}; images expire with their links)",
            job.status.as_str()
        );
    }
    for (index, url) in urls {
        let bytes = client.download(url).await?;
        let format = output::sniff_format(&bytes);
        let path = dir.join(format!("{id}-{index}.{}", format.extension()));
        if force {
            output::write_atomically(&path, &bytes)?;
        } else if !output::write_new(&path, &bytes)? {
            bail!("{} exists; pass --force to replace it", path.display());
        }
        println!("{}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn print_list(jobs: &[JobView]) {
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|job| {
            vec![
                job.id.clone(),
                job.status.as_str().to_string(),
                job.model.clone(),
                images(job),
                table::time(Some(job.created_at)),
                short_prompt(job.prompt.as_deref()),
            ]
        })
        .collect();
    table::print(
        &["ID", "STATUS", "MODEL", "IMAGES", "CREATED (UTC)", "PROMPT"],
        &rows,
    );
}

/// A prompt on one line, cut at 40 characters.
fn short_prompt(prompt: Option<&str>) -> String {
    let Some(prompt) = prompt else {
        return "-".into();
    };
    let line = prompt.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(40) {
        Some((cut, _)) => format!("{}...", &line[..cut]),
        None => line,
    }
}

fn images(job: &JobView) -> String {
    let done = job.result.as_ref().map_or(0, |r| {
        r.data
            .iter()
            .filter(|d| d.url.is_some() || d.b64_json.is_some())
            .count()
    });
    done.to_string()
}

/// A job as `key: value` lines, then one line per image.
fn show(job: &JobView, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(job)?);
        return Ok(());
    }
    println!("id:        {}", job.id);
    println!("status:    {}", job.status.as_str());
    println!("model:     {}", job.model);
    if let Some(prompt) = &job.prompt {
        println!("prompt:    {prompt}");
    }
    println!("created:   {}", table::time(Some(job.created_at)));
    println!("started:   {}", table::time(job.started_at));
    println!("finished:  {}", table::time(job.finished_at));
    if let Some(position) = job.queue_position {
        println!("queue:     {position} ahead");
    }
    if let Some(p) = &job.progress
        && !job.status.is_final()
    {
        let (image, images, step, steps) = (p.image + 1, p.images, p.step, p.steps);
        println!("progress:  image {image}/{images}, step {step}/{steps}");
    }
    if job.attempts > 1 {
        println!("attempts:  {}", job.attempts);
    }
    if let Some(node) = &job.node {
        println!("node:      {node}");
    }
    if let Some(error) = &job.error {
        println!("error:     {}: {}", error.code, error.message);
    }
    for (index, image) in job.result.iter().flat_map(|r| r.data.iter()).enumerate() {
        match (&image.url, &image.error) {
            (Some(url), _) => println!("image {index}:   {url}"),
            (None, Some(error)) => println!("image {index}:   failed: {}", error.code),
            _ => {}
        }
    }
    Ok(())
}
