//! Building a [`Client`]: where the API lives and how patient to be.

use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;

use crate::ClientError;
use crate::client::{Client, Inner};
use crate::scope::{KeyScope, redirect_leaks_key};

/// As many as reqwest's default policy follows.
const MAX_REDIRECTS: usize = 10;

pub struct ClientBuilder {
    base: String,
    api_key: Option<String>,
    timeout: Duration,
    connect_timeout: Duration,
    max_retries: u32,
    backoff: Duration,
    user_agent: String,
}

impl ClientBuilder {
    /// `base` is either a server root or an API base:
    ///
    /// - `http://127.0.0.1:8080` (no path): generations at `{base}/api/v3/images/generations`,
    ///   seedbed's own API at `{base}/v1/...`, `{base}/health`, `{base}/info`;
    /// - `https://ark.ap-southeast.bytepluses.com/api/v3` (with a path): generations at
    ///   `{base}/images/generations`, seedbed's own API at the origin's `/v1/...`.
    pub fn new(base: impl Into<String>) -> Self {
        Self {
            base: base.into(),
            api_key: None,
            timeout: Duration::from_secs(600),
            connect_timeout: Duration::from_secs(10),
            max_retries: 2,
            backoff: Duration::from_millis(500),
            user_agent: concat!("seedbed-client/", env!("CARGO_PKG_VERSION")).into(),
        }
    }

    /// Sent as `Authorization: Bearer KEY` only to the base's origin (scheme, host and port,
    /// compared parsed), and to links from responses only under the base's path; never to
    /// other origins, nor along a redirect to one.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// Per request, body included; generation is slow, so the default is 10 minutes.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Retries after the first try on timeouts, connection errors, 408, 429 and 5xx (default 2).
    pub fn max_retries(mut self, retries: u32) -> Self {
        self.max_retries = retries;
        self
    }

    /// The first retry's delay (doubled each time, with jitter) when the server gives no
    /// `Retry-After`; default 0.5 s.
    pub fn backoff(mut self, first: Duration) -> Self {
        self.backoff = first;
        self
    }

    pub fn user_agent(mut self, agent: impl Into<String>) -> Self {
        self.user_agent = agent.into();
        self
    }

    pub fn build(self) -> Result<Client, ClientError> {
        let invalid = |message: String| ClientError::InvalidBaseUrl {
            url: self.base.clone(),
            message,
        };
        let url = Url::parse(&self.base).map_err(|e| invalid(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(invalid(
                "use http://HOST[:PORT][/PATH] or https://...".into(),
            ));
        }
        let origin = url.origin().ascii_serialization();
        let path = url.path().trim_end_matches('/');
        let api_base = if path.is_empty() {
            format!("{origin}/api/v3")
        } else {
            format!("{origin}{path}")
        };
        let http = reqwest::Client::builder()
            .timeout(self.timeout)
            .connect_timeout(self.connect_timeout)
            .user_agent(self.user_agent)
            .redirect(redirect_policy(self.api_key.is_some()))
            .build()
            .map_err(|e| invalid(e.to_string()))?;
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                api_base,
                origin,
                scope: KeyScope::new(&url),
                api_key: self.api_key,
                max_retries: self.max_retries,
                backoff: self.backoff,
            }),
        })
    }
}

/// reqwest's default policy, except that with a key it refuses a redirect on which reqwest
/// would keep `Authorization` although the origin changes (see [`redirect_leaks_key`]).
fn redirect_policy(keyed: bool) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() > MAX_REDIRECTS {
            return attempt.error("too many redirects");
        }
        let leaks = keyed
            && attempt
                .previous()
                .last()
                .is_some_and(|previous| redirect_leaks_key(previous, attempt.url()));
        if leaks {
            let message = format!(
                "refused a redirect from {} to {}: it changes the scheme only, and the API key \
                 would go along",
                attempt.previous().last().map_or("", |u| u.as_str()),
                attempt.url()
            );
            return attempt.error(message);
        }
        attempt.follow()
    })
}

#[cfg(test)]
mod tests {
    use super::ClientBuilder;

    #[test]
    fn base_urls_map_to_the_right_endpoints() {
        let root = ClientBuilder::new("http://127.0.0.1:8080/")
            .build()
            .unwrap();
        assert_eq!(
            root.generations_url(),
            "http://127.0.0.1:8080/api/v3/images/generations"
        );
        assert_eq!(root.url("/v1/jobs"), "http://127.0.0.1:8080/v1/jobs");
        let ark = ClientBuilder::new("https://ark.ap-southeast.bytepluses.com/api/v3")
            .build()
            .unwrap();
        assert_eq!(
            ark.generations_url(),
            "https://ark.ap-southeast.bytepluses.com/api/v3/images/generations"
        );
        assert_eq!(
            ark.url("/health"),
            "https://ark.ap-southeast.bytepluses.com/health"
        );
        assert!(ClientBuilder::new("ftp://x").build().is_err());
        assert!(ClientBuilder::new("not a url").build().is_err());
    }
}
