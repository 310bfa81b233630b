//! Start a whole server: stores, catalog, device thread, runner, janitor, HTTP listener.
//! The binary and the integration tests both come through here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use seedbed_core::{Catalog, CoreConfig, Device, DeviceOptions, Jobs};
use seedbed_storage::{Blobs, Db, Keys};
use seedbed_types::Secret;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::auth::{Access, SCOPE_ADMIN, SCOPE_GENERATE};
use crate::links::LinkSigner;
use crate::state::{AppState, HttpLimits};

/// Everything a server is started with. Each default is written once, where the setting
/// lives: [`CoreConfig::default`] for jobs, [`HttpLimits::default`] for requests and streams,
/// [`DeviceOptions::default`] for the device; `seedbed serve`'s flags show them from there.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Default: `sqlite://<data_dir>/seedbed.db`.
    pub database_url: Option<String>,
    /// Default: the folder `<data_dir>/blobs`.
    pub blob_url: Option<String>,
    /// Settings for an `s3://` blob URL given here rather than by the `AWS_*` variables (a
    /// program embedding the server, tests).
    pub s3: Option<seedbed_storage::S3Settings>,
    /// This node's name in leases and job records; default: made once, kept in
    /// `<data_dir>/node-id`.
    pub node_id: Option<String>,
    pub models_dir: PathBuf,
    /// Folder of LoRA files (`*.safetensors`) requests may name in `loras`; none without it.
    pub loras_dir: Option<PathBuf>,
    pub aliases: Vec<(String, String)>,
    /// Bootstrap keys with every scope, stored hashed. Exactly these are the bootstrap keys:
    /// one removed from the list is revoked at the next start.
    pub api_keys: Vec<Secret>,
    /// The secret API-key hashes are keyed with, kept outside the database; default
    /// `<data_dir>/key-hash.secret`, made on first start. Nodes sharing a database share it.
    pub key_secret_file: Option<PathBuf>,
    /// A bearer token good for `/metrics` and `/info` only (for a Prometheus scraper).
    pub metrics_key: Option<Secret>,
    /// Base of image links; default `http://<listen address>`.
    pub public_url: Option<String>,
    /// The queue, retries, image lifetime, reference images, shutdown grace (its `node_id`
    /// is replaced by the data dir's own).
    pub jobs: CoreConfig,
    /// Requests and event streams.
    pub http: HttpLimits,
    pub device: DeviceOptions,
    /// Upstream providers (in priority order) and the models they serve.
    pub upstreams: Vec<seedbed_gateway::UpstreamConfig>,
    /// Extra `(public model, upstream name, upstream model)` routes, after the upstreams' own.
    pub routes: Vec<(String, String, String)>,
}

