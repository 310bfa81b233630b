//! Where the API key may go: only to the origin the client was built with.
//!
//! Comparing URLs as text is not enough: `https://host.evil.net/...` and
//! `https://host@evil.net/...` both start with `https://host`, and a server (or whoever
//! controls a response) can hand the client such links to download. So URLs are parsed and
//! compared by origin — scheme, host and port, each as the URL parser normalises them.

use reqwest::Url;

/// The configured base, parsed once.
#[derive(Debug, Clone)]
pub(crate) struct KeyScope {
    scheme: String,
    /// As the parser writes it: lowercase, IDNA names in punycode, IPv6 in brackets.
    host: String,
    port: Option<u16>,
    /// The base's path without its trailing `/`; empty for a server root.
    path: String,
}

impl KeyScope {
    pub fn new(base: &Url) -> Self {
        Self {
            scheme: base.scheme().to_string(),
            host: base.host_str().unwrap_or_default().to_string(),
            port: base.port_or_known_default(),
            path: base.path().trim_end_matches('/').to_string(),
        }
    }

    /// Whether `url` is on the base's origin, so a request the client builds itself (its own
    /// routes hang off the origin, whatever the base's path) may carry the key.
    ///
    /// A URL with userinfo never qualifies: it names no other origin, but nothing the client
    /// builds has one, so such a link was crafted, and reqwest would send the userinfo as a
    /// second `Authorization` header next to ours.
    pub fn same_origin(&self, url: &Url) -> bool {
        !self.host.is_empty()
            && url.scheme() == self.scheme
            && url.host_str() == Some(self.host.as_str())
            && url.port_or_known_default() == self.port
            && url.username().is_empty()
            && url.password().is_none()
    }

    /// Whether a link a server handed us (an image to download) may carry the key: on the
    /// base's origin and, when the base was given with a path (`https://host/api/v3`), under
    /// that path — a shared host's other paths may belong to someone else. seedbed's own image
    /// links are signed and need no key, so this costs seedbed nothing.
    pub fn covers_link(&self, url: &Url) -> bool {
        self.same_origin(url) && under(url.path(), &self.path)
    }
}

