//! Which upstreams serve which public model ids, from `[[upstream]]` tables in the TOML config or
//! `--upstream` / `--route` flags.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::error::GatewayError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamKind {
    /// BytePlus ModelArk / Volcengine Ark (`https://ark.../api/v3`): Seedream as is.
    Ark,
    /// An OpenAI-style images API (`https://api.openai.com/v1`): translated both ways.
    Openai,
    /// Another seedbed node (`http://host:8080`): Seedream as is.
    Seedbed,
}

impl std::str::FromStr for UpstreamKind {
    type Err = GatewayError;
    fn from_str(s: &str) -> Result<Self, GatewayError> {
        match s {
            "ark" => Ok(Self::Ark),
            "openai" => Ok(Self::Openai),
            "seedbed" => Ok(Self::Seedbed),
            other => Err(GatewayError::UnknownKind(other.to_string())),
        }
    }
}

/// The key to an upstream: never logged, never returned.
pub use seedbed_types::Secret;

#[derive(Debug, Clone, Deserialize)]
pub struct UpstreamConfig {
    pub name: String,
    pub kind: UpstreamKind,
    pub base_url: String,
    #[serde(default)]
    pub api_key: Option<Secret>,
    /// Read the key from this environment variable instead of the file.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Per request, the whole generation included.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// Store the upstream's images and serve our own signed links (default); `false` passes the
    /// provider's links through (they expire after its 24 hours).
    #[serde(default = "yes")]
    pub rehost: bool,
    /// Public model id -> the upstream's model id.
    #[serde(default)]
    pub models: BTreeMap<String, String>,
    /// Download (re-host) image links that point at private, loopback or otherwise non-public
    /// addresses. Off by default: the links come from the upstream's answer, not from the
    /// operator, and must not make this server fetch from its own network. The upstream's own
    /// host and port (`base_url`) are trusted either way, since the operator chose them (a
    /// seedbed node on the LAN hands out links to itself).
    #[serde(default)]
    pub allow_private_image_urls: bool,
    /// When this upstream is the last (or only) choice: retries after a 429, a 5xx or a failed
    /// connection before any byte of an answer, instead of failing at once.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// The first retry's pause, doubled for each next one (a longer `Retry-After` wins).
    #[serde(default = "default_retry_backoff_ms")]
    pub retry_backoff_ms: u64,
    /// The longest `Retry-After` waited out; a longer one ends the request with the upstream's
    /// answer and its `Retry-After`, for the client to decide.
    #[serde(default = "default_max_retry_after_secs")]
    pub max_retry_after_secs: u64,
}

fn default_retries() -> u32 {
    2
}

fn default_retry_backoff_ms() -> u64 {
    500
}

fn default_max_retry_after_secs() -> u64 {
    10
}

fn default_timeout() -> u64 {
    300
}

fn yes() -> bool {
    true
}

impl UpstreamConfig {
    pub fn new(name: &str, kind: UpstreamKind, base_url: &str) -> Self {
        Self {
            name: name.into(),
            kind,
            base_url: base_url.into(),
            api_key: None,
            api_key_env: None,
            timeout_secs: default_timeout(),
            rehost: true,
            models: BTreeMap::new(),
            allow_private_image_urls: false,
            retries: default_retries(),
            retry_backoff_ms: default_retry_backoff_ms(),
            max_retry_after_secs: default_max_retry_after_secs(),
        }
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }

    pub fn retry_backoff(&self) -> Duration {
        Duration::from_millis(self.retry_backoff_ms)
    }

    pub fn max_retry_after(&self) -> Duration {
        Duration::from_secs(self.max_retry_after_secs)
    }

    /// The key from the config, else from `api_key_env`, else from
    /// `SEEDBED_UPSTREAM_<NAME>_KEY`.
    pub fn key(&self) -> Option<Secret> {
        if let Some(key) = &self.api_key {
            return Some(key.clone());
        }
        let var = self.api_key_env.clone().unwrap_or_else(|| {
            format!(
                "SEEDBED_UPSTREAM_{}_KEY",
                self.name.to_uppercase().replace(['-', '.'], "_")
            )
        });
        std::env::var(var)
            .ok()
            .filter(|k| !k.is_empty())
            .map(Secret::new)
    }
}

/// `--upstream NAME=KIND,URL`, e.g. `ark=ark,https://ark.ap-southeast.bytepluses.com/api/v3`.
pub fn parse_upstream(text: &str) -> Result<UpstreamConfig, GatewayError> {
    let usage = || GatewayError::Syntax {
        text: text.to_string(),
        expected: "NAME=KIND,URL (KIND: ark, openai or seedbed)",
    };
    let (name, rest) = text.split_once('=').ok_or_else(usage)?;
    let (kind, url) = rest.split_once(',').ok_or_else(usage)?;
    if name.is_empty() || url.is_empty() {
        return Err(usage());
    }
    Ok(UpstreamConfig::new(
        name.trim(),
        kind.trim().parse()?,
        url.trim(),
    ))
}

/// `--route PUBLIC=UPSTREAM[:MODEL]`: serve `PUBLIC` from that upstream (as `MODEL`, default
/// `PUBLIC`); repeat for fallbacks, in priority order.
pub fn parse_route(text: &str) -> Result<(String, String, String), GatewayError> {
    let usage = || GatewayError::Syntax {
        text: text.to_string(),
        expected: "PUBLIC=UPSTREAM[:MODEL]",
    };
    let (public, target) = text.split_once('=').ok_or_else(usage)?;
    let (upstream, model) = target.split_once(':').unwrap_or((target, public));
    if public.is_empty() || upstream.is_empty() || model.is_empty() {
        return Err(usage());
    }
    Ok((public.into(), upstream.into(), model.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_and_keys_stay_secret() {
        let upstream = parse_upstream("ark=ark,https://ark.example/api/v3").unwrap();
        assert_eq!(upstream.kind, UpstreamKind::Ark);
        assert!(parse_upstream("ark=s3,https://x").is_err());
        assert_eq!(
            parse_route("seedream=ark:seedream-4-5-251128").unwrap(),
            (
                "seedream".into(),
                "ark".into(),
                "seedream-4-5-251128".into()
            )
        );
        assert_eq!(parse_route("m=ark").unwrap().2, "m");
        let secret = Secret::new("sk-very-secret");
        assert!(!format!("{secret:?}").contains("very"));
        let mut config = UpstreamConfig::new("x", UpstreamKind::Ark, "u");
        config.api_key = Some(secret);
        assert!(!format!("{config:?}").contains("very"));
    }
}