impl ServeConfig {
    /// Defaults for everything but where things are.
    pub fn new(listen: SocketAddr, data_dir: PathBuf, models_dir: PathBuf) -> Self {
        Self {
            listen,
            data_dir,
            database_url: None,
            blob_url: None,
            s3: None,
            node_id: None,
            models_dir,
            loras_dir: None,
            aliases: Vec::new(),
            api_keys: Vec::new(),
            key_secret_file: None,
            metrics_key: None,
            public_url: None,
            jobs: CoreConfig::default(),
            http: HttpLimits::default(),
            device: DeviceOptions::default(),
            upstreams: Vec::new(),
            routes: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Storage(#[from] seedbed_storage::StorageError),
    #[error("{0}")]
    Core(#[from] seedbed_core::CoreError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// A server that is listening.
pub struct RunningServer {
    pub addr: SocketAddr,
    pub public_url: String,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningServer {
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Wait until the server has stopped: streams ended, the running job finished or put
    /// back in the queue.
    pub async fn wait(self) {
        for task in self.tasks {
            let _ = task.await;
        }
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.wait().await;
    }
}

fn metrics_handle() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| PrometheusBuilder::new().install_recorder().ok())
        .clone()
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServeError {
    let what = what.into();
    move |source| ServeError::Io { what, source }
}

/// This data dir's node id, made once, so a restart recognises its own interrupted jobs.
fn node_id(data_dir: &std::path::Path) -> Result<String, ServeError> {
    let path = data_dir.join("node-id");
    if let Ok(id) = std::fs::read_to_string(&path)
        && !id.trim().is_empty()
    {
        return Ok(id.trim().to_string());
    }
    let id = seedbed_core::new_id("node");
    crate::private::write_file(&path, id.as_bytes())
        .map_err(io(format!("writing {}", path.display())))?;
    Ok(id)
}

/// The key store under its hash secret, with the bootstrap keys made exactly those of the
/// command line, and the decision whether this server runs open (no key ever stored), which
/// start-up refuses beyond loopback.
async fn open_key_store(config: &ServeConfig, db: &Db) -> Result<Access, ServeError> {
    let secret_path = config
        .key_secret_file
        .clone()
        .unwrap_or_else(|| config.data_dir.join("key-hash.secret"));
    let (pepper, made) = crate::private::secret_file(&secret_path).map_err(io(format!(
        "reading the key-hash secret {}",
        secret_path.display()
    )))?;
    let keys = Keys::new(db.clone(), pepper);
    let had_keys = keys.any_ever().await?;
    if made && had_keys {
        tracing::warn!(
            file = %secret_path.display(),
            "made a new key-hash secret for a database that has keys: keys created before \
             will not authenticate (restore the old file, or pass --api-key and create new keys)"
        );
    }
    let scopes = [SCOPE_GENERATE.to_string(), SCOPE_ADMIN.to_string()];
    let secrets: Vec<String> = config
        .api_keys
        .iter()
        .map(|key| key.expose().to_string())
        .collect();
    let bootstrap = keys.sync_bootstrap(&secrets, &scopes).await?;
    if bootstrap.revoked > 0 {
        tracing::info!(
            revoked = bootstrap.revoked,
            "revoked bootstrap keys no longer given with --api-key"
        );
    }
    let open = !keys.any_ever().await?;
    if open && !config.listen.ip().is_loopback() {
        return Err(ServeError::Refused(format!(
            "refusing to listen on {} without an API key: anyone who can reach it could use it. \
             Pass --api-key KEY (or SEEDBED_API_KEY), or listen on 127.0.0.1.",
            config.listen
        )));
    }
    if !open && keys.live_count().await? == 0 {
        tracing::warn!(
            "every API key in the database is revoked: each request will be refused until \
             the server is started with --api-key"
        );
    }
    let metrics_key = config.metrics_key.as_ref().map(Secret::expose);
    Ok(Access::new(keys, open, metrics_key))
}

pub async fn start(config: ServeConfig) -> Result<RunningServer, ServeError> {
    crate::private::create_dir(&config.data_dir).map_err(io(format!(
        "creating the data directory {}",
        config.data_dir.display()
    )))?;
    let database_path = config.data_dir.join("seedbed.db");
    let database_url = config
        .database_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", database_path.display()));
    let db = Db::open(&database_url).await?;
    if config.database_url.is_none() {
        // SQLite gives its -wal and -shm files the database file's mode.
        crate::private::restrict_file(&database_path)
            .map_err(io(format!("restricting {}", database_path.display())))?;
    }
    let blobs = match (&config.blob_url, &config.s3) {
        (Some(url), Some(settings)) if url.starts_with("s3://") => Blobs::s3(url, settings)?,
        (Some(url), _) => Blobs::open(url)?,
        (None, _) => {
            let dir = config.data_dir.join("blobs");
            crate::private::create_dir(&dir).map_err(io(format!("creating {}", dir.display())))?;
            Blobs::local(&dir)?
        }
    };
    // A missing bucket or refused credentials stop the start, not the first image.
    blobs.check().await?;
    let access = open_key_store(&config, &db).await?;
    let loras = match &config.loras_dir {
        Some(dir) => Some(seedbed_core::loras::LoraFolder::open(dir)?),
        None => None,
    };
    let catalog = Catalog::scan(&config.models_dir, &config.aliases)?.with_loras(loras);
    if catalog.models().next().is_none() {
        tracing::warn!(dir = %config.models_dir.display(), "no model folders found; every generation will be 404");
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(io(format!("listening on {}", config.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(io("reading the bound address"))?;
    let public_url = config
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"));
    let secret = db
        .secret("link_signing_key", || {
            (0..32).map(|_| rand::random::<u8>()).collect()
        })
        .await?;
    let core_config = CoreConfig {
        node_id: match &config.node_id {
            Some(id) => id.clone(),
            None => node_id(&config.data_dir)?,
        },
        ..config.jobs.clone()
    };
    let gateway = seedbed_gateway::Gateway::new(config.upstreams.clone(), &config.routes)
        .map_err(|e| ServeError::Refused(e.to_string()))?;
    let jobs = Jobs::new(db, blobs, catalog, gateway, core_config);
    jobs.refresh_peers().await?;
    // Before the listener takes requests: a job being admitted stores its reference images
    // before its row exists, and the sweep would take them for an orphan's.
    match jobs.sweep_inputs().await {
        Ok(0) => {}
        Ok(count) => tracing::info!(count, "deleted reference images of ended jobs"),
        Err(error) => tracing::error!(%error, "sweeping reference images failed"),
    }
    let device = Device::spawn(config.device.clone())?;
    let shutdown = CancellationToken::new();
    let runner = jobs.start(device.clone(), shutdown.clone());
    let janitor = jobs.start_janitor(shutdown.clone());
    let state = AppState::new(
        jobs,
        device,
        LinkSigner::new(secret, &public_url),
        access,
        config.http.clone(),
        metrics_handle(),
        shutdown.clone(),
    );
    let app = crate::app(state);
    // Our own accept loop rather than `axum::serve`, for its header read timeout.
    let http = tokio::spawn(crate::listener::serve(
        listener,
        app,
        config.http.header_timeout,
        shutdown.clone(),
    ));
    tracing::info!(%addr, %public_url, "seedbed is listening");
    Ok(RunningServer {
        addr,
        public_url,
        shutdown,
        tasks: vec![http, runner, janitor],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_a_key() {
        let mut config = ServeConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            "data".into(),
            "models".into(),
        );
        config.api_keys = vec!["sb-bootstrap-secret".into()];
        config.metrics_key = Some("scraper-secret".into());
        let shown = format!("{config:?}");
        assert!(!shown.contains("bootstrap-secret") && !shown.contains("scraper-secret"));
    }
}
