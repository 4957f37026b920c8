//! What a client connection knows about itself, shared by the listeners
//! that accept it, the request path and the access log.

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use http::HeaderValue;
use levee_core::id::ListenerName;

/// What a connection knows about itself.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub listener: ListenerName,
    /// The client's address: the TCP peer's, or the source a trusted
    /// balancer gave in a PROXY protocol header.
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// Whether the connection is TLS (levee terminated it).
    pub tls: bool,
    /// The peer's address rendered for forwarding fields, once.
    pub(crate) client: ClientAddr,
}

/// A client's address, rendered once per connection for the forwarding
/// fields of every request on it.
#[derive(Clone, Debug)]
pub(crate) struct ClientAddr {
    /// The address as text, for `X-Forwarded-For`.
    pub(crate) text: HeaderValue,
    /// `for=<address>` as `Forwarded` writes it (IPv6 quoted in brackets).
    pub(crate) forwarded_for: Bytes,
}

impl ClientAddr {
    pub fn new(ip: IpAddr) -> ClientAddr {
        let text = ip.to_string();
        let forwarded_for = match ip {
            IpAddr::V4(_) => format!("for={text}"),
            IpAddr::V6(_) => format!("for=\"[{text}]\""),
        };
        ClientAddr {
            text: HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            forwarded_for: Bytes::from(forwarded_for),
        }
    }
}