/// `path` is `base` or below it: `/api/v3` covers `/api/v3/x` but not `/api/v3x`. The parser
/// has already resolved `..` segments (`%2e%2e` included), so they cannot climb out.
fn under(path: &str, base: &str) -> bool {
    base.is_empty()
        || path
            .strip_prefix(base)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Whether following a redirect from `previous` to `next` would carry the key off its origin.
///
/// reqwest (0.12) drops `Authorization` on a redirect to another host or port, but keeps it
/// when only the scheme changes (`https://host:8443` to `http://host:8443`), which would send
/// the key in clear text; such a redirect is refused. With that, the header only ever travels
/// within one origin, and the client adds it only on the base's.
pub(crate) fn redirect_leaks_key(previous: &Url, next: &Url) -> bool {
    let header_kept = previous.host_str() == next.host_str()
        && previous.port_or_known_default() == next.port_or_known_default();
    header_kept && previous.scheme() != next.scheme()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(base: &str) -> KeyScope {
        KeyScope::new(&Url::parse(base).unwrap())
    }

    fn same_origin(base: &str, url: &str) -> bool {
        scope(base).same_origin(&Url::parse(url).unwrap())
    }

    #[test]
    fn the_key_goes_only_to_the_exact_origin() {
        let base = "https://host.example";
        for url in [
            "https://host.example/v1/jobs",
            "https://host.example:443/v1/jobs",
            "https://HOST.Example/v1/jobs",
            "https://host.example/api/v3/../../v1/jobs",
        ] {
            assert!(same_origin(base, url), "{url} is the base's origin");
        }
        for url in [
            // Text that merely starts like the base.
            "https://host.example.evil.net/x",
            "https://host.examplex/x",
            "https://host.example@evil.net/x",
            "https://host.example:443@evil.net/x",
            "https://host.example:pw@evil.net/x",
            // Userinfo on the right host: never built by the client, so never keyed.
            "https://user@host.example/x",
            "https://user:pw@host.example/x",
            // Another port or scheme.
            "https://host.example:444/x",
            "http://host.example/x",
            "http://host.example:443/x",
            "wss://host.example/x",
            // A trailing dot is another origin to the URL standard.
            "https://host.example./x",
            // Look-alike names: IDNA turns them into other punycode hosts.
            "https://hоst.example/x",
            "https://host.exämple/x",
            // Other forms that are not a URL on this host.
            "https://evil.net/host.example",
            "https://evil.net/?https://host.example",
            "file:///host.example",
        ] {
            assert!(!same_origin(base, url), "{url} must not get the key");
        }
    }

    #[test]
    fn hosts_are_compared_as_parsed() {
        // IDNA: the Unicode and punycode spellings are the same host.
        assert!(same_origin(
            "https://bücher.example",
            "https://xn--bcher-kva.example/x"
        ));
        assert!(same_origin(
            "https://xn--bcher-kva.example",
            "https://BÜCHER.example/x"
        ));
        // IPv4 in another spelling is the same address; a neighbour is not.
        assert!(same_origin(
            "http://127.0.0.1:8080",
            "http://2130706433:8080/x"
        ));
        assert!(!same_origin(
            "http://127.0.0.1:8080",
            "http://127.0.0.10:8080/x"
        ));
        assert!(!same_origin(
            "http://127.0.0.1:8080",
            "http://127.0.0.1:808/x"
        ));
        assert!(same_origin(
            "http://[::1]:8080",
            "http://[0:0:0:0:0:0:0:1]:8080/x"
        ));
        assert!(!same_origin("http://[::1]:8080", "http://[::2]:8080/x"));
        // A base with a trailing dot keys only the dotted name.
        assert!(same_origin(
            "https://host.example.",
            "https://host.example./x"
        ));
        assert!(!same_origin(
            "https://host.example.",
            "https://host.example/x"
        ));
        // An explicit default port is the default port.
        assert!(same_origin(
            "http://host.example:80",
            "http://host.example/x"
        ));
    }

    #[test]
    fn links_must_also_be_under_the_base_path() {
        let ark = scope("https://ark.example/api/v3/");
        let link = |url: &str| ark.covers_link(&Url::parse(url).unwrap());
        assert!(link("https://ark.example/api/v3"));
        assert!(link("https://ark.example/api/v3/files/a.png?sig=1"));
        assert!(!link("https://ark.example/api/v3x/a.png"));
        assert!(!link("https://ark.example/api/a.png"));
        assert!(!link("https://ark.example/api/v3/../v2/a.png"));
        assert!(!link("https://ark.example/api/v3/%2e%2e/v2/a.png"));
        assert!(!link("https://ark.example.evil.net/api/v3/a.png"));
        assert!(!link("https://ark.example@evil.net/api/v3/a.png"));
        // A server root covers its whole origin.
        let root = scope("http://127.0.0.1:8080");
        assert!(root.covers_link(&Url::parse("http://127.0.0.1:8080/v1/images/j/0.png").unwrap()));
        assert!(!root.covers_link(&Url::parse("http://127.0.0.1:8081/v1/images/j/0.png").unwrap()));
    }

    #[test]
    fn a_redirect_that_only_changes_the_scheme_is_a_leak() {
        let url = |u: &str| Url::parse(u).unwrap();
        // reqwest keeps the header here: same host and port, now in clear text.
        assert!(redirect_leaks_key(
            &url("https://host.example:8443/a"),
            &url("http://host.example:8443/b")
        ));
        // Same origin: fine. Another host or port: reqwest drops the header.
        assert!(!redirect_leaks_key(
            &url("https://host.example/a"),
            &url("https://host.example/b")
        ));
        assert!(!redirect_leaks_key(
            &url("https://host.example/a"),
            &url("http://host.example/b")
        ));
        assert!(!redirect_leaks_key(
            &url("https://host.example/a"),
            &url("https://cdn.example/b")
        ));
        assert!(!redirect_leaks_key(
            &url("http://127.0.0.1:8080/a"),
            &url("http://127.0.0.1:8081/b")
        ));
    }
}
