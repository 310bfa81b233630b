//! `seedbed serve`'s options: one clap argument per setting, its default taken from where the
//! setting lives in the server ([`CoreConfig`], [`HttpLimits`], [`DeviceOptions`]), so the
//! help states the defaults the server really uses. The `--config` file sets the same
//! arguments (see `file.rs`); [`ServeArgs::into_config`] turns them into a [`ServeConfig`].

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use clap::builder::RangedU64ValueParser;
use seedbed_core::{CoreConfig, DeviceOptions, InputPolicy, Runs};
use seedbed_gateway::UpstreamConfig;
use seedbed_server::HttpLimits;
use seedbed_server::serve::ServeConfig;
use seedbed_types::Secret;

use crate::device::DeviceArgs;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
const GIB: f64 = (1u64 << 30) as f64;

/// Every option can also come from a `SEEDBED_*` variable or from the `--config` file; flags
/// win over variables, which win over the file.
#[derive(Debug, Args)]
#[command(after_long_help = super::file::HELP)]
pub struct ServeArgs {
    /// TOML file setting any option below under its flag's name, `_` for `-` (e.g.
    /// `models_dir = "models"`, `api_key = ["sk-one", "sk-two"]`, `device = "cuda"`).
    #[arg(long, env = "SEEDBED_CONFIG")]
    pub config: Option<PathBuf>,

    /// Address to listen on, a host name or an IP with its port. Anything but loopback needs
    /// an API key.
    #[arg(long, env = "SEEDBED_LISTEN", default_value = DEFAULT_LISTEN, value_parser = listen_address)]
    listen: SocketAddr,

    /// Where the SQLite database and the images live [default: $XDG_DATA_HOME/seedbed or
    /// ~/.local/share/seedbed].
    #[arg(long, env = "SEEDBED_DATA_DIR")]
    data_dir: Option<PathBuf>,

    /// Folder of models: diffusers folders, served under their folder names, and single-file
    /// checkpoints (`NAME.safetensors`), served as NAME.
    #[arg(long, env = "SEEDBED_MODELS_DIR", default_value = "models")]
    models_dir: PathBuf,

    /// Folder of LoRA files (`*.safetensors`, Kohya or diffusers/PEFT) that requests may
    /// apply by name in `loras`; listed at GET /v1/loras. Without it, no LoRAs.
    #[arg(long, env = "SEEDBED_LORAS_DIR")]
    loras_dir: Option<PathBuf>,

