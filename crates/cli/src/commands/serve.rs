//! `seedbed serve`: the Seedream-compatible HTTP server.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use seedbed_server::serve::{ServeConfig, start};
use seedbed_types::Secret;
use serde::Deserialize;

use crate::device::DeviceArgs;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// Every option can also come from a `SEEDBED_*` variable or the `--config` TOML file (same
/// names with underscores, e.g. `models_dir = "models"`); flags win over variables, which win
/// over the file.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML file with any of the options below.
    #[arg(long, env = "SEEDBED_CONFIG")]
    config: Option<PathBuf>,

    /// Address to listen on [default: 127.0.0.1:8080]. Anything but loopback needs an API key.
    #[arg(long, env = "SEEDBED_LISTEN")]
    listen: Option<SocketAddr>,

    /// Where the SQLite database and the images live [default: $XDG_DATA_HOME/seedbed or
    /// ~/.local/share/seedbed].
    #[arg(long, env = "SEEDBED_DATA_DIR")]
    data_dir: Option<PathBuf>,

    /// Folder of diffusers model folders; each is served under its folder name
    /// [default: models].
    #[arg(long, env = "SEEDBED_MODELS_DIR")]
    models_dir: Option<PathBuf>,

    /// Serve a model under another name too, e.g. `seedream-4-5-251128=sdxl-turbo`.
    /// Repeatable; the variable takes a comma-separated list.
    #[arg(
        long = "alias",
        value_name = "PUBLIC=LOCAL",
        env = "SEEDBED_ALIASES",
        value_delimiter = ','
    )]
    aliases: Vec<String>,

    /// A key with every scope (generate, ops, admin), stored hashed. Repeatable. These are the
    /// bootstrap keys: change the value to rotate one; one left out is revoked at start. A
    /// server with no key ever stored is open and listens on loopback only; once any key has
    /// existed, every request needs a live one.
    #[arg(
        long = "api-key",
        value_name = "KEY",
        env = "SEEDBED_API_KEY",
        value_delimiter = ',',
        hide_env_values = true
    )]
    api_keys: Vec<Secret>,

    /// The secret API-key hashes are keyed with (made on first start; nodes sharing a
    /// database need the same file) [default: <data-dir>/key-hash.secret].
    #[arg(long, value_name = "FILE", env = "SEEDBED_KEY_SECRET_FILE")]
    key_secret_file: Option<PathBuf>,

    /// A bearer token that reads /metrics and /info only, for a Prometheus scraper (keys with
    /// the `ops` or `admin` scope read them too).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "SEEDBED_METRICS_KEY",
        hide_env_values = true
    )]
    metrics_key: Option<Secret>,

    /// Base URL of image links, as clients reach this server [default: http://<listen>].
    #[arg(long, env = "SEEDBED_PUBLIC_URL")]
    public_url: Option<String>,

    /// Job, key and usage store [default: sqlite://<data-dir>/seedbed.db].
    #[arg(long, env = "SEEDBED_DATABASE_URL")]
    database_url: Option<String>,

    /// Image store: a folder or file:///path [default: <data-dir>/blobs].
    #[arg(long, env = "SEEDBED_BLOB_URL")]
    blob_url: Option<String>,

    /// Jobs that may wait; beyond it requests get 429 ServerOverloaded [default: 64].
    #[arg(long, env = "SEEDBED_QUEUE_SIZE")]
    queue_size: Option<u32>,

    /// Largest request body in bytes (JSON with data URIs, uploads) [default: 67108864].
    #[arg(long, env = "SEEDBED_MAX_BODY_BYTES")]
    max_body_bytes: Option<usize>,

    /// Largest reference image in bytes [default: 31457280, upstream's 30 MB].
    #[arg(long, env = "SEEDBED_MAX_INPUT_IMAGE_BYTES")]
    max_input_image_bytes: Option<usize>,

    /// How long images and their links live, in seconds [default: 86400, upstream's 24 h].
    #[arg(long, env = "SEEDBED_IMAGE_TTL_SECS")]
    image_ttl_secs: Option<u64>,

    /// Fetch reference image URLs on loopback or private networks (refused by default).
    #[arg(long, env = "SEEDBED_ALLOW_PRIVATE_URLS")]
    allow_private_urls: bool,

    /// Gigabytes of model weights kept loaded; least-recently-used models are unloaded first
    /// [default: 16].
    #[arg(long, env = "SEEDBED_MODEL_MEMORY_GB")]
    model_memory_gb: Option<f64>,

    /// Seconds a running job may take to finish on shutdown before it is put back in the
    /// queue for the next start [default: 30].
    #[arg(long, env = "SEEDBED_SHUTDOWN_GRACE_SECS")]
    shutdown_grace_secs: Option<u64>,

    /// Requests handled at once; beyond it requests get 429 ServerOverloaded at once rather
    /// than waiting (open event streams count separately) [default: 256].
    #[arg(long, env = "SEEDBED_MAX_IN_FLIGHT")]
    max_in_flight: Option<u64>,

    /// Seconds a client has to send its request headers; idle keep-alive connections are
    /// closed after as long [default: 30].
    #[arg(long, env = "SEEDBED_HEADER_TIMEOUT_SECS")]
    header_timeout_secs: Option<u64>,

    /// Seconds a request body has to arrive in full; a slower one gets 408 RequestTimeout
    /// [default: 60].
    #[arg(long, env = "SEEDBED_BODY_TIMEOUT_SECS")]
    body_timeout_secs: Option<u64>,

    /// Event streams (`stream: true` generations, /v1/jobs/{id}/events) one API key may have
    /// open; more get 429 [default: 16].
    #[arg(long, env = "SEEDBED_MAX_STREAMS_PER_KEY")]
    max_streams_per_key: Option<u64>,

    /// Event streams open at once, all keys together; more get 429 [default: 256].
    #[arg(long, env = "SEEDBED_MAX_STREAMS")]
    max_streams: Option<u64>,

    /// Seconds an event stream may be idle before a keep-alive comment goes out, so proxies
    /// do not cut it [default: 15].
    #[arg(long, env = "SEEDBED_SSE_KEEP_ALIVE_SECS")]
    sse_keep_alive_secs: Option<u64>,

    /// An upstream provider, `NAME=KIND,URL` with KIND ark, openai or seedbed; its key comes
    /// from `SEEDBED_UPSTREAM_<NAME>_KEY`. Repeatable, in priority order. The config file's
    /// `[[upstream]]` tables take more (timeouts, `rehost`, model maps).
    #[arg(long = "upstream", value_name = "NAME=KIND,URL", value_parser = seedbed_gateway::parse_upstream)]
    upstreams: Vec<seedbed_gateway::UpstreamConfig>,

    /// Serve a model from an upstream: `PUBLIC=UPSTREAM[:MODEL]`. Repeat a PUBLIC id for
    /// fallbacks, in priority order.
    #[arg(long = "route", value_name = "PUBLIC=UPSTREAM[:MODEL]", value_parser = seedbed_gateway::parse_route)]
    routes: Vec<(String, String, String)>,

    #[command(flatten)]
    device: DeviceArgs,
}

