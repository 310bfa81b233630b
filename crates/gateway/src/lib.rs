//! The upstream gateway: a public model id served by Ark, an OpenAI-style images API or another
//! seedbed node. A request goes to its upstreams in priority order; 429s, 5xx answers and
//! connection failures before the first byte fall over to the next one. On the last one they
//! are retried a few times (honouring `Retry-After` up to a cap) before the failure, with the
//! upstream's `Retry-After`, goes back to the client. What comes back is a stream of
//! [`UpstreamEvent`]s that the job runner stores like local results.
//!
//! What an upstream sends is bounded: the whole non-streamed answer ([`MAX_ANSWER_BYTES`]),
//! each image, base64 or linked ([`fetch::MAX_IMAGE_BYTES`]), and image links are fetched
//! under the same address rule as clients' reference images ([`net`]).

mod answer;
mod config;
mod error;
mod fetch;
pub mod net;
mod openai;
mod seedream;

use std::sync::Arc;
use std::time::Duration;

use futures::stream::{BoxStream, StreamExt};
use seedbed_client::{Client, ClientError};
use seedbed_types::{ErrorCode, RawRequest, Usage};
use serde_json::{Map, Value};

pub use config::{Secret, UpstreamConfig, UpstreamKind, parse_route, parse_upstream};
pub use error::{GatewayError, ImageError};

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
        /// The last upstream's `Retry-After`, for the client.
        retry_after: Option<Duration>,
    },
}

/// The largest non-streamed answer read from an upstream: room for a batch of 15 base64 pictures
/// of several MB each, while 32 relays at once stay within a few GB at worst.
pub const MAX_ANSWER_BYTES: usize = 256 << 20;

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
    /// For the non-streamed call, which the gateway reads itself to cap its size.
    http: reqwest::Client,
    key: Option<Secret>,
    /// How this upstream's image links are fetched.
    images: Arc<net::FetchPolicy>,
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
    /// Whether to pause at all: before the next upstream, before a retry, for `Retry-After`.
    pauses: bool,
    max_answer_bytes: usize,
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
    ) -> Result<Self, GatewayError> {
        let mut inner = Inner {
            failover_backoff: Duration::from_millis(250),
            pauses: true,
            max_answer_bytes: MAX_ANSWER_BYTES,
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
            let client = builder.build().map_err(|e| GatewayError::Client {
                upstream: config.name.clone(),
                message: e.to_string(),
            })?;
            let http = reqwest::Client::builder()
                .timeout(config.timeout())
                .connect_timeout(Duration::from_secs(10))
                .user_agent(concat!("seedbed-gateway/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| GatewayError::Client {
                    upstream: config.name.clone(),
                    message: e.to_string(),
                })?;
            for (public, model) in &config.models {
                inner.routes.entry(public.clone()).or_default().push(Route {
                    upstream: index,
                    model: model.clone(),
                });
            }
            inner.upstreams.push(Upstream {
                key: config.key(),
                images: Arc::new(fetch::policy(&config)),
                config,
                client,
                http,
            });
        }
        for (public, name, model) in extra_routes {
            let upstream = inner
                .upstreams
                .iter()
                .position(|u| &u.config.name == name)
                .ok_or_else(|| GatewayError::UnknownUpstream {
                    public: public.clone(),
                    upstream: name.clone(),
                })?;
            inner.routes.entry(public.clone()).or_default().push(Route {
                upstream,
                model: model.clone(),
            });
        }
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// For tests: no pauses between upstreams, before retries or for `Retry-After` (the
    /// number of retries and the `Retry-After` cap still apply).
    pub fn without_backoff(mut self) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.failover_backoff = Duration::ZERO;
            inner.pauses = false;
        }
        self
    }

    async fn pause(&self, duration: Duration) {
        if self.inner.pauses && !duration.is_zero() {
            tokio::time::sleep(duration).await;
        }
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
                self.pause(self.inner.failover_backoff * attempt as u32)
                    .await;
            }
            let upstream = &self.inner.upstreams[route.upstream];
            let is_last = attempt + 1 == routes.len();
            let mut retries = 0;
            let error = loop {
                let started = match upstream.config.kind {
                    UpstreamKind::Ark | UpstreamKind::Seedbed => {
                        seedream::start(
                            upstream,
                            self.inner.max_answer_bytes,
                            &route.model,
                            &request,
                        )
                        .await
                    }
                    UpstreamKind::Openai => {
                        openai::start(
                            upstream,
                            self.inner.max_answer_bytes,
                            &route.model,
                            &request,
                        )
                        .await
                    }
                };
                let error = match started {
                    Ok(events) => return events,
                    Err(error) if !falls_over(&error) => {
                        return futures::stream::iter([failed(&error)]).boxed();
                    }
                    Err(error) => error,
                };
                // With nowhere left to fall over to, a busy or briefly unreachable upstream is
                // worth a few more tries before the client is told.
                let retry = (is_last && retries < upstream.config.retries)
                    .then(|| retry_delay(&upstream.config, retries, &error))
                    .flatten();
                let Some(delay) = retry else {
                    break error;
                };
                retries += 1;
                tracing::warn!(upstream = %upstream.config.name, %error, retry = retries,
                    delay_ms = delay.as_millis() as u64, "upstream failed; retrying");
                self.pause(delay).await;
            };
            tracing::warn!(upstream = %upstream.config.name, %error, "upstream failed");
            last = Some(error);
        }
        let event = match last {
            Some(error) => failed(&error),
            None => UpstreamEvent::Failed {
                status: 404,
                code: ErrorCode::ModelNotFound.as_str().into(),
                message: format!("no upstream serves the model {model}"),
                param: Some("model".into()),
                retry_after: None,
            },
        };
        futures::stream::iter([event]).boxed()
    }
}

