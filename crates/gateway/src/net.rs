//! Fetching a URL that someone else chose (a client's reference image, an image link in an
//! upstream's answer) without turning this server into a proxy into its own network.
//!
//! The rule lives here, in the gateway crate, because both users need it and `seedbed-core`
//! already depends on the gateway (not the other way round): one rule, one place.
//!
//! What a fetch guarantees:
//! - every address the host name resolves to is public ([`is_public`]), unless the policy allows
//!   private ones or the origin is one the operator configured;
//! - the connection goes to the address that was checked (pinned), so a second DNS answer cannot
//!   swap in a private one, and never through a proxy from `HTTP(S)_PROXY`/`ALL_PROXY` (a proxy
//!   would resolve the name again itself, out of our sight);
//! - each redirect hop, if any are followed, is checked like the first URL;
//! - DNS has its own short timeout, and the whole fetch (DNS, connect, redirects, body) one
//!   deadline;
//! - the body is refused past `max_bytes`, before it is all in memory.
//!
//! Error messages name the host as given, never the address it resolved to: that would tell a
//! caller what our internal DNS says.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use reqwest::Url;

/// Longest wait for one DNS answer (the fetch timeout applies when it is shorter).
pub const DNS_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether `ip` is an ordinary public unicast address: not loopback, private, link-local,
/// shared (CGNAT), multicast, reserved, documentation or benchmarking space, and not an IPv6
/// form that wraps such an IPv4 address (mapped, compatible, NAT64, 6to4).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(v4: Ipv4Addr) -> bool {
    /// IPv4 ranges that are not the public internet (IANA special-purpose registry).
    const BLOCKED: [([u8; 4], u8); 15] = [
        ([0, 0, 0, 0], 8),       // "this network"; 0.0.0.0 reaches the local host on Linux
        ([10, 0, 0, 0], 8),      // private
        ([100, 64, 0, 0], 10),   // shared address space (carrier-grade NAT)
        ([127, 0, 0, 0], 8),     // loopback
        ([169, 254, 0, 0], 16),  // link-local, cloud metadata services
        ([172, 16, 0, 0], 12),   // private
        ([192, 0, 0, 0], 24),    // IETF protocol assignments
        ([192, 0, 2, 0], 24),    // documentation
        ([192, 88, 99, 0], 24),  // deprecated 6to4 relay anycast
        ([192, 168, 0, 0], 16),  // private
        ([198, 18, 0, 0], 15),   // benchmarking
        ([198, 51, 100, 0], 24), // documentation
        ([203, 0, 113, 0], 24),  // documentation
        ([224, 0, 0, 0], 4),     // multicast
        ([240, 0, 0, 0], 4),     // reserved, and the broadcast address
    ];
    let ip = u32::from(v4);
    !BLOCKED.iter().any(|(net, prefix)| {
        let mask = u32::MAX << (32 - u32::from(*prefix));
        ip & mask == u32::from(Ipv4Addr::from(*net)) & mask
    })
}

fn is_public_v6(v6: Ipv6Addr) -> bool {
    let s = v6.segments();
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    // ::ffff:a.b.c.d (mapped) is the IPv4 address itself.
    if let Some(v4) = v6.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    // ::/96 holds ::, ::1 and the deprecated IPv4-compatible form ::a.b.c.d (some stacks still
    // route it to the IPv4 address): nothing public lives there.
    if s[..6] == [0; 6] {
        return false;
    }
    // NAT64 (64:ff9b::/96) reaches the embedded IPv4 address through the translator.
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return is_public_v4(embedded(s[6], s[7]));
    }
    // 6to4 (2002::/16) carries an IPv4 address in bits 16..48.
    if s[0] == 0x2002 {
        return is_public_v4(embedded(s[1], s[2]));
    }
    let blocked = (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1) // local-use NAT64, 64:ff9b:1::/48
        || (s[0] == 0x100 && s[1..4] == [0, 0, 0]) // discard-only, 100::/64
        || (s[0] == 0x2001 && s[1] == 0) // Teredo, 2001::/32 (tunnels to an IPv4 peer)
        || (s[0] == 0x2001 && s[1] == 0xdb8) // documentation
        || (s[0] & 0xfe00) == 0xfc00 // unique local
        || (s[0] & 0xffc0) == 0xfe80 // link-local
        || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated, still routed privately)
        || (s[0] & 0xff00) == 0xff00; // multicast
    !blocked
}

