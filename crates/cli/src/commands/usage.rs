//! `seedbed usage`: what the caller's key was billed, in total and per job.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use crate::remote::ServerArgs;
use crate::table;

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  seedbed usage --since 7d
  seedbed usage --since 2026-12-01T00:00:00Z --json")]
pub struct UsageArgs {
    #[command(flatten)]
    server: ServerArgs,

    /// Only jobs finished since then: a span back from now (30m, 1h, 7d, 2w), an RFC 3339 time
    /// (2026-12-01T08:00:00Z), a date (2026-12-01, UTC) or Unix seconds.
    #[arg(long, value_parser = since)]
    since: Option<i64>,

    /// Print JSON instead of a summary and table.
    #[arg(long)]
    json: bool,
}

fn since(text: &str) -> Result<i64, String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    crate::since::parse(text, now)
}

pub fn run(args: UsageArgs) -> Result<ExitCode> {
    crate::block_on(async move {
        let usage = args.server.client()?.usage(args.since).await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&usage)?);
            return Ok(ExitCode::SUCCESS);
        }
        let totals = usage.totals;
        println!(
            "{} jobs, {} images, {} tokens",
            totals.jobs, totals.images, totals.tokens
        );
        if !usage.data.is_empty() {
            let rows: Vec<Vec<String>> = usage
                .data
                .iter()
                .map(|row| {
                    vec![
                        row.job_id.clone(),
                        row.model.clone(),
                        row.images.to_string(),
                        row.tokens.to_string(),
                        table::time(Some(row.created_at)),
                    ]
                })
                .collect();
            println!();
            table::print(&["JOB", "MODEL", "IMAGES", "TOKENS", "AT (UTC)"], &rows);
        }
        Ok(ExitCode::SUCCESS)
    })
}
