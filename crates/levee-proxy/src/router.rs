//! Route matching: the first declared route whose conditions all hold wins.
//!
//! Routes are few (tens, rarely hundreds) and evaluated in order, so a
//! linear scan over pre-parsed conditions beats building an index, and it
//! keeps the semantics obvious: declaration order is precedence.

use http::Method;
use levee_config::{HostMatch, Route};
use levee_core::id::ListenerName;

use crate::fields::FieldsView;

pub(crate) struct Router {
    routes: Vec<Entry>,
    /// Whether any route looks at the host (else it need not be worked out).
    uses_hosts: bool,
}

struct Entry {
    listeners: Vec<ListenerName>,
    hosts: Vec<HostMatch>,
    path_prefix: Option<String>,
    methods: Vec<Method>,
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

/// What routing looks at in a request.
pub(crate) struct RouteInput<'a> {
    pub listener: &'a ListenerName,
    pub method: &'a Method,
    /// Lowercase, without port or trailing dot; `None` when the request
    /// names no host.
    pub host: Option<&'a str>,
    pub path: &'a str,
    pub headers: FieldsView<'a>,
}

impl Router {
    pub fn new(routes: &[Route]) -> Router {
        Router {
            uses_hosts: routes.iter().any(|r| !r.matcher.hosts.is_empty()),
            routes: routes
                .iter()
                .map(|r| Entry {
                    listeners: r.listeners.clone(),
                    hosts: r.matcher.hosts.clone(),
                    path_prefix: r.matcher.path_prefix.clone(),
                    methods: r.matcher.methods.clone(),
                    headers: r.matcher.headers.clone(),
                })
                .collect(),
        }
    }

    pub fn uses_hosts(&self) -> bool {
        self.uses_hosts
    }

    /// The index of the first matching route.
    pub fn find(&self, input: &RouteInput<'_>) -> Option<usize> {
        self.routes.iter().position(|r| r.matches(input))
    }
}

impl Entry {
    fn matches(&self, input: &RouteInput<'_>) -> bool {
        (self.listeners.is_empty() || self.listeners.contains(input.listener))
            && (self.methods.is_empty() || self.methods.contains(input.method))
            && self
                .path_prefix
                .as_ref()
                .is_none_or(|p| input.path.starts_with(p.as_str()))
            && (self.hosts.is_empty()
                || input
                    .host
                    .is_some_and(|h| self.hosts.iter().any(|m| m.matches(h))))
            && self
                .headers
                .iter()
                .all(|(name, value)| input.headers.has(name, value.as_bytes()))
    }
}

/// Normalises a Host value or URI authority for matching: strips the port
/// and a trailing dot, lowercases. Borrowed when already normal.
pub(crate) fn normalise_host(authority: &str) -> std::borrow::Cow<'_, str> {
    let host = if authority.starts_with('[') {
        // IPv6 literal: keep the brackets, drop the port.
        authority.find(']').map_or(authority, |i| &authority[..=i])
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    fn router(toml: &str) -> Router {
        let text = format!(
            "[listener.a]\naddress = \"127.0.0.1:1\"\n[listener.b]\naddress = \"127.0.0.1:2\"\n[upstream.u.region.r]\nendpoints = [\"127.0.0.1:3\"]\n{toml}"
        );
        let config = levee_config::parse(&text).expect("valid");
        Router::new(&config.routes)
    }

    fn find(
        r: &Router,
        listener: &str,
        method: Method,
        host: Option<&str>,
        path: &str,
        headers: &HeaderMap,
    ) -> Option<usize> {
        r.find(&RouteInput {
            listener: &ListenerName::new(listener),
            method: &method,
            host,
            path,
            headers: FieldsView::Map(headers),
        })
    }

    #[test]
    fn first_match_in_declaration_order() {
        let r = router(
            r#"
[[route]]
name = "api-get"
upstream = "u"
[route.match]
hosts = ["api.example.com", "*.api.example.com"]
path_prefix = "/v1/"
methods = ["GET", "HEAD"]

[[route]]
name = "canary"
upstream = "u"
listeners = ["b"]
[route.match]
headers = { "x-canary" = "yes" }

[[route]]
name = "rest"
upstream = "u"
[route.match]
path_prefix = "/"
"#,
        );
        let none = HeaderMap::new();
        let mut canary = HeaderMap::new();
        canary.insert("x-canary", "yes".parse().expect("value"));
        assert_eq!(
            find(&r, "a", Method::GET, Some("api.example.com"), "/v1/x", &none),
            Some(0)
        );
        assert_eq!(
            find(&r, "a", Method::HEAD, Some("eu.api.example.com"), "/v1/x", &none),
            Some(0)
        );
        assert_eq!(
            find(&r, "a", Method::POST, Some("api.example.com"), "/v1/x", &none),
            Some(2)
        );
        assert_eq!(
            find(&r, "a", Method::GET, Some("api.example.com"), "/v2/x", &none),
            Some(2)
        );
        assert_eq!(
            find(&r, "a", Method::GET, Some("example.com"), "/v1/x", &none),
            Some(2)
        );
        assert_eq!(find(&r, "a", Method::GET, None, "/v1/x", &none), Some(2));
        assert_eq!(find(&r, "b", Method::GET, None, "/x", &canary), Some(1));
        assert_eq!(
            find(&r, "a", Method::GET, None, "/x", &canary),
            Some(2),
            "canary is on listener b only"
        );
        assert_eq!(
            find(&r, "a", Method::GET, None, "*", &none),
            None,
            "asterisk matches no path prefix"
        );
    }

    #[test]
    fn no_route_no_match() {
        let r = router("[[route]]\nname = \"x\"\nupstream = \"u\"\n[route.match]\nhosts = [\"a.example\"]\n");
        assert_eq!(
            find(&r, "a", Method::GET, Some("b.example"), "/", &HeaderMap::new()),
            None
        );
    }

    #[test]
    fn host_normalisation() {
        assert_eq!(normalise_host("Example.COM:8080"), "example.com");
        assert_eq!(normalise_host("example.com."), "example.com");
        assert_eq!(normalise_host("[::1]:8080"), "[::1]");
        assert_eq!(normalise_host("10.0.0.1"), "10.0.0.1");
        assert!(matches!(
            normalise_host("plain.example"),
            std::borrow::Cow::Borrowed(_)
        ));
    }
}
