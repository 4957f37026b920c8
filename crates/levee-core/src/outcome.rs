//! What went wrong, as data.
//!
//! Every response levee makes itself, and every failed attempt to reach an
//! upstream, is described by one [`ErrorKind`]. From it follow the status
//! code, the RFC 9209 `Proxy-Status` error type, who is to blame, and whether
//! the request can have reached the upstream (which decides if a
//! non-idempotent request may be tried again). Responses, metrics, retries
//! and passive health all read this one classification, so they cannot
//! disagree.

use std::fmt;

/// Who caused an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Blame {
    /// The client sent something levee will not forward.
    Downstream,
    /// The upstream could not be reached or answered badly.
    Upstream,
    /// levee's own configuration (e.g. no route) or an internal fault.
    Proxy,
}

/// Whether the upstream can have seen any of the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Nothing was sent: safe to try again even for a non-idempotent request.
    NotSent,
    /// Some or all of the request may have reached the upstream.
    MaybeSent,
    /// The error is not about an upstream attempt.
    NotApplicable,
}

/// A closed set: each variant is one `Proxy-Status` error type (or, for
/// client errors, one reason a request is refused).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    // The client's request.
    /// Malformed or ambiguous request framing or syntax.
    BadRequest,
    /// A request target longer than the limit.
    UriTooLong,
    /// A header section over the byte limit or the field-count limit.
    HeaderTooLarge,
    /// A body larger than the limit.
    BodyTooLarge,
    /// The client took too long to send the request.
    RequestTimeout,
    /// A transfer coding levee does not implement.
    NotImplemented,
    /// A method levee does not proxy (CONNECT).
    MethodNotAllowed,
    /// The client's address is not allowed on the route.
    AccessDenied,
    /// A rate limit on the client's key is exhausted.
    RateLimited,
    /// An HTTP version levee does not speak.
    VersionNotSupported,
    // levee's routing.
    /// No route matches the request.
    NoRoute,
    /// The route's upstream has no endpoint available.
    NoEndpoint,
    /// One of the upstream's circuit breakers (`[upstream.<u>.limits]`) is
    /// full: the request fails fast rather than queue.
    ConnectionLimit,
    /// The upstream's adaptive concurrency limit is reached for the
    /// route's priority class: the request is shed rather than queued.
    Overloaded,
    // The upstream attempt.
    /// DNS resolution of the endpoint failed.
    DnsError,
    /// The endpoint refused the connection.
    ConnectionRefused,
    /// No route to the endpoint's network or host.
    DestinationUnreachable,
    /// Connecting to the endpoint took longer than `connect_timeout`.
    ConnectionTimeout,
    /// The connection closed or was reset before a complete response head.
    ConnectionTerminated,
    /// No response head within the response timeout.
    ResponseTimeout,
    /// The response was malformed (bad framing or syntax).
    UpstreamProtocol,
    /// The upstream refused the protocol upgrade the client asked for.
    UpgradeFailed,
    /// The upstream's TLS certificate was not valid for it.
    TlsCertificate,
    /// The TLS handshake with the upstream failed otherwise.
    TlsProtocol,
    /// A bug or resource failure inside levee.
    Internal,
    /// An abort injected on purpose (`[route.fault]`, a fault header or the
    /// admin API): told apart from every real failure, so that a chaos
    /// test's 503 is never mistaken for an outage.
    FaultInjected,
}

impl ErrorKind {
    /// Every kind, for metrics that must list them.
    pub const ALL: [ErrorKind; 26] = [
        ErrorKind::BadRequest,
        ErrorKind::UriTooLong,
        ErrorKind::HeaderTooLarge,
        ErrorKind::BodyTooLarge,
        ErrorKind::RequestTimeout,
        ErrorKind::NotImplemented,
        ErrorKind::MethodNotAllowed,
        ErrorKind::AccessDenied,
        ErrorKind::RateLimited,
        ErrorKind::VersionNotSupported,
        ErrorKind::NoRoute,
        ErrorKind::NoEndpoint,
        ErrorKind::ConnectionLimit,
        ErrorKind::Overloaded,
        ErrorKind::DnsError,
        ErrorKind::ConnectionRefused,
        ErrorKind::DestinationUnreachable,
        ErrorKind::ConnectionTimeout,
        ErrorKind::ConnectionTerminated,
        ErrorKind::ResponseTimeout,
        ErrorKind::UpstreamProtocol,
        ErrorKind::UpgradeFailed,
        ErrorKind::TlsCertificate,
        ErrorKind::TlsProtocol,
        ErrorKind::Internal,
        ErrorKind::FaultInjected,
    ];

