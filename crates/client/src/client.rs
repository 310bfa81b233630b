//! The HTTP core: one request id per call, retries with backoff that honour `Retry-After` and
//! `x-should-retry`, and the error envelope turned into [`ClientError::Api`].

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;

use crate::ClientError;
use crate::scope::KeyScope;
use seedbed_types::new_request_id;

pub const REQUEST_ID_HEADER: &str = "x-client-request-id";
pub const JOB_ID_HEADER: &str = "x-seedbed-job-id";
/// The longest `Retry-After` we wait out before giving the error to the caller.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Async client for seedbed and other Seedream-compatible APIs; cheap to clone.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub http: reqwest::Client,
    /// Where `images/generations` lives, e.g. `http://host:8080/api/v3`.
    pub api_base: String,
    /// `scheme://host:port`: seedbed's own routes hang off it.
    pub origin: String,
    /// Where the key may be sent (compared parsed, never by text prefix).
    pub scope: KeyScope,
    pub api_key: Option<String>,
    pub max_retries: u32,
    pub backoff: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("api_base", &self.inner.api_base)
            .field("api_key", &self.inner.api_key.as_ref().map(|_| "***"))
            .finish()
    }
}

/// A successful response with the ids to find it again.
pub(crate) struct Answer {
    pub response: Response,
    pub request_id: String,
}

impl Answer {
    pub fn job_id(&self) -> Option<String> {
        header(self.response.headers(), JOB_ID_HEADER)
    }

    pub async fn json<T: DeserializeOwned>(self) -> Result<T, ClientError> {
        let request_id = self.request_id;
        let bytes = self
            .response
            .bytes()
            .await
            .map_err(|e| ClientError::from_transport(e, &request_id))?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
            request_id: Some(request_id),
            message: format!(
                "{e} in {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            ),
        })
    }
}

impl Client {
    pub fn builder(base: impl Into<String>) -> crate::ClientBuilder {
        crate::ClientBuilder::new(base)
    }

    pub fn generations_url(&self) -> String {
        format!("{}/images/generations", self.inner.api_base)
    }

    /// A seedbed route (`/v1/jobs`, `/health`, ...) on the base's origin.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.inner.origin)
    }

    /// A request to one of the client's own routes: with the key when `url` is on the base's
    /// origin.
    pub(crate) fn request(&self, method: Method, url: &str) -> RequestBuilder {
        self.keyed(method, url, KeyScope::same_origin)
    }

    /// A request to a link a server handed us (an image): with the key only when the link is
    /// on the base's origin and under the base's path.
    pub(crate) fn request_link(&self, method: Method, url: &str) -> RequestBuilder {
        self.keyed(method, url, KeyScope::covers_link)
    }

    fn keyed(
        &self,
        method: Method,
        url: &str,
        allowed: fn(&KeyScope, &reqwest::Url) -> bool,
    ) -> RequestBuilder {
        let mut request = self.inner.http.request(method, url);
        if let Some(key) = &self.inner.api_key
            // Parsed, not `starts_with`: `https://host.evil.net` and `https://host@evil.net`
            // start with `https://host` too. A URL that does not parse gets no key (and fails).
            && reqwest::Url::parse(url).is_ok_and(|url| allowed(&self.inner.scope, &url))
        {
            request = request.bearer_auth(key);
        }
        request
    }

    /// Send what `make` builds, retrying transient failures; any non-2xx becomes an error.
    pub(crate) async fn send(
        &self,
        make: impl Fn() -> RequestBuilder,
    ) -> Result<Answer, ClientError> {
        let request_id = new_request_id();
        let mut attempt = 0;
        loop {
            let sent = make().header(REQUEST_ID_HEADER, &request_id).send().await;
            let (error, should_retry) = match sent {
                Ok(response) if response.status().is_success() => {
                    let request_id =
                        header(response.headers(), REQUEST_ID_HEADER).unwrap_or(request_id);
                    return Ok(Answer {
                        response,
                        request_id,
                    });
                }
                Ok(response) => {
                    let hint = header(response.headers(), "x-should-retry");
                    let error = api_error(response, &request_id).await;
                    // The server's hint decides, except that a used-up quota is final whatever
                    // an older server says.
                    let retry = match hint.as_deref() {
                        Some("false") => false,
                        Some("true") => error.code() != Some("QuotaExceeded"),
                        _ => error.is_retryable(),
                    };
                    (error, retry)
                }
                Err(error) => {
                    let error = ClientError::from_transport(error, &request_id);
                    let retry = error.is_retryable();
                    (error, retry)
                }
            };
            if !should_retry || attempt >= self.inner.max_retries {
                return Err(error);
            }
            let delay = self.delay(attempt, &error);
            tracing::warn!(%error, attempt = attempt + 1, delay_ms = delay.as_millis() as u64, "retrying");
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    /// `Retry-After` when the server gave one, else exponential backoff with jitter.
    fn delay(&self, attempt: u32, error: &ClientError) -> Duration {
        if let ClientError::Api {
            retry_after: Some(after),
            ..
        } = error
        {
            return (*after).min(MAX_RETRY_AFTER);
        }
        let base = self.inner.backoff * 2u32.saturating_pow(attempt.min(6));
        let jitter = rand::random::<f64>() * 0.25;
        base.mul_f64(1.0 + jitter).min(MAX_RETRY_AFTER)
    }

    pub(crate) async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let url = self.url(path);
        self.send(|| self.request(Method::GET, &url))
            .await?
            .json()
            .await
    }
}