/// The `--config` file: the same options, all optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    models_dir: Option<PathBuf>,
    #[serde(default)]
    aliases: Vec<String>,
    #[serde(default)]
    api_keys: Vec<Secret>,
    key_secret_file: Option<PathBuf>,
    metrics_key: Option<Secret>,
    public_url: Option<String>,
    database_url: Option<String>,
    blob_url: Option<String>,
    queue_size: Option<u32>,
    max_body_bytes: Option<usize>,
    max_input_image_bytes: Option<usize>,
    image_ttl_secs: Option<u64>,
    allow_private_urls: Option<bool>,
    model_memory_gb: Option<f64>,
    shutdown_grace_secs: Option<u64>,
    max_in_flight: Option<u64>,
    header_timeout_secs: Option<u64>,
    body_timeout_secs: Option<u64>,
    max_streams_per_key: Option<u64>,
    max_streams: Option<u64>,
    sse_keep_alive_secs: Option<u64>,
    /// `[[upstream]]` tables: name, kind, base_url, api_key or api_key_env, timeout_secs,
    /// rehost, and `[upstream.models]` mapping public ids to the upstream's.
    #[serde(default, rename = "upstream")]
    upstreams: Vec<seedbed_gateway::UpstreamConfig>,
    /// `"PUBLIC=UPSTREAM[:MODEL]"` strings, as `--route`.
    #[serde(default)]
    routes: Vec<String>,
}

fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("seedbed");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/share/seedbed"),
        None => PathBuf::from(".seedbed"),
    }
}

fn read_file(path: &Path) -> Result<FileConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

impl ServeArgs {
    fn into_config(self) -> Result<ServeConfig> {
        let file = match &self.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let listen = self
            .listen
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("a valid default address"));
        let data_dir = self
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(default_data_dir);
        let models_dir = self
            .models_dir
            .or(file.models_dir)
            .unwrap_or_else(|| "models".into());
        let mut config = ServeConfig::new(listen, data_dir, models_dir);
        let aliases = if self.aliases.is_empty() {
            file.aliases
        } else {
            self.aliases
        };
        config.aliases = aliases
            .iter()
            .map(|a| seedbed_core::catalog::parse_alias(a).map_err(anyhow::Error::msg))
            .collect::<Result<_>>()?;
        config.api_keys = if self.api_keys.is_empty() {
            file.api_keys
        } else {
            self.api_keys
        };
        config.key_secret_file = self.key_secret_file.or(file.key_secret_file);
        config.metrics_key = self.metrics_key.or(file.metrics_key);
        config.public_url = self.public_url.or(file.public_url);
        config.database_url = self.database_url.or(file.database_url);
        config.blob_url = self.blob_url.or(file.blob_url);
        if let Some(size) = self.queue_size.or(file.queue_size) {
            config.queue_size = size;
        }
        if let Some(bytes) = self.max_body_bytes.or(file.max_body_bytes) {
            config.body_bytes = bytes;
        }
        if let Some(bytes) = self.max_input_image_bytes.or(file.max_input_image_bytes) {
            config.inputs.max_bytes = bytes;
        }
        if let Some(secs) = self.image_ttl_secs.or(file.image_ttl_secs) {
            config.image_ttl = Duration::from_secs(secs);
        }
        config.inputs.allow_private_urls =
            self.allow_private_urls || file.allow_private_urls.unwrap_or(false);
        if let Some(gb) = self.model_memory_gb.or(file.model_memory_gb) {
            config.memory_budget = (gb * (1u64 << 30) as f64) as u64;
        }
        if let Some(secs) = self.shutdown_grace_secs.or(file.shutdown_grace_secs) {
            config.shutdown_grace = Duration::from_secs(secs);
        }
        let limit = |name, flag: Option<u64>, file: Option<u64>| at_least_one(name, flag.or(file));
        if let Some(n) = limit("max_in_flight", self.max_in_flight, file.max_in_flight)? {
            config.max_in_flight = usize::try_from(n).unwrap_or(usize::MAX);
        }
        let secs = limit(
            "header_timeout_secs",
            self.header_timeout_secs,
            file.header_timeout_secs,
        )?;
        if let Some(secs) = secs {
            config.header_timeout = Duration::from_secs(secs);
        }
        let secs = limit(
            "body_timeout_secs",
            self.body_timeout_secs,
            file.body_timeout_secs,
        )?;
        if let Some(secs) = secs {
            config.body_timeout = Duration::from_secs(secs);
        }
        let streams = limit(
            "max_streams_per_key",
            self.max_streams_per_key,
            file.max_streams_per_key,
        )?;
        if let Some(n) = streams {
            config.streams_per_key = usize::try_from(n).unwrap_or(usize::MAX);
        }
        if let Some(n) = limit("max_streams", self.max_streams, file.max_streams)? {
            config.streams_total = usize::try_from(n).unwrap_or(usize::MAX);
        }
        let secs = limit(
            "sse_keep_alive_secs",
            self.sse_keep_alive_secs,
            file.sse_keep_alive_secs,
        )?;
        if let Some(secs) = secs {
            config.sse_keep_alive = Duration::from_secs(secs);
        }
        config.upstreams = file.upstreams;
        config.upstreams.extend(self.upstreams);
        for route in &file.routes {
            config.routes.push(seedbed_gateway::parse_route(route)?);
        }
        config.routes.extend(self.routes);
        config.load = self.device.load_options()?;
        Ok(config)
    }
}

/// A request limit of 0 would refuse every request (or close every connection at once), which
/// is never what was meant.
fn at_least_one(name: &str, value: Option<u64>) -> Result<Option<u64>> {
    match value {
        Some(0) => anyhow::bail!("{name} must be at least 1"),
        value => Ok(value),
    }
}

