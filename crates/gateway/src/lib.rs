//! The upstream gateway: a public model id served by Ark, an OpenAI-style images API or another
//! seedbed node. A request goes to its upstreams in priority order; 429s, 5xx answers and
//! connection failures before the first byte fall over to the next one. What comes back is a
//! stream of [`UpstreamEvent`]s that the job runner stores like local results.

mod config;
mod fetch;
pub mod net;
mod openai;
mod seedream;

use std::sync::Arc;
use std::time::Duration;

use futures::stream::{BoxStream, StreamExt};
use seedbed_client::{Client, ClientError};
use seedbed_types::{RawRequest, Usage};
use serde_json::{Map, Value};

pub use config::{Secret, UpstreamConfig, UpstreamKind, parse_route, parse_upstream};

/// What an upstream delivered, in the order it arrived.
#[derive(Debug, Clone)]
pub enum UpstreamEvent {
    Image {
        index: u32,
        image: Delivered,
        /// The provider's other fields for this image, relayed unchanged.
        extra: Map<String, Value>,
    },
    ImageFailed {
        index: u32,
        code: String,
        message: String,
    },
    /// The end, with the provider's usage block when it sent one.
    Completed {
        usage: Option<Usage>,
        extra: Map<String, Value>,
    },
    /// The request failed at every upstream: the last one's status and code.
    Failed {
        status: u16,
        code: String,
        message: String,
        param: Option<String>,
    },
}

/// An image as the runner gets it: the bytes (re-hosted) or only the provider's link.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub bytes: Option<bytes::Bytes>,
    pub url: Option<String>,
    pub width: u32,
    pub height: u32,
    /// `jpeg`, `png` or `webp`.
    pub format: String,
}

struct Upstream {
    config: UpstreamConfig,
    client: Client,
}

/// A route: which upstream, under which model id.
struct Route {
    upstream: usize,
    model: String,
}

#[derive(Clone, Default)]
pub struct Gateway {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    upstreams: Vec<Upstream>,
    /// Public model id -> routes in priority order.
    routes: std::collections::BTreeMap<String, Vec<Route>>,
    /// Pause before trying the next upstream.
    failover_backoff: Duration,
    http: reqwest::Client,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("models", &self.inner.routes.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Gateway {
    /// Upstreams in priority order; `extra_routes` (from `--route`) come after each upstream's
    /// own `models` table.
    pub fn new(
        configs: Vec<UpstreamConfig>,
        extra_routes: &[(String, String, String)],
    ) -> Result<Self, String> {
        let mut inner = Inner {
            failover_backoff: Duration::from_millis(250),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .map_err(|e| e.to_string())?,
            ..Inner::default()
        };
        for (index, config) in configs.into_iter().enumerate() {
            let mut builder = Client::builder(&config.base_url)
                .timeout(config.timeout())
                .max_retries(0)
                .user_agent(concat!("seedbed-gateway/", env!("CARGO_PKG_VERSION")));
            if let Some(key) = config.key() {
                builder = builder.api_key(key.expose());
            }
            let client = builder
                .build()
                .map_err(|e| format!("upstream {}: {e}", config.name))?;
            for (public, model) in &config.models {
                inner.routes.entry(public.clone()).or_default().push(Route {
                    upstream: index,
                    model: model.clone(),
                });
            }
            inner.upstreams.push(Upstream { config, client });
        }
        for (public, name, model) in extra_routes {
            let upstream = inner
                .upstreams
                .iter()
                .position(|u| &u.config.name == name)
                .ok_or_else(|| format!("route {public}: no upstream named `{name}`"))?;
            inner.routes.entry(public.clone()).or_default().push(Route {
                upstream,
                model: model.clone(),
            });
        }
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// For tests: no pause between upstreams.
    pub fn without_backoff(mut self) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.failover_backoff = Duration::ZERO;
        }
        self
    }

    pub fn serves(&self, model: &str) -> bool {
        self.inner.routes.contains_key(model)
    }

    /// `(public id, upstream name, upstream kind)` of every route's first choice.
    pub fn models(&self) -> Vec<(String, String, UpstreamKind)> {
        self.inner
            .routes
            .iter()
            .filter_map(|(public, routes)| {
                let first = &self.inner.upstreams[routes.first()?.upstream].config;
                Some((public.clone(), first.name.clone(), first.kind))
            })
            .collect()
    }

    /// Run `request` (the client's body, untouched) for the public `model`.
    pub fn run(&self, model: &str, request: RawRequest) -> BoxStream<'static, UpstreamEvent> {
        let gateway = self.clone();
        let model = model.to_string();
        futures::stream::once(async move { gateway.relay(&model, request).await })
            .flatten()
            .boxed()
    }

    async fn relay(&self, model: &str, request: RawRequest) -> BoxStream<'static, UpstreamEvent> {
        let routes = self
            .inner
            .routes
            .get(model)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let mut last = None;
        for (attempt, route) in routes.iter().enumerate() {
            if attempt > 0 {
                tokio::time::sleep(self.inner.failover_backoff * attempt as u32).await;
            }
            let upstream = &self.inner.upstreams[route.upstream];
            let started = match upstream.config.kind {
                UpstreamKind::Ark | UpstreamKind::Seedbed => {
                    seedream::start(upstream, &self.inner.http, &route.model, &request).await
                }
                UpstreamKind::Openai => {
                    openai::start(upstream, &self.inner.http, &route.model, &request).await
                }
            };
            match started {
                Ok(events) => return events,
                Err(error) if falls_over(&error) => {
                    tracing::warn!(upstream = %upstream.config.name, %error, "upstream failed; trying the next");
                    last = Some(error);
                }
                Err(error) => return futures::stream::iter([failed(&error)]).boxed(),
            }
        }
        let event = match last {
            Some(error) => failed(&error),
            None => UpstreamEvent::Failed {
                status: 404,
                code: "InvalidEndpointOrModel.NotFound".into(),
                message: format!("no upstream serves the model {model}"),
                param: Some("model".into()),
            },
        };
        futures::stream::iter([event]).boxed()
    }
}

/// 429, 5xx and failures to connect or answer in time move on to the next upstream.
fn falls_over(error: &ClientError) -> bool {
    error.is_retryable()
}

fn failed(error: &ClientError) -> UpstreamEvent {
    match error {
        ClientError::Api {
            status,
            code,
            message,
            param,
            ..
        } => UpstreamEvent::Failed {
            status: *status,
            code: code.clone(),
            message: message.clone(),
            param: param.clone(),
        },
        ClientError::Timeout { .. } => UpstreamEvent::Failed {
            status: 504,
            code: "UpstreamTimeout".into(),
            message: "the upstream provider did not answer in time".into(),
            param: None,
        },
        other => UpstreamEvent::Failed {
            status: 502,
            code: "UpstreamUnavailable".into(),
            message: format!("the upstream provider could not be used: {other}"),
            param: None,
        },
    }
}