    /// Serve a model under another name too, e.g. `seedream-4-5-251128=sdxl-turbo`.
    /// Repeatable; the variable takes a comma-separated list.
    #[arg(
        long = "alias",
        value_name = "PUBLIC=LOCAL",
        env = "SEEDBED_ALIASES",
        value_delimiter = ',',
        value_parser = seedbed_core::catalog::parse_alias
    )]
    aliases: Vec<(String, String)>,

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

    /// Job, key and usage store: sqlite:///path/seedbed.db, or postgres://USER:PASS@HOST/DB
    /// for several nodes sharing one queue (see docs/cluster.md) [default:
    /// sqlite://<data-dir>/seedbed.db].
    #[arg(long, env = "SEEDBED_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,

    /// This node's name in job leases and job records; must differ between nodes sharing a
    /// database and stay the same across restarts [default: made once, kept in
    /// <data-dir>/node-id].
    #[arg(long, env = "SEEDBED_NODE_ID", value_parser = node_name)]
    node_id: Option<String>,

    /// Seconds a node holds a running job without renewing it (it renews every third of
    /// this); a killed node's jobs run elsewhere once it has passed.
    #[arg(
        long,
        env = "SEEDBED_LEASE_SECS",
        default_value_t = CoreConfig::default().lease.as_secs(),
        value_parser = RangedU64ValueParser::<u64>::new().range(2..)
    )]
    lease_secs: u64,

    /// Which queues this node takes jobs from: `local` (models it computes), `gateway`
    /// (relayed models), both, or `none` (it only takes requests and serves results; other
    /// nodes sharing the database run them).
    #[arg(long, env = "SEEDBED_RUNS", default_value = "local,gateway", value_parser = runs)]
    runs: Runs,

    /// Image store: a folder, file:///path, or s3://BUCKET/PREFIX (prefix optional) reached
    /// through AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, and
    /// AWS_ALLOW_HTTP=true for an http:// endpoint [default: <data-dir>/blobs].
    #[arg(long, env = "SEEDBED_BLOB_URL")]
    blob_url: Option<String>,

    /// Jobs that may wait; beyond it requests get 429 ServerOverloaded.
    #[arg(long, env = "SEEDBED_QUEUE_SIZE", default_value_t = CoreConfig::default().queue_size)]
    queue_size: u32,

    /// Largest request body in bytes (JSON with data URIs, uploads).
    #[arg(long, env = "SEEDBED_MAX_BODY_BYTES", default_value_t = HttpLimits::default().body_bytes)]
    max_body_bytes: usize,

    /// Largest reference image in bytes (upstream's 30 MB).
    #[arg(
        long,
        env = "SEEDBED_MAX_INPUT_IMAGE_BYTES",
        default_value_t = InputPolicy::default().max_bytes
    )]
    max_input_image_bytes: usize,

    /// How long images and their links live, in seconds (upstream's 24 h).
    #[arg(
        long,
        env = "SEEDBED_IMAGE_TTL_SECS",
        default_value_t = CoreConfig::default().image_ttl.as_secs(),
        value_parser = at_least_one()
    )]
    image_ttl_secs: u64,

    /// Fetch reference image URLs on loopback or private networks (refused by default).
    #[arg(long, env = "SEEDBED_ALLOW_PRIVATE_URLS")]
    allow_private_urls: bool,

    /// Gigabytes of model weights kept loaded (weight files, plus the copies of weights merged
    /// with recent requests' LoRAs); least-recently-used models are unloaded first.
    #[arg(
        long,
        env = "SEEDBED_MODEL_MEMORY_GB",
        default_value_t = DeviceOptions::DEFAULT_MEMORY_BUDGET as f64 / GIB
    )]
    model_memory_gb: f64,

    /// Seconds a running job may take to finish on shutdown before it is put back in the
    /// queue for the next start.
    #[arg(
        long,
        env = "SEEDBED_SHUTDOWN_GRACE_SECS",
        default_value_t = CoreConfig::default().shutdown_grace.as_secs()
    )]
    shutdown_grace_secs: u64,

    /// Requests handled at once; beyond it requests get 429 ServerOverloaded at once rather
    /// than waiting (open event streams count separately).
    #[arg(
        long,
        env = "SEEDBED_MAX_IN_FLIGHT",
        default_value_t = HttpLimits::default().max_in_flight,
        value_parser = at_least_one_usize()
    )]
    max_in_flight: usize,

    /// Seconds a client has to send its request headers; idle keep-alive connections are
    /// closed after as long.
    #[arg(
        long,
        env = "SEEDBED_HEADER_TIMEOUT_SECS",
        default_value_t = HttpLimits::default().header_timeout.as_secs(),
        value_parser = at_least_one()
    )]
    header_timeout_secs: u64,

    /// Seconds a request body has to arrive in full; a slower one gets 408 RequestTimeout.
    #[arg(
        long,
        env = "SEEDBED_BODY_TIMEOUT_SECS",
        default_value_t = HttpLimits::default().body_timeout.as_secs(),
        value_parser = at_least_one()
    )]
    body_timeout_secs: u64,

    /// Event streams (`stream: true` generations, /v1/jobs/{id}/events) one API key may have
    /// open; more get 429.
    #[arg(
        long,
        env = "SEEDBED_MAX_STREAMS_PER_KEY",
        default_value_t = HttpLimits::default().streams_per_key,
        value_parser = at_least_one_usize()
    )]
    max_streams_per_key: usize,

    /// Event streams open at once, all keys together; more get 429.
    #[arg(
        long,
        env = "SEEDBED_MAX_STREAMS",
        default_value_t = HttpLimits::default().streams_total,
        value_parser = at_least_one_usize()
    )]
    max_streams: usize,

    /// Seconds an event stream may be idle before a keep-alive comment goes out, so proxies
    /// do not cut it.
    #[arg(
        long,
        env = "SEEDBED_SSE_KEEP_ALIVE_SECS",
        default_value_t = HttpLimits::default().sse_keep_alive.as_secs(),
        value_parser = at_least_one()
    )]
    sse_keep_alive_secs: u64,

    /// An upstream provider, `NAME=KIND,URL` with KIND ark, openai or seedbed; its key comes
    /// from `SEEDBED_UPSTREAM_<NAME>_KEY`. Repeatable, in priority order. The config file's
    /// `[[upstream]]` tables take more (timeouts, `rehost`, model maps).
    #[arg(long = "upstream", value_name = "NAME=KIND,URL", value_parser = seedbed_gateway::parse_upstream)]
    upstreams: Vec<UpstreamConfig>,

    /// Serve a model from an upstream: `PUBLIC=UPSTREAM[:MODEL]`. Repeat a PUBLIC id for
    /// fallbacks, in priority order.
    #[arg(long = "route", value_name = "PUBLIC=UPSTREAM[:MODEL]", value_parser = seedbed_gateway::parse_route)]
    routes: Vec<(String, String, String)>,

    #[command(flatten)]
    device: DeviceArgs,

    /// The config file's `[[upstream]]` tables, ahead of `--upstream` flags.
    #[arg(skip)]
    pub(super) file_upstreams: Vec<UpstreamConfig>,
}

