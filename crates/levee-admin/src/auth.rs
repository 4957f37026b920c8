//! The admin API's bearer token. Read from the running config on every
//! request, so a reload changes it at once.

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use crate::AdminState;
use crate::api::error;

/// Lets a request through when no token is configured or it carries the
/// token: `Authorization: Bearer <token>`, or, for the event stream only
/// (browsers' `EventSource` cannot set headers), `?access_token=<token>`.
pub(crate) async fn require(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    let config = state.gateway.config();
    let Some(token) = &config.admin.token else {
        return next.run(request).await;
    };
    let expected = token.0.as_bytes();
    let from_header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| bearer(v.as_bytes()))
        .is_some_and(|given| same(given, expected));
    let from_query = request.uri().path() == "/api/v1/events"
        && request.uri().query().is_some_and(|q| {
            q.split('&')
                .filter_map(|pair| pair.strip_prefix("access_token="))
                .any(|given| percent_decode(given).is_some_and(|g| same(&g, expected)))
        });
    if from_header || from_query {
        return next.run(request).await;
    }
    let mut response = error(
        StatusCode::UNAUTHORIZED,
        "this admin listener needs its bearer token: Authorization: Bearer <admin.token>",
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"levee\""),
    );
    response.into_response()
}

/// The credentials of `Bearer <token>`; the scheme's case does not matter
/// (RFC 9110 §11.1).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, token) = value.split_at_checked(7)?;
    scheme.eq_ignore_ascii_case(b"Bearer ").then_some(token)
}

/// `%XX` escapes decoded (browsers encode the token with
/// `encodeURIComponent`); `+` stays `+`, since a token has no spaces.
/// `None` for a broken escape: `percent_decode_str` would pass it through
/// as text, but no browser writes one, so it is refused rather than
/// compared.
fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let broken = s.split('%').skip(1).any(|escape| {
        !escape
            .as_bytes()
            .get(..2)
            .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
    });
    (!broken).then(|| percent_encoding::percent_decode_str(s).collect())
}

/// Compares without stopping at the first difference, so the time taken
/// does not tell an attacker how much of a guess was right. (The length is
/// not secret: a different length fails at once.)
fn same(given: &[u8], expected: &[u8]) -> bool {
    given.ct_eq(expected).into()
}

#[cfg(test)]
mod tests {
    use super::{bearer, percent_decode, same};

    #[test]
    fn the_scheme_is_case_insensitive() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"BEARER abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abcdef"), None);
        assert_eq!(bearer(b"Bearer"), None);
    }

    #[test]
    fn tokens_compare_exactly() {
        assert!(same(b"0123456789abcdef", b"0123456789abcdef"));
        assert!(!same(b"0123456789abcdeg", b"0123456789abcdef"));
        assert!(!same(b"0123456789abcde", b"0123456789abcdef"));
        assert!(!same(b"", b"0123456789abcdef"));
    }

    #[test]
    fn query_tokens_are_percent_decoded() {
        assert_eq!(percent_decode("a%2Bb%2F%3D").as_deref(), Some(&b"a+b/="[..]));
        assert_eq!(percent_decode("a+b").as_deref(), Some(&b"a+b"[..]));
        assert_eq!(percent_decode("abc%2"), None);
        assert_eq!(percent_decode("abc%zz"), None);
        assert_eq!(percent_decode("%"), None);
        assert_eq!(percent_decode("%%41"), None);
        assert_eq!(percent_decode("%41%"), None);
        // An escape is two hex digits, not a signed number.
        assert_eq!(percent_decode("%+f"), None);
        assert_eq!(percent_decode("%e9%41").as_deref(), Some(&[0xe9, b'A'][..]));
    }
}
