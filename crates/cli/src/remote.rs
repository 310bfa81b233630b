//! Talking to a seedbed (or any Seedream-compatible) server: where it is, the key, and what to
//! tell the user when the call fails.

use std::time::Duration;

use anyhow::Result;
use clap::Args;
use seedbed_client::{Client, ClientBuilder, ClientError};

use crate::progress::Progress;

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

/// How many times [`retrying`] tries again after the first attempt, as the client would.
const RETRIES: u32 = 2;
/// The longest wait we sit out, as the client does: a per-minute limit is over by then.
const MAX_WAIT: Duration = Duration::from_secs(60);

pub fn connect(server: &str, api_key: Option<&str>) -> Result<Client> {
    Ok(builder(server, api_key).build()?)
}

/// A client that never retries by itself: its caller retries with [`retrying`], which shows
/// the wait instead of logging it.
pub fn connect_once(server: &str, api_key: Option<&str>) -> Result<Client> {
    Ok(builder(server, api_key).max_retries(0).build()?)
}

fn builder(server: &str, api_key: Option<&str>) -> ClientBuilder {
    let mut builder =
        Client::builder(server).user_agent(concat!("seedbed-cli/", env!("CARGO_PKG_VERSION")));
    if let Some(key) = api_key {
        builder = builder.api_key(key);
    }
    builder
}

/// Call `call` until it succeeds, fails for good or has been retried [`RETRIES`] times,
/// showing each wait as a countdown ("rate limited: retrying in 42 s"). A spent quota is
/// final: waiting does not refill it, whatever the server's `x-should-retry` says.
pub async fn retrying<T, F, Fut>(progress: &Progress, mut call: F) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    let mut attempt = 0;
    loop {
        let error = match call().await {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        if attempt >= RETRIES || !worth_retrying(&error) {
            return Err(error);
        }
        let wait = wait_before_retry(&error, attempt);
        progress
            .countdown(&why_waiting(&error), wait.as_secs())
            .await;
        attempt += 1;
    }
}

fn worth_retrying(error: &ClientError) -> bool {
    error.code() != Some("QuotaExceeded") && error.is_retryable()
}

/// `Retry-After` (rounded up to whole seconds, at most a minute), else 1 s, then 2 s.
fn wait_before_retry(error: &ClientError, attempt: u32) -> Duration {
    let after = match error {
        ClientError::Api {
            retry_after: Some(after),
            ..
        } => Duration::from_secs(after.as_secs() + u64::from(after.subsec_nanos() > 0)),
        _ => Duration::from_secs(1 << attempt.min(5)),
    };
    after.clamp(Duration::from_secs(1), MAX_WAIT)
}

fn why_waiting(error: &ClientError) -> String {
    match error {
        ClientError::Api {
            status: 429, code, ..
        } if code.contains("RateLimit") => "rate limited".into(),
        ClientError::Api { status: 429, .. } => "the server is busy".into(),
        ClientError::Api { status, code, .. } => format!("the server answered {status} {code}"),
        ClientError::Timeout { .. } => "the server did not answer in time".into(),
        ClientError::Connect { .. } => "cannot reach the server".into(),
        other => other.to_string(),
    }
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
        ClientError::Api { code, .. } if code == "QuotaExceeded" => Some(
            "the key's image quota is spent and waiting will not refill it; an admin can issue a \
             key with a larger --quota-images"
                .into(),
        ),
        ClientError::Api {
            status: 429,
            retry_after: Some(after),
            ..
        } => Some(format!("try again in {} s", after.as_secs().max(1))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(code: &str, retry_after: Option<f64>) -> ClientError {
        ClientError::Api {
            status: 429,
            code: code.into(),
            message: String::new(),
            param: None,
            request_id: None,
            retry_after: retry_after.map(Duration::from_secs_f64),
        }
    }

    #[test]
    fn a_rate_limit_is_waited_out_and_a_spent_quota_is_not() {
        let limited = refusal("ModelAccountIpmRateLimitExceeded", Some(41.2));
        assert!(worth_retrying(&limited));
        assert_eq!(wait_before_retry(&limited, 0), Duration::from_secs(42));
        assert_eq!(why_waiting(&limited), "rate limited");
        assert!(!worth_retrying(&refusal("QuotaExceeded", None)));
        let far = refusal("ServerOverloaded", Some(3600.0));
        assert_eq!(wait_before_retry(&far, 0), MAX_WAIT);
        assert_eq!(why_waiting(&far), "the server is busy");
    }
}