pub fn run(args: ServeArgs) -> Result<ExitCode> {
    let config = args.into_config()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let server = start(config).await?;
        eprintln!(
            "seedbed listening on http://{} (images at {})",
            server.addr, server.public_url
        );
        let token = server.shutdown_token();
        tokio::spawn(async move {
            wait_for_signal().await;
            eprintln!("shutting down: finishing the running job, ending streams");
            token.cancel();
        });
        server.wait().await;
        Ok(ExitCode::SUCCESS)
    })
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    #[test]
    fn request_limits_come_from_the_file_and_flags_and_are_never_zero() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("seedbed.toml");
        std::fs::write(&file, "max_streams = 40\nbody_timeout_secs = 9\n").unwrap();
        let cli = Cli::parse_from([
            "serve",
            "--config",
            file.to_str().unwrap(),
            "--max-in-flight",
            "7",
            "--max-streams-per-key",
            "3",
            "--body-timeout-secs",
            "5",
        ]);
        let config = cli.serve.into_config().unwrap();
        assert_eq!(config.max_in_flight, 7);
        assert_eq!(config.streams_per_key, 3);
        assert_eq!(config.streams_total, 40, "from the file");
        assert_eq!(config.body_timeout, Duration::from_secs(5), "the flag wins");
        let defaults = seedbed_server::HttpLimits::default();
        assert_eq!(config.sse_keep_alive, defaults.sse_keep_alive);

        let zero = Cli::parse_from(["serve", "--header-timeout-secs", "0"]);
        let error = zero.serve.into_config().unwrap_err();
        assert!(error.to_string().contains("header_timeout_secs"), "{error}");
    }

    /// The help's defaults are written out by hand; the server's constants are the truth.
    #[test]
    fn the_help_states_the_servers_default_limits() {
        use clap::CommandFactory;
        use seedbed_server::limits::defaults;
        let help = Cli::command().render_long_help().to_string();
        let secs = |d: Duration| d.as_secs() as usize;
        for (flag, default) in [
            ("--max-in-flight", defaults::MAX_IN_FLIGHT),
            ("--header-timeout-secs", secs(defaults::HEADER_TIMEOUT)),
            ("--body-timeout-secs", secs(defaults::BODY_TIMEOUT)),
            ("--max-streams-per-key", defaults::STREAMS_PER_KEY),
            ("--max-streams", defaults::STREAMS_TOTAL),
            ("--sse-keep-alive-secs", secs(defaults::SSE_KEEP_ALIVE)),
        ] {
            let entry = help
                .split(&format!("{flag} <"))
                .nth(1)
                .and_then(|rest| rest.split("\n      --").next())
                .unwrap_or_else(|| panic!("{flag} is not in the help"));
            assert!(
                entry.contains(&format!("[default: {default}]")),
                "{flag}: {entry}"
            );
        }
    }

    #[test]
    fn upstreams_come_from_the_file_and_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("seedbed.toml");
        std::fs::write(
            &file,
            r#"
routes = ["fast=seedbed2:tiny-sd"]

[[upstream]]
name = "ark"
kind = "ark"
base_url = "https://ark.ap-southeast.bytepluses.com/api/v3"
api_key = "sk-from-file"
timeout_secs = 120
rehost = false
[upstream.models]
"seedream" = "seedream-4-5-251128"
"#,
        )
        .unwrap();
        let cli = Cli::parse_from([
            "serve",
            "--config",
            file.to_str().unwrap(),
            "--upstream",
            "seedbed2=seedbed,http://10.0.0.2:8080",
            "--route",
            "seedream=seedbed2:tiny-sd",
        ]);
        let config = cli.serve.into_config().unwrap();
        let names: Vec<_> = config.upstreams.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["ark", "seedbed2"]);
        assert!(!config.upstreams[0].rehost);
        assert_eq!(
            config.upstreams[0].models["seedream"],
            "seedream-4-5-251128"
        );
        assert_eq!(config.upstreams[0].key().unwrap().expose(), "sk-from-file");
        assert!(
            !format!("{config:?}").contains("sk-from-file"),
            "keys never in logs"
        );
        assert_eq!(
            config.routes,
            [
                ("fast".into(), "seedbed2".into(), "tiny-sd".into()),
                ("seedream".into(), "seedbed2".into(), "tiny-sd".into())
            ]
        );
    }
}
