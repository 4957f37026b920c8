//! The one place where an error becomes a response.
//!
//! Whatever refused or failed — a malformed request, no route, an upstream
//! that would not connect — the client gets the same shape: the status of
//! the [`ErrorKind`], a `Proxy-Status` header (RFC 9209) naming levee and the
//! cause, and a one-line plain-text body. Details are fixed strings chosen
//! by levee, so no address, OS error or internal state reaches a client.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use levee_core::outcome::Rejection;

use crate::completion::Completion;
use crate::response::{Answer, ResponseBody};

/// The name levee gives itself in `Proxy-Status` and `Via`.
pub(crate) const PROXY_NAME: &str = "levee";

/// levee's answer to a request it refuses, counted as such in `accounting`
/// (`None` when the request was counted already).
pub(crate) fn refuse(
    rejection: Rejection,
    request_id: Option<&HeaderValue>,
    mut accounting: Option<Completion>,
) -> Answer {
    if let Some(a) = &mut accounting {
        a.generated(rejection.kind);
    }
    let status = StatusCode::from_u16(rejection.kind.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = format!(
        "{} {}: {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        rejection.detail
    );
    let (mut parts, ()) = Response::new(()).into_parts();
    parts.status = status;
    let h = &mut parts.headers;
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("proxy-status", proxy_status(rejection));
    if let Ok(date) = HeaderValue::from_str(&httpdate::fmt_http_date(std::time::SystemTime::now())) {
        h.insert(header::DATE, date);
    }
    if let Some(id) = request_id {
        h.insert("x-request-id", id.clone());
    }
    Answer {
        parts,
        raw: None,
        body: ResponseBody::full(Bytes::from(body)),
        upgraded: None,
        accounting,
    }
}

/// `levee; error=<type>; details="<detail>"`. Details are levee's own
/// static strings, which contain no quote or backslash to escape.
fn proxy_status(rejection: Rejection) -> HeaderValue {
    let value = format!(
        "{PROXY_NAME}; error={}; details=\"{}\"",
        rejection.kind.proxy_status(),
        rejection.detail
    );
    HeaderValue::from_str(&value)
        .unwrap_or_else(|_| HeaderValue::from_static("levee; error=proxy_internal_error"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use levee_core::outcome::ErrorKind;

    #[tokio::test]
    async fn error_response_shape() {
        let id = HeaderValue::from_static("abc");
        let accounting = Completion::new(
            tokio::time::Instant::now(),
            0,
            crate::metrics::Metrics::new().route("r", "u", None),
            None,
        );
        let answer = refuse(
            Rejection::new(ErrorKind::ConnectionRefused, "upstream refused the connection"),
            Some(&id),
            Some(accounting),
        );
        let res = Response::from_parts(answer.parts, answer.body);
        assert_eq!(res.status(), 502);
        assert_eq!(
            res.headers()["proxy-status"],
            "levee; error=connection_refused; details=\"upstream refused the connection\""
        );
        assert_eq!(res.headers()["x-request-id"], "abc");
        assert_eq!(res.headers()["content-type"], "text/plain; charset=utf-8");
        assert!(res.headers().contains_key("date"));
        let body = res.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(&body[..], b"502 Bad Gateway: upstream refused the connection\n");
    }

    #[test]
    fn every_detail_fits_a_quoted_string() {
        // Details are written unescaped into a structured-field string.
        for kind in ErrorKind::ALL {
            let value = proxy_status(Rejection::new(kind, "some detail"));
            assert!(value.to_str().expect("ascii").starts_with("levee; error="));
        }
    }
}