    /// The status code of the response levee generates for this error.
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::BadRequest => 400,
            ErrorKind::UriTooLong => 414,
            ErrorKind::HeaderTooLarge => 431,
            ErrorKind::BodyTooLarge => 413,
            ErrorKind::RequestTimeout => 408,
            ErrorKind::NotImplemented => 501,
            ErrorKind::MethodNotAllowed => 405,
            ErrorKind::AccessDenied => 403,
            ErrorKind::RateLimited => 429,
            ErrorKind::VersionNotSupported => 505,
            ErrorKind::NoRoute => 404,
            ErrorKind::NoEndpoint => 503,
            ErrorKind::ConnectionLimit => 503,
            ErrorKind::Overloaded => 503,
            ErrorKind::DnsError => 502,
            ErrorKind::ConnectionRefused => 502,
            ErrorKind::DestinationUnreachable => 502,
            ErrorKind::ConnectionTimeout => 504,
            ErrorKind::ConnectionTerminated => 502,
            ErrorKind::ResponseTimeout => 504,
            ErrorKind::UpstreamProtocol => 502,
            ErrorKind::UpgradeFailed => 502,
            ErrorKind::TlsCertificate | ErrorKind::TlsProtocol => 502,
            ErrorKind::Internal => 500,
            // The route's `abort_status` replaces it.
            ErrorKind::FaultInjected => 503,
        }
    }

    /// The RFC 9209 §2.3 error type for the `Proxy-Status` header.
    pub fn proxy_status(self) -> &'static str {
        match self {
            ErrorKind::BadRequest
            | ErrorKind::UriTooLong
            | ErrorKind::HeaderTooLarge
            | ErrorKind::BodyTooLarge
            | ErrorKind::RequestTimeout
            | ErrorKind::NotImplemented
            | ErrorKind::VersionNotSupported => "http_request_error",
            ErrorKind::MethodNotAllowed | ErrorKind::AccessDenied | ErrorKind::RateLimited => {
                "http_request_denied"
            }
            ErrorKind::NoRoute => "destination_not_found",
            ErrorKind::NoEndpoint => "destination_unavailable",
            ErrorKind::ConnectionLimit | ErrorKind::Overloaded => "connection_limit_reached",
            ErrorKind::DnsError => "dns_error",
            ErrorKind::ConnectionRefused => "connection_refused",
            ErrorKind::DestinationUnreachable => "destination_ip_unroutable",
            ErrorKind::ConnectionTimeout => "connection_timeout",
            ErrorKind::ConnectionTerminated => "connection_terminated",
            ErrorKind::ResponseTimeout => "http_response_timeout",
            ErrorKind::UpstreamProtocol => "http_protocol_error",
            ErrorKind::UpgradeFailed => "http_upgrade_failed",
            ErrorKind::TlsCertificate => "tls_certificate_error",
            ErrorKind::TlsProtocol => "tls_protocol_error",
            ErrorKind::Internal => "proxy_internal_error",
            // Not a registered RFC 9209 type, on purpose: no real failure
            // may share its name.
            ErrorKind::FaultInjected => "fault_injected",
        }
    }

    pub fn blame(self) -> Blame {
        match self {
            ErrorKind::BadRequest
            | ErrorKind::UriTooLong
            | ErrorKind::HeaderTooLarge
            | ErrorKind::BodyTooLarge
            | ErrorKind::RequestTimeout
            | ErrorKind::NotImplemented
            | ErrorKind::MethodNotAllowed
            | ErrorKind::AccessDenied
            | ErrorKind::RateLimited
            | ErrorKind::VersionNotSupported => Blame::Downstream,
            ErrorKind::DnsError
            | ErrorKind::ConnectionRefused
            | ErrorKind::DestinationUnreachable
            | ErrorKind::ConnectionTimeout
            | ErrorKind::ConnectionTerminated
            | ErrorKind::ResponseTimeout
            | ErrorKind::UpstreamProtocol
            | ErrorKind::UpgradeFailed
            | ErrorKind::TlsCertificate
            | ErrorKind::TlsProtocol => Blame::Upstream,
            ErrorKind::NoRoute
            | ErrorKind::NoEndpoint
            | ErrorKind::ConnectionLimit
            | ErrorKind::Overloaded
            | ErrorKind::Internal
            | ErrorKind::FaultInjected => Blame::Proxy,
        }
    }

    /// Whether the upstream can have seen the request. Only failures to
    /// connect prove that it did not.
    pub fn delivery(self) -> Delivery {
        match self {
            ErrorKind::DnsError
            | ErrorKind::ConnectionRefused
            | ErrorKind::DestinationUnreachable
            | ErrorKind::ConnectionTimeout
            // The handshake comes before any byte of the request.
            | ErrorKind::TlsCertificate
            | ErrorKind::TlsProtocol => Delivery::NotSent,
            ErrorKind::ConnectionTerminated
            | ErrorKind::ResponseTimeout
            | ErrorKind::UpstreamProtocol
            | ErrorKind::UpgradeFailed => Delivery::MaybeSent,
            _ => Delivery::NotApplicable,
        }
    }

    /// Whether the client connection must be closed after the response: the
    /// framing of what follows a bad request cannot be trusted.
    pub fn closes_connection(self) -> bool {
        matches!(
            self,
            ErrorKind::BadRequest
                | ErrorKind::UriTooLong
                | ErrorKind::HeaderTooLarge
                | ErrorKind::BodyTooLarge
                | ErrorKind::RequestTimeout
                | ErrorKind::NotImplemented
                | ErrorKind::VersionNotSupported
        )
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.proxy_status())
    }
}

