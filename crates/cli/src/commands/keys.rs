//! `seedbed keys create|list|revoke` (needs an admin key).

use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};
use seedbed_types::{CreateKey, KeyView};

use crate::remote::ServerArgs;
use crate::table;

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  seedbed keys create --name ci --images-per-minute 10 --quota-images 1000
  seedbed keys create --name grafana --scope ops
  seedbed keys revoke key_0123abcd")]
pub struct KeysArgs {
    #[command(flatten)]
    server: ServerArgs,

    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: KeysCommand,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create a key and print its secret (shown only this once; the server keeps a hash).
    Create {
        /// A label for people.
        #[arg(long)]
        name: Option<String>,
        /// `generate`, `ops` (read /metrics and /info) and/or `admin` [default: generate].
        #[arg(long = "scope", value_name = "SCOPE")]
        scopes: Vec<String>,
        /// Most images per minute this key may request.
        #[arg(long)]
        images_per_minute: Option<u32>,
        /// Most images this key may generate in total.
        #[arg(long)]
        quota_images: Option<u64>,
    },
    /// All keys (never their secrets).
    List,
    /// Revoke a key by id; requests with it get 401 from then on.
    Revoke {
        /// The key id (`seedbed keys list`), not its secret.
        id: String,
    },
}

pub fn run(args: KeysArgs) -> Result<ExitCode> {
    crate::block_on(async move {
        let client = args.server.client()?;
        match args.command {
            KeysCommand::Create {
                name,
                scopes,
                images_per_minute,
                quota_images,
            } => {
                let request = CreateKey {
                    name,
                    scopes: (!scopes.is_empty()).then_some(scopes),
                    images_per_minute,
                    quota_images,
                };
                let key = client.create_key(&request).await?;
                if args.json {
                    println!("{}", serde_json::to_string_pretty(&key)?);
                } else {
                    // The secret alone on stdout, so `KEY=$(seedbed keys create)` works.
                    println!("{}", key.secret.clone().unwrap_or_default());
                    eprintln!(
                        "created key {} ({}); the secret above is not shown again",
                        key.id,
                        key.scopes.join(", ")
                    );
                }
            }
            KeysCommand::List => {
                let keys = client.keys().await?;
                if args.json {
                    println!("{}", serde_json::to_string_pretty(&keys)?);
                } else {
                    print_keys(&keys.data);
                }
            }
            KeysCommand::Revoke { id } => {
                let key = client.revoke_key(&id).await?;
                if args.json {
                    println!("{}", serde_json::to_string_pretty(&key)?);
                } else {
                    println!("revoked {}", key.id);
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn print_keys(keys: &[KeyView]) {
    let limit = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|key| {
            vec![
                key.id.clone(),
                key.name.clone(),
                key.scopes.join(","),
                limit(key.images_per_minute.map(|n| n.to_string())),
                limit(key.quota_images.map(|n| n.to_string())),
                table::time(Some(key.created_at)),
                table::time(key.revoked_at),
            ]
        })
        .collect();
    table::print(
        &[
            "ID",
            "NAME",
            "SCOPES",
            "IPM",
            "QUOTA",
            "CREATED (UTC)",
            "REVOKED",
        ],
        &rows,
    );
}
