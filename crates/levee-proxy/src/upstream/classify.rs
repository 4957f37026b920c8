//! What a failed exchange with an upstream means, as one [`Rejection`]:
//! the classification retries, passive health, metrics and the client's
//! answer all read.

use levee_core::outcome::{ErrorKind, Rejection};

use crate::body::{BodyError, RequestBody};

/// Classifies a failed exchange with an upstream.
pub(crate) fn classify(e: &hyper::Error) -> Rejection {
    // The client's body failing is the client's fault, not the upstream's;
    // hyper reports a body it cannot decode as invalid data or input.
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(e @ (BodyError::RequestAborted | BodyError::RequestTooLarge | BodyError::Downstream(_))) =
            s.downcast_ref::<BodyError>()
        {
            return RequestBody::rejection(e);
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput => {
                    return malformed_response();
                }
                std::io::ErrorKind::UnexpectedEof => return incomplete_response(),
                _ => {}
            }
        }
        source = s.source();
    }
    if e.is_parse() || e.is_parse_status() || e.is_parse_too_large() {
        malformed_response()
    } else if e.is_incomplete_message() {
        incomplete_response()
    } else if e.is_timeout() {
        Rejection::RESPONSE_TIMEOUT
    } else {
        Rejection::new(
            ErrorKind::ConnectionTerminated,
            "upstream connection failed before a response",
        )
    }
}

fn malformed_response() -> Rejection {
    Rejection::new(ErrorKind::UpstreamProtocol, "malformed upstream response")
}

fn incomplete_response() -> Rejection {
    Rejection::new(
        ErrorKind::ConnectionTerminated,
        "upstream closed the connection before a complete response",
    )
}
