//! `seedbed models list`: the models a server serves, or those in a local models directory.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};
use seedbed_core::Catalog;
use seedbed_types::ModelView;

use crate::table;

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  seedbed models list
  seedbed models list --models-dir ~/models --json
  seedbed models list --server http://gpu-box:8080")]
pub struct ModelsArgs {
    #[command(subcommand)]
    command: ModelsCommand,
}

#[derive(Debug, Subcommand)]
enum ModelsCommand {
    /// List models: a server's (with --server or SEEDBED_SERVER), else the local folders.
    List {
        /// Ask this server instead of reading --models-dir.
        #[arg(long, env = "SEEDBED_SERVER")]
        server: Option<String>,
        /// API key for --server.
        #[arg(long, env = "SEEDBED_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
        /// Folder of models: diffusers folders and checkpoint files.
        #[arg(long, env = "SEEDBED_MODELS_DIR", default_value = "models")]
        models_dir: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(args: ModelsArgs) -> Result<ExitCode> {
    let ModelsCommand::List {
        server,
        api_key,
        models_dir,
        json,
    } = args.command;
    let (models, broken) = match server {
        Some(server) => crate::block_on(async move {
            let client = crate::remote::connect(&server, api_key.as_deref())?;
            anyhow::Ok((client.models().await?.data, Vec::new()))
        })?,
        None => local(&models_dir)?,
    };
    if json {
        let body = serde_json::json!({"object": "list", "data": models, "broken": broken});
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = models
        .iter()
        .map(|m| {
            vec![
                m.id.clone(),
                if m.local_model == m.id {
                    "-".into()
                } else {
                    m.local_model.clone()
                },
                m.family.clone(),
                m.format.clone(),
                format!("{0}x{0}", m.native_size),
                m.default_steps.to_string(),
                m.default_guidance_scale.to_string(),
            ]
        })
        .collect();
    table::print(
        &[
            "ID", "ALIAS OF", "FAMILY", "FORMAT", "1K", "STEPS", "GUIDANCE",
        ],
        &rows,
    );
    for (name, why) in &broken {
        eprintln!("warning: {name} cannot be served: {why}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `(folder name, why it cannot be served)`.
type Broken = Vec<(String, String)>;

fn local(dir: &std::path::Path) -> Result<(Vec<ModelView>, Broken)> {
    let catalog = Catalog::scan(dir, &[])?;
    let models = catalog.models().map(|m| m.view(&m.name, false)).collect();
    let broken = catalog
        .broken()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    Ok((models, broken))
}
