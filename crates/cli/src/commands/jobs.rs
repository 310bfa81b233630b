//! `seedbed jobs list|show|watch|cancel`: a server's jobs, as the caller's key sees them.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};
use futures::StreamExt;
use seedbed_types::{JobState, JobView};

use crate::progress::JobProgress;
use crate::remote::ServerArgs;
use crate::table;

#[derive(Debug, Args)]
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
        /// How many (1..100).
        #[arg(long, default_value_t = 20)]
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
    /// Cancel a queued or running job (images already made stay).
    Cancel {
        /// The job id.
        id: String,
    },
}

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
            JobsCommand::Cancel { id } => client.cancel_job(&id).await?,
            JobsCommand::Watch { id, quiet } => {
                let progress = JobProgress::new(quiet);
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
            ]
        })
        .collect();
    table::print(&["ID", "STATUS", "MODEL", "IMAGES", "CREATED (UTC)"], &rows);
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
