//! The upstream's answer on its way to the client: the head rewritten
//! (hop-by-hop fields out, `Via` and `X-Request-Id` in), the body streamed
//! under the request's deadline, and the request's accounting attached to
//! the body, settled when it ends.

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use levee_core::outcome::{ErrorKind, Rejection};
use tokio::time::Instant;

use super::exchange::{Fields, Received};
use super::headers::{self, via};
use super::prepare::version_str;
use super::record::{Record, Refusal};
use super::tries::{Outgoing, Reply};
use crate::codec::raw::{Known, MAX_RAW_FIELDS, RawOut};
use crate::response::{Answer, ResponseBody, UpstreamKind};
use crate::upstream::Slot;

/// The client's answer from the try that won: its head rewritten, its
/// body under the request's deadline, and the request's accounting, which
/// takes over `record` (and `admitted`, the requests-breaker slot held
/// until the response ends). Refused when the tries were, or the last one
/// failed, or for a `101` the client did not ask for.
// The tries' result is taken whole rather than matched by the caller: each
// move of a reply is a copy (callgrind).
pub(super) fn answer(
    tried: Result<Reply, Rejection>,
    out: &Outgoing<'_>,
    admitted: Slot,
    client_h1: bool,
    deadline: Instant,
    record: &mut Record<'_>,
) -> Result<Box<Answer>, Refusal> {
    let upstream = out.upstream;
    let (endpoint, in_flight, (line, fields, received)) = match tried {
        Ok(Reply {
            endpoint,
            in_flight,
            sent: Ok(sent),
            ..
        }) => (endpoint, in_flight, sent),
        Ok(Reply {
            sent: Err(failed), ..
        }) => return Err(failed.rejection.into()),
        Err(rejection) => return Err(rejection.into()),
    };
    let (mut parts, ()) = Response::new(()).into_parts();
    parts.status = line.status;
    parts.version = line.version;
    if parts.status == StatusCode::SWITCHING_PROTOCOLS && !out.upgrade {
        let rejection = Rejection::new(ErrorKind::UpstreamProtocol, "upstream switched protocols unasked");
        return Err(rejection.into());
    }
    let is_upgrade = parts.status == StatusCode::SWITCHING_PROTOCOLS;
    let (accounting, request_id) = record.completion(parts.status.as_u16(), in_flight);
    let accounting = accounting.holding(admitted);
    let via = via(version_str(parts.version));
    // An HTTP/1.1 response for an HTTP/1 client is forwarded as the lines
    // that arrived; anything else goes through a header map.
    let raw_out = match fields {
        Fields::Raw(raw) if client_h1 && !is_upgrade && raw.fields.len() <= MAX_RAW_FIELDS => {
            let skip = raw.hop_by_hop_mask();
            let has_id = raw
                .fields
                .iter()
                .enumerate()
                .any(|(i, f)| f.known == Known::RequestId && skip & (1 << i) == 0);
            Some(RawOut {
                head: raw,
                skip,
                via,
                request_id: (!has_id).then_some(request_id),
            })
        }
        fields => {
            let mut h = match fields {
                Fields::Raw(raw) => raw.to_header_map(3),
                Fields::Map(map) => *map,
            };
            if headers::strip_hop_by_hop(&mut h, is_upgrade) {
                h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            }
            h.append(header::VIA, via);
            if !h.contains_key(&headers::X_REQUEST_ID) {
                h.insert(headers::X_REQUEST_ID, request_id);
            }
            parts.headers = h;
            None
        }
    };
    let (body, upgraded) = match received {
        Received::H1(exchange, _) if is_upgrade => {
            (ResponseBody::empty(), Some(Box::new(exchange.into_upgraded())))
        }
        Received::H1(exchange, plan) => {
            let state = upstream.endpoints()[endpoint].state.clone();
            let body = exchange.into_body(plan, state);
            (ResponseBody::upstream(UpstreamKind::H1(body), deadline), None)
        }
        Received::H2(incoming, extensions) => {
            parts.extensions = extensions;
            (ResponseBody::upstream(UpstreamKind::H2(incoming), deadline), None)
        }
    };
    Ok(Box::new(Answer {
        parts,
        raw: raw_out,
        body,
        upgraded,
        accounting: Some(accounting),
    }))
}