/// A limit of 0 would refuse every request (or close every connection at once), which is
/// never what was meant.
fn at_least_one() -> RangedU64ValueParser<u64> {
    RangedU64ValueParser::new().range(1..)
}

fn at_least_one_usize() -> RangedU64ValueParser<usize> {
    RangedU64ValueParser::new().range(1..)
}

/// `local`, `gateway`, `local,gateway` or `none`.
fn runs(text: &str) -> Result<Runs, String> {
    let mut runs = Runs {
        local: false,
        gateway: false,
    };
    if text.trim() == "none" {
        return Ok(runs);
    }
    for lane in text.split(',').map(str::trim) {
        match lane {
            "local" => runs.local = true,
            "gateway" => runs.gateway = true,
            other => {
                return Err(format!(
                    "`{other}` is not a queue: use local, gateway, local,gateway or none"
                ));
            }
        }
    }
    Ok(runs)
}

/// A node name: letters, digits, `-`, `_` and `.`, at most 64 (it is written in every job it
/// runs and shown in job views).
fn node_name(text: &str) -> Result<String, String> {
    let ok = !text.is_empty()
        && text.len() <= 64
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(text.to_string())
    } else {
        Err(format!(
            "`{text}` is not a node name: 1-64 letters, digits, `-`, `_` or `.`"
        ))
    }
}

/// `127.0.0.1:8080`, `[::1]:8080` or a name such as `localhost:8080` (its first IPv4
/// address, else its first address).
fn listen_address(text: &str) -> Result<SocketAddr, String> {
    if let Ok(address) = text.parse() {
        return Ok(address);
    }
    let addresses: Vec<SocketAddr> = text
        .to_socket_addrs()
        .map_err(|e| format!("`{text}` is not HOST:PORT or does not resolve: {e}"))?
        .collect();
    addresses
        .iter()
        .find(|a| a.is_ipv4())
        .or(addresses.first())
        .copied()
        .ok_or_else(|| format!("`{text}` resolves to no address"))
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

impl ServeArgs {
    pub fn into_config(self) -> Result<ServeConfig> {
        let data_dir = self.data_dir.unwrap_or_else(default_data_dir);
        let mut config = ServeConfig::new(self.listen, data_dir, self.models_dir);
        config.loras_dir = self.loras_dir;
        config.aliases = self.aliases;
        config.api_keys = self.api_keys;
        config.key_secret_file = self.key_secret_file;
        config.metrics_key = self.metrics_key;
        config.public_url = self.public_url;
        config.database_url = self.database_url;
        config.blob_url = self.blob_url;
        config.node_id = self.node_id;

        let jobs = &mut config.jobs;
        jobs.queue_size = self.queue_size;
        jobs.image_ttl = Duration::from_secs(self.image_ttl_secs);
        jobs.shutdown_grace = Duration::from_secs(self.shutdown_grace_secs);
        jobs.lease = Duration::from_secs(self.lease_secs);
        jobs.runs = self.runs;
        jobs.inputs.max_bytes = self.max_input_image_bytes;
        jobs.inputs.allow_private_urls = self.allow_private_urls;

        let http = &mut config.http;
        http.body_bytes = self.max_body_bytes;
        http.max_in_flight = self.max_in_flight;
        http.header_timeout = Duration::from_secs(self.header_timeout_secs);
        http.body_timeout = Duration::from_secs(self.body_timeout_secs);
        http.streams_per_key = self.max_streams_per_key;
        http.streams_total = self.max_streams;
        http.sse_keep_alive = Duration::from_secs(self.sse_keep_alive_secs);

        if !(self.model_memory_gb.is_finite() && self.model_memory_gb > 0.0) {
            anyhow::bail!(
                "--model-memory-gb {} must be a positive number of gigabytes",
                self.model_memory_gb
            );
        }
        let memory_budget = (self.model_memory_gb * GIB) as u64;
        let mut load = self.device.load_options()?;
        load.memory_plan = self.device.memory_plan(memory_budget);
        config.device = DeviceOptions {
            load,
            memory_budget,
        };
        config.upstreams = self.file_upstreams;
        config.upstreams.extend(self.upstreams);
        config.routes = self.routes;
        Ok(config)
    }
}
