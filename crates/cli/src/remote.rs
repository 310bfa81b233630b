//! Talking to a seedbed (or any Seedream-compatible) server: where it is, the key, and what to
//! tell the user when the call fails.

use anyhow::Result;
use clap::Args;
use seedbed_client::{Client, ClientError};

pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// Base URL of the server: a seedbed (`http://HOST:8080`) or any Seedream-compatible API
    /// (`https://ark.ap-southeast.bytepluses.com/api/v3`).
    #[arg(long, global = true, env = "SEEDBED_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,

    /// API key sent as `Authorization: Bearer`.
    #[arg(long, global = true, env = "SEEDBED_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

impl ServerArgs {
    pub fn client(&self) -> Result<Client> {
        connect(&self.server, self.api_key.as_deref())
    }
}

pub fn connect(server: &str, api_key: Option<&str>) -> Result<Client> {
    let mut builder =
        Client::builder(server).user_agent(concat!("seedbed-cli/", env!("CARGO_PKG_VERSION")));
    if let Some(key) = api_key {
        builder = builder.api_key(key);
    }
    Ok(builder.build()?)
}

/// A line of advice for the failures users most often cause themselves.
pub fn hint(error: &ClientError) -> Option<String> {
    match error {
        ClientError::Connect { source, .. } => {
            let server = source.url().map_or(DEFAULT_SERVER.to_string(), |url| {
                url.origin().ascii_serialization()
            });
            Some(format!(
                "is `seedbed serve` running at {server}? Point --server or SEEDBED_SERVER at it"
            ))
        }
        ClientError::Timeout { .. } => {
            Some("the server did not answer in time; it may be busy, try again".into())
        }
        ClientError::Api { status: 401, .. } => {
            Some("pass a key with --api-key or SEEDBED_API_KEY".into())
        }
        ClientError::Api { status: 403, .. } => {
            Some("this key lacks the scope; an admin key can create one with more".into())
        }
        ClientError::Api {
            status: 429,
            retry_after: Some(after),
            ..
        } => Some(format!("try again in {} s", after.as_secs().max(1))),
        _ => None,
    }
}