/// How a URL may be fetched.
#[derive(Debug, Clone)]
pub struct FetchPolicy {
    /// Bodies larger than this are refused.
    pub max_bytes: usize,
    /// The whole fetch: DNS, connecting, redirects and the body.
    pub timeout: Duration,
    /// One DNS lookup (the smaller of this and `timeout` applies).
    pub dns_timeout: Duration,
    /// Redirects followed, each hop checked like the first URL; 0 makes a 3xx an error.
    pub max_redirects: usize,
    /// Fetch from any address (tests, or an operator who means it).
    pub allow_private: bool,
    /// `(host, port)` origins fetched whatever they resolve to: hosts the operator configured
    /// (an upstream's own base URL), which are trusted already.
    pub trusted_origins: Vec<(String, u16)>,
}

impl FetchPolicy {
    pub fn new(max_bytes: usize, timeout: Duration) -> Self {
        Self {
            max_bytes,
            timeout,
            dns_timeout: DNS_TIMEOUT,
            max_redirects: 0,
            allow_private: false,
            trusted_origins: Vec::new(),
        }
    }

    /// Also trust the origin of `url` (a configured upstream's base URL).
    pub fn trust_origin_of(mut self, url: &str) -> Self {
        if let Some(origin) = Url::parse(url).ok().as_ref().and_then(origin_of) {
            self.trusted_origins.push(origin);
        }
        self
    }

    fn trusts(&self, origin: &(String, u16)) -> bool {
        self.trusted_origins
            .iter()
            .any(|(host, port)| host.eq_ignore_ascii_case(&origin.0) && *port == origin.1)
    }
}

/// Why a fetch failed; the messages name the host as given, never a resolved address.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("the URL is not valid: {0}")]
    BadUrl(String),
    #[error("only http and https URLs are fetched")]
    Scheme,
    #[error("the host {host} cannot be resolved: {error}")]
    Unresolvable { host: String, error: String },
    #[error("the host {host} has no address")]
    NoAddress { host: String },
    #[error("the host {host} did not resolve within {} s", timeout.as_secs_f32())]
    DnsTimeout { host: String, timeout: Duration },
    #[error(
        "the host {host} points at a private or loopback address (or another non-public range); this server does not fetch those"
    )]
    NotPublic { host: String },
    #[error("the download did not finish within {} s", timeout.as_secs_f32())]
    Timeout { timeout: Duration },
    #[error("the server answered HTTP {0}")]
    Status(reqwest::StatusCode),
    #[error("more than {0} redirects")]
    TooManyRedirects(usize),
    #[error("it is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the download failed: {0}")]
    Transport(String),
}

/// GET `url` under `policy` (see the module's notes).
pub async fn fetch(url: &str, policy: &FetchPolicy) -> Result<Bytes, FetchError> {
    let url = Url::parse(url).map_err(|e| FetchError::BadUrl(e.to_string()))?;
    tokio::time::timeout(policy.timeout, follow(url, policy))
        .await
        .unwrap_or(Err(FetchError::Timeout {
            timeout: policy.timeout,
        }))
}