/// 429, 5xx and failures to connect or answer in time move on to the next upstream.
fn falls_over(error: &ClientError) -> bool {
    error.is_retryable()
}

/// The pause before retrying the same upstream, or `None` when it is not worth another try:
/// only 429, 5xx and failed connections are retried. A timeout is not: the generation may still
/// be running (and billed) at the provider, and another try would wait as long again. The
/// pause is the backoff (doubled per retry, capped like `Retry-After`) or the upstream's
/// `Retry-After` when longer; a `Retry-After` beyond the cap ends the request, so the client
/// gets it and can decide.
fn retry_delay(config: &UpstreamConfig, retries: u32, error: &ClientError) -> Option<Duration> {
    let retry_after = match error {
        ClientError::Api {
            status,
            retry_after,
            ..
        } if *status == 429 || *status >= 500 => *retry_after,
        ClientError::Connect { .. } => None,
        _ => return None,
    };
    let backoff = (config.retry_backoff() * 2u32.saturating_pow(retries.min(8)))
        .min(config.max_retry_after());
    match retry_after {
        Some(after) if after > config.max_retry_after() => None,
        Some(after) => Some(after.max(backoff)),
        None => Some(backoff),
    }
}

fn failed(error: &ClientError) -> UpstreamEvent {
    match error {
        ClientError::Api {
            status,
            code,
            message,
            param,
            retry_after,
            ..
        } => UpstreamEvent::Failed {
            status: *status,
            code: code.clone(),
            message: message.clone(),
            param: param.clone(),
            retry_after: *retry_after,
        },
        ClientError::Timeout { .. } => UpstreamEvent::Failed {
            status: ErrorCode::UpstreamTimeout.status(),
            code: ErrorCode::UpstreamTimeout.as_str().into(),
            message: "the upstream provider did not answer in time".into(),
            param: None,
            retry_after: None,
        },
        other => UpstreamEvent::Failed {
            status: ErrorCode::UpstreamUnavailable.status(),
            code: ErrorCode::UpstreamUnavailable.as_str().into(),
            message: format!("the upstream provider could not be used: {other}"),
            param: None,
            retry_after: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use serde_json::json;
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use super::*;

    fn png(width: u32, height: u32) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        image::RgbImage::from_fn(width, height, |x, y| image::Rgb([x as u8, y as u8, 9]))
            .write_to(&mut out, image::ImageFormat::Png)
            .unwrap();
        out.into_inner()
    }

    /// One Ark upstream at `server` serving the public model `m`, and a change to its config.
    fn gateway(server: &MockServer, change: impl FnOnce(&mut UpstreamConfig)) -> Gateway {
        let mut config = UpstreamConfig::new(
            "ark",
            UpstreamKind::Ark,
            &format!("{}/api/v3", server.uri()),
        );
        config.models.insert("m".into(), "seedream".into());
        change(&mut config);
        Gateway::new(vec![config], &[]).unwrap().without_backoff()
    }

    async fn run(gateway: &Gateway) -> Vec<UpstreamEvent> {
        let request = RawRequest::parse(br#"{"model":"m","prompt":"x"}"#).unwrap();
        gateway.run("m", request).collect().await
    }

    /// The upstream answers with these `data` entries.
    async fn answering(data: serde_json::Value) -> MockServer {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/api/v3/images/generations"))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(json!({"model": "seedream", "created": 1, "data": data})),
            )
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/a.png"))
            .respond_with(ResponseTemplate::new(200).set_body_bytes(png(16, 16)))
            .mount(&server)
            .await;
        server
    }

    fn image_failure(events: &[UpstreamEvent]) -> Option<&str> {
        events.iter().find_map(|event| match event {
            UpstreamEvent::ImageFailed { message, .. } => Some(message.as_str()),
            _ => None,
        })
    }

    #[tokio::test]
    async fn private_image_links_from_an_upstream_are_refused() {
        // `localhost` is another name for the mock's own private address: not the origin the
        // operator configured, so it must be public to be fetched.
        let port = MockServer::start().await.address().port();
        let server = answering(json!([{"url": format!("http://localhost:{port}/a.png")}])).await;
        let refused = run(&gateway(&server, |_| {})).await;
        let message = image_failure(&refused).expect("the link is refused");
        assert!(message.contains("private or loopback"), "{message}");
        assert!(!message.contains("127.0.0.1"), "{message}");

        // The upstream's own origin is trusted, and an operator can allow private links.
        let own = MockServer::start().await;
        let link = format!("{}/a.png", own.uri());
        Mock::given(method("POST"))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(json!({"created": 1, "data": [{"url": link}]})),
            )
            .mount(&own)
            .await;
        Mock::given(method("GET"))
            .respond_with(ResponseTemplate::new(200).set_body_bytes(png(16, 16)))
            .mount(&own)
            .await;
        let delivered = run(&gateway(&own, |_| {})).await;
        assert!(
            matches!(&delivered[0], UpstreamEvent::Image { image, .. } if image.width == 16),
            "{delivered:?}"
        );
        let image_host = answering(json!([])).await;
        let link = format!("http://localhost:{}/a.png", image_host.address().port());
        let allowed = answering(json!([{ "url": link }])).await;
        let delivered = run(&gateway(&allowed, |c| c.allow_private_image_urls = true)).await;
        assert!(
            matches!(&delivered[0], UpstreamEvent::Image { image, .. } if image.width == 16),
            "{delivered:?}"
        );
    }

    #[tokio::test]
    async fn oversized_answers_and_base64_images_are_refused() {
        let b64 = base64::engine::general_purpose::STANDARD.encode(png(64, 64));
        let server = answering(json!([{ "b64_json": b64 }])).await;
        let mut small = gateway(&server, |_| {});
        let inner = Arc::get_mut(&mut small.inner).unwrap();
        inner.upstreams[0].images = Arc::new(net::FetchPolicy {
            max_bytes: 100,
            ..(*inner.upstreams[0].images).clone()
        });
        let events = run(&small).await;
        let message = image_failure(&events).expect("the picture is refused");
        assert!(message.contains("larger than 100 bytes"), "{message}");

        let mut tiny = gateway(&server, |_| {});
        Arc::get_mut(&mut tiny.inner).unwrap().max_answer_bytes = 200;
        let events = run(&tiny).await;
        let [
            UpstreamEvent::Failed {
                status, message, ..
            },
        ] = &events[..]
        else {
            panic!("{events:?}");
        };
        assert_eq!(*status, 502);
        assert!(message.contains("larger than 200 bytes"), "{message}");
    }

    #[test]
    fn retries_honour_retry_after_up_to_the_cap() {
        let config = UpstreamConfig::new("u", UpstreamKind::Ark, "http://u");
        let api = |status, after: Option<u64>| ClientError::Api {
            status,
            code: "X".into(),
            message: String::new(),
            param: None,
            request_id: None,
            retry_after: after.map(Duration::from_secs),
        };
        let ms = Duration::from_millis;
        assert_eq!(retry_delay(&config, 0, &api(503, None)), Some(ms(500)));
        assert_eq!(retry_delay(&config, 1, &api(503, None)), Some(ms(1000)));
        assert_eq!(retry_delay(&config, 0, &api(429, Some(3))), Some(ms(3000)));
        assert_eq!(
            retry_delay(&config, 1, &api(429, Some(10))),
            Some(ms(10_000))
        );
        assert_eq!(retry_delay(&config, 0, &api(429, Some(11))), None);
        assert_eq!(retry_delay(&config, 7, &api(502, None)), Some(ms(10_000)));
        assert_eq!(retry_delay(&config, 0, &api(400, None)), None);
        let timeout = ClientError::Timeout { request_id: None };
        assert_eq!(retry_delay(&config, 0, &timeout), None);
    }
}