/// An error levee answers itself: the kind, and a short fixed detail for the
/// `Proxy-Status` `details` parameter and the body. Details are static so
/// that nothing internal (addresses, OS messages) leaks to clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub kind: ErrorKind,
    pub detail: &'static str,
}

impl Rejection {
    /// No response head within the per-try or response-header timeout:
    /// the one wording, wherever a try runs out of time.
    pub const RESPONSE_TIMEOUT: Rejection =
        Rejection::new(ErrorKind::ResponseTimeout, "upstream response timed out");

    pub const fn new(kind: ErrorKind, detail: &'static str) -> Rejection {
        Rejection { kind, detail }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.detail)
    }
}

/// The class of a status code, for metric labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StatusClass {
    Informational,
    Success,
    Redirection,
    ClientError,
    ServerError,
}

impl StatusClass {
    pub fn of(status: u16) -> StatusClass {
        match status {
            0..=199 => StatusClass::Informational,
            200..=299 => StatusClass::Success,
            300..=399 => StatusClass::Redirection,
            400..=499 => StatusClass::ClientError,
            _ => StatusClass::ServerError,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StatusClass::Informational => "1xx",
            StatusClass::Success => "2xx",
            StatusClass::Redirection => "3xx",
            StatusClass::ClientError => "4xx",
            StatusClass::ServerError => "5xx",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_distinct_meaning() {
        for k in ErrorKind::ALL {
            assert!((400..600).contains(&k.status()), "{k:?}");
            assert!(!k.proxy_status().is_empty());
            // RFC 9209 error types are lowercase tokens with underscores.
            assert!(
                k.proxy_status()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_')
            );
        }
    }

    #[test]
    fn only_connect_and_handshake_failures_prove_nothing_was_sent() {
        let not_sent: Vec<_> = ErrorKind::ALL
            .into_iter()
            .filter(|k| k.delivery() == Delivery::NotSent)
            .collect();
        assert_eq!(
            not_sent,
            vec![
                ErrorKind::DnsError,
                ErrorKind::ConnectionRefused,
                ErrorKind::DestinationUnreachable,
                ErrorKind::ConnectionTimeout,
                ErrorKind::TlsCertificate,
                ErrorKind::TlsProtocol
            ]
        );
        assert_eq!(ErrorKind::ConnectionTerminated.delivery(), Delivery::MaybeSent);
    }

    #[test]
    fn client_errors_close_and_are_blamed_on_the_client() {
        for k in ErrorKind::ALL {
            if k.closes_connection() {
                assert_eq!(k.blame(), Blame::Downstream, "{k:?}");
            }
        }
        assert_eq!(ErrorKind::NoEndpoint.status(), 503);
        assert_eq!(ErrorKind::NoEndpoint.proxy_status(), "destination_unavailable");
    }

    #[test]
    fn status_classes() {
        assert_eq!(StatusClass::of(101).as_str(), "1xx");
        assert_eq!(StatusClass::of(204).as_str(), "2xx");
        assert_eq!(StatusClass::of(308).as_str(), "3xx");
        assert_eq!(StatusClass::of(429).as_str(), "4xx");
        assert_eq!(StatusClass::of(599).as_str(), "5xx");
        assert_eq!(StatusClass::of(599).index(), 4);
    }
}