async fn follow(mut url: Url, policy: &FetchPolicy) -> Result<Bytes, FetchError> {
    let mut hops = 0;
    loop {
        let response = get_pinned(&url, policy).await?;
        let status = response.status();
        if status.is_redirection() && policy.max_redirects > 0 {
            let Some(location) = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
            else {
                return Err(FetchError::Status(status));
            };
            if hops == policy.max_redirects {
                return Err(FetchError::TooManyRedirects(hops));
            }
            url = url
                .join(location)
                .map_err(|e| FetchError::BadUrl(e.to_string()))?;
            hops += 1;
            continue;
        }
        if !status.is_success() {
            return Err(FetchError::Status(status));
        }
        return read_capped(response, policy.max_bytes).await;
    }
}

fn origin_of(url: &Url) -> Option<(String, u16)> {
    let host = url
        .host_str()?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    Some((host, url.port_or_known_default()?))
}

/// Resolve, check and connect to exactly the checked address.
async fn get_pinned(url: &Url, policy: &FetchPolicy) -> Result<reqwest::Response, FetchError> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(FetchError::Scheme);
    }
    let origin = origin_of(url).ok_or_else(|| FetchError::BadUrl("no host".into()))?;
    let host = origin.0.as_str();
    let dns_timeout = policy.dns_timeout.min(policy.timeout);
    let lookup = tokio::net::lookup_host((host, origin.1));
    let addrs = resolve_within(host, dns_timeout, lookup).await?;
    let Some(first) = addrs.first().copied() else {
        return Err(FetchError::NoAddress {
            host: host.to_string(),
        });
    };
    // Every answer must pass, not just the one we use: a name that mixes public and private
    // addresses is not one we want to talk to.
    let checked = policy.allow_private || policy.trusts(&origin);
    if !checked && addrs.iter().any(|a| !is_public(a.ip())) {
        return Err(FetchError::NotPublic {
            host: host.to_string(),
        });
    }
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(policy.timeout)
        .resolve(host, first)
        .build()
        .map_err(|e| FetchError::Transport(e.to_string()))?;
    client
        .get(url.clone())
        .send()
        .await
        .map_err(|e| FetchError::Transport(e.to_string()))
}

/// A DNS lookup's answer, or an error naming the host once `timeout` has passed (the system
/// resolver can hang far longer than a request should wait).
async fn resolve_within<I: Iterator<Item = SocketAddr>>(
    host: &str,
    timeout: Duration,
    lookup: impl Future<Output = std::io::Result<I>>,
) -> Result<Vec<SocketAddr>, FetchError> {
    let answer =
        tokio::time::timeout(timeout, lookup)
            .await
            .map_err(|_| FetchError::DnsTimeout {
                host: host.to_string(),
                timeout,
            })?;
    Ok(answer
        .map_err(|e| FetchError::Unresolvable {
            host: host.to_string(),
            error: e.to_string(),
        })?
        .collect())
}

