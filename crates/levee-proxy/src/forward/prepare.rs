//! The request as the upstream will see it, prepared once for all its
//! tries: hop-by-hop fields out, levee's forwarding fields in, the target in
//! origin form for HTTP/1.1 or with an `:authority` for HTTP/2.

use http::header::{self, HeaderValue};
use http::{Request, Uri, Version};
use levee_config::{EndpointAddress, Protocol};

use super::headers::{self, Hop};
use crate::body::RequestBody;
use crate::codec::parse::RawRequest;

/// Rewrites a client's request (its fields as a map) for the upstream.
/// Returns whether it is a protocol upgrade being forwarded.
pub(super) fn prepare_request(req: &mut Request<RequestBody>, hop: &Hop<'_>, protocol: Protocol) -> bool {
    let wants_trailers = headers::wants_trailers(req.headers());
    let asked_upgrade = req.version() == Version::HTTP_11 && req.headers().contains_key(header::UPGRADE);
    let upgrade = asked_upgrade && protocol == Protocol::Http1;
    let h = req.headers_mut();
    let upgrade_kept = headers::strip_hop_by_hop(h, upgrade);
    headers::add_forwarding(h, hop);
    match protocol {
        Protocol::Http1 => {
            if upgrade_kept {
                h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            }
            if let Some(host) = hop.host
                && !h.contains_key(header::HOST)
            {
                h.insert(header::HOST, host.clone());
            }
            // Origin form: the upstream sees the path, the host is in Host.
            if req.uri().scheme().is_some() {
                let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
                if let Ok(uri) = Uri::try_from(pq) {
                    *req.uri_mut() = uri;
                }
            }
            *req.version_mut() = Version::HTTP_11;
        }
        Protocol::Http2 => {
            if wants_trailers {
                h.insert(header::TE, HeaderValue::from_static("trailers"));
            }
            // HTTP/2 carries the host as :authority.
            h.remove(header::HOST);
            if let Some(authority) = hop.host.and_then(|v| v.to_str().ok()) {
                set_authority(req.uri_mut(), authority);
            }
            *req.version_mut() = Version::HTTP_2;
        }
    }
    upgrade
}

/// A request without a host (HTTP/1.0 allows that) goes to each endpoint
/// with the endpoint's address as its host.
pub(super) fn set_default_host(
    parts: &mut http::request::Parts,
    protocol: Protocol,
    endpoint: &EndpointAddress,
) {
    let host = endpoint.to_string();
    match protocol {
        Protocol::Http1 => {
            if let Ok(v) = HeaderValue::from_str(&host) {
                parts.headers.insert(header::HOST, v);
            }
        }
        Protocol::Http2 => set_authority(&mut parts.uri, &host),
    }
}

fn set_authority(uri: &mut Uri, authority: &str) {
    let pq = uri.path_and_query().map_or("/", |p| p.as_str());
    if let Ok(with) = Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(pq)
        .build()
    {
        *uri = with;
    }
}

pub(super) fn version_str(v: Version) -> &'static str {
    match v {
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        _ => "1.1",
    }
}

/// The request's fields, prepared once for all its tries: the lines as
/// received, rewritten per try by [`headers::raw_plan`], or `None` when
/// they were rewritten in the request's header map.
pub(super) type Head = Option<RawRequest>;