pub(crate) fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// The error envelope `{"error": {"code", "message", "param"}}`, or the raw body.
pub(crate) async fn api_error(response: Response, request_id: &str) -> ClientError {
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.bytes().await.unwrap_or_default();
    error_from_answer(status, &headers, &body, request_id)
}

/// An error answer as a [`ClientError::Api`]: the envelope read leniently (other servers send
/// `param: null` or leave fields out), else the status and the start of the body; the
/// server's request id when it sent one, and `Retry-After` in seconds. For callers that read
/// the body themselves (the gateway bounds how much of it it reads).
pub fn error_from_answer(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    request_id: &str,
) -> ClientError {
    let request_id = header(headers, REQUEST_ID_HEADER).unwrap_or_else(|| request_id.into());
    let retry_after = header(headers, RETRY_AFTER.as_str())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64);
    let envelope = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").filter(|e| e.is_object()).cloned());
    let text =
        |e: &serde_json::Value, key: &str| e.get(key).and_then(|v| v.as_str()).map(str::to_string);
    let (code, message, param) = match envelope {
        Some(error) => (
            text(&error, "code").unwrap_or_else(|| "HttpError".into()),
            text(&error, "message").unwrap_or_default(),
            text(&error, "param").filter(|p| !p.is_empty()),
        ),
        None => {
            let text = String::from_utf8_lossy(body);
            let text: String = text.chars().take(300).collect();
            let reason = status.canonical_reason().unwrap_or("error");
            let message = if text.trim().is_empty() {
                reason.to_string()
            } else {
                text.trim().to_string()
            };
            ("HttpError".to_string(), message, None)
        }
    };
    ClientError::Api {
        status: status.as_u16(),
        code,
        message,
        param,
        request_id: Some(request_id),
        retry_after,
    }
}

pub(crate) fn is_event_stream(response: &Response) -> bool {
    response.status() == StatusCode::OK
        && header(response.headers(), "content-type")
            .is_some_and(|t| t.starts_with("text/event-stream"))
}

#[cfg(test)]
mod tests {
    use reqwest::Method;
    use reqwest::header::AUTHORIZATION;

    use crate::Client;

    fn sends_key(client: &Client, url: &str, link: bool) -> bool {
        let request = if link {
            client.request_link(Method::GET, url)
        } else {
            client.request(Method::GET, url)
        };
        request
            .build()
            .unwrap()
            .headers()
            .get_all(AUTHORIZATION)
            .iter()
            .any(|v| v == "Bearer sk-test")
    }

    /// Both ways a request is built: the client's own routes and links from a response.
    #[test]
    fn the_key_never_goes_to_a_url_that_only_starts_like_the_base() {
        let client = Client::builder("https://host.example")
            .api_key("sk-test")
            .build()
            .unwrap();
        for link in [false, true] {
            assert!(sends_key(&client, "https://host.example/v1/jobs", link));
            assert!(sends_key(&client, "https://HOST.example:443/x.png", link));
            for url in [
                "https://host.example.evil.net/x.png",
                "https://host.example@evil.net/x.png",
                "https://host.example:443@evil.net/x.png",
                "https://host.exampleevil.net/x.png",
                "https://host.example:444/x.png",
                "http://host.example/x.png",
                "https://host.example./x.png",
                "https://user:pw@host.example/x.png",
            ] {
                assert!(!sends_key(&client, url, link), "{url} (link: {link})");
            }
        }
    }

    #[test]
    fn links_get_the_key_only_under_the_base_path() {
        let client = Client::builder("https://ark.example/api/v3")
            .api_key("sk-test")
            .build()
            .unwrap();
        // The client's own routes sit at the origin's root.
        assert!(sends_key(&client, &client.url("/v1/jobs"), false));
        assert!(sends_key(&client, &client.generations_url(), false));
        assert!(sends_key(
            &client,
            "https://ark.example/api/v3/f/a.png",
            true
        ));
        assert!(!sends_key(&client, "https://ark.example/other/a.png", true));
        assert!(!sends_key(
            &client,
            "https://ark.example/api/v3x/a.png",
            true
        ));
    }
}