/// The body, refused as soon as it passes `max_bytes` (by its `Content-Length` or as it comes).
pub async fn read_capped(
    response: reqwest::Response,
    max_bytes: usize,
) -> Result<Bytes, FetchError> {
    if response
        .content_length()
        .is_some_and(|n| n > max_bytes as u64)
    {
        return Err(FetchError::TooLarge(max_bytes));
    }
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| FetchError::Transport(e.to_string()))?;
        if body.len() + chunk.len() > max_bytes {
            return Err(FetchError::TooLarge(max_bytes));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn public(text: &str) -> bool {
        is_public(text.parse().unwrap())
    }

    #[test]
    fn non_public_ranges_are_refused() {
        for blocked in [
            "0.0.0.0",
            "0.1.2.3",
            "10.1.2.3",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.168.0.1",
            "198.18.0.1",
            "198.19.255.255",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::127.0.0.1",
            "::8.8.8.8",
            "::ffff:192.168.0.1",
            "::ffff:127.0.0.1",
            "64:ff9b::10.0.0.1",
            "64:ff9b::127.0.0.1",
            "64:ff9b:1::1",
            "2002:0a00:0001::1",
            "2002:7f00:0001::",
            "2001:db8::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "feff::1",
            "ff02::1",
            "ff0e::1",
        ] {
            assert!(!public(blocked), "{blocked} must be refused");
        }
        for allowed in [
            "93.184.216.34",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.1",
            "172.32.0.1",
            "198.20.0.1",
            "223.255.255.255",
            "2606:4700::1111",
            "64:ff9b::8.8.8.8",
            "2002:0808:0808::1",
            "::ffff:8.8.8.8",
        ] {
            assert!(public(allowed), "{allowed} is public");
        }
    }

    #[tokio::test]
    async fn private_hosts_are_refused_without_naming_the_address() {
        let policy = FetchPolicy::new(1024, Duration::from_secs(5));
        let error = fetch("http://localhost:9/x.png", &policy)
            .await
            .unwrap_err();
        assert!(matches!(error, FetchError::NotPublic { .. }), "{error}");
        let message = error.to_string();
        assert!(message.contains("localhost"), "{message}");
        assert!(!message.contains("127.0.0.1"), "{message}");
        assert!(!message.contains("::1"), "{message}");
        // The operator's own upstream host is trusted on its port only.
        let trusted = policy.clone().trust_origin_of("http://localhost:9/api/v3");
        let error = fetch("http://localhost:9/x.png", &trusted)
            .await
            .unwrap_err();
        assert!(matches!(error, FetchError::Transport(_)), "{error}");
        let error = fetch("http://localhost:10/x.png", &trusted)
            .await
            .unwrap_err();
        assert!(matches!(error, FetchError::NotPublic { .. }), "{error}");
    }

    #[tokio::test]
    async fn dns_has_its_own_timeout() {
        let hung = std::future::pending::<std::io::Result<std::vec::IntoIter<SocketAddr>>>();
        let error = resolve_within("images.example", Duration::from_millis(20), hung)
            .await
            .unwrap_err();
        assert!(matches!(error, FetchError::DnsTimeout { .. }), "{error}");
        assert_eq!(
            error.to_string(),
            "the host images.example did not resolve within 0.02 s"
        );
    }

    #[tokio::test]
    async fn redirects_are_checked_hop_by_hop() {
        use wiremock::matchers::path;
        use wiremock::{Mock, MockServer, ResponseTemplate};

        let server = MockServer::start().await;
        let port = server.address().port();
        Mock::given(path("/to-private"))
            .respond_with(ResponseTemplate::new(302).insert_header(
                "location",
                format!("http://localhost:{port}/image").as_str(),
            ))
            .mount(&server)
            .await;
        Mock::given(path("/image"))
            .respond_with(ResponseTemplate::new(200).set_body_bytes(vec![7u8; 100]))
            .mount(&server)
            .await;
        // The mock listens on 127.0.0.1; trusting that origin stands in for a public host.
        let policy = FetchPolicy {
            max_redirects: 3,
            ..FetchPolicy::new(1024, Duration::from_secs(5))
        }
        .trust_origin_of(&server.uri());
        assert_eq!(
            fetch(&format!("{}/image", server.uri()), &policy)
                .await
                .unwrap()
                .len(),
            100
        );
        // The hop to `localhost` (another name for a private address) is refused.
        let error = fetch(&format!("{}/to-private", server.uri()), &policy)
            .await
            .unwrap_err();
        assert!(matches!(error, FetchError::NotPublic { .. }), "{error}");
        // Without redirects a 3xx is an answer we do not take.
        let strict = FetchPolicy {
            max_redirects: 0,
            ..policy.clone()
        };
        let error = fetch(&format!("{}/to-private", server.uri()), &strict)
            .await
            .unwrap_err();
        assert!(matches!(error, FetchError::Status(_)), "{error}");
        // Bodies past the cap are refused.
        let small = FetchPolicy {
            max_bytes: 10,
            ..policy
        };
        let error = fetch(&format!("{}/image", server.uri()), &small)
            .await
            .unwrap_err();
        assert!(matches!(error, FetchError::TooLarge(10)), "{error}");
    }
}
