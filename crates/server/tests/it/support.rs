use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use seedbed_server::serve::{RunningServer, ServeConfig, start};

pub fn models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models")
}

/// A models folder of `(fixture group, fixture, folder name)` links (not copies), as a user's
/// folder of downloaded models would be.
pub fn linked_models(links: &[(&str, &str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
    for (group, fixture, name) in links {
        std::os::unix::fs::symlink(fixtures.join(group).join(fixture), dir.path().join(name))
            .unwrap();
    }
    dir
}

/// Tiny SD beside the tiny FLUX pipelines.
pub const FLUX_LINKS: [(&str, &str, &str); 3] = [
    ("models", "tiny-sd", "tiny-sd"),
    ("models-dit", "tiny-flux-schnell", "tiny-flux-schnell"),
    ("models-dit", "tiny-flux-dev", "tiny-flux-dev"),
];

/// Tiny Z-Image and SD3.5 under their own names and under "-turbo" names: the Turbo defaults
/// are told apart by the folder name alone.
pub const DIT_LINKS: [(&str, &str, &str); 4] = [
    ("models-dit", "tiny-zimage", "tiny-zimage"),
    ("models-dit", "tiny-zimage", "tiny-zimage-turbo"),
    ("models-dit", "tiny-sd3", "tiny-sd3"),
    ("models-dit", "tiny-sd3", "tiny-sd3-turbo"),
];

/// A models folder with the SD fixtures and the tiny FLUX pipelines side by side.
pub fn models_with_flux() -> tempfile::TempDir {
    linked_models(&FLUX_LINKS)
}

/// A models folder with tiny SD, Z-Image and SD3.5 (and their "-turbo" links).
pub fn models_with_dit() -> tempfile::TempDir {
    let mut links = vec![FLUX_LINKS[0]];
    links.extend(DIT_LINKS);
    linked_models(&links)
}

/// A `width x height` gradient PNG as a `data:` URI, for image-to-image requests.
pub fn png_data_uri(width: u32, height: u32) -> String {
    use base64::Engine;
    let picture = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
    });
    let mut bytes = Vec::new();
    picture
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .unwrap();
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

pub struct TestServer {
    pub server: Option<RunningServer>,
    pub url: String,
    pub client: reqwest::Client,
    pub data_dir: tempfile::TempDir,
}

pub fn config(data_dir: &Path) -> ServeConfig {
    let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut config = ServeConfig::new(listen, data_dir.to_path_buf(), models_dir());
    config.aliases = vec![("seedream-4-5-251128".into(), "tiny-sd".into())];
    config.jobs.shutdown_grace = Duration::from_secs(5);
    config
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut ServeConfig)) -> Self {
        let data_dir = tempfile::tempdir().unwrap();
        let mut config = config(data_dir.path());
        adjust(&mut config);
        Self::start_in(data_dir, config).await
    }

    pub async fn start_in(data_dir: tempfile::TempDir, config: ServeConfig) -> Self {
        let server = start(config).await.unwrap();
        let url = format!("http://{}", server.addr);
        Self {
            server: Some(server),
            url,
            client: reqwest::Client::new(),
            data_dir,
        }
    }

    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.post(format!("{}{path}", self.url))
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.get(format!("{}{path}", self.url))
    }

    /// `POST /v1/keys` with an admin key; the created key (its secret included).
    pub async fn create_key(&self, admin: &str, body: serde_json::Value) -> serde_json::Value {
        self.post("/v1/keys")
            .bearer_auth(admin)
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// `GET path` as JSON (no key).
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        self.get(path).send().await.unwrap().json().await.unwrap()
    }

    /// `GET path` as JSON with a key.
    pub async fn get_json_as(&self, path: &str, key: &str) -> serde_json::Value {
        let response = self.get(path).bearer_auth(key).send().await.unwrap();
        response.json().await.unwrap()
    }

    /// A generation request with a key.
    pub async fn generate_as(&self, key: &str, body: serde_json::Value) -> reqwest::Response {
        self.post("/api/v3/images/generations")
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn generate(&self, body: serde_json::Value) -> reqwest::Response {
        self.post("/api/v3/images/generations")
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// Submit with `Prefer: respond-async`; returns the job id.
    pub async fn submit_async(&self, body: serde_json::Value) -> String {
        let job: serde_json::Value = self
            .post("/api/v3/images/generations")
            .header("Prefer", "respond-async")
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        job["id"].as_str().unwrap().to_string()
    }

    /// The event names of a job's event stream, from after `last_event_id`.
    pub async fn event_names(&self, id: &str, last_event_id: u32) -> Vec<String> {
        let events = self.events_after(id, last_event_id).await;
        events.into_iter().map(|(name, _)| name).collect()
    }

    /// A job's events from its first, `(event, data)` (the stream ends with the job).
    pub async fn job_events(&self, id: &str) -> Vec<(String, serde_json::Value)> {
        self.events_after(id, 0).await
    }

    async fn events_after(&self, id: &str, last_event_id: u32) -> Vec<(String, serde_json::Value)> {
        let text = self
            .get(&format!("/v1/jobs/{id}/events"))
            .header("Last-Event-ID", last_event_id.to_string())
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        sse_events(&text)
            .into_iter()
            .filter_map(|(name, data)| Some((name?, serde_json::from_str(&data).unwrap())))
            .collect()
    }

    pub async fn job(&self, id: &str, key: Option<&str>) -> serde_json::Value {
        let mut request = self.get(&format!("/v1/jobs/{id}"));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        request.send().await.unwrap().json().await.unwrap()
    }

    /// Poll a job every 50 ms until `reached` holds, at most `tries` times; returns the last
    /// job object seen and whether it got there.
    pub async fn poll_job(
        &self,
        id: &str,
        key: Option<&str>,
        tries: u32,
        reached: impl Fn(&serde_json::Value) -> bool,
    ) -> (serde_json::Value, bool) {
        let mut job = serde_json::Value::Null;
        for _ in 0..tries {
            job = self.job(id, key).await;
            if reached(&job) {
                return (job, true);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (job, false)
    }

    /// Poll a job until it reaches a final status.
    pub async fn wait_job(&self, id: &str, key: Option<&str>) -> serde_json::Value {
        let (job, done) = self
            .poll_job(id, key, 1200, |job| {
                matches!(
                    job["status"].as_str(),
                    Some("succeeded" | "failed" | "cancelled")
                )
            })
            .await;
        assert!(done, "job {id} did not finish: {job}");
        job
    }

    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(server) = self.server.take() {
            server.stop().await;
        }
        self.data_dir
    }
}

/// A quick request for the tiny model.
pub fn tiny(extra: serde_json::Value) -> serde_json::Value {
    let mut body = serde_json::json!({
        "model": "seedream-4-5-251128",
        "prompt": "a lighthouse at dusk",
        "steps": 2,
    });
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    body
}

/// `(event, data)` pairs of an SSE body.
pub fn sse_events(text: &str) -> Vec<(Option<String>, String)> {
    text.split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .map(|block| {
            let mut event = None;
            let mut data = String::new();
            for line in block.lines() {
                if let Some(name) = line.strip_prefix("event: ") {
                    event = Some(name.to_string());
                } else if let Some(payload) = line.strip_prefix("data: ") {
                    data = payload.to_string();
                }
            }
            (event, data)
        })
        .collect()
}
